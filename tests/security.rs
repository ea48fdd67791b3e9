//! Issue 17's security cases over the real binaries and brokers: requests bound to their
//! targets, replays refused across a client restart (both on RabbitMQ and on NATS), future `collected_at` clamped,
//! stale results reported as stale (SQLite and PostgreSQL), unsigned pings ignored
//! with `require_signed`, empty web tokens refused, a child holding a plugin's stdout.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use vogeler_protocol::{Message, Request};
use vogeler_signing::SecretKey;

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn signed_request(command: &str, targets: &[&str]) -> Request {
    Request {
        id: format!("req-{:08x}", rand_u32()),
        command: command.to_string(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        sender: "security-test".into(),
        sent_at: Utc::now(),
        ttl: 300,
        reply_to: None,
        unsafe_command: false,
        want_value: false,
    }
}

/// A plugin that appends a line to `file` each time it runs.
fn counting(d: &Deployment, file: &std::path::Path) {
    std::fs::write(
        d.plugins.join("count.cfg"),
        format!(
            "[count]\nname = count\ndescription = counts its runs\ncommand = sh -c 'echo run >> {} && echo ok'\nresult_format = output\n",
            file.display()
        ),
    )
    .expect("plugin");
}

fn runs(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .count()
}

fn a_signed_request_copied_to_another_node_is_refused_and_a_replay_after_restart_too(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    let counter = d.path("count.txt");
    counting(&d, &counter);
    let key = SecretKey::load(&d.keygen("keys", "runner")).expect("key");
    d.write_conf("\n[client]\ntrusted_keys = keys\n");
    let _server = d.server(&[]);
    let (a, b) = (d.node("a"), d.node("b"));
    let mut client_a = d.client(&a, &[]);
    let _client_b = d.client(&b, &[]);

    // Signed for a, copied into b's queue: refused on b, nothing runs.
    let r = signed_request("count", &[&a]);
    let body = vogeler_protocol::encode(&Message::Request(r.clone()));
    let headers = key.headers(&body);
    d.publish_request(Some(&b), body.clone(), headers.clone());
    d.wait_refusal(&b, &r.id, "not a target");
    assert_eq!(runs(&counter), 0);

    // On a it runs once.
    d.publish_request(Some(&a), body.clone(), headers.clone());
    d.wait_document(&a, 20, |doc| doc["count"][0] == "ok");
    assert_eq!(runs(&counter), 1);

    // a restarts; the same signed message within its ttl is still a replay.
    client_a.stop();
    let _client_a = d.client(&a, &[]);
    d.publish_request(Some(&a), body, headers);
    d.wait_refusal(&a, &r.id, "replayed");
    assert_eq!(runs(&counter), 1, "the replay must not run");
    assert!(d
        .path("state")
        .read_dir()
        .is_ok_and(|mut e| e.next().is_some()));
}

#[test]
fn a_signed_request_copied_to_another_node_is_refused_and_a_replay_after_restart_too_on_rabbitmq() {
    a_signed_request_copied_to_another_node_is_refused_and_a_replay_after_restart_too(Bus::Rabbit);
}

#[test]
fn a_signed_request_copied_to_another_node_is_refused_and_a_replay_after_restart_too_on_nats() {
    a_signed_request_copied_to_another_node_is_refused_and_a_replay_after_restart_too(Bus::Nats);
}

/// Publishes a result for `node`/`plugin` with `collected_at` and waits for the
/// server's `stored` reply (on a private inbox, through the transport seam), as JSON.
fn result_with_reply(
    d: &Deployment,
    node: &str,
    plugin: &str,
    value: &str,
    collected_at: chrono::DateTime<Utc>,
) -> serde_json::Value {
    let c = d.connector();
    rt().block_on(async {
        let t = c.connect().await.expect("connect to the test broker");
        t.declare_sender().await.expect("declare");
        let (q, mut replies) = t.reply_inbox().await.expect("reply inbox");
        let body = format!(
            r#"{{"v":1,"kind":"result","node":"{node}","plugin":"{plugin}","format":"output","data":["{value}"],"duration_ms":1,"collected_at":"{}","reply_to":"{q}"}}"#,
            vogeler_store::rfc3339(collected_at)
        );
        t.publish_result(vogeler_transport::Outgoing::new(body.into_bytes()))
            .await
            .expect("publish");
        let m = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .expect("a stored reply within 20 s")
            .expect("open")
            .expect("delivery");
        t.ack(&m.ack).await.expect("ack");
        drop(replies);
        t.close().await;
        serde_json::from_slice(&m.body).expect("JSON reply")
    })
}

fn clock_cases(bus: Bus, backend: &str) {
    let d = Deployment::on(
        bus,
        &[("hello.cfg", plugin("hello", "echo hello", "output").1)],
    );
    let d = match backend {
        "postgres" => {
            let url = rt().block_on(vogeler_store::testing::fresh_postgres());
            d.with_store("postgres", &url)
        }
        _ => d,
    };
    let server = d.server(&[]);
    let n = d.node("clock");
    let _client = d.client(&n, &[]);

    // A year ahead: clamped to arrival, flagged in the reply and the log.
    let reply = result_with_reply(
        &d,
        &n,
        "hello",
        "future",
        Utc::now() + chrono::Duration::days(365),
    );
    assert!(reply["clamped_from"].is_string(), "{reply}");
    assert_eq!(reply["ok"], true, "{reply}");
    let doc = d.wait_document(&n, 20, |doc| doc["hello"][0] == "future");
    // The record notes it: which key, what it claimed, what it was clamped to.
    assert_eq!(doc["clock_skew"]["key"], "hello", "{doc}");
    let day = |v: &serde_json::Value| v.as_str().map(|t| t[..10].to_string());
    assert_eq!(
        day(&doc["clock_skew"]["claimed"]),
        day(&reply["clamped_from"]),
        "{doc}"
    );
    assert!(doc["clock_skew"]["clamped_to"].is_string(), "{doc}");
    assert!(
        server.log_text().contains("max_clock_skew"),
        "{}",
        server.log_text()
    );
    // The next real result replaces it.
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    d.wait_document(&n, 20, |doc| doc["hello"][0] == "hello");

    // Within the skew, a minute ahead: kept as given, so the real result that follows
    // is older and is reported stale (runner and ledger), not stored.
    let reply = result_with_reply(
        &d,
        &n,
        "hello",
        "ahead",
        Utc::now() + chrono::Duration::seconds(60),
    );
    assert!(reply.get("clamped_from").is_none(), "{reply}");
    let out = d.runner(&[
        "-x",
        "hello",
        "-n",
        &n,
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        summary["stale"],
        serde_json::json!([n.clone()]),
        "{summary}"
    );
    let id = summary["request_id"].as_str().expect("id").to_string();
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert!(out_text(&out).contains("stale: 1"), "{}", out_text(&out));
    let doc = d.document(&n).expect("doc");
    assert_eq!(doc["hello"][0], "ahead", "the newer stored value is kept");
    let ledger = d.admin(&["requests", &id, "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&ledger.stdout).expect("ledger json");
    assert_eq!(rows[0]["outcome"], "stale", "{rows}");
}

#[test]
fn clock_skew_is_clamped_and_stale_is_reported_on_sqlite() {
    clock_cases(Bus::Rabbit, "sqlite");
}

#[test]
fn clock_skew_is_clamped_and_stale_is_reported_on_postgres() {
    clock_cases(Bus::Rabbit, "postgres");
}

#[test]
fn clock_skew_is_clamped_and_stale_is_reported_on_nats() {
    clock_cases(Bus::Nats, "sqlite");
}

fn unsigned_pings_are_ignored_with_require_signed_and_signed_ones_answered(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[("hello.cfg", plugin("hello", "echo hello", "output").1)],
    );
    d.keygen("keys", "runner");
    d.write_conf("\n[client]\ntrusted_keys = keys/runner.pub\nrequire_signed = true\n");
    let _server = d.server(&[]);
    let n = d.node("strict");
    let client = d.client(&n, &[]);
    let out = d.runner(&["-x", "hello", "--ping", "--discovery-timeout", "3s"]);
    assert!(
        out_text(&out).contains("nothing sent"),
        "{}",
        out_text(&out)
    );
    assert!(client.log_text().contains("ping ignored"));
    let key = d.path("keys/runner.key").display().to_string();
    let out = d.runner(&[
        "-x",
        "hello",
        "--ping",
        "--discovery-timeout",
        "5s",
        "--signing-key",
        &key,
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    d.wait_document(&n, 20, |doc| doc["hello"][0] == "hello");
}

#[test]
fn unsigned_pings_are_ignored_with_require_signed_and_signed_ones_answered_on_rabbitmq() {
    unsigned_pings_are_ignored_with_require_signed_and_signed_ones_answered(Bus::Rabbit);
}

#[test]
fn unsigned_pings_are_ignored_with_require_signed_and_signed_ones_answered_on_nats() {
    unsigned_pings_are_ignored_with_require_signed_and_signed_ones_answered(Bus::Nats);
}

/// Runs the server with `args` and `env`, expecting it to exit at once with an error.
fn refused_at_start(d: &Deployment, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = std::process::Command::new(bin("server"))
        .arg("-c")
        .arg(&d.conf)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with an empty token ({args:?} {env:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    out_text(&out)
}

#[test]
fn an_empty_web_token_from_any_source_is_refused_at_start() {
    let d = Deployment::new(&[]);
    let e = refused_at_start(&d, &["--http", "0", "--http-token", ""], &[]);
    assert!(e.contains("--http-token") && e.contains("empty"), "{e}");
    let e = refused_at_start(&d, &["--http", "0"], &[("VOGELER_HTTP_TOKEN", "")]);
    assert!(
        e.contains("VOGELER_HTTP_TOKEN") && e.contains("empty"),
        "{e}"
    );
    d.write_conf("\n[server]\nhttp_token =\n");
    let e = refused_at_start(&d, &["--http", "0"], &[]);
    assert!(
        e.contains("[server] http_token") && e.contains("empty"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowercase_bearer_scheme_is_accepted() {
    let w = web::start(&["--http-token", "l0wer"], vec![]).await;
    let client = reqwest::Client::new();
    for (value, want) in [
        ("bearer l0wer", 200),
        ("BEARER l0wer", 200),
        ("bearer wrong", 401),
    ] {
        let r = client
            .get(format!("{}/api/nodes", w.base))
            .header("authorization", value)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), want, "{value}");
    }
}

#[test]
fn a_child_holding_the_plugins_stdout_does_not_hold_the_answer() {
    // The plugin's timeout is 30 s; its child keeps stdout open for 300 s. The runner
    // waits 15 s (half the timeout): the answer must be stored within it.
    let d = Deployment::new(&[(
        "held.cfg",
        "[held]\nname = held\ndescription = leaves a child on stdout\ncommand = sh -c 'sleep 300 & echo ok'\nresult_format = output\ntimeout = 30\n".to_string(),
    )]);
    let _server = d.server(&[]);
    let n = d.node("held");
    let _client = d.client(&n, &[]);
    let out = d.runner(&["-x", "held", "-n", &n, "--wait", "--timeout", "15s"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    d.wait_document(&n, 20, |doc| doc["held"][0] == "ok");
}
