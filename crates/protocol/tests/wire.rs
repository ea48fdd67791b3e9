//! Round trips for every kind, the 2010 fixtures byte for byte, and malformed input.

use chrono::{TimeZone, Utc};
use serde_json::json;
use vogeler_protocol::*;

fn t() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0)
        .single()
        .expect("time")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../fixtures/legacy-wire/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_kind_round_trips() {
    let messages = vec![
        Message::Request(Request {
            id: "r1".into(),
            command: "facter".into(),
            targets: vec!["all".into()],
            sender: "runner@h".into(),
            sent_at: t(),
            ttl: 60,
            reply_to: Some("amq.gen-1".into()),
            unsafe_command: false,
            want_value: false,
        }),
        Message::Result(PluginResult {
            request_id: Some("r1".into()),
            node: "web01".into(),
            plugin: "facter".into(),
            format: "yaml".into(),
            data: Some(json!({"os": {"family": "Debian"}})),
            error: None,
            raw: None,
            exit_status: Some(0),
            duration_ms: 12,
            collected_at: t(),
            reply_to: None,
            want_value: false,
            history: true,
        }),
        Message::Result(PluginResult {
            request_id: None,
            node: "web01".into(),
            plugin: "ohai".into(),
            format: "json".into(),
            data: None,
            error: Some("plugin `ohai` exited with status 1".into()),
            raw: Some("garbage".into()),
            exit_status: Some(1),
            duration_ms: 3,
            collected_at: t(),
            reply_to: None,
            want_value: false,
            history: true,
        }),
        Message::Stored(Stored {
            request_id: Some("r1".into()),
            node: "web01".into(),
            plugin: "facter".into(),
            ok: true,
            error: None,
            stale: false,
            clamped_from: None,
            stored_at: t(),
            value: None,
            value_truncated: false,
        }),
        Message::Ping(Ping {
            id: "p1".into(),
            sender: "runner".into(),
            sent_at: t(),
            reply_to: "q".into(),
        }),
        Message::Pong(Pong {
            ping_id: "p1".into(),
            node: "web01".into(),
            sent_at: t(),
        }),
        Message::Heartbeat(Heartbeat {
            node: "web01".into(),
            sent_at: t(),
        }),
        Message::Announce(vogeler_protocol::Announce {
            request_id: "r1".into(),
            command: "facter".into(),
            expected: Some(vec!["web01".into()]),
            sender: "runner".into(),
            sent_at: t(),
            ttl: 300,
        }),
        Message::Announce(vogeler_protocol::Announce {
            request_id: "r2".into(),
            command: "facter".into(),
            expected: None,
            sender: "runner".into(),
            sent_at: t(),
            ttl: 0,
        }),
    ];
    for m in messages {
        let bytes = encode(&m);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"], m.kind());
        assert_eq!(
            decode(&bytes),
            Ok(Decoded::Message(m.clone())),
            "{}",
            m.kind()
        );
    }
}

/// Issue 18 (`vogeler-runner --output`): the request asks for the value, the result
/// carries the ask, the confirmation carries the value (or says it was too large).
#[test]
fn wanted_values_round_trip() {
    let request = Message::Request(Request {
        id: "r1".into(),
        command: "facter".into(),
        targets: vec!["all".into()],
        sender: "runner@h".into(),
        sent_at: t(),
        ttl: 60,
        reply_to: Some("amq.gen-1".into()),
        unsafe_command: false,
        want_value: true,
    });
    let result = Message::Result(PluginResult {
        request_id: Some("r1".into()),
        node: "web01".into(),
        plugin: "facter".into(),
        format: "json".into(),
        data: Some(json!({"os": {"family": "Debian"}, "processorcount": 4})),
        error: None,
        raw: None,
        exit_status: Some(0),
        duration_ms: 12,
        collected_at: t(),
        reply_to: Some("amq.gen-1".into()),
        want_value: true,
        history: true,
    });
    let stored = |value: Option<serde_json::Value>, truncated: bool| Stored {
        request_id: Some("r1".into()),
        node: "web01".into(),
        plugin: "facter".into(),
        ok: true,
        error: None,
        stale: false,
        clamped_from: None,
        stored_at: t(),
        value,
        value_truncated: truncated,
    };
    let with_value = Message::Stored(stored(
        Some(json!({"os": {"family": "Debian"}, "processorcount": 4})),
        false,
    ));
    let too_large = Message::Stored(stored(None, true));
    let null = Message::Stored(stored(Some(serde_json::Value::Null), false));
    for m in [request, result, with_value, too_large, null] {
        let bytes = encode(&m);
        assert_eq!(decode(&bytes), Ok(Decoded::Message(m.clone())), "{m:?}");
    }
    // On the hot path too.
    let body = encode(&Message::Result(PluginResult {
        request_id: None,
        node: "web01".into(),
        plugin: "p".into(),
        format: "json".into(),
        data: Some(json!(1)),
        error: None,
        raw: None,
        exit_status: None,
        duration_ms: 0,
        collected_at: t(),
        reply_to: Some("q".into()),
        want_value: true,
        history: true,
    }));
    assert!(
        decode_raw_result(&body)
            .expect("a v1 result")
            .expect("valid")
            .want_value
    );
    // Unset, the fields are not written at all: an older peer sees the old shape.
    let plain = encode(&Message::Stored(stored(None, false)));
    let text = String::from_utf8(plain).expect("utf-8");
    assert!(
        !text.contains("value") && !text.contains("want_value"),
        "{text}"
    );
    let plain = String::from_utf8(encode(&Message::Request(Request::legacy(
        "facter".into(),
        "n",
    ))))
    .expect("utf-8");
    assert!(!plain.contains("want_value"), "{plain}");
}

#[test]
fn messages_without_the_value_fields_still_decode() {
    let old_request = br#"{"v":1,"kind":"request","id":"r1","command":"facter","targets":["all"],"sender":"s","sent_at":"2026-11-24T12:00:00Z","ttl":60,"reply_to":"q"}"#;
    let Ok(Decoded::Message(Message::Request(r))) = decode(old_request) else {
        panic!("an old request decodes");
    };
    assert!(!r.want_value);
    let old_result = br#"{"v":1,"kind":"result","request_id":"r1","node":"web01","plugin":"facter","format":"json","data":{"a":1},"collected_at":"2026-11-24T12:00:00Z","reply_to":"q"}"#;
    let Ok(Decoded::Message(Message::Result(r))) = decode(old_result) else {
        panic!("an old result decodes");
    };
    assert!(!r.want_value);
    let raw = decode_raw_result(old_result)
        .expect("a v1 result")
        .expect("valid");
    assert!(!raw.want_value);
    let old_stored = br#"{"v":1,"kind":"stored","request_id":"r1","node":"web01","plugin":"facter","ok":true,"stored_at":"2026-11-24T12:00:01Z"}"#;
    let Ok(Decoded::Message(Message::Stored(s))) = decode(old_stored) else {
        panic!("an old confirmation decodes");
    };
    assert_eq!((s.value, s.value_truncated), (None, false));
    // A value of JSON null is a value, not an absent one.
    let null = br#"{"v":1,"kind":"stored","node":"web01","plugin":"p","ok":true,"stored_at":"2026-11-24T12:00:01Z","value":null}"#;
    let Ok(Decoded::Message(Message::Stored(s))) = decode(null) else {
        panic!("decodes");
    };
    assert_eq!(s.value, Some(serde_json::Value::Null));
}

#[test]
fn stored_values_are_bounded_and_consistent() {
    let mut s = Stored {
        request_id: Some("r1".into()),
        node: "web01".into(),
        plugin: "p".into(),
        ok: true,
        error: None,
        stale: false,
        clamped_from: None,
        stored_at: t(),
        value: None,
        value_truncated: false,
    };
    // Exactly at the limit fits: a string of N bytes is N + 2 of JSON.
    let at_limit = json!("x".repeat(limits::MAX_STORED_VALUE_BYTES - 2));
    assert_eq!(limits::json_len(&at_limit), limits::MAX_STORED_VALUE_BYTES);
    s.attach_value(at_limit.clone());
    assert_eq!(
        (s.value.as_ref(), s.value_truncated),
        (Some(&at_limit), false)
    );
    assert!(decode(&encode(&Message::Stored(s.clone()))).is_ok());
    // One byte more is left out and marked.
    let over = json!("x".repeat(limits::MAX_STORED_VALUE_BYTES - 1));
    s.attach_value(over.clone());
    assert_eq!((s.value.as_ref(), s.value_truncated), (None, true));
    assert!(decode(&encode(&Message::Stored(s.clone()))).is_ok());
    assert_eq!(
        limits::json_len(&json!({"a": [1, "b", null]})),
        r#"{"a":[1,"b",null]}"#.len()
    );

    // A peer that sends more than the limit is refused, naming the field.
    let mut big = s.clone();
    big.value = Some(over);
    big.value_truncated = false;
    let err = decode(&encode(&Message::Stored(big))).expect_err("over the limit");
    assert_eq!(err.reason(), "field-too-long");
    assert!(err.to_string().contains("value"), "{err}");
    // Contradictions are refused.
    let mut both = s.clone();
    both.value = Some(json!(1));
    both.value_truncated = true;
    assert_eq!(
        decode(&encode(&Message::Stored(both.clone())))
            .expect_err("both")
            .reason(),
        "bad-field"
    );
    let error = Stored {
        ok: false,
        error: Some("boom".into()),
        value_truncated: false,
        ..both.clone()
    };
    assert_eq!(
        decode(&encode(&Message::Stored(error)))
            .expect_err("value on an error")
            .reason(),
        "bad-field"
    );
    let stale = Stored {
        stale: true,
        value_truncated: false,
        ..both
    };
    assert_eq!(
        decode(&encode(&Message::Stored(stale)))
            .expect_err("value on a stale answer")
            .reason(),
        "bad-field"
    );
    // Asking for the value without a reply queue to send it to.
    let mut r = Request::legacy("facter".into(), "n");
    r.id = "r1".into();
    r.want_value = true;
    let err = decode(&encode(&Message::Request(r.clone()))).expect_err("no reply_to");
    assert_eq!(err.reason(), "bad-field");
    assert!(err.to_string().contains("want_value"), "{err}");
    r.reply_to = Some("q".into());
    assert!(decode(&encode(&Message::Request(r))).is_ok());
}

#[test]
fn expiry() {
    let mut r = Request::legacy("facter".into(), "n");
    assert!(
        !r.is_expired(Utc::now() + chrono::Duration::days(365)),
        "ttl 0 never expires"
    );
    r.sent_at = t();
    r.ttl = 10;
    assert!(!r.is_expired(t() + chrono::Duration::seconds(10)));
    assert!(r.is_expired(t() + chrono::Duration::seconds(11)));
}

#[test]
fn legacy_requests_decode_and_reencode_byte_for_byte() {
    for (file, command) in [
        ("request-broadcast.json", "facter"),
        ("request-alias.json", "get_procs"),
    ] {
        let bytes = fixture(file);
        assert_eq!(decode(&bytes), Ok(Decoded::LegacyRequest(command.into())));
        assert_eq!(
            encode_legacy_request(command),
            bytes.trim_ascii_end(),
            "{file}"
        );
    }
}

#[test]
fn legacy_results_decode_and_reencode_byte_for_byte() {
    for (file, plugin, format) in [
        ("result-output.json", "rpm", "output"),
        ("result-json.json", "ohai", "json"),
        ("result-yaml.json", "facter", "yaml"),
    ] {
        let bytes = fixture(file);
        let Ok(Decoded::LegacyResult(r)) = decode(&bytes) else {
            panic!("{file} did not decode as a 2010 result");
        };
        assert_eq!(r.node, "web01");
        assert_eq!(r.plugin.as_deref(), Some(plugin));
        assert_eq!(r.format, format);
        let raw = r.raw.expect("raw output");
        assert_eq!(
            encode_legacy_result("web01", plugin, &raw, format),
            bytes.trim_ascii_end(),
            "{file}"
        );
    }
}

#[test]
fn legacy_error_result() {
    let bytes = fixture("result-error.json");
    let Ok(Decoded::LegacyResult(r)) = decode(&bytes) else {
        panic!("error fixture did not decode");
    };
    let e = r.error.expect("error");
    assert!(e.message.contains("not authorized"));
    let ts = e.timestamp.expect("timestamp");
    assert_eq!(
        ts.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        "2010-09-26 14:19:59.078000"
    );
    assert_eq!(
        encode_legacy_error("web01", &e.message, ts),
        bytes.trim_ascii_end()
    );
}

#[test]
fn malformed_input_names_the_problem() {
    let cases: Vec<(&[u8], &str)> = vec![
        (&[0xff, 0xfe], "bad-utf8"),
        (b"{\"v\":1,", "not-json"),
        (b"", "not-json"),
        (b"{}", "unknown-shape"),
        (b"42", "unknown-shape"),
        (b"[1,2]", "unknown-shape"),
        (b"null", "unknown-shape"),
        (b"\"\"", "unknown-shape"),
        (br#"{"v":2,"kind":"result"}"#, "unknown-version"),
        (br#"{"v":"1","kind":"result"}"#, "unknown-version"),
        (br#"{"v":1,"kind":"bogus"}"#, "unknown-kind"),
        (br#"{"v":1}"#, "bad-field"),
        (br#"{"v":1,"kind":"result","plugin":"p","format":"json","collected_at":"2026-01-01T00:00:00Z"}"#, "bad-field"),
        (br#"{"v":1,"kind":"result","node":"n","plugin":"p","format":"json","collected_at":"yesterday"}"#, "bad-field"),
        (br#"{"syskey":""}"#, "bad-field"),
        (br#"{"syskey":"n","format":"yaml"}"#, "bad-field"),
        (br#"{"syskey":"n","a":"1","b":"2"}"#, "bad-field"),
        (br#"{"syskey":"n","last_error":"x"}"#, "bad-field"),
    ];
    for (body, reason) in cases {
        let err = decode(body).expect_err(&String::from_utf8_lossy(body));
        assert_eq!(
            err.reason(),
            reason,
            "{:?}: {err}",
            String::from_utf8_lossy(body)
        );
        assert!(!err.to_string().is_empty());
    }
    // The bad field is named.
    let err = decode(br#"{"v":1,"kind":"result","plugin":"p","format":"json","collected_at":"2026-01-01T00:00:00Z"}"#)
        .expect_err("missing node");
    assert!(err.to_string().contains("node"), "{err}");
}

#[test]
fn raw_results_keep_their_data_text_and_agree_with_decode() {
    let body = br#"{"v":1,"kind":"result","node":"web01","plugin":"facter","format":"yaml","data":{"os":{"family":"Debian"}, "n":[1,2]},"duration_ms":3,"collected_at":"2026-11-24T12:00:00Z"}"#;
    let raw = decode_raw_result(body)
        .expect("a v1 result")
        .expect("valid");
    assert_eq!(
        raw.data.as_ref().map(|d| d.get()),
        Some(r#"{"os":{"family":"Debian"}, "n":[1,2]}"#)
    );
    let Ok(Decoded::Message(Message::Result(tree))) = decode(body) else {
        panic!("decode agrees it is a result");
    };
    assert_eq!(
        tree.data,
        Some(json!({"os": {"family": "Debian"}, "n": [1, 2]}))
    );
    assert_eq!((raw.node, raw.collected_at), (tree.node, tree.collected_at));

    // Anything else is left to `decode`, which words the error.
    for other in [
        &br#"{"v":1,"kind":"heartbeat","node":"a","sent_at":"2026-11-24T12:00:00Z"}"#[..],
        b"\"facter\"",
        b"not json",
        b"\xff\xfe",
    ] {
        assert!(decode_raw_result(other).is_none(), "{other:?}");
    }
    let missing = br#"{"v":1,"kind":"result","plugin":"facter","format":"json","collected_at":"2026-11-24T12:00:00Z"}"#;
    let err = decode_raw_result(missing)
        .expect("a v1 result")
        .expect_err("no node");
    assert_eq!(err.reason(), "bad-field");
    assert!(err.to_string().contains("node"), "{err}");
}

/// A volatile plugin's result says `"history": false`; a result without the field (older
/// clients, the 2010 shapes) keeps history, and encoding leaves it out then, so the
/// bytes of a result that keeps history are those of earlier versions.
#[test]
fn history_false_is_sent_only_for_a_volatile_result() {
    let body = r#"{"v":1,"kind":"result","node":"web01","plugin":"ps","format":"output","data":"x","collected_at":"2026-11-24T12:00:01Z"}"#;
    let Ok(vogeler_protocol::Decoded::Message(Message::Result(r))) =
        vogeler_protocol::decode(body.as_bytes())
    else {
        panic!("a result");
    };
    assert!(r.history, "absent means keep history");
    let plain = String::from_utf8(encode(&Message::Result(r.clone()))).expect("utf-8");
    assert!(!plain.contains("history"), "{plain}");
    let volatile = PluginResult {
        history: false,
        ..r
    };
    let text = String::from_utf8(encode(&Message::Result(volatile))).expect("utf-8");
    assert!(text.contains(r#""history":false"#), "{text}");
    let Ok(vogeler_protocol::Decoded::Message(Message::Result(back))) =
        vogeler_protocol::decode(text.as_bytes())
    else {
        panic!("a result");
    };
    assert!(!back.history);
    let raw = vogeler_protocol::decode_raw_result(text.as_bytes())
        .expect("a v1 result")
        .expect("valid");
    assert!(!raw.history, "the server's hot path reads it too");
}
