//! The programs' less travelled paths over the real RabbitMQ: admin queries and set-up,
//! `--oneshot`, the 2010 wire emitted, expired and unsafe requests, plugin reload.

mod common;

use std::time::Duration;

use common::*;

fn plugins() -> Vec<(String, String)> {
    vec![
        cat_plugin("facter", "facter-y.yaml", "yaml"),
        plugin("hello", "echo hello", "output"),
    ]
}

fn refs(p: &[(String, String)]) -> Vec<(&str, String)> {
    p.iter().map(|(n, b)| (n.as_str(), b.clone())).collect()
}

#[test]
fn admin_lists_nodes_shows_documents_and_keys() {
    let p = plugins();
    let d = Deployment::new(&refs(&p));
    let _server = d.server(&[]);
    let n = d.node("db01");
    let _c = d.client(&n, &[]);
    let out = d.runner(&["-x", "get_facter", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "alias works: {}", text(&out));

    let out = d.admin(&["node"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&n) && text(&out).contains("facter"),
        "{}",
        text(&out)
    );

    let out = d.admin(&["node", &n, "facter.os.family"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"Debian\"");

    let out = d.admin(&["node", "no-such-node"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).contains("no-such-node"), "{}", text(&out));

    let out = d.admin(&["node", &n, "facter.nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).contains("facter.nope"), "{}", text(&out));

    let out = d.admin(&["queue", "--status"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("{}.master.in", d.id)) && t.contains(&n),
        "{t}"
    );
}

#[test]
fn setup_messaging_prints_rabbitmqctl_lines_and_declares() {
    let d = Deployment::new(&[]);
    let out = d.admin(&["setup", "--messaging"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    let vhost = common::vhost();
    assert!(t.contains(&format!("rabbitmqctl add_vhost {vhost}")), "{t}");
    assert!(
        t.contains(&format!(
            "rabbitmqctl set_permissions -p {vhost} guest '.*' '.*' '.*'"
        )),
        "{t}"
    );
    let out = d.admin(&["queue", "--exists", &format!("{}.master.in", d.id)]);
    assert!(
        out.status.success(),
        "setup declared master.in: {}",
        text(&out)
    );
    let out = d.admin(&["setup", "--persistence"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.db.exists(), "setup --persistence created the SQLite file");
}

#[test]
fn oneshot_client_exits_after_one_request() {
    let p = plugins();
    let d = Deployment::new(&refs(&p));
    let _server = d.server(&[]);
    let n = d.node("once");
    let mut c = d.client(&n, &["--oneshot"]);
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = c.child.try_wait() {
            assert!(status.success(), "{}", c.log_text());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "--oneshot client still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn legacy_wire_client_emits_the_2010_result_shape() {
    let p = plugins();
    let d = Deployment::new(&refs(&p));
    d.write_conf("wire = legacy\n");
    let t = d.topology();
    // Stand in for a 2010 server: a queue of our own on the master exchange.
    let tap = format!("{}.tap", d.id);
    rt().block_on(async {
        let s = broker().connect().await.expect("connect");
        s.declare_exchanges(&t).await.expect("exchanges");
        s.declare_queue(&tap, &t.master_exchange, &[""])
            .await
            .expect("tap queue");
        s.close().await;
    });
    let n = d.node("py");
    let _c = d.client(&n, &[]);
    let out = d.runner(&["-x", "hello", "-n", &n]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.is_empty() && std::time::Instant::now() < deadline {
        got = drain_queue(&tap, Duration::from_millis(500));
    }
    assert_eq!(got.len(), 1);
    let body = String::from_utf8(got[0].body.clone()).expect("utf-8");
    assert_eq!(
        body,
        format!("{{\"syskey\": \"{n}\", \"hello\": \"hello\\n\", \"format\": \"output\"}}")
    );
}

#[test]
fn expired_and_unsafe_requests_are_refused_with_an_error_result() {
    let p = plugins();
    let d = Deployment::new(&refs(&p));
    let _server = d.server(&[]);
    let t = d.topology();
    let n = d.node("guarded");
    let _c = d.client(&n, &[]);
    // A request sent an hour ago with a one-minute ttl (published raw: the broker's own
    // expiration would drop it before the client could say so).
    let stale = serde_json::json!({
        "v": 1, "kind": "request", "id": "old-1", "command": "hello", "targets": [n],
        "sender": "test", "sent_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
        "ttl": 60
    });
    publish_raw(
        &t.broadcast_exchange,
        &n,
        &[serde_json::to_vec(&stale).expect("json")],
    );
    let doc = d.wait_document(&n, 20, |doc| doc["last_error"].is_object());
    assert!(
        doc["last_error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{doc}"
    );
    assert!(
        doc.get("hello").is_none(),
        "an expired request must not run"
    );

    let out = d.runner(&[
        "--unsafe",
        "-x",
        "touch /tmp/vogeler-should-not-exist",
        "-n",
        &n,
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--allow-unsafe"), "{}", text(&out));
    assert!(!std::path::Path::new("/tmp/vogeler-should-not-exist").exists());
}

#[test]
fn client_reloads_plugins_when_the_directory_changes() {
    let p = plugins();
    let d = Deployment::new(&refs(&p));
    let _server = d.server(&[]);
    let n = d.node("reload");
    let c = d.client(&n, &[]);
    let (name, body) = plugin("added", "echo added later", "output");
    std::fs::write(d.plugins.join(name), body).expect("write plugin");
    // The client polls the directory every 2 s; allow a generous margin.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.runner(&["-x", "added", "-n", &n, "--wait", "--timeout", "10s"]);
        if out.status.code() == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "plugin never reloaded: {}\n{}",
            text(&out),
            c.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let doc = d.wait_document(&n, 20, |doc| doc.get("added").is_some());
    assert_eq!(doc["added"][0], "added later");
}

#[test]
fn dead_letters_are_listed_with_reasons_and_requeued_after_a_fix() {
    let d = Deployment::new(&[]);
    // A limit too small for the result below: it is dead-lettered as too large.
    d.write_conf("\n[server]\nmax_message_bytes = 200\n");
    let mut server = d.server(&[]);
    let t = d.topology();
    let node = d.node("big");
    let body = format!(
        r#"{{"v":1,"kind":"result","node":"{node}","plugin":"hello","format":"output","data":["{}"],"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"}}"#,
        "x".repeat(400)
    );
    publish_raw(
        &t.master_exchange,
        "",
        &[body.into_bytes(), b"not json".to_vec()],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let out = d.admin(&["dead", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if rows.as_array().is_some_and(|a| a.len() == 2) || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let reasons: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"too-large") && reasons.contains(&"not-json"),
        "{listed}"
    );
    // Listing leaves them where they are.
    let again = d.admin(&["dead", "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again.as_array().map(|a| a.len()), Some(2));

    // The fix: a larger limit. Requeue: the big result is stored, the garbage comes back dead.
    server.stop();
    d.write_conf("");
    let _server = d.server(&[]);
    let out = d.admin(&["dead", "--requeue"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc = d.wait_document(&node, 20, |doc| doc.get("hello").is_some());
    assert_eq!(doc["hello"][0].as_str().map(str::len), Some(400));
}

/// `[amqp] queue_type = quorum`: master.in and the dead-letter queue are declared as
/// quorum queues (what a RabbitMQ cluster replicates), results flow through them, and a
/// bad value names its line.
#[test]
fn quorum_queue_type_declares_replicated_queues() {
    let p = plugins();
    let d = Deployment::new(&refs(&p));
    d.write_conf("queue_type = quorum\n");
    let server = d.server(&[]);
    let master = format!("{}.master.in", d.id);
    d.wait_for_queue(&master, &server);
    let n = d.node("q1");
    let _c = d.client(&n, &[]);
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "-p", &common::vhost()])
        .args(["--no-table-headers", "name", "type"])
        .output()
        .expect("rabbitmqctl");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let type_of = |q: &str| {
        listed
            .lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(q)).then(|| parts.next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| panic!("{q} not listed:\n{listed}"))
    };
    assert_eq!(type_of(&master), "quorum");
    assert_eq!(type_of(&format!("{}.dead", d.id)), "quorum");
    assert_eq!(type_of(&n), "classic", "node queues stay classic");

    d.write_conf("queue_type = raft\n");
    let out = d.admin(&["queue", "--status"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("queue_type") && t.contains("raft"), "{t}");
}

/// The README's first command, `scripts/demo.sh`, as a user runs it, but with this suite's
/// programs, vhost and a directory of its own: a server on SQLite, a client on this host, a
/// broadcast of both default plugins, and the stored record printed and readable after.
#[test]
fn the_readmes_first_command_stores_and_shows_this_hosts_record() {
    require_rabbitmq();
    let dir = tempfile::tempdir().expect("tempdir");
    let programs = bin("server")
        .parent()
        .expect("programs' directory")
        .to_path_buf();
    let out = std::process::Command::new(repo().join("scripts/demo.sh"))
        .env("VOGELER_DEMO_BIN", &programs)
        .env("VOGELER_DEMO_AMQP", amqp())
        .env("VOGELER_DEMO_DIR", dir.path())
        .output()
        .expect("run scripts/demo.sh");
    assert!(out.status.success(), "{}", text(&out));
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let node = node.trim();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("os_release") && shown.contains("facter"),
        "the demo prints the record with both plugins: {}",
        text(&out)
    );
    let conf = dir.path().join("vogeler.conf");
    for key in ["facter.os.family", "os_release.ID"] {
        let read = std::process::Command::new(bin("admin"))
            .arg("-c")
            .arg(&conf)
            .args(["node", node, key])
            .output()
            .expect("vogeler-admin");
        assert!(
            read.status.success() && !read.stdout.is_empty(),
            "{key} of {node} is stored: {}\n--- the demo\n{}",
            text(&read),
            text(&out)
        );
    }
}
