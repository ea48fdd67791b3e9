//! Property tests: `decode` never panics, whatever the broker hands it, and every message
//! kind survives `encode` → `decode` unchanged (as do the 2010 shapes). Hostile results
//! are refused with a reason or accepted, and what is accepted reads back identically
//! from SQLite, PostgreSQL and CouchDB (`decode → every store → read back`). The number of cases
//! is proptest's `PROPTEST_CASES` (256 unless set), so CI stays fast and a soak run can ask
//! for more: `PROPTEST_CASES=100000 cargo test -p vogeler-protocol --test properties`.

use proptest::prelude::*;
use serde_json::{json, Value};
use vogeler_protocol::{
    decode, encode, encode_legacy_request, encode_legacy_result, Decoded, Message,
};

/// Any text the limits let through: quotes, escapes, control characters and
/// non-ASCII, but no NUL (refused everywhere, see `limits`) and at most 60 characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{0,16}",
        "[^\\x00]{0,60}",
        "[\"\\\\{}\\[\\]:,\\n\\t ]{0,8}",
    ]
}

/// A node name: a host name (`limits::check_node_name`).
fn node() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,20}(\\.[a-z0-9][a-z0-9-]{0,20}){0,3}"
}

/// A plugin name: `[A-Za-z0-9_.-]`, not empty.
fn plugin_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,24}"
}

/// Any text at all (NUL included), for the refusal properties.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![text(), any::<String>()]
}

/// A timestamp as the programs write it (RFC 3339 with nanoseconds, UTC).
fn time() -> impl Strategy<Value = String> {
    (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        chrono::DateTime::from_timestamp(secs, nanos)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    })
}

/// A float as the limits canonicalise it (`3.0` is the integer `3`).
fn canonical(f: f64) -> Value {
    let text = Value::from(f).to_string();
    let text = vogeler_protocol::limits::scan(&text)
        .ok()
        .flatten()
        .unwrap_or(text);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Plugin output as JSON: nested arrays and objects of strings, integers and booleans.
fn data() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Few significant digits: serde_json (without `float_roundtrip`) parses these exactly.
        (-(1i64 << 40)..(1i64 << 40), 0u32..6)
            .prop_map(|(m, e)| canonical(m as f64 / 10f64.powi(e as i32))),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

/// Every v1 kind with arbitrary field values, built as the JSON a peer would send (so the
/// strategy does not depend on the structs' every field).
fn message() -> impl Strategy<Value = Message> {
    let request = (text(), text(), prop::collection::vec(text(), 0..4), text(), time(), any::<u32>(), opt(text()), any::<bool>())
        .prop_map(|(id, command, targets, sender, sent_at, ttl, reply_to, unsafe_command)| {
            let mut m = json!({"kind": "request", "id": id, "command": command, "targets": targets,
                "sender": sender, "sent_at": sent_at, "ttl": ttl, "unsafe_command": unsafe_command});
            if let Some(r) = reply_to {
                m["reply_to"] = json!(r);
            }
            m
        });
    let result = (
        (opt(text()), node(), plugin_name(), text(), opt(data())),
        (opt(text()), opt(text()), opt(any::<i32>()), any::<u32>(), time(), opt(text())),
    )
        .prop_map(|((request_id, node, plugin, format, data), (error, raw, exit_status, duration_ms, collected_at, reply_to))| {
            let mut m = json!({"kind": "result", "node": node, "plugin": plugin, "format": format,
                "duration_ms": duration_ms, "collected_at": collected_at});
            for (k, v) in [("request_id", request_id.map(Value::from)), ("data", data.filter(|d| !d.is_null())),
                ("error", error.map(Value::from)), ("raw", raw.map(Value::from)),
                ("exit_status", exit_status.map(Value::from)), ("reply_to", reply_to.map(Value::from))] {
                if let Some(v) = v {
                    m[k] = v;
                }
            }
            m
        });
    let stored = (
        opt(text()),
        node(),
        text(),
        any::<bool>(),
        opt(text()),
        time(),
    )
        .prop_map(|(request_id, node, plugin, ok, error, stored_at)| {
            let mut m = json!({"kind": "stored", "request_id": request_id, "node": node,
                "plugin": plugin, "ok": ok, "stored_at": stored_at});
            if let Some(e) = error {
                m["error"] = json!(e);
            }
            m
        });
    let ping = (text(), text(), time(), text()).prop_map(|(id, sender, sent_at, reply_to)| {
        json!({"kind": "ping", "id": id, "sender": sender, "sent_at": sent_at, "reply_to": reply_to})
    });
    let pong = (text(), node(), time()).prop_map(|(ping_id, node, sent_at)| {
        json!({"kind": "pong", "ping_id": ping_id, "node": node, "sent_at": sent_at})
    });
    let heartbeat = (node(), time())
        .prop_map(|(node, sent_at)| json!({"kind": "heartbeat", "node": node, "sent_at": sent_at}));
    let discover = (
        text(),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(text(), 0..3),
        opt(any::<u32>()),
        time(),
        text(),
    )
        .prop_map(|(id, filters, names, within, sent_at, reply_to)| {
            let mut m = json!({"kind": "discover", "id": id, "filters": filters, "names": names,
                "sent_at": sent_at, "reply_to": reply_to});
            if let Some(w) = within {
                m["seen_within_secs"] = json!(w);
            }
            m
        });
    let discovered = (text(), prop::collection::vec(text(), 0..4), opt(text())).prop_map(
        |(discover_id, nodes, error)| {
            let mut m = json!({"kind": "discovered", "discover_id": discover_id, "nodes": nodes});
            if let Some(e) = error {
                m["error"] = json!(e);
            }
            m
        },
    );
    prop_oneof![request, result, stored, ping, pong, heartbeat, discover, discovered].prop_map(
        |v| {
            serde_json::from_value::<Message>(v.clone())
                .unwrap_or_else(|e| panic!("the strategy built an invalid message {v}: {e}"))
        },
    )
}

/// A hostile JSON value as text: numbers of any size and form, lone surrogate and NUL
/// escapes, backslashes, long keys, deep nesting.
fn hostile_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| Value::from(f).to_string()),
        (any::<i32>(), -400i32..400).prop_map(|(m, e)| format!("{m}e{e}")),
        (0u32..100, 0u32..100).prop_map(|(a, b)| format!("{a}.{b}0")),
        Just("-0".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("\"\\udc00\\ud800\"".to_string()),
        Just("\"\\ud83d\\ude00\"".to_string()),
        Just("\"a\\u0000b\"".to_string()),
        Just("\"a\\\\u0000b\"".to_string()),
        any_text().prop_map(|t| Value::String(t).to_string()),
    ];
    let tree = leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((any_text(), inner), 0..5).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        8 => tree,
        1 => (1usize..200).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        1 => (1usize..2000).prop_map(|n| format!("{{\"{}\":1}}", "k".repeat(n))),
    ]
}

/// Every reason code a refusal may carry.
const REASONS: &[&str] = &[
    "bad-utf8",
    "not-json",
    "unknown-version",
    "unknown-kind",
    "bad-field",
    "unknown-shape",
    "too-large",
    "too-deep",
    "bad-number",
    "lone-surrogate",
    "nul-character",
    "bad-node-name",
    "bad-plugin-name",
    "field-too-long",
    "key-too-long",
];

proptest! {
    /// One validation: the hot path and the general decode accept the same hostile
    /// results and refuse them for the same reason; what they accept has canonical numbers (the
    /// text the hot path keeps parses to the tree `decode` built, and needs no rewriting).
    #[test]
    fn hostile_results_are_refused_with_a_reason_or_accepted_canonical(
        data in hostile_json(),
        node in prop_oneof![node(), any_text()],
        plugin in prop_oneof![plugin_name(), any_text()],
        reply_to in opt(prop_oneof![text(), "[a-z]{250,260}"]),
    ) {
        let mut envelope = json!({"v": 1, "kind": "result", "node": node, "plugin": plugin,
            "format": "json", "collected_at": "2026-01-01T00:00:00Z"});
        if let Some(r) = reply_to {
            envelope["reply_to"] = json!(r);
        }
        let text = envelope.to_string();
        let body = format!("{},\"data\":{data}}}", &text[..text.len() - 1]);
        let tree = decode(body.as_bytes());
        let raw = vogeler_protocol::decode_raw_result(body.as_bytes());
        match (&tree, raw) {
            (Ok(Decoded::Message(Message::Result(t))), Some(Ok(r))) => {
                let raw_data = r.data.as_ref().map(|d| d.get().to_string()).unwrap_or_default();
                let parsed: Value = serde_json::from_str(&raw_data).expect("kept text is JSON");
                prop_assert_eq!(Some(&parsed), t.data.as_ref());
                prop_assert_eq!(vogeler_protocol::limits::scan(&raw_data), Ok(None));
            }
            (Err(e), Some(Err(r))) => {
                prop_assert!(REASONS.contains(&e.reason()), "unknown reason {}", e.reason());
                prop_assert_eq!(e.reason(), r.reason(), "{} vs {}", e, r);
            }
            (Err(e), None) => prop_assert!(REASONS.contains(&e.reason())),
            (t, r) => prop_assert!(false, "decode and decode_raw_result disagree: {:?} vs {:?}", t, r),
        }
    }

    /// Whatever a hostile peer puts in any field of any kind, decode answers: a message
    /// or a refusal with a known reason code, never a panic.
    #[test]
    fn hostile_fields_of_every_kind_are_refused_with_a_known_reason(
        kind in prop_oneof![Just("request"), Just("result"), Just("stored"), Just("ping"), Just("pong"),
            Just("heartbeat"), Just("discover"), Just("discovered"), Just("announce")],
        fields in prop::collection::btree_map(
            prop_oneof![Just("id"), Just("node"), Just("plugin"), Just("format"), Just("command"),
                Just("sender"), Just("reply_to"), Just("request_id"), Just("ping_id"), Just("discover_id")],
            prop_oneof![any_text(), "[a-z.]{200,300}", "[a-z]{1000,5000}"], 0..6),
        lists in prop::collection::btree_map(
            prop_oneof![Just("targets"), Just("filters"), Just("names"), Just("nodes"), Just("expected")],
            prop::collection::vec(prop_oneof![any_text(), "[a-z]{1000,1100}"], 0..3), 0..3),
    ) {
        let mut m = json!({"v": 1, "kind": kind, "id": "i", "ping_id": "p", "discover_id": "d",
            "request_id": "r", "node": "web01", "plugin": "p", "format": "json", "command": "facter",
            "ok": true, "ttl": 1, "data": 1, "reply_to": "q",
            "sent_at": "2026-01-01T00:00:00Z", "stored_at": "2026-01-01T00:00:00Z",
            "collected_at": "2026-01-01T00:00:00Z"});
        for (k, v) in fields {
            m[k] = json!(v);
        }
        for (k, v) in lists {
            m[k] = json!(v);
        }
        if let Err(e) = decode(m.to_string().as_bytes()) {
            prop_assert!(REASONS.contains(&e.reason()), "unknown reason {} ({})", e.reason(), e);
        }
    }

    #[test]
    fn decode_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&body);
    }

    #[test]
    fn decode_never_panics_on_json_like_text(body in "[{}\\[\\]\":,0-9a-z_ .\\\\-]{0,200}") {
        let _ = decode(body.as_bytes());
    }

    #[test]
    fn decode_never_panics_on_objects_with_known_keys(
        v in prop_oneof![Just(json!(1)), Just(json!("1")), Just(json!(2)), Just(Value::Null)],
        kind in prop_oneof![Just("request"), Just("result"), Just("stored"), Just("ping"), Just("pong"),
            Just("heartbeat"), Just("discover"), Just("discovered"), Just("nope")],
        fields in prop::collection::btree_map(
            prop_oneof![Just("id"), Just("node"), Just("plugin"), Just("format"), Just("data"),
                Just("sent_at"), Just("collected_at"), Just("ttl"), Just("syskey"), Just("last_error")],
            data(), 0..6),
    ) {
        let mut m = json!({"v": v, "kind": kind});
        for (k, val) in fields {
            m[k] = val;
        }
        let _ = decode(m.to_string().as_bytes());
        m.as_object_mut().map(|o| o.remove("v"));
        let _ = decode(m.to_string().as_bytes());
    }

    #[test]
    fn every_message_kind_round_trips(msg in message()) {
        let body = encode(&msg);
        prop_assert_eq!(decode(&body), Ok(Decoded::Message(msg)));
    }

    #[test]
    fn legacy_requests_round_trip(command in text().prop_filter("an empty request is refused", |c| !c.trim().is_empty())) {
        prop_assert_eq!(
            decode(&encode_legacy_request(&command)),
            Ok(Decoded::LegacyRequest(command))
        );
    }

    #[test]
    fn legacy_results_round_trip(
        node in node(),
        plugin in "[a-z][a-z0-9_]{0,11}".prop_filter("not a reserved key", |p| !["syskey", "format", "last_error", "v", "kind"].contains(&p.as_str())),
        raw in text(),
        format in "[a-z]{1,8}",
    ) {
        match decode(&encode_legacy_result(&node, &plugin, &raw, &format)) {
            Ok(Decoded::LegacyResult(r)) => {
                prop_assert_eq!(r.node, node);
                prop_assert_eq!(r.plugin, Some(plugin));
                prop_assert_eq!(r.raw, Some(raw));
                prop_assert_eq!(r.format, format);
                prop_assert!(r.error.is_none());
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }
}

/// What decode accepts of generated hostile results goes into every store (SQLite,
/// PostgreSQL, CouchDB: the real servers of `vogeler_store::testing`) as the server's hot
/// path hands it over (text), and reads back as the tree `decode` built, through the
/// record, the key values and the history.
#[test]
fn accepted_results_read_back_identically_from_every_store() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use vogeler_store::{Change, Data, KeyPath, Observation};
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let stores: Vec<(&str, vogeler_store::DynStore)> = rt.block_on(async {
        let mut out = Vec::new();
        for backend in ["sqlite", "postgres", "couch"] {
            let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
            out.push((backend, vogeler_store::testing::open(&dsn).await));
        }
        out
    });
    // Each case is a round trip to three servers: a quarter of the configured cases.
    let cases = Config::default().cases.div_ceil(4).max(16);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let n = std::sync::atomic::AtomicU64::new(0);
    let outcome = runner.run(&hostile_json(), |data| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = format!("prop{i}");
        let body = format!(
            r#"{{"v":1,"kind":"result","node":"{node}","plugin":"p","format":"json","collected_at":"2026-01-01T00:00:00Z","data":{data}}}"#
        );
        let r = match vogeler_protocol::decode_raw_result(body.as_bytes()) {
            Some(Ok(r)) => r,
            Some(Err(e)) if REASONS.contains(&e.reason()) => return Ok(()),
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        let Some(text) = r.data else {
            return Err(TestCaseError::fail("no data"));
        };
        let want: Value = serde_json::from_str(text.get()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (backend, store) in &stores {
            let obs = Observation {
                node: node.clone(),
                at: chrono::Utc::now(),
                change: Change::Plugin { name: "p".into(), value: Data::Text(text.clone()), history: true },
            };
            let got = rt.block_on(async {
                store.apply(vec![obs].into()).await.map_err(|e| e.to_string())?;
                let rec = store.node(&node).await.map_err(|e| e.to_string())?;
                let values = store
                    .values(&KeyPath::parse("p").map_err(|e| e.to_string())?)
                    .await
                    .map_err(|e| e.to_string())?;
                store.history(&node, None).await.map_err(|e| e.to_string())?;
                // The fleet views read every node: none may fail on an accepted value.
                store.nodes().await.map_err(|e| e.to_string())?;
                store
                    .changes(chrono::Utc::now() - chrono::Duration::hours(1), 1000)
                    .await
                    .map_err(|e| e.to_string())?;
                let value = values.rows.into_iter().find(|(n, _)| *n == node).map(|(_, v)| v);
                Ok::<_, String>((rec.and_then(|r| r.keys.get("p").cloned()), value))
            });
            let (record, value) = got.map_err(|e| TestCaseError::fail(format!("{backend}: {e} for {data}")))?;
            for (what, got) in [("record", record), ("values", value)] {
                let got = got.ok_or_else(|| TestCaseError::fail(format!("{backend}: no {what} for {data}")))?;
                if let Some(path) = vogeler_store::conformance::first_difference(&got, &want, "p") {
                    return Err(TestCaseError::fail(format!(
                        "{backend} {what} differs at {path}: {got} vs {want} (sent {data})"
                    )));
                }
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // Nothing accepted is unreadable afterwards, on any backend.
    for (backend, store) in &stores {
        let found = rt.block_on(store.check()).expect("check");
        assert!(
            found.is_empty(),
            "{backend}: unreadable after acceptance: {found:?}"
        );
    }
}
