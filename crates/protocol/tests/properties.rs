//! Property tests: `decode` never panics, whatever the broker hands it, and every message
//! kind survives `encode` → `decode` unchanged (as do the 2010 shapes). The number of cases
//! is proptest's `PROPTEST_CASES` (256 unless set), so CI stays fast and a soak run can ask
//! for more: `PROPTEST_CASES=100000 cargo test -p vogeler-protocol --test properties`.

use proptest::prelude::*;
use serde_json::{json, Value};
use vogeler_protocol::{
    decode, encode, encode_legacy_request, encode_legacy_result, Decoded, Message,
};

/// Any text, including quotes, escapes, control characters and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{0,16}",
        any::<String>(),
        "[\"\\\\{}\\[\\]:,\\n\\t ]{0,8}",
    ]
}

/// A timestamp as the programs write it (RFC 3339 with nanoseconds, UTC).
fn time() -> impl Strategy<Value = String> {
    (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        chrono::DateTime::from_timestamp(secs, nanos)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    })
}

/// Plugin output as JSON: nested arrays and objects of strings, integers and booleans.
fn data() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
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
        (opt(text()), text(), text(), text(), opt(data())),
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
        text(),
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
    let pong = (text(), text(), time()).prop_map(|(ping_id, node, sent_at)| {
        json!({"kind": "pong", "ping_id": ping_id, "node": node, "sent_at": sent_at})
    });
    let heartbeat = (text(), time())
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

proptest! {
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
        node in text().prop_filter("an empty syskey is refused", |n| !n.trim().is_empty()),
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
