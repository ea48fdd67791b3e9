//! The README's exit-code table, held program by program: a broker that refuses the
//! login or cannot be reached ends an interactive command with status 1 and one line
//! naming the broker (password masked) and the reason.

mod common;

use common::*;

/// The error lines (`program: error: …`) a run printed on standard error.
fn error_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("error"))
        .map(str::to_string)
        .collect()
}

/// The shared broker with a user that does not exist: refusing it locks nobody out.
fn refused_broker() -> String {
    format!(
        "amqp://vogeler-no-such-user:wrong-secret@127.0.0.1:5672/{}",
        vhost()
    )
}

#[test]
fn a_refused_broker_login_is_one_line_and_exit_1_without_retrying() {
    let d = Deployment::new(&[]).with_broker(&refused_broker());
    let runs = [
        ("runner", vec!["-x", "uptime", "-n", "nobody"]),
        ("admin", vec!["queue", "--no-management"]),
    ];
    for (program, args) in runs {
        let out = d.run(program, &args);
        assert_eq!(out.status.code(), Some(1), "{program}: {}", text(&out));
        let lines = error_lines(&out);
        assert_eq!(
            lines.len(),
            1,
            "{program}: one error line, no retries: {}",
            text(&out)
        );
        let line = &lines[0];
        for want in ["ACCESS_REFUSED", "vogeler-no-such-user", "127.0.0.1:5672"] {
            assert!(line.contains(want), "{program}: {want} missing from {line}");
        }
        assert!(
            !line.contains("wrong-secret"),
            "{program}: password shown: {line}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("retrying"),
            "{program}: retried a refused login: {}",
            text(&out)
        );
    }
}

#[test]
fn an_unreachable_broker_ends_after_connect_timeout_with_exit_1() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let d = Deployment::new(&[]).with_broker("amqp://guest:guest@127.0.0.1:1/%2f");
    let runs = [
        (
            "runner",
            vec!["--connect-timeout", "1s", "-x", "uptime", "-n", "nobody"],
        ),
        (
            "admin",
            vec!["--connect-timeout", "1s", "queue", "--no-management"],
        ),
    ];
    for (program, args) in runs {
        let out = d.run(program, &args);
        assert_eq!(out.status.code(), Some(1), "{program}: {}", text(&out));
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{program}: one error line: {}", text(&out));
        for want in ["127.0.0.1:1", "guest", "refused"] {
            assert!(
                lines[0].contains(want),
                "{program}: {want} missing from {}",
                lines[0]
            );
        }
    }
}

#[test]
fn a_connect_timeout_that_does_not_parse_is_usage_exit_2() {
    let d = Deployment::new(&[]);
    let out = d.run(
        "runner",
        &["--connect-timeout", "soon", "-x", "uptime", "-n", "x"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("soon"),
        "{}",
        text(&out)
    );
}
