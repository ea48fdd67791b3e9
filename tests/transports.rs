//! The programs' main paths once per broker: the same test body runs over RabbitMQ and
//! over NATS with JetStream (`Bus`, a parameter of the deployment), against the shared
//! brokers on loopback, each deployment under its own names (vhost exchanges and queues,
//! or a NATS subject prefix).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use vogeler_transport::Outgoing;

fn plugins() -> Vec<(String, String)> {
    vec![
        cat_plugin("facter", "facter-y.yaml", "yaml"),
        plugin("hello", "echo hello", "output"),
    ]
}

fn refs(p: &[(String, String)]) -> Vec<(&str, String)> {
    p.iter().map(|(n, b)| (n.as_str(), b.clone())).collect()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

fn names(v: &Value, key: &str) -> BTreeSet<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A v1 result for `node`, as a client publishes it.
fn result_body(node: &str, value: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"kind":"result","node":"{node}","plugin":"hello","format":"output","data":["{value}"],"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"}}"#
    )
    .into_bytes()
}

/// The dead letters `queue --status` counts (the same row on both brokers).
fn dead_letters_waiting(d: &Deployment) -> Option<u64> {
    let status = json(&d.admin(&["queue", "--status", "--json"]));
    status["queues"]
        .as_array()?
        .iter()
        .find(|r| r["role"] == "dead letters")?["messages"]
        .as_u64()
}

fn broadcast_one_node_ping_and_filters(bus: Bus) {
    let p = plugins();
    let d = Deployment::on(bus, &refs(&p));
    let _server = d.server(&[]);
    let (a, b) = (d.node("web1"), d.node("db1"));
    let _ca = d.client(&a, &[]);
    let _cb = d.client(&b, &[]);
    let want: BTreeSet<String> = [a.clone(), b.clone()].into();

    // Both clients heartbeat at start, so `-n all --wait` knows whom to wait for.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.admin(&["node", "--names"]);
        let seen: BTreeSet<String> = text(&out).lines().map(str::to_string).collect();
        if want.is_subset(&seen) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeats never stored: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = d.runner(&[
        "-x",
        "facter",
        "-n",
        "all",
        "--wait",
        "--timeout",
        "30s",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{bus:?} broadcast: {}",
        text(&out)
    );
    let s = json(&out);
    assert_eq!(names(&s, "answered"), want, "{bus:?}: {s}");
    assert!(names(&s, "silent").is_empty(), "{bus:?}: {s}");

    // One node, with the value printed.
    let out = d.runner(&["-x", "hello", "-n", &a, "--output"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{bus:?} one node: {}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("{a}: [\"hello\"]")),
        "{bus:?}: {}",
        text(&out)
    );
    let doc = d.wait_document(&b, 10, |doc| doc.get("facter").is_some());
    assert!(
        doc.get("hello").is_none(),
        "{bus:?}: the one-node request reached {b}"
    );

    // Discovery: -W asks the server, --ping asks the clients.
    let out = d.runner(&[
        "-x",
        "hello",
        "-W",
        "facter.os.family=Debian",
        "-n",
        &format!("{}-web*", d.id),
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{bus:?} -W: {}", text(&out));
    assert_eq!(
        names(&json(&out), "answered"),
        [a.clone()].into(),
        "{bus:?}"
    );
    let out = d.runner(&["--ping", "--json", "-x", "hello"]);
    assert!(out.status.success(), "{bus:?} --ping: {}", text(&out));
    let pinged = text(&out);
    assert!(
        pinged.contains(&a) && pinged.contains(&b),
        "{bus:?}: {pinged}"
    );
}

#[test]
fn broadcast_one_node_ping_and_filters_on_rabbitmq() {
    broadcast_one_node_ping_and_filters(Bus::Rabbit);
}

#[test]
fn broadcast_one_node_ping_and_filters_on_nats() {
    broadcast_one_node_ping_and_filters(Bus::Nats);
}

fn a_client_that_was_down_runs_what_was_sent_meanwhile(bus: Bus) {
    let p = plugins();
    let d = Deployment::on(bus, &refs(&p));
    let _server = d.server(&[]);
    let n = d.node("laptop");
    let mut c = d.client(&n, &[]);
    let out = d.runner(&["-x", "facter", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
    let status = c.stop();
    assert!(status.success(), "{bus:?}: client exit {status:?}");
    // Sent while the client is down: it runs when the client is back.
    let out = d.runner(&["-x", "hello", "-n", &n]);
    assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
    std::thread::sleep(Duration::from_secs(1));
    let _again = d.client(&n, &[]);
    let doc = d.wait_document(&n, 20, |doc| doc.get("hello").is_some());
    assert_eq!(doc["hello"], serde_json::json!(["hello"]), "{bus:?}: {doc}");
}

#[test]
fn a_client_that_was_down_runs_what_was_sent_meanwhile_on_rabbitmq() {
    a_client_that_was_down_runs_what_was_sent_meanwhile(Bus::Rabbit);
}

#[test]
fn a_client_that_was_down_runs_what_was_sent_meanwhile_on_nats() {
    a_client_that_was_down_runs_what_was_sent_meanwhile(Bus::Nats);
}

/// The `key` of each row a JSON table printed (history, changes).
fn keys_of(out: &std::process::Output) -> Vec<String> {
    json(out)
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A volatile plugin (`history = false` in its file) through a real client and server:
/// every run replaces the stored value, and neither the node's history nor `changes`
/// records it, while an ordinary plugin's first value is recorded.
fn a_volatile_plugin_keeps_only_its_current_value(bus: Bus) {
    let mut p = plugins();
    p.push((
        "clock.cfg".into(),
        "[clock]\nname = clock\ndescription = a value that changes every run\ncommand = date +%s%N\nresult_format = output\nhistory = false\n".into(),
    ));
    let d = Deployment::on(bus, &refs(&p));
    let _server = d.server(&[]);
    let n = d.node("volatile");
    let _client = d.client(&n, &[]);
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
    let mut values = BTreeSet::new();
    for _ in 0..3 {
        let out = d.runner(&["-x", "clock", "-n", &n, "--wait", "--timeout", "20s"]);
        assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
        let doc = d.read_document(&n).expect("document");
        values.insert(doc["clock"].to_string());
    }
    assert_eq!(
        values.len(),
        3,
        "{bus:?}: each run stored its value: {values:?}"
    );
    let history = d.admin(&["history", &n, "--format", "json"]);
    assert!(history.status.success(), "{bus:?}: {}", text(&history));
    let keys = keys_of(&history);
    assert!(keys.contains(&"hello".to_string()), "{bus:?}: {keys:?}");
    assert!(!keys.contains(&"clock".to_string()), "{bus:?}: {keys:?}");
    let changes = d.admin(&[
        "report", "changes", "--since", "1h", "-n", &n, "--format", "json",
    ]);
    assert!(changes.status.success(), "{bus:?}: {}", text(&changes));
    let keys = keys_of(&changes);
    assert!(keys.contains(&"hello".to_string()), "{bus:?}: {keys:?}");
    assert!(!keys.contains(&"clock".to_string()), "{bus:?}: {keys:?}");
}

#[test]
fn a_volatile_plugin_keeps_only_its_current_value_on_rabbitmq() {
    a_volatile_plugin_keeps_only_its_current_value(Bus::Rabbit);
}

#[test]
fn a_volatile_plugin_keeps_only_its_current_value_on_nats() {
    a_volatile_plugin_keeps_only_its_current_value(Bus::Nats);
}

fn dead_letters_are_listed_kept_and_requeued(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    let server = d.server(&[]);
    let good = d.node("good");
    d.publish_results(vec![
        Outgoing::new(b"{not json".to_vec()),
        Outgoing::new(result_body(&good, "fine")),
    ]);
    d.wait_document(&good, 20, |doc| doc.get("hello").is_some());
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let out = d.admin(&["dead", "--json"]);
        assert!(out.status.success(), "{bus:?}: {}", text(&out));
        let rows = json(&out);
        if rows.as_array().is_some_and(|a| !a.is_empty()) || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{bus:?}: {rows:?}\n{}", server.log_text());
    assert!(
        rows[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{bus:?}: a dead letter carries its reason: {rows:?}"
    );
    // Listing keeps them: a second look finds the same one.
    let again = json(&d.admin(&["dead", "--json"]));
    assert_eq!(
        again.as_array().map(Vec::len),
        Some(1),
        "{bus:?}: {again}; {}",
        text(&d.admin(&["queue", "--status", "--json"]))
    );
    assert_eq!(dead_letters_waiting(&d), Some(1), "{bus:?}");
    // Requeued, it goes through a server again and, still malformed, comes back.
    let out = d.admin(&["dead", "--requeue", "--json"]);
    assert!(out.status.success(), "{bus:?}: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let back = json(&d.admin(&["dead", "--json"]));
        if back.as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bus:?}: never came back: {back}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn dead_letters_are_listed_kept_and_requeued_on_rabbitmq() {
    dead_letters_are_listed_kept_and_requeued(Bus::Rabbit);
}

#[test]
fn dead_letters_are_listed_kept_and_requeued_on_nats() {
    dead_letters_are_listed_kept_and_requeued(Bus::Nats);
}

fn a_killed_server_loses_nothing(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    let prefix = d.node("k");
    let total = 3000;
    let bodies: Vec<Outgoing> = (0..total)
        .map(|i| Outgoing::new(result_body(&format!("{prefix}{i:05}"), "x")))
        .collect();
    d.publish_results(bodies);
    let mut first = d.server(&[]);
    // Killed mid-ingest (or after; either way nothing may be lost).
    std::thread::sleep(Duration::from_millis(300));
    first.kill();
    let _second = d.server(&[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.admin(&["node", "--names"]);
        let stored = text(&out)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count();
        if stored == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bus:?}: {stored} of {total} stored after a server was killed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(dead_letters_waiting(&d), Some(0), "{bus:?}");
}

#[test]
fn a_killed_server_loses_nothing_on_rabbitmq() {
    a_killed_server_loses_nothing(Bus::Rabbit);
}

#[test]
fn a_killed_server_loses_nothing_on_nats() {
    a_killed_server_loses_nothing(Bus::Nats);
}

/// A request whose ttl runs out while its client is down is never run (RabbitMQ drops it
/// by its expiration, a NATS client by the header and the request's own ttl), while one
/// sent at the same time with a longer ttl runs when the client is back.
fn a_request_that_expires_while_the_client_is_down_is_not_run(bus: Bus) {
    let mut p = plugins();
    let d = Deployment::on(bus, &[]);
    let counter = d.path("count.txt");
    p.push(plugin(
        "count",
        &format!("sh -c 'echo run >> {} && echo ok'", counter.display()),
        "output",
    ));
    for (name, body) in &p {
        std::fs::write(d.plugins.join(name), body).expect("plugin file");
    }
    let _server = d.server(&[]);
    let n = d.node("away");
    let mut c = d.client(&n, &[]);
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
    let status = c.stop();
    assert!(status.success(), "{bus:?}: client exit {status:?}");
    let out = d.runner(&["-x", "count", "-n", &n, "--ttl", "2"]);
    assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
    let out = d.runner(&["-x", "facter", "-n", &n, "--ttl", "300"]);
    assert_eq!(out.status.code(), Some(0), "{bus:?}: {}", text(&out));
    // Well past the short ttl (seconds of margin) before the client is back.
    std::thread::sleep(Duration::from_secs(5));
    let c = d.client(&n, &[]);
    d.wait_document(&n, 20, |doc| doc.get("facter").is_some());
    // The expired one was sent first: a run of it would be done by now, give it margin.
    std::thread::sleep(Duration::from_secs(2));
    let runs = std::fs::read_to_string(&counter).unwrap_or_default();
    assert_eq!(
        runs.lines().count(),
        0,
        "{bus:?}: the expired request ran: {runs:?}\n{}",
        c.log_text()
    );
    let doc = d.read_document(&n).expect("document");
    assert!(doc.get("count").is_none(), "{bus:?}: {doc}");
}

#[test]
fn a_request_that_expires_while_the_client_is_down_is_not_run_on_rabbitmq() {
    a_request_that_expires_while_the_client_is_down_is_not_run(Bus::Rabbit);
}

#[test]
fn a_request_that_expires_while_the_client_is_down_is_not_run_on_nats() {
    a_request_that_expires_while_the_client_is_down_is_not_run(Bus::Nats);
}
