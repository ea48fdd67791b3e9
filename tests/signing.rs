//! Signed requests and signed results over the real brokers (each body once on RabbitMQ
//! and once on NATS JetStream): every rejection path of
//! the client (unsigned, 2010-format, forged, altered, unknown key, expired, replayed,
//! unsafe without a signature) and the server's verification of results.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use common::*;
use vogeler_protocol::{Message, Request};
use vogeler_signing::SecretKey;
use vogeler_transport::Outgoing;

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn load_key(path: &Path) -> SecretKey {
    SecretKey::load(path).expect("load the test key")
}

/// A v1 request for `node`, as a runner would encode it.
fn request(command: &str, node: &str, sent_ago_secs: i64, ttl: u64) -> Request {
    Request {
        id: format!("req-{:08x}", rand_u32()),
        command: command.to_string(),
        targets: vec![node.to_string()],
        sender: "signing-test".into(),
        sent_at: Utc::now() - chrono::Duration::seconds(sent_ago_secs),
        ttl,
        reply_to: None,
        unsafe_command: false,
        want_value: false,
    }
}

fn body(r: &Request) -> Vec<u8> {
    vogeler_protocol::encode(&Message::Request(r.clone()))
}

fn signed_requests_run_and_forged_altered_unknown_expired_replayed_are_refused(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    let counter = d.path("count.txt");
    std::fs::write(
        d.plugins.join("count.cfg"),
        format!(
            "[count]\nname = count\ndescription = counts its runs\ncommand = sh -c 'echo run >> {} && echo ok'\nresult_format = output\n",
            counter.display()
        ),
    )
    .expect("plugin");
    std::fs::write(
        d.plugins.join("hello.cfg"),
        plugin("hello", "echo hello", "output").1,
    )
    .expect("plugin");
    let runner_key = d.keygen("keys", "runner");
    let mallory_key = d.keygen("other", "mallory");
    d.write_conf("\n[runner]\nsigning_key = keys/runner.key\n\n[client]\ntrusted_keys = keys\n");
    let _server = d.server(&[]);
    let n = d.node("signed");
    let client = d.client(&n, &[]);

    // The runner signs (its key from [runner] signing_key); the client runs it.
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    d.wait_document(&n, 20, |doc| doc["hello"][0] == "hello");

    let runner = load_key(&runner_key);
    let mallory = load_key(&mallory_key);

    // Forged: mallory's signature under the runner's key id.
    let r = request("hello", &n, 0, 300);
    let b = body(&r);
    let forged = vec![
        ("x-vogeler-signature".into(), mallory.sign(&b)),
        ("x-vogeler-key-id".into(), runner.id().to_string()),
    ];
    d.publish_request(Some(&n), b, forged);
    d.wait_refusal(&n, &r.id, "bad signature");

    // Altered: a validly signed body changed after signing.
    let r = request("hello", &n, 0, 300);
    let b = body(&r);
    let headers = runner.headers(&b);
    let mut altered = r.clone();
    altered.command = "count".into();
    d.publish_request(Some(&n), body(&altered), headers);
    d.wait_refusal(&n, &r.id, "bad signature");

    // Signed by a key the client does not trust.
    let r = request("hello", &n, 0, 300);
    let b = body(&r);
    d.publish_request(Some(&n), b.clone(), mallory.headers(&b));
    d.wait_refusal(&n, &r.id, "unknown key");

    // Validly signed but past its ttl.
    let r = request("hello", &n, 3600, 60);
    let b = body(&r);
    d.publish_request(Some(&n), b.clone(), runner.headers(&b));
    d.wait_refusal(&n, &r.id, "expired");

    // Replayed: the same signed message published twice runs once.
    let r = request("count", &n, 0, 300);
    let b = body(&r);
    let headers = runner.headers(&b);
    d.publish_request(Some(&n), b.clone(), headers.clone());
    d.wait_document(&n, 20, |doc| doc["count"][0] == "ok");
    d.publish_request(Some(&n), b, headers);
    d.wait_refusal(&n, &r.id, "replayed");
    let runs = std::fs::read_to_string(&counter).expect("counter file");
    assert_eq!(runs.lines().count(), 1, "the replay must not run: {runs:?}");

    // Unsigned requests still run while require_signed is off (the 2010 behaviour).
    d.publish_requests(
        Some(&n),
        vec![Outgoing::new(vogeler_protocol::encode_legacy_request(
            "count",
        ))],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&counter)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the unsigned 2010 request never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Each refusal was one WARN line naming its reason.
    let log = client.log_text();
    for reason in ["bad-signature", "unknown-key", "expired", "replayed"] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("request refused") && l.contains(reason)),
            "no WARN line with reason {reason}:\n{log}"
        );
    }
}

#[test]
fn signed_requests_run_and_forged_altered_unknown_expired_replayed_are_refused_on_rabbitmq() {
    signed_requests_run_and_forged_altered_unknown_expired_replayed_are_refused(Bus::Rabbit);
}

#[test]
fn signed_requests_run_and_forged_altered_unknown_expired_replayed_are_refused_on_nats() {
    signed_requests_run_and_forged_altered_unknown_expired_replayed_are_refused(Bus::Nats);
}

fn require_signed_refuses_unsigned_and_2010_requests(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[("hello.cfg", plugin("hello", "echo hello", "output").1)],
    );
    d.keygen("keys", "runner");
    d.write_conf("\n[client]\ntrusted_keys = keys/runner.pub\nrequire_signed = true\n");
    let _server = d.server(&[]);
    let n = d.node("strict");
    let _client = d.client(&n, &[]);

    // Unsigned: refused, and the runner's --wait summary shows the error.
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unsigned"), "{}", text(&out));
    assert!(d.document(&n).is_some_and(|doc| doc.get("hello").is_none()));

    // A 2010-format request cannot be signed: refused.
    d.publish_requests(
        Some(&n),
        vec![Outgoing::new(vogeler_protocol::encode_legacy_request(
            "hello",
        ))],
    );
    let doc = d.wait_document(&n, 20, |doc| {
        doc["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2010-format"))
    });
    assert!(doc.get("hello").is_none(), "{doc}");

    // Signed with --signing-key: runs.
    let key = d.path("keys/runner.key").display().to_string();
    let out = d.runner(&[
        "-x",
        "hello",
        "-n",
        &n,
        "--wait",
        "--timeout",
        "20s",
        "--signing-key",
        &key,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    d.wait_document(&n, 20, |doc| doc["hello"][0] == "hello");
}

#[test]
fn require_signed_refuses_unsigned_and_2010_requests_on_rabbitmq() {
    require_signed_refuses_unsigned_and_2010_requests(Bus::Rabbit);
}

#[test]
fn require_signed_refuses_unsigned_and_2010_requests_on_nats() {
    require_signed_refuses_unsigned_and_2010_requests(Bus::Nats);
}

fn unsafe_commands_need_a_valid_signature_even_with_allow_unsafe(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    d.keygen("keys", "runner");
    d.write_conf("\n[client]\ntrusted_keys = keys\n");
    let _server = d.server(&[]);
    let n = d.node("unsafe");
    let _client = d.client(&n, &["--allow-unsafe"]);

    let out = d.runner(&[
        "-x",
        "echo unsafe-ran",
        "--unsafe",
        "-n",
        &n,
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("only when signed by a trusted key"),
        "{}",
        text(&out)
    );
    assert!(d
        .document(&n)
        .is_some_and(|doc| doc.get("unsafe_echo").is_none()));

    let key = d.path("keys/runner.key").display().to_string();
    let out = d.runner(&[
        "-x",
        "echo unsafe-ran",
        "--unsafe",
        "-n",
        &n,
        "--wait",
        "--timeout",
        "20s",
        "--signing-key",
        &key,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    d.wait_document(&n, 20, |doc| doc["unsafe_echo"][0] == "unsafe-ran");
}

#[test]
fn unsafe_commands_need_a_valid_signature_even_with_allow_unsafe_on_rabbitmq() {
    unsafe_commands_need_a_valid_signature_even_with_allow_unsafe(Bus::Rabbit);
}

#[test]
fn unsafe_commands_need_a_valid_signature_even_with_allow_unsafe_on_nats() {
    unsafe_commands_need_a_valid_signature_even_with_allow_unsafe(Bus::Nats);
}

fn signed_results_are_verified_and_impostors_marked_or_dead_lettered(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[("hello.cfg", plugin("hello", "echo hello", "output").1)],
    );
    let n = d.node("real");
    d.keygen("nodes", &n);
    d.write_conf(&format!(
        "\n[client]\nsigning_key = nodes/{n}.key\n\n[server]\nnode_keys = nodes\n"
    ));
    let mut server = d.server(&[]);
    let _client = d.client(&n, &[]);
    let impostor = |plugin: &str, value: &str| {
        format!(
            r#"{{"v":1,"kind":"result","node":"{n}","plugin":"{plugin}","format":"output","data":["{value}"],"duration_ms":1,"collected_at":"{}"}}"#,
            vogeler_store::rfc3339(Utc::now())
        )
        .into_bytes()
    };

    // The node's own signed result: verified.
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = d.wait_document(&n, 20, |doc| doc["signature"]["verified"] == true);
    assert_eq!(doc["hello"][0], "hello");
    assert_eq!(doc["signature"]["key_id"].as_str().map(str::len), Some(16));

    // An impostor publishing under its name: stored, but marked unverified.
    d.publish_results(vec![Outgoing::new(impostor("fake", "forged"))]);
    let doc = d.wait_document(&n, 20, |doc| doc["signature"]["verified"] == false);
    assert_eq!(doc["signature"]["reason"], "unsigned");
    assert_eq!(doc["signature"]["plugin"], "fake");
    // Each key keeps its own verdict: the unsigned one does not hide the signed one's.
    assert_eq!(doc["signature.hello"]["verified"], true, "{doc}");
    assert_eq!(
        doc["signature.hello"]["key_id"].as_str().map(str::len),
        Some(16),
        "{doc}"
    );
    assert_eq!(doc["signature.fake"]["verified"], false, "{doc}");
    assert_eq!(doc["signature.fake"]["reason"], "unsigned", "{doc}");
    let out = d.admin(&["node", &n]);
    assert!(text(&out).contains("signature.hello"), "{}", text(&out));
    // Signed by another key: also unverified.
    let other = load_key(&d.keygen("elsewhere", "other"));
    let b = impostor("fake2", "forged");
    d.publish_results(vec![Outgoing {
        headers: other.headers(&b),
        ..Outgoing::new(b.clone())
    }]);
    let doc = d.wait_document(&n, 20, |doc| doc["signature"]["plugin"] == "fake2");
    assert_eq!(doc["signature"]["reason"], "bad-signature");

    // With require_verified, unverified results are dead-lettered, never stored.
    server.stop();
    d.write_conf(&format!(
        "\n[client]\nsigning_key = nodes/{n}.key\n\n[server]\nnode_keys = nodes\nrequire_verified = true\n"
    ));
    let _server = d.server(&[]);
    d.publish_results(vec![Outgoing::new(impostor("fake3", "forged"))]);
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = d.wait_document(&n, 20, |doc| doc["signature"]["verified"] == true);
    assert!(doc.get("fake3").is_none(), "{doc}");
    let dead = d.take_dead_letters(Duration::from_secs(2));
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    assert_eq!(dead[0].header("x-vogeler-reason"), Some("unverified"));
    assert!(
        dead[0]
            .header("x-vogeler-detail")
            .is_some_and(|m| m.contains("unsigned")),
        "{:?}",
        dead[0].headers
    );
}

#[test]
fn signed_results_are_verified_and_impostors_marked_or_dead_lettered_on_rabbitmq() {
    signed_results_are_verified_and_impostors_marked_or_dead_lettered(Bus::Rabbit);
}

#[test]
fn signed_results_are_verified_and_impostors_marked_or_dead_lettered_on_nats() {
    signed_results_are_verified_and_impostors_marked_or_dead_lettered(Bus::Nats);
}
