//! Hostile results published straight to the master exchange (issue 17): each is
//! dead-lettered with its reason code, counted per reason in `/metrics`, noted in the
//! node's record when its node name is valid, and none of them stops ingest or breaks a
//! fleet view. The same test runs on SQLite, on PostgreSQL and on CouchDB
//! (pouchdb-server).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{drain_queue, publish_raw, rt, Deployment};

/// The limit `[server] max_message_bytes` is set to: above the 5 MB node name, below
/// the "huge document".
const MAX_BYTES: usize = 6 * 1024 * 1024;

fn result(node: &str, plugin: &str, data: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"kind":"result","node":"{node}","plugin":"{plugin}","format":"json","data":{data},"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"{extra}}}"#
    )
    .into_bytes()
}

/// Each hostile body, the reason it must be dead-lettered with and whether the node's
/// record notes it (the node name is valid).
fn hostile(node: &str) -> Vec<(Vec<u8>, &'static str, bool)> {
    let depth = 10_000;
    vec![
        (
            result(node, "p_num", r#"{"x":1e400}"#, ""),
            "bad-number",
            true,
        ),
        (
            result(
                node,
                "p_deep",
                &format!("{}1{}", "[".repeat(depth), "]".repeat(depth)),
                "",
            ),
            "too-deep",
            true,
        ),
        (
            result(node, "p_sur", r#"{"x":"\ud800"}"#, ""),
            "lone-surrogate",
            true,
        ),
        (
            result(node, "p_nul", r#"{"x":"a\u0000b"}"#, ""),
            "nul-character",
            true,
        ),
        (
            result(&"a".repeat(5 * 1024 * 1024), "p_name", "1", ""),
            "bad-node-name",
            false,
        ),
        (
            result(
                node,
                "p_reply",
                "1",
                &format!(r#","reply_to":"{}""#, "q".repeat(300)),
            ),
            "field-too-long",
            true,
        ),
        (
            result(
                node,
                "p_huge",
                &format!("\"{}\"", "x".repeat(2 * MAX_BYTES)),
                "",
            ),
            "too-large",
            true,
        ),
    ]
}

use common::web::get_text as get;

/// The whole check on a deployment whose store is `dsn` (as the test opens it).
fn hostile_results_are_refused_and_ingest_goes_on(d: Deployment, dsn: &str) {
    d.write_conf(&format!("[server]\nmax_message_bytes = {MAX_BYTES}\n"));
    let port = common::web::free_port();
    let server = d.server(&["--http", &port.to_string()]);
    let base = format!("http://127.0.0.1:{port}");
    let t = d.topology();
    let node = d.node("h1");

    publish_raw(
        &t.master_exchange,
        "",
        &[result(&node, "before", r#"{"os":"debian"}"#, "")],
    );
    d.wait_document(&node, 20, |doc| doc.get("before").is_some());

    let cases = hostile(&node);
    let bodies: Vec<Vec<u8>> = cases.iter().map(|(b, _, _)| b.clone()).collect();
    publish_raw(&t.master_exchange, "", &bodies);
    // A later good result is stored within seconds: the server is still ingesting.
    publish_raw(
        &t.master_exchange,
        "",
        &[result(&node, "later", r#"{"n":1}"#, "")],
    );
    let doc = d.wait_document(&node, 20, |doc| doc.get("later").is_some());
    assert_eq!(doc["later"]["n"], 1);

    // Each is dead-lettered with its reason.
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < cases.len() && Instant::now() < deadline {
        dead.extend(drain_queue(&t.dead_queue, Duration::from_millis(500)));
    }
    let got: BTreeSet<String> = dead
        .iter()
        .filter_map(|m| m.header("x-vogeler-reason").map(str::to_string))
        .collect();
    let want: BTreeSet<String> = cases.iter().map(|(_, r, _)| r.to_string()).collect();
    assert_eq!(
        dead.len(),
        cases.len(),
        "dead letters: {got:?}; log:\n{}",
        server.log_text()
    );
    assert_eq!(got, want, "reasons");

    let rt = rt();
    // Counted per reason in /metrics.
    let (status, metrics) = rt.block_on(get(&format!("{base}/metrics")));
    assert!(status.is_success(), "/metrics: {status} {metrics}");
    for reason in &want {
        let line = format!("vogeler_dead_lettered_by_reason_total{{reason=\"{reason}\"}} 1");
        assert!(
            metrics.contains(&line),
            "{line} missing from /metrics:\n{metrics}"
        );
    }

    // The node's record notes each refusal (short, bounded); the 5 MB node name is
    // noted nowhere.
    let store = rt.block_on(vogeler_store::testing::open(dsn));
    let history = rt
        .block_on(store.history(&node, Some("last_error")))
        .expect("history of last_error")
        .rows;
    let notes: Vec<String> = history
        .iter()
        .filter_map(|h| h.new.as_ref()?.get("message")?.as_str().map(str::to_string))
        .collect();
    for (_, reason, noted) in &cases {
        if *noted {
            assert!(
                notes.iter().any(|m| m.contains(&format!(": {reason}: "))),
                "no refusal note for {reason} in {notes:?}"
            );
        }
    }
    for m in &notes {
        assert!(m.starts_with("refused result for plugin p_"), "{m}");
        assert!(m.len() <= 300, "a note of {} bytes", m.len());
    }
    let nodes = rt.block_on(store.nodes()).expect("nodes");
    assert!(
        nodes.iter().all(|n| n.name.len() <= 253),
        "a 5 MB node name was stored"
    );
    let record = d.document(&node).expect("vogeler-admin node answers");
    assert!(
        record["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("refused result for plugin")),
        "{record}"
    );
    for key in ["p_num", "p_deep", "p_sur", "p_nul", "p_reply", "p_huge"] {
        assert!(record.get(key).is_none(), "{key} was stored: {record}");
    }

    // Every fleet view answers.
    for args in [
        vec!["node"],
        vec!["node", node.as_str()],
        vec!["report", "facts", "before.os"],
        vec!["report", "changes", "--since", "1d"],
        vec!["history", node.as_str()],
    ] {
        let out = d.admin(&args);
        assert!(
            out.status.success(),
            "vogeler-admin {args:?}: {}",
            common::text(&out)
        );
    }
    for path in [
        "/api/nodes".to_string(),
        format!("/api/nodes/{node}"),
        "/api/values?path=before.os".to_string(),
        "/api/values?path=last_error.message".to_string(),
    ] {
        let (status, body) = rt.block_on(get(&format!("{base}{path}")));
        assert!(status.is_success(), "GET {path}: {status} {body}");
    }
    let (_, values) = rt.block_on(get(&format!("{base}/api/values?path=before.os")));
    assert!(values.contains("debian"), "{values}");
}

#[test]
fn hostile_results_on_sqlite() {
    let d = Deployment::new(&[]);
    let dsn = d.sqlite_dsn();
    hostile_results_are_refused_and_ingest_goes_on(d, &dsn);
}

#[test]
fn hostile_results_on_postgres() {
    let url = rt().block_on(vogeler_store::testing::fresh_postgres());
    let d = Deployment::new(&[]).with_store("postgres", &url);
    hostile_results_are_refused_and_ingest_goes_on(d, &url);
    // The database is this test's own: drop it.
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    rt().block_on(async {
        let admin = vogeler_store::testing::postgres_admin_url();
        if let Ok((client, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    });
}

#[test]
fn hostile_results_on_couch() {
    let dsn = rt().block_on(vogeler_store::testing::fresh_dsn(
        "couch",
        std::path::Path::new("/"),
    ));
    let d = Deployment::new(&[]).with_store("couch", &dsn);
    hostile_results_are_refused_and_ingest_goes_on(d, &dsn);
}

/// A plugin whose output, escaped in JSON, exceeds the server's limit: the client sends a
/// short error result instead, which the record keeps as `last_error` (not silence).
#[test]
fn output_over_the_limit_becomes_an_error_result() {
    let d = Deployment::new(&[]);
    let script = d.path("escapes.sh");
    // 400 KB of \x01: 2.4 MB once each byte is written `\u0001`.
    std::fs::write(
        &script,
        "#!/bin/sh\nhead -c 400000 /dev/zero | tr '\\000' '\\001'\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (file, body) = common::plugin("escapes", &script.display().to_string(), "output");
    std::fs::write(d.plugins.join(file), body).expect("plugin file");
    d.write_conf("[server]\nmax_message_bytes = 1048576\n");
    let _server = d.server(&[]);
    let node = d.node("esc");
    let _client = d.client(&node, &[]);
    let out = d.runner(&["-x", "escapes", "-n", &node, "--wait", "--timeout", "20s"]);
    let doc = d.wait_document(&node, 20, |doc| doc["last_error"].is_object());
    let message = doc["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exceeds the 1.0 MB limit"),
        "{message}; runner: {}",
        common::text(&out)
    );
    assert_eq!(doc["last_error"]["plugin"], "escapes");
    assert!(doc.get("escapes").is_none(), "{doc}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("exceeds"),
        "the runner hears why: {}",
        common::text(&out)
    );
}
