//! End to end over the real brokers: server, clients and runner as real processes,
//! each test with its own exchange, queue and node names (or NATS subject prefix) and
//! its own SQLite file; the bodies that cross the broker run once on RabbitMQ and once
//! on NATS JetStream.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use vogeler_transport::Outgoing;

fn facter_plugins() -> Vec<(String, String)> {
    vec![
        cat_plugin("facter", "facter-y.yaml", "yaml"),
        cat_plugin("ohai", "ohai.json", "json"),
        plugin("hello", "echo hello world", "output"),
        plugin("failing", "false", "output"),
    ]
}

/// A plugin `counted` (answers "hello world") that counts its runs in a file of its own.
struct Counted {
    dir: tempfile::TempDir,
    plugin: (String, String),
}

impl Counted {
    fn new() -> Counted {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("runs");
        let plugin = plugin(
            "counted",
            &format!("sh -c 'echo run >> {}; echo hello world'", file.display()),
            "output",
        );
        Counted { dir, plugin }
    }

    /// How many times it has run.
    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn plugins_ref(p: &[(String, String)]) -> Vec<(&str, String)> {
    p.iter().map(|(n, b)| (n.as_str(), b.clone())).collect()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn broadcast_reaches_every_client_and_targeted_only_one(bus: Bus) {
    let p = facter_plugins();
    let d = Deployment::on(bus, &plugins_ref(&p));
    let _server = d.server(&[]);
    let (a, b) = (d.node("web01"), d.node("web02"));
    let _ca = d.client(&a, &[]);
    let _cb = d.client(&b, &[]);

    let out = d.runner(&["-x", "facter", "-n", "all", "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // A result larger than one frame (ohai: 108 KB) travels whole.
    let out = d.runner(&["-x", "ohai", "-n", "all", "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    for n in [&a, &b] {
        let doc = d.wait_document(n, 20, |doc| {
            doc.get("facter").is_some() && doc.get("ohai").is_some()
        });
        assert_eq!(doc["facter"]["os"]["family"], "Debian");
        assert_eq!(doc["ohai"]["platform"], "debian");
        assert_eq!(doc["system_name"], Value::String(n.clone()));
        assert!(doc["created_at"].is_string() && doc["updated_at"].is_string());
    }

    // Targeted: only web02 runs `hello` (by name; aliases are covered elsewhere).
    let out = d.runner(&["-x", "hello", "-n", &b, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc_b = d.wait_document(&b, 20, |doc| doc.get("hello").is_some());
    assert_eq!(doc_b["hello"], serde_json::json!(["hello world"]));
    std::thread::sleep(Duration::from_secs(1));
    let doc_a = d.document(&a).expect("web01 stored");
    assert!(
        doc_a.get("hello").is_none(),
        "web01 must not have run a targeted request"
    );
}

#[test]
fn broadcast_reaches_every_client_and_targeted_only_one_on_rabbitmq() {
    broadcast_reaches_every_client_and_targeted_only_one(Bus::Rabbit);
}

#[test]
fn broadcast_reaches_every_client_and_targeted_only_one_on_nats() {
    broadcast_reaches_every_client_and_targeted_only_one(Bus::Nats);
}

fn unroutable_node_exits_3_and_errors_exit_1(bus: Bus) {
    let p = facter_plugins();
    let d = Deployment::on(bus, &plugins_ref(&p));
    let _server = d.server(&[]);
    let n = d.node("db01");
    let _c = d.client(&n, &[]);

    let out = d.runner(&["-x", "facter", "-n", &d.node("never-started")]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("unroutable"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("sent to 0 node(s)"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("follow with: vogeler-admin requests "),
        "{}",
        stdout(&out)
    );

    // Waiting on a known node and one nobody knows: the known one answers, the other is
    // unroutable (RabbitMQ: no queue; NATS: no server ever heard from it), never silent.
    let ghost = d.node("ghost");
    let out = d.runner(&[
        "-x",
        "hello",
        "-n",
        &format!("{n},{ghost}"),
        "--wait",
        "--timeout",
        "5s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{bus:?}: {}", stdout(&out));
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{bus:?}: not JSON ({e}): {}", stdout(&out)));
    assert_eq!(
        summary["answered"],
        serde_json::json!([n]),
        "{bus:?}: {summary}"
    );
    assert_eq!(
        summary["unroutable"],
        serde_json::json!([ghost]),
        "{bus:?}: {summary}"
    );
    assert_eq!(
        summary["silent"],
        serde_json::json!([]),
        "{bus:?}: {summary}"
    );
    assert_eq!(
        summary["discovered"],
        serde_json::json!([n]),
        "{bus:?}: {summary}"
    );
    let out = d.runner(&["-x", "hello", "-n", &ghost, "--wait", "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(3), "{bus:?}: {}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("unroutable  {ghost} (")),
        "{bus:?}: {}",
        stdout(&out)
    );

    // A failing plugin and an unauthorized command are error results, not silence.
    let out = d.runner(&["-x", "failing", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let out = d.runner(&["-x", "rm -rf /", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("not authorized"), "{}", stdout(&out));
    let doc = d.wait_document(&n, 20, |doc| doc["last_error"].is_object());
    assert!(doc["last_error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("not authorized"));
}

#[test]
fn unroutable_node_exits_3_and_errors_exit_1_on_rabbitmq() {
    unroutable_node_exits_3_and_errors_exit_1(Bus::Rabbit);
}

#[test]
fn unroutable_node_exits_3_and_errors_exit_1_on_nats() {
    unroutable_node_exits_3_and_errors_exit_1(Bus::Nats);
}

fn client_started_after_the_request_still_runs_it(bus: Bus) {
    let p = facter_plugins();
    let d = Deployment::on(bus, &plugins_ref(&p));
    let _server = d.server(&[]);
    let n = d.node("late");
    // Start once so the durable queue exists, then stop it.
    let mut c = d.client(&n, &[]);
    c.stop();
    let out = d.runner(&["-x", "hello", "-n", &n]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let _c = d.client(&n, &[]);
    let doc = d.wait_document(&n, 20, |doc| doc.get("hello").is_some());
    assert_eq!(doc["hello"][0], "hello world");
}

#[test]
fn client_started_after_the_request_still_runs_it_on_rabbitmq() {
    client_started_after_the_request_still_runs_it(Bus::Rabbit);
}

#[test]
fn client_started_after_the_request_still_runs_it_on_nats() {
    client_started_after_the_request_still_runs_it(Bus::Nats);
}

fn results_wait_in_the_broker_while_the_server_is_down(bus: Bus) {
    let p = facter_plugins();
    let d = Deployment::on(bus, &plugins_ref(&p));
    // The server declares master.in; start and stop it so results queue up.
    let mut server = d.server(&[]);
    let nodes: Vec<String> = (0..3).map(|i| d.node(&format!("n{i}"))).collect();
    let _clients: Vec<Proc> = nodes.iter().map(|n| d.client(n, &[])).collect();
    server.stop();
    let out = d.runner(&["-x", "facter", "-n", "all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    std::thread::sleep(Duration::from_secs(2));
    let _server = d.server(&[]);
    for n in &nodes {
        d.wait_document(n, 30, |doc| doc["facter"]["os"]["family"] == "Debian");
    }
}

#[test]
fn results_wait_in_the_broker_while_the_server_is_down_on_rabbitmq() {
    results_wait_in_the_broker_while_the_server_is_down(Bus::Rabbit);
}

#[test]
fn results_wait_in_the_broker_while_the_server_is_down_on_nats() {
    results_wait_in_the_broker_while_the_server_is_down(Bus::Nats);
}

/// A broker no server has declared its queue on yet (clients started first, `setup`
/// not run): a client's answers are not lost. RabbitMQ would have dropped them (nothing
/// bound) and confirmed them all the same: they are refused, and the client sends the
/// same answer again, with growing pauses, until a server is there (the plugin runs
/// once); NATS keeps them in its stream.
fn results_sent_before_any_server_are_not_lost(bus: Bus) {
    let counted = Counted::new();
    let mut p = facter_plugins();
    p.push(counted.plugin.clone());
    let d = Deployment::on(bus, &plugins_ref(&p));
    let n = d.node("early");
    let client = d.client(&n, &["--heartbeat-interval", "1"]);
    let out = d.runner(&["-x", "counted", "-n", &n]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    std::thread::sleep(Duration::from_secs(2));
    let _server = d.server(&[]);
    let doc = d.wait_document(&n, 40, |doc| doc.get("counted").is_some());
    assert_eq!(doc["counted"][0], "hello world");
    let log = client.log_text();
    if bus == Bus::Rabbit {
        assert!(log.contains("no server queue is bound"), "{log}");
    }
    assert_eq!(counted.runs(), 1, "{bus:?}: the plugin ran once: {log}");
}

/// Two copies of one 2010 broadcast (a bare command: the same bytes) before any server:
/// each keeps its own refused answer, so the plugin runs once per copy, not once more at
/// every reconnect until a server exists.
#[test]
fn identical_2010_broadcasts_before_any_server_run_once_each() {
    let counted = Counted::new();
    let (file, body) = &counted.plugin;
    let d = Deployment::on(Bus::Rabbit, &[(file.as_str(), body.clone())]);
    let n = d.node("legacy-early");
    let client = d.client(&n, &[]);
    d.wait_for_queue(&n, &client);
    let request = br#""counted""#.to_vec();
    publish_raw(
        &d.topology().broadcast_exchange,
        "broadcasts.*",
        &[request.clone(), request],
    );
    std::thread::sleep(Duration::from_secs(3));
    let _server = d.server(&[]);
    d.wait_document(&n, 40, |doc| doc.get("counted").is_some());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(counted.runs(), 2, "once per copy: {}", client.log_text());
}

#[test]
fn results_sent_before_any_server_are_not_lost_on_rabbitmq() {
    results_sent_before_any_server_are_not_lost(Bus::Rabbit);
}

#[test]
fn results_sent_before_any_server_are_not_lost_on_nats() {
    results_sent_before_any_server_are_not_lost(Bus::Nats);
}

fn poison_messages_are_dead_lettered_and_good_ones_stored(bus: Bus) {
    let p = facter_plugins();
    let d = Deployment::on(bus, &plugins_ref(&p));
    let _server = d.server(&[]);
    let good = |node: &str| {
        format!(
            r#"{{"v":1,"kind":"result","node":"{node}","plugin":"hello","format":"output","data":["hi"],"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"}}"#
        )
        .into_bytes()
    };
    let bodies = vec![
        good(&d.node("g1")),
        b"not json at all".to_vec(),
        vec![0xff, 0xfe, 0x00],
        br#"{"v":2,"kind":"result"}"#.to_vec(),
        br#"{"v":1,"kind":"bogus"}"#.to_vec(),
        br#"{"unknown":"shape"}"#.to_vec(),
        good(&d.node("g2")),
        br#"{"v":1,"kind":"result","node":"x","plugin":"created_at","format":"json","data":1,"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"}"#.to_vec(),
        good(&d.node("g3")),
    ];
    d.publish_results(bodies.into_iter().map(Outgoing::new).collect());
    for g in ["g1", "g2", "g3"] {
        let doc = d.wait_document(&d.node(g), 20, |doc| doc.get("hello").is_some());
        assert_eq!(doc["hello"], serde_json::json!(["hi"]));
    }
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dead.len() < 6 && std::time::Instant::now() < deadline {
        dead.extend(d.take_dead_letters(Duration::from_millis(500)));
    }
    assert_eq!(dead.len(), 6, "{bus:?}: six poison messages dead-lettered");
    for m in &dead {
        let reason = m.header("x-vogeler-reason").unwrap_or_default();
        assert!(!reason.is_empty(), "dead letter without a reason");
    }
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|m| m.header("x-vogeler-reason"))
        .collect();
    for want in [
        "not-json",
        "bad-utf8",
        "unknown-version",
        "unknown-kind",
        "refused",
    ] {
        assert!(
            reasons.contains(&want),
            "missing reason {want} in {reasons:?}"
        );
    }
}

#[test]
fn poison_messages_are_dead_lettered_and_good_ones_stored_on_rabbitmq() {
    poison_messages_are_dead_lettered_and_good_ones_stored(Bus::Rabbit);
}

#[test]
fn poison_messages_are_dead_lettered_and_good_ones_stored_on_nats() {
    poison_messages_are_dead_lettered_and_good_ones_stored(Bus::Nats);
}

fn legacy_wire_messages_work_byte_for_byte(bus: Bus) {
    let p = facter_plugins();
    let d = Deployment::on(bus, &plugins_ref(&p));
    let _server = d.server(&[]);
    // 2010 results (node web01 in the fixtures) land in the store, parsed per format.
    let bodies: Vec<Vec<u8>> = ["result-yaml.json", "result-json.json", "result-output.json"]
        .iter()
        .map(|f| std::fs::read(fixture(&format!("legacy-wire/{f}"))).expect("fixture"))
        .collect();
    // web01 is shared by name between tests on this broker only in the store, which is ours.
    d.publish_results(bodies.into_iter().map(Outgoing::new).collect());
    let doc = d.wait_document("web01", 20, |doc| {
        doc.get("facter").is_some() && doc.get("ohai").is_some() && doc.get("rpm").is_some()
    });
    assert_eq!(doc["facter"]["os"]["family"], "Debian");
    assert_eq!(doc["ohai"]["platform"], "debian");
    assert_eq!(
        doc["rpm"],
        serde_json::json!(["openssl-3.0.11-1", "bash-5.2.15-2"])
    );
    d.publish_results(vec![Outgoing::new(
        std::fs::read(fixture("legacy-wire/result-error.json")).expect("fixture"),
    )]);
    d.wait_document("web01", 20, |doc| {
        doc["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not authorized"))
    });

    // A 2010 runner's request (a bare JSON string, routing key broadcasts.* on AMQP; a
    // broadcast on NATS) is answered.
    let n = d.node("legacy");
    let _c = d.client(&n, &[]);
    let request = std::fs::read(fixture("legacy-wire/request-broadcast.json")).expect("fixture");
    match bus {
        Bus::Rabbit => publish_raw(&d.topology().broadcast_exchange, "broadcasts.*", &[request]),
        Bus::Nats => d.publish_requests(None, vec![Outgoing::new(request)]),
    }
    d.wait_document(&n, 20, |doc| doc.get("facter").is_some());
}

#[test]
fn legacy_wire_messages_work_byte_for_byte_on_rabbitmq() {
    legacy_wire_messages_work_byte_for_byte(Bus::Rabbit);
}

#[test]
fn legacy_wire_messages_work_byte_for_byte_on_nats() {
    legacy_wire_messages_work_byte_for_byte(Bus::Nats);
}

fn server_killed_mid_ingest_loses_nothing_and_stores_each_result_once(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    let mut server = d.server(&[]);
    server.stop();
    let n = 3000;
    let bodies: Vec<Outgoing> = (0..n)
        .map(|i| {
            format!(
                r#"{{"v":1,"kind":"result","node":"{}-{i:05}","plugin":"hello","format":"output","data":["hi {i}"],"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"}}"#,
                d.id
            )
            .into_bytes()
        })
        .map(Outgoing::new)
        .collect();
    d.publish_results(bodies);
    // Kill the server with SIGKILL while it works through the backlog, then restart it.
    let mut server = d.server(&[]);
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let mut server = d.server(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let count = || {
        let out = d.admin(&["node"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&d.id))
            .count()
    };
    while count() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(count(), n, "{bus:?}: every result stored");
    server.stop();
    // Exactly once: one history entry per node, however often a result was redelivered.
    common::rt().block_on(async {
        let store = vogeler_store::sqlite::SqliteStore::open(&d.db).expect("open store");
        use vogeler_store::Store;
        for i in (0..n).step_by(97) {
            let node = format!("{}-{i:05}", d.id);
            let h = store.history(&node, None).await.expect("history").rows;
            assert_eq!(h.len(), 1, "{node}: {h:?}");
        }
    });
}

#[test]
fn server_killed_mid_ingest_loses_nothing_and_stores_each_result_once_on_rabbitmq() {
    server_killed_mid_ingest_loses_nothing_and_stores_each_result_once(Bus::Rabbit);
}

#[test]
fn server_killed_mid_ingest_loses_nothing_and_stores_each_result_once_on_nats() {
    server_killed_mid_ingest_loses_nothing_and_stores_each_result_once(Bus::Nats);
}
