//! Hostile results published straight to the master exchange (issue 17): each is
//! dead-lettered with its reason code, counted per reason in `/metrics`, noted in the
//! node's record when its node name is valid, and none of them stops ingest or breaks a
//! fleet view. The same test runs on SQLite, on PostgreSQL and on CouchDB
//! (pouchdb-server). Beside it: one bad message of every kind sent to the server and to
//! a client, refused and acked with no session lost (on RabbitMQ and on NATS), and results under the plugin names
//! the server and the store keep for themselves, refused with the record untouched.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{rt, Bus, Deployment};
use vogeler_transport::Outgoing;

/// The limit `[server] max_message_bytes` is set to: above the 5 MB node name, below
/// the "huge document".
const MAX_BYTES: usize = 6 * 1024 * 1024;

/// The sizes of one run: `[server] max_message_bytes`, the overlong node name (below
/// it) and the huge document (above it). RabbitMQ carries 6 MB messages; NATS at most
/// its `max_payload` (1 MiB by default), so there all three stay below that.
#[derive(Clone, Copy)]
struct Sizes {
    max: usize,
    name: usize,
    huge: usize,
}

impl Sizes {
    fn of(d: &Deployment) -> Sizes {
        if d.is_nats() {
            Sizes {
                max: 600 * 1024,
                name: 500 * 1024,
                huge: 900 * 1024,
            }
        } else {
            Sizes {
                max: MAX_BYTES,
                name: 5 * 1024 * 1024,
                huge: 2 * MAX_BYTES,
            }
        }
    }
}

fn result(node: &str, plugin: &str, data: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"kind":"result","node":"{node}","plugin":"{plugin}","format":"json","data":{data},"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"{extra}}}"#
    )
    .into_bytes()
}

/// Each hostile body, the reason it must be dead-lettered with and whether the node's
/// record notes it (the node name is valid).
fn hostile(node: &str, sizes: Sizes) -> Vec<(Vec<u8>, &'static str, bool)> {
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
            result(&"a".repeat(sizes.name), "p_name", "1", ""),
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
                &format!("\"{}\"", "x".repeat(sizes.huge)),
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
    let sizes = Sizes::of(&d);
    d.write_conf_on_bus(&format!("[server]\nmax_message_bytes = {}\n", sizes.max));
    let port = common::free_port();
    let server = d.server(&["--http", &port.to_string()]);
    let base = format!("http://127.0.0.1:{port}");
    let node = d.node("h1");

    d.publish_results(vec![Outgoing::new(result(
        &node,
        "before",
        r#"{"os":"debian"}"#,
        "",
    ))]);
    d.wait_document(&node, 20, |doc| doc.get("before").is_some());

    let cases = hostile(&node, sizes);
    let mut msgs: Vec<Outgoing> = cases
        .iter()
        .map(|(b, _, _)| Outgoing::new(b.clone()))
        .collect();
    // A later good result is stored within seconds: the server is still ingesting.
    msgs.push(Outgoing::new(result(&node, "later", r#"{"n":1}"#, "")));
    d.publish_results(msgs);
    let doc = d.wait_document(&node, 20, |doc| doc.get("later").is_some());
    assert_eq!(doc["later"]["n"], 1);

    // Each is dead-lettered with its reason.
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < cases.len() && Instant::now() < deadline {
        dead.extend(d.take_dead_letters(Duration::from_millis(500)));
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
fn hostile_results_on_nats() {
    let d = Deployment::on(Bus::Nats, &[]);
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
fn output_over_the_limit_becomes_an_error_result(bus: Bus) {
    let d = Deployment::on(bus, &[]);
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
    d.write_conf_on_bus("[server]\nmax_message_bytes = 1048576\n");
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

#[test]
fn output_over_the_limit_becomes_an_error_result_on_rabbitmq() {
    output_over_the_limit_becomes_an_error_result(Bus::Rabbit);
}

#[test]
fn output_over_the_limit_becomes_an_error_result_on_nats() {
    output_over_the_limit_becomes_an_error_result(Bus::Nats);
}

/// A v1 message of `kind` with the given fields (JSON object members, no braces).
fn v1(kind: &str, fields: &str) -> Vec<u8> {
    format!(r#"{{"v":1,"kind":"{kind}",{fields}}}"#).into_bytes()
}

/// The messages of the node's `last_error` history once it holds at least `n` (20 s).
fn wait_errors(store: &vogeler_store::DynStore, node: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let notes: Vec<String> = rt()
            .block_on(store.history(node, Some("last_error")))
            .expect("history of last_error")
            .rows
            .iter()
            .filter_map(|h| h.new.as_ref()?.get("message")?.as_str().map(str::to_string))
            .collect();
        if notes.len() >= n || Instant::now() > deadline {
            return notes;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fleet views answer: the node list, the node, a report on `key`, its history.
fn assert_views_answer(d: &Deployment, node: &str, key: &str) {
    for args in [
        vec!["node"],
        vec!["node", node],
        vec!["report", "facts", key],
        vec!["report", "changes", "--since", "1d"],
        vec!["history", node],
    ] {
        let out = d.admin(&args);
        assert!(
            out.status.success(),
            "vogeler-admin {args:?}: {}",
            common::text(&out)
        );
    }
}

/// Whether a program's log shows a lost session or a panic.
fn assert_log_clean(p: &common::Proc) {
    let log = p.log_text();
    assert!(
        !log.contains("broker session lost"),
        "{} lost its broker session:\n{log}",
        p.name
    );
    assert!(!log.contains("panicked"), "{} panicked:\n{log}", p.name);
}

/// Issue 17's rule end to end: one malformed or hostile message of every kind the
/// server consumes, and of every kind the client consumes, is refused and acked; neither
/// program loses its session or loops on a redelivery, and a good request afterwards is
/// run, stored and confirmed.
fn every_message_kind_malformed_then_a_good_result(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[(
            "hello.cfg",
            common::plugin("hello", "echo hello", "output").1,
        )],
    );
    let server = d.server(&[]);
    let node = d.node("every");
    let client = d.client(&node, &[]);
    // The client's first heartbeat puts it in the registry.
    d.wait_document(&node, 20, |doc| doc.is_object());
    let at = r#""sent_at":"2026-01-01T00:00:00Z""#;
    let long = "q".repeat(300);

    // To the server: each with the reason it is dead-lettered with, or `None` for a
    // well-formed message with a reply queue nobody can answer on: used, not answered,
    // and said so in the log.
    let to_server: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "result without collected_at",
            v1(
                "result",
                &format!(r#""node":"{node}","plugin":"p_bad","format":"json","data":1"#),
            ),
            Some("bad-field"),
        ),
        (
            "heartbeat with a bad node name",
            v1("heartbeat", &format!(r#""node":"no such/node",{at}"#)),
            Some("bad-node-name"),
        ),
        (
            "discover with an overlong reply_to",
            v1(
                "discover",
                &format!(r#""id":"q1",{at},"reply_to":"{long}""#),
            ),
            Some("field-too-long"),
        ),
        (
            "announce with an empty request_id",
            v1(
                "announce",
                &format!(r#""request_id":" ","command":"hello",{at},"ttl":60"#),
            ),
            Some("bad-field"),
        ),
        (
            "stored confirmation sent to the server",
            v1(
                "stored",
                &format!(
                    r#""request_id":"r1","node":"{node}","plugin":"hello","ok":true,"stored_at":"2026-01-01T00:00:00Z""#
                ),
            ),
            Some("unexpected-kind"),
        ),
        (
            "pong without sent_at",
            v1("pong", &format!(r#""ping_id":"p1","node":"{node}""#)),
            Some("bad-field"),
        ),
        (
            "request sent to the server",
            v1(
                "request",
                &format!(r#""id":"r2","command":"hello","targets":["all"],{at},"ttl":60"#),
            ),
            Some("unexpected-kind"),
        ),
        (
            "discovered answer sent to the server",
            v1("discovered", r#""discover_id":"q9","nodes":["a"]"#),
            Some("unexpected-kind"),
        ),
        (
            "ping sent to the server",
            v1("ping", &format!(r#""id":"g9",{at},"reply_to":"amq.gen-x""#)),
            Some("unexpected-kind"),
        ),
        (
            "unknown kind",
            v1("gossip", &format!(r#""node":"{node}""#)),
            Some("unknown-kind"),
        ),
        (
            "unknown kind of 300 KB",
            v1(&"k".repeat(300 * 1024), &format!(r#""node":"{node}""#)),
            Some("unknown-kind"),
        ),
        (
            "wrong v",
            format!(r#"{{"v":2,"kind":"heartbeat","node":"{node}",{at}}}"#).into_bytes(),
            Some("unknown-version"),
        ),
        (
            "discover whose reply_to is the direct reply-to pseudo-queue",
            v1(
                "discover",
                &format!(r#""id":"q2",{at},"reply_to":"amq.rabbitmq.reply-to""#),
            ),
            None,
        ),
        (
            "discover whose reply_to is a made-up direct reply-to name",
            v1(
                "discover",
                &format!(r#""id":"q3",{at},"reply_to":"amq.rabbitmq.reply-to.bogus""#),
            ),
            None,
        ),
        (
            "result whose reply_to is a made-up direct reply-to name",
            result(
                &node,
                "p_rr2",
                "2",
                r#","reply_to":"amq.rabbitmq.reply-to.bogus""#,
            ),
            None,
        ),
        (
            "result whose reply_to is the direct reply-to pseudo-queue",
            result(&node, "p_rr", "1", r#","reply_to":"amq.rabbitmq.reply-to""#),
            None,
        ),
        // Reply addresses a NATS deployment must never publish to (into its own
        // streams, or a wildcard); on RabbitMQ plain routing keys no queue has.
        (
            "result whose reply_to is the deployment's own results subject",
            result(
                &node,
                "p_own",
                "3",
                &format!(r#","reply_to":"{}.results""#, d.id),
            ),
            None,
        ),
        (
            "discover whose reply_to is a wildcard subject",
            v1(
                "discover",
                &format!(r#""id":"q4",{at},"reply_to":"_INBOX.>""#),
            ),
            None,
        ),
        (
            "2010 result in an unknown format",
            format!(r#"{{"syskey": "{node}", "p_fmt": "x", "format": "xml"}}"#).into_bytes(),
            Some("unknown-format"),
        ),
        (
            "2010 result with two plugin keys",
            format!(r#"{{"syskey": "{node}", "p_a": "x", "p_b": "y"}}"#).into_bytes(),
            Some("bad-field"),
        ),
        (
            "2010 result whose pylist nests 100 deep",
            format!(
                r#"{{"syskey": "{node}", "p_py": "{}1{}", "format": "pylist"}}"#,
                "[".repeat(100),
                "]".repeat(100)
            )
            .into_bytes(),
            Some("too-deep"),
        ),
        (
            "2010 request sent to the server",
            br#""hello""#.to_vec(),
            Some("unexpected-kind"),
        ),
        ("non-JSON", b"this is { not JSON".to_vec(), Some("not-json")),
        (
            "invalid UTF-8",
            b"{\"v\":1,\xff\xfe}".to_vec(),
            Some("bad-utf8"),
        ),
        ("empty body", Vec::new(), Some("not-json")),
    ];
    d.publish_results(
        to_server
            .iter()
            .map(|(_, b, _)| Outgoing::new(b.clone()))
            .collect(),
    );
    // Headers nearly as large as a frame (131 072 bytes), and a body whose refusal is
    // worded at length: the dead letter's headers must not outgrow the frame.
    let signed_junk = v1(&"j".repeat(4096), r#""node":"x""#);
    // (NATS: JetStream takes at most 64 KiB of headers, so nearly that.)
    let header_bytes = match bus {
        Bus::Rabbit => 130_000,
        Bus::Nats => 60_000,
    };
    d.publish_results(vec![Outgoing {
        headers: vec![("x-vogeler-signature".into(), "s".repeat(header_bytes))],
        ..Outgoing::new(signed_junk.clone())
    }]);

    // Every bad server-side message is dead-lettered, with its reason. Taken before the
    // client is sent anything: the server notes a refused result of a valid node in its
    // `last_error` at the time it refuses it, and the client's error results below must
    // be newer than those notes (or they are stale, and rightly not recorded).
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.len() < to_server.iter().filter(|c| c.2.is_some()).count()
        && Instant::now() < deadline
    {
        dead.extend(d.take_dead_letters(Duration::from_millis(500)));
    }
    for (what, body, reason) in &to_server {
        let found: Vec<&str> = dead
            .iter()
            .filter(|m| &m.body == body)
            .map(|m| m.header("x-vogeler-reason").unwrap_or("(none)"))
            .collect();
        let want: Vec<&str> = reason.iter().copied().collect();
        assert_eq!(found, want, "{what}; log:\n{}", server.log_text());
    }
    let junk: Vec<&vogeler_transport::Message> =
        dead.iter().filter(|m| m.body == signed_junk).collect();
    assert_eq!(
        junk.len(),
        1,
        "the message with the {header_bytes} byte header"
    );
    assert_eq!(junk[0].header("x-vogeler-reason"), Some("unknown-kind"));
    assert_eq!(
        junk[0].header("x-vogeler-signature"),
        None,
        "too long to be one"
    );
    let refused = to_server.iter().filter(|c| c.2.is_some()).count() + 1;
    assert_eq!(dead.len(), refused, "only the bad messages are dead");
    for m in &dead {
        let detail = m.header("x-vogeler-detail").unwrap_or_default();
        assert!(!detail.is_empty() && detail.len() <= 1024, "{detail}");
    }

    // To the client's node queue, through the broadcast exchange as the runner sends:
    // what it answers with an error result (the part of its `last_error` that says so),
    // or `None` for what it acks with a log line and does not answer.
    let other = d.node("other");
    let request = |fields: &str| {
        v1(
            "request",
            &format!(
                r#""sender":"hostile","sent_at":"{}",{fields}"#,
                chrono::Utc::now().to_rfc3339()
            ),
        )
    };
    let to_client: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "request with an overlong command",
            request(&format!(
                r#""id":"c-long","command":"{}","targets":["all"],"ttl":60"#,
                "x".repeat(5000)
            )),
            Some("could not decode request: message refused: command: 5000 bytes"),
        ),
        (
            "request with a bad ttl",
            request(r#""id":"c-ttl","command":"hello","targets":["all"],"ttl":"soon""#),
            Some("could not decode request: bad request message"),
        ),
        (
            "request for another node",
            request(&format!(
                r#""id":"c-other","command":"hello","targets":["{other}"],"ttl":60"#
            )),
            Some("request c-other refused"),
        ),
        (
            "ping with a control character in reply_to",
            v1(
                "ping",
                &format!(r#""id":"g1",{at},"reply_to":"bad\u0007queue""#),
            ),
            None,
        ),
        (
            "request whose reply_to is the direct reply-to pseudo-queue",
            request(&format!(
                r#""id":"c-rr","command":"nosuch","targets":["{node}"],"ttl":60,"reply_to":"amq.rabbitmq.reply-to""#
            )),
            Some("unknown plugin \"nosuch\""),
        ),
        (
            "request whose reply_to is a made-up direct reply-to name",
            request(&format!(
                r#""id":"c-rr2","command":"nosuch2","targets":["{node}"],"ttl":60,"reply_to":"amq.rabbitmq.reply-to.bogus""#
            )),
            Some("unknown plugin \"nosuch2\""),
        ),
        (
            "ping whose reply_to is a made-up direct reply-to name",
            v1(
                "ping",
                &format!(r#""id":"g3",{at},"reply_to":"amq.rabbitmq.reply-to.bogus""#),
            ),
            None,
        ),
        (
            "ping whose reply_to is the direct reply-to pseudo-queue",
            v1(
                "ping",
                &format!(r#""id":"g2",{at},"reply_to":"amq.rabbitmq.reply-to""#),
            ),
            None,
        ),
        (
            "ping whose reply_to is the deployment's own broadcast subject",
            v1(
                "ping",
                &format!(r#""id":"g4",{at},"reply_to":"{}.req.all""#, d.id),
            ),
            None,
        ),
        (
            "result sent to the client",
            result(&node, "p_client", "1", ""),
            None,
        ),
        (
            "2010 request of blanks",
            br#""   ""#.to_vec(),
            Some("could not decode request: unknown message shape: an empty request"),
        ),
        (
            "unknown kind of 300 KB",
            v1(&"k".repeat(300 * 1024), r#""id":"k1""#),
            Some("could not decode request: unknown message kind \"kkkk"),
        ),
        (
            "non-JSON",
            b"run hello, please".to_vec(),
            Some("could not decode request: message is not JSON: expected value"),
        ),
        (
            "empty body",
            Vec::new(),
            Some("could not decode request: message is not JSON: EOF"),
        ),
    ];
    d.publish_requests(
        Some(&node),
        to_client
            .iter()
            .map(|(_, b, _)| Outgoing::new(b.clone()))
            .collect(),
    );

    // A good request afterwards is run, stored and confirmed.
    let out = d.runner(&["-x", "hello", "-n", &node, "--wait", "--timeout", "20s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nserver:\n{}\nclient:\n{}",
        common::text(&out),
        server.log_text(),
        client.log_text()
    );
    let doc = d.wait_document(&node, 20, |doc| doc["hello"][0] == "hello");
    assert!(
        ["p_bad", "p_client", "p_fmt", "p_a", "p_b", "p_py"]
            .iter()
            .all(|k| doc.get(*k).is_none()),
        "{doc}"
    );
    // Well-formed results whose reply_to names direct reply-to are stored; the
    // pseudo-queue itself is not confirmed to (it would close the channel), a made-up
    // name under it is (the broker drops it), and the session goes on.
    assert_eq!(
        (&doc["p_rr"], &doc["p_rr2"], &doc["p_own"]),
        (&1.into(), &2.into(), &3.into()),
        "{doc}"
    );

    // The client answered each undecodable or refused request with an error result,
    // which the node's record keeps in its history of `last_error`.
    let rt = rt();
    let store = rt.block_on(d.open_store());
    let answered = to_client.iter().filter(|c| c.2.is_some()).count();
    let notes = wait_errors(&store, &node, answered);
    for (what, _, answer) in &to_client {
        if let Some(want) = answer {
            assert_eq!(
                notes.iter().filter(|m| m.contains(want)).count(),
                1,
                "{what}: {want:?} in {notes:#?}"
            );
        }
    }
    let log = client.log_text();
    // The two pings (a control character, the direct reply-to pseudo-queue) are
    // ignored; the request naming the pseudo-queue is answered without it.
    assert_eq!(
        log.matches("ping ignored: its reply_to is not a usable queue name")
            .count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("the request's reply_to is not a usable queue name"),
        "{log}"
    );
    let slog = server.log_text();
    assert!(
        slog.contains("result with an unusable reply_to; stored, not confirmed"),
        "{slog}"
    );
    assert!(
        slog.contains("discovery request with an unusable reply_to; not answered"),
        "{slog}"
    );
    assert!(
        log.contains("ignoring a message that is not a request"),
        "{log}"
    );
    if bus == Bus::Nats {
        // Answers into the deployment's own streams or to a wildcard were not sent.
        let refused = "not a plain subject outside the deployment's streams; not answered";
        assert_eq!(slog.matches(refused).count(), 2, "{slog}");
        assert_eq!(log.matches(refused).count(), 1, "{log}");
    }
    // Only the good request ran the plugin (not the one for another node).
    assert_eq!(log.matches("plugin ran").count(), 1, "{log}");

    // Nothing is left in the client's queue (RabbitMQ; a NATS client's consumers are
    // its own and acked, or the redeliveries would show in its log), and both programs
    // kept their session.
    if bus == Bus::Rabbit {
        let status = rt
            .block_on(async {
                let session = d.broker().connect().await.expect("connect");
                let s = session.queue_status(&node).await;
                session.close().await;
                s
            })
            .expect("queue status")
            .expect("the node queue exists");
        assert_eq!((status.messages, status.consumers), (0, 1), "{status:?}");
    }
    assert_log_clean(&server);
    assert_log_clean(&client);
    assert_views_answer(&d, &node, "hello");
}

#[test]
fn every_message_kind_malformed_then_a_good_result_on_rabbitmq() {
    every_message_kind_malformed_then_a_good_result(Bus::Rabbit);
}

#[test]
fn every_message_kind_malformed_then_a_good_result_on_nats() {
    every_message_kind_malformed_then_a_good_result(Bus::Nats);
}

/// Plugin names the server or the store keeps for itself: a result under one is
/// dead-lettered with its reason and changes nothing in the node's record; ingest goes
/// on. Without `[server] node_keys` too, so no node can forge a signature verdict.
#[test]
fn reserved_plugin_names_on_sqlite() {
    reserved_plugin_names_are_refused_and_the_record_is_untouched(Deployment::new(&[]));
}

#[test]
fn reserved_plugin_names_on_nats() {
    reserved_plugin_names_are_refused_and_the_record_is_untouched(Deployment::on(Bus::Nats, &[]));
}

#[test]
fn reserved_plugin_names_on_couch() {
    let dsn = rt().block_on(vogeler_store::testing::fresh_dsn(
        "couch",
        std::path::Path::new("/"),
    ));
    let d = Deployment::new(&[]).with_store("couch", &dsn);
    reserved_plugin_names_are_refused_and_the_record_is_untouched(d);
}

/// [`reserved_plugin_names_on_sqlite`] on any deployment.
fn reserved_plugin_names_are_refused_and_the_record_is_untouched(d: Deployment) {
    let server = d.server(&[]);
    let node = d.node("reserved");
    d.publish_results(vec![Outgoing::new(result(
        &node,
        "before",
        r#"{"os":"debian"}"#,
        "",
    ))]);
    let before = d.wait_document(&node, 20, |doc| doc.get("before").is_some());

    let forged = r#"{"verified":true,"key_id":"0000000000000000"}"#;
    let names = [
        "signature",
        "signature.x",
        "clock_skew",
        "last_error",
        "created_at",
        "system_name",
        // The CouchDB backend's bookkeeping field, refused on every backend alike.
        "vogeler_meta",
    ];
    let bodies: Vec<Vec<u8>> = names
        .iter()
        .map(|name| result(&node, name, forged, ""))
        .collect();
    let mut msgs: Vec<Outgoing> = bodies.iter().cloned().map(Outgoing::new).collect();
    msgs.push(Outgoing::new(result(&node, "later", r#"{"n":1}"#, "")));
    d.publish_results(msgs);
    let after = d.wait_document(&node, 20, |doc| doc.get("later").is_some());

    // Each is dead-lettered, reason `refused`, the detail naming the plugin.
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.len() < names.len() && Instant::now() < deadline {
        dead.extend(d.take_dead_letters(Duration::from_millis(500)));
    }
    assert_eq!(dead.len(), names.len(), "log:\n{}", server.log_text());
    for (name, body) in names.iter().zip(&bodies) {
        let m = dead
            .iter()
            .find(|m| &m.body == body)
            .unwrap_or_else(|| panic!("{name} not dead-lettered"));
        assert_eq!(m.header("x-vogeler-reason"), Some("refused"), "{name}");
        let detail = m.header("x-vogeler-detail").unwrap_or_default();
        assert!(detail.contains(&format!("{name:?}")), "{name}: {detail}");
    }

    // The record is as it was, plus `later`.
    let mut expected = before.as_object().cloned().unwrap_or_default();
    let mut got = after.as_object().cloned().unwrap_or_default();
    assert_eq!(got.remove("later"), Some(serde_json::json!({"n": 1})));
    for moving in ["updated_at", "last_seen"] {
        expected.remove(moving);
        got.remove(moving);
    }
    assert_eq!(got, expected);
    assert_log_clean(&server);
    assert_views_answer(&d, &node, "before.os");
}

/// Publishes a request with a raw header block to the deployment's NATS server, as any
/// publisher may (the client library refuses to send a malformed one): plain protocol
/// over a socket, `HPUB`, then `PING` and the `PONG` that says it was processed.
fn nats_hpub(d: &Deployment, subject: &str, header: &[u8], body: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let servers = d.nats_servers();
    let first = servers.split(',').next().unwrap_or_default();
    let addr = first.split_once("://").map_or(first, |(_, a)| a);
    let sock = std::net::TcpStream::connect(addr).expect("connect to nats");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(sock.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    let mut w = sock;
    let mut out = b"CONNECT {\"verbose\":false,\"headers\":true}\r\n".to_vec();
    out.extend_from_slice(
        format!(
            "HPUB {subject} {} {}\r\n",
            header.len(),
            header.len() + body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\nPING\r\n");
    w.write_all(&out).expect("publish");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("PONG");
        assert!(!line.starts_with("-ERR"), "nats refused: {line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

/// Requests whose header blocks the NATS client library cannot read (it drops the
/// connection on them) or takes for the server's own status, stored in the requests
/// stream by a hostile publisher: a client that meets them live and on catch-up (also
/// after a restart) passes them over and still answers the runner, instead of waiting
/// for ever on a catch-up whose connection dropped under it.
#[test]
fn requests_with_headers_the_nats_client_cannot_read_are_passed_over() {
    let (name, body) = common::plugin("stamp", "date +%s%N", "output");
    let d = Deployment::on(Bus::Nats, &[(name.as_str(), body)]);
    let _server = d.server(&[]);
    let node = d.node("web");
    let mut client = d.client(&node, &[]);
    let request = |id: &str| {
        format!(
            r#"{{"v":1,"kind":"request","id":"{id}","command":"stamp","targets":["all"],"sender":"evil","sent_at":"{}","ttl":300}}"#,
            chrono::Utc::now().to_rfc3339()
        )
        .into_bytes()
    };
    let all = format!("{}.req.all", d.id);
    let poison: [&[u8]; 4] = [
        b"HTTP/1.1\r\n\r\n",
        b"NATS/1.0\r\nx-a: \xff\xfe\r\n\r\n",
        b"NATS/1.0\r\nno colon here\r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
    ];
    let runner = |when: &str, log: &dyn Fn() -> String| {
        let out = d.runner(&["-x", "stamp", "-n", &node, "--wait", "--timeout", "60s"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "runner {when}: {}\n{}\nclient log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log()
        );
    };
    for (i, header) in poison.iter().enumerate() {
        nats_hpub(&d, &all, header, &request(&format!("live-{i}")));
    }
    runner("after the live poison", &|| client.log_text());

    client.stop();
    for (i, header) in poison.iter().enumerate() {
        nats_hpub(&d, &all, header, &request(&format!("down-{i}")));
    }
    let client = d.client(&node, &[]);
    runner("after a restart behind the stored poison", &|| {
        client.log_text()
    });
    assert!(
        client.log_text().contains("passing over a stored request"),
        "{}",
        client.log_text()
    );
}

/// Results whose header blocks the NATS client library cannot read, stored in the
/// results stream by a hostile publisher: each costs the server at most one reconnect
/// (the library drops the connection on its delivery), then the server dead-letters
/// (`unreadable-headers`) and removes it, where it used to come back after every
/// `ack_wait` and drop the connection again; good results are stored throughout. The
/// library reconnects by itself and its pull goes on, so the removal runs at the
/// reconnect, not only when the server consumes anew (which a poison redelivered every
/// `ack_wait` could put off for good: a CI failure).
#[test]
fn results_with_headers_the_nats_client_cannot_read_are_dead_lettered_and_removed() {
    let d = Deployment::on(Bus::Nats, &[]);
    let server = d.server(&[]);
    let node = d.node("web");
    let results = format!("{}.results", d.id);
    let poison: [&[u8]; 3] = [
        b"HTTP/1.1\r\n\r\n",
        b"NATS/1.0\r\nx-a: \xff\xfe\r\n\r\n",
        b"NATS/1.0\r\nno colon here\r\n\r\n",
    ];
    for (i, header) in poison.iter().enumerate() {
        nats_hpub(&d, &results, header, format!("poison {i}").as_bytes());
    }
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead.len() < poison.len() && Instant::now() < deadline {
        dead.extend(d.take_dead_letters(Duration::from_millis(500)));
    }
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|m| m.header("x-vogeler-reason"))
        .collect();
    assert_eq!(
        reasons,
        vec!["unreadable-headers"; poison.len()],
        "server log:\n{}",
        server.log_text()
    );
    // Gone from the results stream: a good result is stored, and the server's consumer
    // holds nothing unacked.
    a_later_result_is_stored(&d, &node);
    let out = d.admin(&["queue", "--status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A dead letter whose header block the NATS client library cannot read (stored by
/// anyone allowed to publish to the dead-letter subject) does not stop `vogeler-admin
/// dead --requeue`: it is removed with a warning, and the readable letters are requeued.
#[test]
fn a_dead_letter_the_nats_client_cannot_read_does_not_stop_a_requeue() {
    let d = Deployment::on(Bus::Nats, &[]);
    let server = d.server(&[]);
    let node = d.node("web");
    // A readable dead letter: a result the server cannot decode.
    d.publish_results(vec![Outgoing::new(b"not json".to_vec())]);
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.is_empty() && Instant::now() < deadline {
        let out = d.admin(&["dead", "--json"]);
        dead = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default();
    }
    assert_eq!(dead.len(), 1, "server log:\n{}", server.log_text());
    nats_hpub(
        &d,
        &format!("{}.dead", d.id),
        b"NATS/1.0\r\nno colon here\r\n\r\n",
        b"poison",
    );
    let out = d.admin(&["dead", "--requeue"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "requeue: {}\n{said}",
        String::from_utf8_lossy(&out.stdout),
    );
    // Removed, and said so (it used to stay, hidden from `dead`, and drop the admin's
    // connection at every requeue).
    assert!(
        said.contains("headers the NATS client cannot read"),
        "{said}"
    );
    // The readable letter went back to the results and was dead-lettered again by the
    // server (still not JSON); the poison is gone.
    a_later_result_is_stored(&d, &node);
}

/// Ingest still works after the poison: a good result published now is stored.
fn a_later_result_is_stored(d: &Deployment, node: &str) {
    d.publish_results(vec![Outgoing::new(result(node, "later", r#"{"n":1}"#, ""))]);
    let doc = d.wait_document(node, 20, |doc| doc.get("later").is_some());
    assert_eq!(doc["later"]["n"], 1);
}
