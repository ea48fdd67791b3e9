//! The README's exit-code table, held program by program: a broker that refuses the
//! login or cannot be reached ends an interactive command with status 1 and one line
//! naming the broker (password masked) and the reason, while the daemons retry it with
//! backoff; the runner's `--wait` codes (0 stored, 1 an error result, 3 silent,
//! unroutable or no match) on both brokers, and on NATS with two servers.

mod common;

use common::nats::NatsNode;
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

/// A private nats-server that takes one login, `vogeler-t` with `right-secret`.
fn nats_with_login() -> NatsNode {
    NatsNode::start_with("authorization {\n  user: vogeler-t\n  password: right-secret\n}\n")
}

/// A deployment whose broker refuses its login: on RabbitMQ a user that does not exist
/// on the shared broker, on NATS a wrong password on `nats` (a [`nats_with_login`]).
/// Returns it with what a refusal must name (user, host and port) and the password
/// that must never be shown.
fn refused_deployment(
    bus: Bus,
    nats: Option<&NatsNode>,
) -> (Deployment, [String; 2], &'static str) {
    let d = Deployment::new(&[]);
    match (bus, nats) {
        (Bus::Rabbit, _) => (
            d.with_broker(&refused_broker()),
            ["vogeler-no-such-user".into(), "127.0.0.1:5672".into()],
            "wrong-secret",
        ),
        (Bus::Nats, Some(nats)) => {
            let url = format!(
                "nats://vogeler-t:wrong-secret@127.0.0.1:{}/{}",
                nats.port, d.id
            );
            (
                d.with_broker(&url),
                ["vogeler-t".into(), format!("127.0.0.1:{}", nats.port)],
                "wrong-secret",
            )
        }
        (Bus::Nats, None) => panic!("a refused NATS login needs a private nats-server"),
    }
}

/// The runner and the admin give up on a refused login at once: exit 1, one error
/// line naming the broker (password masked) and ACCESS_REFUSED, no retry.
fn a_refused_broker_login_is_one_line_and_exit_1_without_retrying(bus: Bus) {
    let nats = (bus == Bus::Nats).then(nats_with_login);
    let (d, names, secret) = refused_deployment(bus, nats.as_ref());
    let runs = [
        ("runner", vec!["-x", "uptime", "-n", "nobody"]),
        (
            "admin",
            // RabbitMQ's figures without the management API; NATS has none to skip.
            match bus {
                Bus::Rabbit => vec!["queue", "--no-management"],
                Bus::Nats => vec!["queue", "--status"],
            },
        ),
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
        for want in names.iter().map(String::as_str).chain(["ACCESS_REFUSED"]) {
            assert!(line.contains(want), "{program}: {want} missing from {line}");
        }
        assert!(!line.contains(secret), "{program}: password shown: {line}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("retrying"),
            "{program}: retried a refused login: {}",
            text(&out)
        );
    }
}

#[test]
fn a_refused_broker_login_is_one_line_and_exit_1_without_retrying_on_rabbitmq() {
    a_refused_broker_login_is_one_line_and_exit_1_without_retrying(Bus::Rabbit);
}

#[test]
fn a_refused_broker_login_is_one_line_and_exit_1_without_retrying_on_nats() {
    a_refused_broker_login_is_one_line_and_exit_1_without_retrying(Bus::Nats);
}

/// The daemons (server, `client run`) retry a refused login with backoff, one line per
/// attempt naming the broker (password masked) and ACCESS_REFUSED, as they retry a
/// broker that is down (README "When things go wrong": an operator may be fixing the
/// login on the broker); SIGTERM meanwhile is a clean exit.
fn daemons_retry_a_refused_login_with_backoff(bus: Bus) {
    let nats = (bus == Bus::Nats).then(nats_with_login);
    let (d, names, secret) = refused_deployment(bus, nats.as_ref());
    let node = d.node("refused");
    let mut daemons = [
        d.spawn("server", &[], "server"),
        d.spawn("client", &["run", "--node-name", &node], "client"),
    ];
    let attempts = |p: &Proc| {
        p.log_text()
            .lines()
            .filter(|l| l.contains("retrying") && l.contains("ACCESS_REFUSED"))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while daemons.iter().any(|p| attempts(p) < 2) {
        for p in daemons.iter_mut() {
            common::ingest::assert_running(p);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{bus:?}: a daemon did not retry the refused login twice within 20 s; logs:\n{}\n{}",
            daemons[0].log_text(),
            daemons[1].log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Backoff, not a hot loop: a few more attempts in the next two seconds, not dozens.
    let before: Vec<usize> = daemons.iter().map(attempts).collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (p, before) in daemons.iter_mut().zip(before) {
        let log = p.log_text();
        let more = attempts(p) - before;
        assert!(
            more <= 10,
            "{bus:?} {}: {more} attempts in 2 s:\n{log}",
            p.name
        );
        for line in log.lines().filter(|l| l.contains("ACCESS_REFUSED")) {
            for want in &names {
                assert!(
                    line.contains(want.as_str()),
                    "{bus:?} {}: {want} missing from {line}",
                    p.name
                );
            }
        }
        assert!(
            !log.contains(secret),
            "{bus:?} {}: password shown:\n{log}",
            p.name
        );
        let status = p.stop();
        assert_eq!(
            status.code(),
            Some(0),
            "{bus:?} {}: {}",
            p.name,
            p.log_text()
        );
    }
}

#[test]
fn daemons_retry_a_refused_login_with_backoff_on_rabbitmq() {
    daemons_retry_a_refused_login_with_backoff(Bus::Rabbit);
}

#[test]
fn daemons_retry_a_refused_login_with_backoff_on_nats() {
    daemons_retry_a_refused_login_with_backoff(Bus::Nats);
}

fn an_unreachable_broker_ends_after_connect_timeout_with_exit_1(bus: Bus) {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let url = match bus {
        Bus::Rabbit => "amqp://guest:guest@127.0.0.1:1/%2f",
        Bus::Nats => "nats://guest:guest@127.0.0.1:1/vogeler",
    };
    let d = Deployment::new(&[]).with_broker(url);
    let runs = [
        (
            "runner",
            vec!["--connect-timeout", "1s", "-x", "uptime", "-n", "nobody"],
        ),
        (
            "admin",
            // RabbitMQ's figures without the management API; NATS has none to skip.
            match bus {
                Bus::Rabbit => vec!["--connect-timeout", "1s", "queue", "--no-management"],
                Bus::Nats => vec!["--connect-timeout", "1s", "queue", "--status"],
            },
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
fn an_unreachable_broker_ends_after_connect_timeout_with_exit_1_on_rabbitmq() {
    an_unreachable_broker_ends_after_connect_timeout_with_exit_1(Bus::Rabbit);
}

#[test]
fn an_unreachable_broker_ends_after_connect_timeout_with_exit_1_on_nats() {
    an_unreachable_broker_ends_after_connect_timeout_with_exit_1(Bus::Nats);
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

/// A program run with no config, broker or store from the environment.
fn bare(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin(program))
        .args(args)
        .env_remove("VOGELER_CONFIG")
        .env_remove("VOGELER_QHOST")
        .env_remove("VOGELER_DBHOST")
        .output()
        .expect("run binary")
}

/// What each program needs after the flags under test to be a complete command line.
fn command_of(program: &str) -> &'static [&'static str] {
    match program {
        "client" => &["list"],
        "runner" => &["-x", "facter", "-n", "nobody"],
        "admin" => &["node"],
        _ => &[],
    }
}

#[test]
fn usage_is_exit_2_for_every_program_and_a_bad_config_names_its_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("vogeler.conf");
    std::fs::write(&conf, "[global]\nloglevel = INFO\nthis is not a setting\n").expect("conf");
    let conf = conf.to_str().expect("utf-8");
    for program in ["server", "client", "runner", "admin"] {
        let out = bare(
            program,
            &[&["--no-such-flag"], command_of(program)].concat(),
        );
        assert_eq!(out.status.code(), Some(2), "{program}: {}", text(&out));

        let out = bare(program, &[&["-c", conf], command_of(program)].concat());
        assert_eq!(out.status.code(), Some(2), "{program}: {}", text(&out));
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{program}: {}", text(&out));
        assert!(
            lines[0].contains(&format!("{conf}:3")),
            "{program}: file and line missing from {}",
            lines[0]
        );

        let out = bare(
            program,
            &[&["-c", "/nonexistent/vogeler.conf"], command_of(program)].concat(),
        );
        assert_eq!(out.status.code(), Some(2), "{program}: {}", text(&out));
        assert!(
            text(&out).contains("/nonexistent/vogeler.conf"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn a_store_that_cannot_be_reached_is_one_line_naming_it_and_exit_1() {
    // Port 1 on loopback refuses at once; the DSN's user and host are named, the
    // password masked, deadpool's and reqwest's wrappers left out where they can be.
    for dsn in [
        "postgres://vogeler:pg-secret@127.0.0.1:1/vogeler",
        "couch://bob:couch-secret@127.0.0.1:1/vogeler",
    ] {
        let out = bare("admin", &["--dbhost", dsn, "node"]);
        assert_eq!(out.status.code(), Some(1), "{dsn}: {}", text(&out));
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{dsn}: {}", text(&out));
        let line = &lines[0];
        for want in ["127.0.0.1:1", "refused"] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
        assert!(
            line.contains("vogeler:****@") || line.contains("bob:****@"),
            "{line}"
        );
        assert!(!line.contains("secret"), "password shown: {line}");
        assert!(!line.contains("creating a new object"), "{line}");
    }
}

#[test]
fn the_server_waits_for_a_store_that_is_down_and_a_signal_ends_it_with_0() {
    // A daemon does not give up on a store that is down: one line per attempt, with
    // backoff, while results wait in the broker; SIGTERM meanwhile is a clean exit.
    let tmp = tempfile::tempdir().expect("tempdir");
    let log_path = tmp.path().join("server.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut server = std::process::Command::new(bin("server"))
        .env_remove("VOGELER_CONFIG")
        .env_remove("VOGELER_QHOST")
        .env(
            "VOGELER_DBHOST",
            "postgres://vogeler:pg-secret@127.0.0.1:1/vogeler",
        )
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("start the server");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while log().matches("store unavailable; retrying").count() < 2 {
        if std::time::Instant::now() > deadline {
            let _ = server.kill();
            panic!("no retries logged:\n{}", log());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = server.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = server.wait().expect("wait for the server");
    let log = log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("127.0.0.1:1") && !log.contains("pg-secret"),
        "{log}"
    );
}

#[test]
fn a_missing_plugin_directory_is_exit_1_naming_it() {
    let out = bare("client", &["-p", "/nonexistent/plugins", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/plugins"),
        "{}",
        text(&out)
    );
}

#[test]
fn admin_exits_3_for_a_node_request_or_queue_that_is_not_there() {
    let d = Deployment::new(&[]);
    let out = d.admin(&["setup", "--persistence"]);
    assert!(out.status.success(), "{}", text(&out));
    let missing = d.node("never-stored");
    for args in [
        vec!["node", missing.as_str()],
        vec!["node", missing.as_str(), "--clear-error"],
        vec!["node", missing.as_str(), "--deactivate"],
        vec!["history", missing.as_str()],
        vec!["requests", "0123abcd"],
        vec!["queue", "--exists", missing.as_str()],
    ] {
        let out = d.admin(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
    }
    // A store that does not exist is a failure (1), not "not there": nothing could be asked.
    let gone = tempfile::tempdir().expect("tempdir");
    let dsn = format!("sqlite://{}/v.db", gone.path().display());
    let out = d.run("admin", &["--dbhost", &dsn, "node", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("setup --persistence"), "{}", text(&out));
}

/// The runner's summary as JSON (`--json`).
fn summary(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

/// `vogeler-runner --wait` exit codes: 0 when every expected node stored its result, 1
/// for an error result, 3 for a node known but silent, a node nobody knows (unroutable:
/// RabbitMQ has no queue for it, NATS servers never heard from it) and a glob that
/// matches nothing (nothing sent).
///
/// With `servers` servers side by side (several share a PostgreSQL store; SQLite takes
/// one), each answering part of the registry questions: on NATS the unknown node is
/// asked about until every server has answered one.
fn runner_wait_exit_codes(bus: Bus, servers: usize) {
    let d = Deployment::on(
        bus,
        &[
            ("hello.cfg", plugin("hello", "echo hello", "output").1),
            ("failing.cfg", plugin("failing", "false", "output").1),
        ],
    );
    let (d, _db) = match servers {
        1 => (d, None),
        _ => {
            let (d, db) = d.on_postgres("");
            (d, Some(db))
        }
    };
    let servers: Vec<Proc> = (0..servers).map(|_| d.verbose_server()).collect();
    let (up, gone, ghost) = (d.node("up"), d.node("gone"), d.node("ghost"));
    let _up = d.client(&up, &[]);
    // Known to the registry (its first heartbeat stored), then stopped.
    let mut g = d.client(&gone, &[]);
    d.wait_document(&gone, 20, |doc| doc["last_seen"].is_string());
    g.stop();
    let wait = |node: &str, command: &str, timeout: &str| {
        d.runner(&[
            "-x",
            command,
            "-n",
            node,
            "--wait",
            "--timeout",
            timeout,
            "--json",
        ])
    };

    let out = wait(&up, "hello", "20s");
    assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
    assert_eq!(
        summary(&out)["answered"],
        serde_json::json!([up]),
        "{bus:?}"
    );

    let out = wait(&up, "failing", "20s");
    assert_eq!(out.status.code(), Some(1), "{bus:?}: {}", text(&out));
    assert!(
        summary(&out)["errors"].get(&up).is_some(),
        "{bus:?}: {}",
        text(&out)
    );

    let out = wait(&gone, "hello", "3s");
    assert_eq!(out.status.code(), Some(3), "{bus:?}: {}", text(&out));
    let s = summary(&out);
    assert_eq!(s["silent"], serde_json::json!([gone]), "{bus:?}: {s}");
    assert_eq!(s["unroutable"], serde_json::json!([]), "{bus:?}: {s}");

    // On NATS the servers' registry tells, and each server must answer it right. The
    // oldest pull on the `servers` consumer takes every question until it expires (30 s),
    // and under load the other server's turn can be a moment each cycle: so the first
    // server seen answering is stopped, and the question asked again until the other has
    // answered it alone. A question the stopped server's pull still took goes unanswered
    // (the runner says so); only those rounds are let through.
    let answers = |p: &Proc| p.log_text().matches("answered a discovery request").count();
    let mut servers = servers;
    let mut stopped = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for round in 1.. {
        let before: Vec<usize> = servers.iter().map(answers).collect();
        let out = wait(&ghost, "hello", "3s");
        let unanswered = text(&out).contains("no vogeler-server answered");
        if !(stopped && unanswered) {
            assert_eq!(out.status.code(), Some(3), "{bus:?}: {}", text(&out));
            let s = summary(&out);
            assert_eq!(s["unroutable"], serde_json::json!([ghost]), "{bus:?}: {s}");
            assert_eq!(s["silent"], serde_json::json!([]), "{bus:?}: {s}");
        }
        if bus == Bus::Rabbit || servers.len() == 1 || (stopped && !unanswered) {
            eprintln!("{bus:?}: the unknown node asked about {round} times");
            break;
        }
        if !stopped {
            if let Some(i) = (0..servers.len()).find(|&i| answers(&servers[i]) > before[i]) {
                servers[i].stop();
                stopped = true;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{bus:?}: the second server did not answer a registry question alone in {round} runs"
        );
    }

    let out = wait(&format!("{}-nobody*", d.id), "hello", "3s");
    assert_eq!(out.status.code(), Some(3), "{bus:?}: {}", text(&out));
    assert_eq!(summary(&out)["no_match"], true, "{bus:?}: {}", text(&out));
}

#[test]
fn runner_wait_exit_codes_on_rabbitmq() {
    runner_wait_exit_codes(Bus::Rabbit, 1);
}

#[test]
fn runner_wait_exit_codes_on_nats() {
    runner_wait_exit_codes(Bus::Nats, 1);
}

/// Two servers on NATS: whichever answers the registry question, a node no client ever
/// ran is still unroutable (exit 3), and a silent known one still silent.
#[test]
fn runner_wait_exit_codes_on_nats_with_two_servers() {
    runner_wait_exit_codes(Bus::Nats, 2);
}
