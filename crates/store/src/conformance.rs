//! The one conformance suite every backend runs unchanged, on a real server.
//!
//! Each case takes a fresh, empty store. A backend's test file instantiates all of
//! them with [`conformance_tests!`](crate::conformance_tests), giving one `#[tokio::test]`
//! per case, so a failure names the case and the backend.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use crate::{
    Change, Condition, Data, DynStore, KeyPath, LedgerAnswer, LedgerRequest, NodeOutcome,
    Observation, Outcome, Query, RequestState,
};

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn plugin(node: &str, at: i64, name: &str, value: Value) -> Observation {
    Observation {
        node: node.into(),
        at: t(at),
        change: Change::Plugin {
            name: name.into(),
            value: value.into(),
            history: true,
        },
    }
}

/// The same observation with its value as JSON text, the way the server's hot path
/// hands results over.
/// Applies one batch, which must succeed.
async fn apply(store: &DynStore, batch: Vec<Observation>) -> Vec<Outcome> {
    store.apply(batch.into()).await.expect("apply")
}

fn as_text(mut obs: Observation) -> Observation {
    if let Change::Plugin { value, .. } = &mut obs.change {
        let text = value.text().into_owned();
        *value = Data::Text(serde_json::value::RawValue::from_string(text).expect("valid JSON"));
    }
    obs
}

/// Expands to one `#[tokio::test]` per case; `$make` is an async expression giving a fresh `DynStore`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            created_on_first_sight, updated_unchanged_and_stale, redelivery_is_idempotent,
            reserved_keys_are_refused, errors_become_last_error, seen_only_moves_last_seen,
            history_records_changes_only, several_nodes_in_one_batch, fixtures_round_trip,
            key_values_across_nodes, select_by_conditions_names_and_time, packages_with_versions,
            record_at_a_past_time, timeline_of_a_package, changes_across_the_fleet,
            retention_prunes_old_history, import_replaces_a_node, text_data_is_the_same_value,
            ledger_records_requests_and_answers_in_any_order, a_node_many_times_in_one_batch,
            decoded_results_read_back_the_same, last_error_is_bounded,
            reserved_paths_answer_as_the_document,
            a_good_result_clears_last_error, signature_verdicts_per_key,
            a_deleted_node_is_gone_with_its_history, select_by_expressions,
            a_deactivated_node_keeps_its_history_out_of_the_fleet,
            a_new_result_reactivates_a_node, inactivity_deactivates_exactly_the_old_nodes,
            a_volatile_key_keeps_no_history, packages_follow_every_write,
            node_list_names_each_nodes_own_keys,
            a_volatile_result_after_a_kept_one_in_one_batch, a_null_value_is_a_value);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

/// Filters on document fields (`created_at`, `updated_at`, `system_name`) answer as
/// the whole document would, from the node list (never reading whole records).
pub async fn reserved_paths_answer_as_the_document(store: DynStore) {
    apply(
        &store,
        vec![plugin("a", 0, "k", json!(1)), plugin("b", 0, "k", json!(2))],
    )
    .await;
    for field in [
        "created_at",
        "updated_at",
        "last_seen",
        "system_name",
        "doc_type",
    ] {
        let path = KeyPath::parse(field).expect("path");
        let values = store.values(&path).await.expect("values").rows;
        assert_eq!(values.len(), 2, "{field}: {values:?}");
        for (node, v) in &values {
            let doc = store
                .node(node)
                .await
                .expect("node")
                .expect("stored")
                .document();
            assert_eq!(Some(v), doc.get(field), "{field} of {node}");
        }
    }
    let q = Query::parse(&["system_name=b".into(), "created_at?".into()], &[]).expect("query");
    let found = store.select(&q).await.expect("select").rows;
    assert_eq!(
        found.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
}

/// A node's document appears with its first observation.
pub async fn created_on_first_sight(store: DynStore) {
    assert!(store.node("web01").await.expect("node").is_none());
    let out = apply(
        &store,
        vec![plugin(
            "web01",
            0,
            "facter",
            json!({"os": {"family": "Debian"}}),
        )],
    )
    .await;
    assert_eq!(out, vec![Outcome::Created]);
    let rec = store.node("web01").await.expect("node").expect("stored");
    assert_eq!(rec.keys["facter"]["os"]["family"], "Debian");
    assert!(rec.created_at <= rec.updated_at && rec.updated_at <= rec.last_seen);
    let doc = rec.document();
    assert_eq!(doc["system_name"], "web01");
    assert_eq!(doc["doc_type"], "SystemRecord");
    assert!(doc["last_error"].is_null());
}

/// The node list names each node's own keys, sorted, whatever the names around it
/// (names that are prefixes of others, a node with no keys, one whose keys sort before
/// another node's name).
pub async fn node_list_names_each_nodes_own_keys(store: DynStore) {
    let seen = |node: &str| Observation {
        node: node.into(),
        at: t(1),
        change: Change::Seen,
    };
    apply(
        &store,
        vec![
            plugin("web1", 0, "zeta", json!(1)),
            plugin("web1", 0, "alpha", json!(2)),
            seen("web1-a"),
            plugin("web10", 0, "b", json!(3)),
            plugin("a", 0, "web2", json!(4)),
            seen("web2"),
        ],
    )
    .await;
    let listed: Vec<(String, Vec<String>)> = store
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| (n.name, n.plugins))
        .collect();
    let want =
        |n: &str, keys: &[&str]| (n.to_string(), keys.iter().map(|k| k.to_string()).collect());
    assert_eq!(
        listed,
        vec![
            want("a", &["web2"]),
            want("web1", &["alpha", "zeta"]),
            want("web1-a", &[]),
            want("web10", &["b"]),
            want("web2", &[]),
        ]
    );
}

/// New value → Updated; same value → Unchanged; older → Stale and kept.
pub async fn updated_unchanged_and_stale(store: DynStore) {
    apply(&store, vec![plugin("n", 10, "k", json!(1))]).await;
    let first = store.node("n").await.expect("node").expect("stored");
    let out = apply(
        &store,
        vec![
            plugin("n", 20, "k", json!(2)),
            plugin("n", 30, "k", json!(2)),
            plugin("n", 15, "k", json!(99)),
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![Outcome::Updated, Outcome::Unchanged, Outcome::Stale]
    );
    let rec = store.node("n").await.expect("node").expect("stored");
    assert_eq!(rec.keys["k"], json!(2), "an older result never overwrites");
    assert!(rec.updated_at >= first.updated_at);
    assert_eq!(rec.created_at, first.created_at);
}

/// Applying the same batch twice changes nothing the second time.
pub async fn redelivery_is_idempotent(store: DynStore) {
    let batch = vec![
        plugin("a", 1, "x", json!({"v": 1})),
        plugin("a", 1, "y", json!([1, 2])),
        plugin("b", 1, "x", json!("s")),
    ];
    store.apply(batch.clone().into()).await.expect("apply");
    let before = store.node("a").await.expect("node").expect("stored");
    let history_before = store.history("a", None).await.expect("history").rows.len();
    let again = store.apply(batch.into()).await.expect("apply again");
    assert_eq!(again, vec![Outcome::Unchanged; 3]);
    let after = store.node("a").await.expect("node").expect("stored");
    assert_eq!(before.keys, after.keys);
    assert_eq!(before.updated_at, after.updated_at);
    assert_eq!(
        store.history("a", None).await.expect("history").rows.len(),
        history_before
    );
}

/// Data arriving as JSON text is stored as the value it spells: read back as a tree,
/// unchanged against the same value as text or as a tree, changed by a new value.
pub async fn text_data_is_the_same_value(store: DynStore) {
    let value =
        json!({"os": {"family": "Debian", "release": {"major": "12"}}, "n": [1, 2.5, null]});
    let out = store
        .apply(vec![as_text(plugin("a", 1, "facter", value.clone()))].into())
        .await
        .expect("apply text");
    assert_eq!(out, vec![Outcome::Created]);
    let rec = store.node("a").await.expect("node").expect("stored");
    assert_eq!(rec.keys.get("facter"), Some(&value));
    let again = store
        .apply(
            vec![
                as_text(plugin("a", 2, "facter", value.clone())),
                plugin("a", 3, "facter", value.clone()),
            ]
            .into(),
        )
        .await
        .expect("apply same");
    assert_eq!(again, vec![Outcome::Unchanged, Outcome::Unchanged]);
    let mut newer = value.clone();
    newer["os"]["family"] = json!("RedHat");
    let changed = store
        .apply(vec![as_text(plugin("a", 4, "facter", newer.clone()))].into())
        .await
        .expect("apply changed");
    assert_eq!(changed, vec![Outcome::Updated]);
    let history = store
        .history("a", Some("facter"))
        .await
        .expect("history")
        .rows;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[1].old.as_ref(), Some(&value));
    assert_eq!(history[1].new.as_ref(), Some(&newer));
}

/// What the protocol's decode accepts reads back as the same JSON from every backend
/// (canonical numbers, escapes, backslashes and quotes in keys, deep but bounded
/// nesting); what it refuses (`1e400`, too deep, a lone surrogate, NUL) never reaches
/// a store. Results go in the way the server's hot path hands them over: as text.
pub async fn decoded_results_read_back_the_same(store: DynStore) {
    let deep = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    let accepted = [
        r#"{"a":1e2,"b":1.0,"c":-0,"d":0.10,"e":1.5e-7,"f":1.5e18,"g":1e300,"h":18446744073709551615,"i":-9223372036854775808}"#.to_string(),
        r#"{"back\\slash":"\\u0000 is text","quo\"te":"\ud83d\ude00","\u00e9t\u00e9":"\t\n\u001f","":"empty key"}"#.to_string(),
        format!(r#"{{"deep":{deep}}}"#),
    ];
    let refused = [
        (r#"{"x":1e400}"#.to_string(), "bad-number"),
        (
            format!("{}1{}", "[".repeat(100), "]".repeat(100)),
            "too-deep",
        ),
        (r#"{"x":"\ud800"}"#.to_string(), "lone-surrogate"),
        (r#"{"x":"a\u0000b"}"#.to_string(), "nul-character"),
        (r#"{"a\u0000":1}"#.to_string(), "nul-character"),
        (
            r#"{"x":123456789012345678901234567890}"#.to_string(),
            "bad-number",
        ),
    ];
    let body = |node: &str, plugin: &str, data: &str| {
        format!(
            r#"{{"v":1,"kind":"result","node":"{node}","plugin":"{plugin}","format":"json","data":{data},"collected_at":"2026-01-01T00:00:00Z"}}"#
        )
    };
    for (i, (data, reason)) in refused.iter().enumerate() {
        let b = body("h", &format!("r{i}"), data);
        match vogeler_protocol::decode_raw_result(b.as_bytes()) {
            Some(Err(e)) => assert_eq!(e.reason(), *reason, "{data}: {e}"),
            other => panic!("{data} was not refused: {other:?}"),
        }
    }
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for (i, data) in accepted.iter().enumerate() {
        let b = body("h", &format!("k{i}"), data);
        let r = match vogeler_protocol::decode_raw_result(b.as_bytes()) {
            Some(Ok(r)) => r,
            other => panic!("{data} was refused: {other:?}"),
        };
        let text = r.data.expect("data");
        let tree: Value = serde_json::from_str(text.get()).expect("decoded text is JSON");
        want.push((format!("k{i}"), tree));
        batch.push(Observation {
            node: r.node,
            at: t(1),
            change: Change::Plugin {
                name: r.plugin,
                value: Data::Text(text),
                history: true,
            },
        });
    }
    let outcomes = apply(&store, batch).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Created | Outcome::Updated)),
        "{outcomes:?}"
    );
    let rec = store.node("h").await.expect("node").expect("stored");
    for (key, tree) in &want {
        let got = rec.keys.get(key).unwrap_or_else(|| panic!("{key} missing"));
        if let Some(path) = first_difference(got, tree, key) {
            panic!("{key} read back differently at {path}: {got} vs {tree}");
        }
    }
    assert_eq!(rec.keys["k0"]["a"], json!(100));
    assert_eq!(rec.keys["k0"]["b"], json!(1));
    assert_eq!(rec.keys["k1"]["back\\slash"], json!("\\u0000 is text"));
    // The views over those keys answer too.
    for key in ["k0.a", "k1", "k2.deep"] {
        let path = KeyPath::parse(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        let values = store
            .values(&path)
            .await
            .unwrap_or_else(|e| panic!("values {key}: {e}"))
            .rows;
        assert_eq!(values.len(), 1, "{key}: {values:?}");
    }
    let k1 = store
        .values(&KeyPath::parse("k1").expect("path"))
        .await
        .expect("values")
        .rows;
    assert!(
        first_difference(&k1[0].1, &want[1].1, "k1").is_none(),
        "{k1:?}"
    );
    store.history("h", None).await.expect("history");
    store.changes(t(0), 100).await.expect("changes");
    // The same values as package lists: a backend's package index gives back each
    // member exactly as the document holds it (huge and tiny numbers, escapes and
    // quotes in names, the empty name, deep nesting).
    for (i, (_, tree)) in want.iter().enumerate() {
        let node = format!("pk{i}");
        let text = serde_json::value::RawValue::from_string(tree.to_string()).expect("JSON");
        apply(
            &store,
            vec![Observation {
                node: node.clone(),
                at: t(1),
                change: Change::Plugin {
                    name: "dpkg".into(),
                    value: Data::Text(text),
                    history: true,
                },
            }],
        )
        .await;
        let stored = store.node(&node).await.expect("node").expect("stored");
        for (name, v) in tree.as_object().expect("an object") {
            let got = store.packages(name).await.expect("packages");
            assert!(got.skipped.is_empty(), "{name}: {:?}", got.skipped);
            let mine: Vec<&Value> = got
                .rows
                .iter()
                .filter(|r| r.0 == node)
                .map(|r| &r.2)
                .collect();
            assert_eq!(mine.len(), 1, "{name}: {:?}", got.rows);
            assert!(
                first_difference(mine[0], v, name).is_none()
                    && first_difference(mine[0], &stored.keys["dpkg"][name], name).is_none(),
                "{name}: {} vs {v}",
                mine[0]
            );
        }
    }
}

/// `last_error` keeps a few kilobytes of a huge error message and raw output, cut at a
/// character boundary and marked, on every backend.
pub async fn last_error_is_bounded(store: DynStore) {
    let max = vogeler_protocol::limits::MAX_LAST_ERROR_BYTES;
    let obs = Observation {
        node: "big".into(),
        at: t(1),
        change: Change::Error {
            plugin: Some("p".into()),
            message: "é".repeat(1 << 20),
            raw: Some("x".repeat(3 << 20)),
        },
    };
    apply(&store, vec![obs]).await;
    let rec = store.node("big").await.expect("node").expect("stored");
    let e = rec.last_error.expect("last_error");
    for field in ["message", "raw"] {
        let text = e[field].as_str().unwrap_or_default();
        assert!(text.len() <= max, "{field} is {} bytes", text.len());
        assert!(
            text.ends_with(" bytes cut]"),
            "{field} is not marked as cut"
        );
    }
    let summary = store.nodes().await.expect("nodes");
    assert!(summary[0]
        .last_error
        .as_deref()
        .is_some_and(|m| m.len() <= max));
}

/// A plugin named like a document field, or like the CouchDB backend's bookkeeping
/// field (refused on every backend alike), is refused; the rest of the batch goes in.
pub async fn reserved_keys_are_refused(store: DynStore) {
    let out = apply(
        &store,
        vec![
            plugin("n", 1, "created_at", json!(1)),
            plugin("n", 1, "_id", json!(1)),
            plugin("n", 1, crate::STORE_META_KEY, json!({"key_times": {}})),
            plugin("n", 1, "ok", json!(1)),
        ],
    )
    .await;
    for refused in &out[..3] {
        assert!(matches!(refused, Outcome::Refused(_)), "{out:?}");
    }
    assert_eq!(out[3], Outcome::Created);
    let rec = store.node("n").await.expect("node").expect("stored");
    assert_eq!(rec.keys.len(), 1);
}

/// The server's per-key signature verdicts (`signature.facter` beside `facter`) are keys
/// like any other: a signed key and an unsigned one keep two different verdicts, both read
/// back and both found by a quoted path.
pub async fn signature_verdicts_per_key(store: DynStore) {
    let facter = crate::signature_key("facter");
    let dpkg = crate::signature_key("dpkg");
    let signed = json!({"verified": true, "key_id": "3f1c0a9e5b7d2264"});
    let unsigned = json!({"verified": false, "reason": "unsigned"});
    apply(
        &store,
        vec![
            plugin("n", 1, "facter", json!({"os": "Debian"})),
            plugin("n", 1, &facter, signed.clone()),
            plugin("n", 2, "dpkg", json!({"bash": "5.2"})),
            plugin("n", 2, &dpkg, unsigned.clone()),
            plugin(
                "n",
                2,
                crate::SIGNATURE_KEY,
                json!({"verified": false, "reason": "unsigned", "plugin": "dpkg"}),
            ),
        ],
    )
    .await;
    let rec = store.node("n").await.expect("node").expect("stored");
    let doc = rec.document();
    assert_eq!(doc[&facter], signed, "{doc}");
    assert_eq!(doc[&dpkg], unsigned, "{doc}");
    assert_eq!(doc[crate::SIGNATURE_KEY]["plugin"], "dpkg", "{doc}");
    let found = store
        .select(&Query {
            conditions: vec![
                Condition::parse("\"signature.dpkg\".reason=unsigned").expect("condition")
            ],
            ..Query::default()
        })
        .await
        .expect("select")
        .rows;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(crate::is_signature_key(&facter) && crate::is_signature_key(crate::SIGNATURE_KEY));
    assert!(!crate::is_signature_key("signatures"));
}

/// Error results set `last_error` (with raw output kept); an older error does not replace it.
pub async fn errors_become_last_error(store: DynStore) {
    let err = |at, msg: &str| Observation {
        node: "n".into(),
        at: t(at),
        change: Change::Error {
            plugin: Some("ohai".into()),
            message: msg.into(),
            raw: Some("not json".into()),
        },
    };
    apply(&store, vec![err(10, "boom")]).await;
    let out = apply(&store, vec![err(5, "older")]).await;
    assert_eq!(out, vec![Outcome::Stale]);
    let rec = store.node("n").await.expect("node").expect("stored");
    let e = rec.last_error.expect("last_error");
    assert_eq!(e["message"], "boom");
    assert_eq!(e["plugin"], "ohai");
    assert_eq!(e["raw"], "not json");
    let summary = store.nodes().await.expect("nodes");
    assert_eq!(summary[0].last_error.as_deref(), Some("boom"));
}

/// A good result of the failed plugin clears `last_error` (another plugin's does not,
/// nor does an older one); the error stays in history; `clear_error` clears by hand.
pub async fn a_good_result_clears_last_error(store: DynStore) {
    let err = |node: &str, at, plugin: &str| Observation {
        node: node.into(),
        at: t(at),
        change: Change::Error {
            plugin: Some(plugin.into()),
            message: format!("{plugin} failed"),
            raw: None,
        },
    };
    apply(&store, vec![plugin("n", 1, "facter", json!({"a": 1}))]).await;
    apply(&store, vec![err("n", 10, "facter")]).await;
    // Another plugin's result, and an older facter result, leave the error.
    apply(
        &store,
        vec![
            plugin("n", 11, "ps", json!("p")),
            plugin("n", 5, "facter", json!({"a": 0})),
        ],
    )
    .await;
    let rec = store.node("n").await.expect("node").expect("stored");
    assert!(rec.last_error.is_some(), "cleared too early: {rec:?}");
    // The same value as stored still proves the plugin works again.
    let out = apply(&store, vec![plugin("n", 12, "facter", json!({"a": 1}))]).await;
    assert_eq!(out, vec![Outcome::Updated]);
    let rec = store.node("n").await.expect("node").expect("stored");
    assert_eq!(rec.last_error, None);
    let summary = store.nodes().await.expect("nodes");
    assert_eq!(summary[0].last_error, None);
    let errors: Vec<_> = store
        .history("n", Some("last_error"))
        .await
        .expect("history")
        .rows;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        errors[0].new.as_ref().map(|e| e["message"].clone()),
        Some(json!("facter failed"))
    );
    assert_eq!(errors[1].new, None);
    // An error older than the good result that cleared it does not come back.
    assert_eq!(
        apply(&store, vec![err("n", 11, "facter")]).await,
        vec![Outcome::Stale]
    );
    // By hand: clear_error clears any plugin's error, once.
    apply(&store, vec![err("n", 20, "ohai")]).await;
    assert!(store.clear_error("n").await.expect("clear"));
    assert!(!store.clear_error("n").await.expect("clear again"));
    assert!(!store.clear_error("nobody").await.expect("unknown node"));
    let rec = store.node("n").await.expect("node").expect("stored");
    assert_eq!(rec.last_error, None);
    let errors = store
        .history("n", Some("last_error"))
        .await
        .expect("history")
        .rows;
    assert_eq!(errors.len(), 4, "{errors:?}");
}

/// A heartbeat creates the document if needed and moves only `last_seen`.
pub async fn seen_only_moves_last_seen(store: DynStore) {
    apply(&store, vec![plugin("n", 1, "k", json!(1))]).await;
    let before = store.node("n").await.expect("node").expect("stored");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let out = apply(
        &store,
        vec![Observation {
            node: "n".into(),
            at: t(2),
            change: Change::Seen,
        }],
    )
    .await;
    assert_eq!(out, vec![Outcome::Unchanged]);
    let after = store.node("n").await.expect("node").expect("stored");
    assert_eq!(before.updated_at, after.updated_at);
    assert!(after.last_seen > before.last_seen);
    let out = apply(
        &store,
        vec![Observation {
            node: "fresh".into(),
            at: t(2),
            change: Change::Seen,
        }],
    )
    .await;
    assert_eq!(out, vec![Outcome::Created]);
    assert!(store
        .node("fresh")
        .await
        .expect("node")
        .expect("stored")
        .keys
        .is_empty());
}

/// History holds one entry per change, per key, oldest first, with old and new values.
pub async fn history_records_changes_only(store: DynStore) {
    apply(
        &store,
        vec![
            plugin("n", 1, "kernel", json!("6.1")),
            plugin("n", 2, "kernel", json!("6.1")),
            plugin("n", 3, "kernel", json!("6.18")),
            plugin("n", 3, "other", json!(true)),
        ],
    )
    .await;
    let h = store
        .history("n", Some("kernel"))
        .await
        .expect("history")
        .rows;
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0].old, None);
    assert_eq!(h[0].new, Some(json!("6.1")));
    assert_eq!(h[1].old, Some(json!("6.1")));
    assert_eq!(h[1].new, Some(json!("6.18")));
    assert_eq!(h[1].at, t(3));
    assert_eq!(
        store.history("n", None).await.expect("history").rows.len(),
        3
    );
    assert!(store
        .history("nobody", None)
        .await
        .expect("history")
        .rows
        .is_empty());
}

/// One node observed many times in one batch: each observation is judged against what
/// the ones before it left, as if applied one by one.
pub async fn a_node_many_times_in_one_batch(store: DynStore) {
    let err = |at, msg: &str| Observation {
        node: "n".into(),
        at: t(at),
        change: Change::Error {
            plugin: Some("ohai".into()),
            message: msg.into(),
            raw: None,
        },
    };
    let out = apply(
        &store,
        vec![
            plugin("n", 1, "k", json!(1)),
            plugin("n", 2, "k", json!(2)),
            plugin("n", 3, "k", json!(1)),
            plugin("n", 2, "k", json!(7)),
            err(4, "boom"),
            err(3, "older"),
            plugin("n", 2, "j", json!(true)),
        ],
    )
    .await;
    use Outcome::*;
    assert_eq!(
        out,
        vec![Created, Updated, Updated, Stale, Updated, Stale, Updated]
    );
    let rec = store.node("n").await.expect("node").expect("stored");
    assert_eq!(rec.keys["k"], json!(1));
    assert_eq!(rec.keys["j"], json!(true));
    assert_eq!(rec.last_error.expect("last_error")["message"], "boom");
    let h = store.history("n", Some("k")).await.expect("history").rows;
    let news: Vec<_> = h.iter().map(|e| e.new.clone()).collect();
    assert_eq!(news, vec![Some(json!(1)), Some(json!(2)), Some(json!(1))]);
    let out = apply(
        &store,
        vec![
            plugin("n", 5, "k", json!(1)),
            plugin("n", 4, "k", json!(9)),
            plugin("n", 6, "k", json!(3)),
        ],
    )
    .await;
    assert_eq!(out, vec![Unchanged, Stale, Updated]);
    let rec = store.node("n").await.expect("node").expect("stored");
    assert_eq!(rec.keys["k"], json!(3));
    assert_eq!(rec.keys_collected["k"], t(6));
}

/// Many nodes in one batch; the node list is sorted and names each node's plugins.
pub async fn several_nodes_in_one_batch(store: DynStore) {
    let batch: Vec<Observation> = (0..50)
        .rev()
        .map(|i| {
            plugin(
                &format!("node{i:02}"),
                1,
                if i % 2 == 0 { "even" } else { "odd" },
                json!(i),
            )
        })
        .collect();
    let out = store.apply(batch.into()).await.expect("apply");
    assert_eq!(out.len(), 50);
    assert!(out.iter().all(|o| *o == Outcome::Created));
    let nodes = store.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 50);
    assert_eq!(nodes[0].name, "node00");
    assert_eq!(nodes[0].plugins, vec!["even".to_string()]);
    assert_eq!(nodes[49].plugins, vec!["odd".to_string()]);
    store.health().await.expect("health");
}

/// The real fixtures (facter, ohai, dpkg) go in and come back unchanged.
pub async fn fixtures_round_trip(store: DynStore) {
    let facter: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../../../fixtures/facter-y.yaml")).expect("facter yaml");
    let facter = serde_json::to_value(facter).expect("facter json");
    let ohai: Value =
        serde_json::from_str(include_str!("../../../fixtures/ohai.json")).expect("ohai");
    let dpkg: serde_json::Map<String, Value> = include_str!("../../../fixtures/dpkg-query.txt")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, v)| (p.to_string(), Value::String(v.to_string())))
        .collect();
    let dpkg = Value::Object(dpkg);
    apply(
        &store,
        vec![
            plugin("web01", 1, "facter", facter.clone()),
            plugin("web01", 1, "ohai", ohai.clone()),
            plugin("web01", 1, "dpkg", dpkg.clone()),
        ],
    )
    .await;
    let rec = store.node("web01").await.expect("node").expect("stored");
    for (key, want) in [("facter", &facter), ("ohai", &ohai), ("dpkg", &dpkg)] {
        if let Some(path) = first_difference(&rec.keys[key], want, key) {
            panic!("{key} did not round-trip: first difference at {path}");
        }
    }
    assert_eq!(rec.keys["facter"]["os"]["family"], "Debian");
}

/// The first path where two documents differ, or `None`. Integers beyond 2^53 that
/// are equal as doubles count as equal: JavaScript stores (pouchdb-server) keep only
/// doubles (see docs/COUCHDB.md); every other value must match exactly.
pub fn first_difference(got: &Value, want: &Value, path: &str) -> Option<String> {
    match (got, want) {
        (Value::Object(a), Value::Object(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path} (keys {} vs {})", a.len(), b.len()));
            }
            b.iter().find_map(|(k, v)| match a.get(k) {
                Some(g) => first_difference(g, v, &format!("{path}.{k}")),
                None => Some(format!("{path}.{k} (missing)")),
            })
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path} (length {} vs {})", a.len(), b.len()));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (g, w))| first_difference(g, w, &format!("{path}.{i}")))
        }
        (Value::Number(a), Value::Number(b)) if a != b => {
            let big = |n: &serde_json::Number| {
                n.as_u64().is_some_and(|v| v > (1 << 53))
                    || n.as_i64().is_some_and(|v| v.unsigned_abs() > (1 << 53))
            };
            let same_double = a.as_f64() == b.as_f64();
            if (big(a) || big(b)) && same_double {
                None
            } else {
                Some(format!("{path} ({a} vs {b})"))
            }
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path} ({a} vs {b})")),
    }
}

/// A small fleet: three nodes with facter-like facts and dpkg packages, one erroring.
async fn fleet(store: &DynStore) {
    let facts = |family: &str, kernel: &str, cpus: u32| {
        json!({"os": {"family": family, "release": {"major": "12"}},
               "kernelrelease": kernel, "processorcount": cpus,
               "ips": ["10.0.0.1", "10.0.0.2"], "dotted.key": "yes"})
    };
    store
        .apply(
            vec![
                plugin("web01", 0, "facter", facts("Debian", "6.1.0-13-amd64", 2)),
                plugin("web02", 0, "facter", facts("Debian", "5.10.0-26-amd64", 4)),
                plugin("db01", 0, "facter", facts("RedHat", "6.4.0", 16)),
                plugin(
                    "web01",
                    0,
                    "dpkg",
                    json!({"openssl": "3.0.11-1", "bash": "5.2"}),
                ),
                plugin(
                    "web02",
                    0,
                    "dpkg",
                    json!({"openssl": "3.0.13-1", "bash": "5.2"}),
                ),
                plugin("db01", 0, "rpm", json!({"openssl": "3.0.7-27.el9"})),
                Observation {
                    node: "db01".into(),
                    at: t(1),
                    change: Change::Error {
                        plugin: Some("ohai".into()),
                        message: "ohai: not found".into(),
                        raw: None,
                    },
                },
            ]
            .into(),
        )
        .await
        .expect("apply fleet");
}

fn path(p: &str) -> KeyPath {
    KeyPath::parse(p).expect("key path")
}

/// A key's value across nodes, sorted by node; nodes without it are left out.
pub async fn key_values_across_nodes(store: DynStore) {
    fleet(&store).await;
    let got = store
        .values(&path("facter.os.family"))
        .await
        .expect("values")
        .rows;
    assert_eq!(
        got,
        vec![
            ("db01".to_string(), json!("RedHat")),
            ("web01".to_string(), json!("Debian")),
            ("web02".to_string(), json!("Debian")),
        ]
    );
    let got = store
        .values(&path("facter.ips.1"))
        .await
        .expect("array step")
        .rows;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].1, json!("10.0.0.2"));
    let got = store
        .values(&path("facter.\"dotted.key\""))
        .await
        .expect("quoted")
        .rows;
    assert_eq!(got.len(), 3);
    let got = store
        .values(&path("facter.processorcount"))
        .await
        .expect("numbers")
        .rows;
    assert_eq!(got[0].1.as_f64(), Some(16.0));
    assert!(store
        .values(&path("facter.nothing"))
        .await
        .expect("missing")
        .rows
        .is_empty());
    assert!(store
        .values(&path("nosuchplugin"))
        .await
        .expect("missing")
        .rows
        .is_empty());
    let got = store.values(&path("dpkg")).await.expect("whole key").rows;
    assert_eq!(got.len(), 2);
    let got = store
        .values(&path("last_error.plugin"))
        .await
        .expect("document field")
        .rows;
    assert_eq!(got, vec![("db01".to_string(), json!("ohai"))]);
}

/// The names of the nodes `q` selects, in order.
async fn selected(store: &DynStore, q: &Query) -> Vec<String> {
    store
        .select(q)
        .await
        .expect("select")
        .rows
        .into_iter()
        .map(|n| n.name)
        .collect()
}

/// Filter expressions (`and`, `or`, `not`, parentheses, `exists`) select the same
/// nodes on every backend; `not` holds for a node that lacks the path; expressions
/// and plain conditions combine with AND.
pub async fn select_by_expressions(store: DynStore) {
    fleet(&store).await;
    let names = |filters: &[&str]| {
        let store = store.clone();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        async move { selected(&store, &Query::parse(&filters, &[]).expect("filters")).await }
    };
    assert_eq!(
        names(&["facter.os.family = RedHat or facter.processorcount >= 4"]).await,
        ["db01", "web02"]
    );
    assert_eq!(
        names(&["(facter.os.family = Debian and facter.kernelrelease ~ ^6\\.) or exists rpm"])
            .await,
        ["db01", "web01"]
    );
    assert_eq!(names(&["not exists dpkg"]).await, ["db01"]);
    assert_eq!(
        names(&["not dpkg.openssl < 3.0.12"]).await,
        ["db01", "web02"]
    );
    assert_eq!(
        names(&["facter.os.family=Debian", "not facter.processorcount > 2"]).await,
        ["web01"]
    );
    assert_eq!(names(&["facter.os.family !~ ^Deb"]).await, ["db01"]);
}

/// Conditions AND together; name globs and last-seen bounds narrow further.
pub async fn select_by_conditions_names_and_time(store: DynStore) {
    fleet(&store).await;
    let names = |q: Query| {
        let store = store.clone();
        async move { selected(&store, &q).await }
    };
    let cond = |c: &str| Condition::parse(c).expect("condition");
    let q = |cs: &[&str]| Query {
        conditions: cs.iter().map(|c| cond(c)).collect(),
        ..Query::default()
    };
    assert_eq!(
        names(q(&["facter.os.family=Debian"])).await,
        ["web01", "web02"]
    );
    assert_eq!(
        names(q(&[
            "facter.os.family=Debian",
            "facter.kernelrelease~^6\\."
        ]))
        .await,
        ["web01"]
    );
    assert_eq!(
        names(q(&["facter.processorcount>=4"])).await,
        ["db01", "web02"]
    );
    assert_eq!(
        names(q(&["facter.kernelrelease*=amd64"])).await,
        ["web01", "web02"]
    );
    assert_eq!(names(q(&["dpkg.openssl?"])).await, ["web01", "web02"]);
    assert_eq!(names(q(&["facter.os.family!=Debian"])).await, ["db01"]);
    assert!(names(q(&["facter.os.family=Suse"])).await.is_empty());
    let mut by_name = q(&["facter.os.family=Debian"]);
    by_name.names = vec!["web0?".into(), "nomatch*".into()];
    assert_eq!(names(by_name).await, ["web01", "web02"]);
    let all = store.nodes().await.expect("nodes");
    let newest = all.iter().map(|n| n.last_seen).max().expect("nodes");
    let stale = Query {
        not_seen_since: Some(newest + chrono::Duration::seconds(1)),
        ..Query::default()
    };
    assert_eq!(names(stale).await.len(), 3);
    let fresh = Query {
        not_seen_since: Some(t(-100_000)),
        ..Query::default()
    };
    assert!(names(fresh).await.is_empty());
    let bad = Query {
        names: vec!["[".into()],
        ..Query::default()
    };
    assert!(store.select(&bad).await.is_err());
}

/// Package lookups read every package plugin key.
pub async fn packages_with_versions(store: DynStore) {
    fleet(&store).await;
    let got = store.packages("openssl").await.expect("packages").rows;
    assert_eq!(
        got,
        vec![
            ("db01".to_string(), "rpm".to_string(), json!("3.0.7-27.el9")),
            ("web01".to_string(), "dpkg".to_string(), json!("3.0.11-1")),
            ("web02".to_string(), "dpkg".to_string(), json!("3.0.13-1")),
        ]
    );
    assert!(store
        .packages("nosuchpackage")
        .await
        .expect("none")
        .rows
        .is_empty());
}

/// What the package lookups must say, from the node documents themselves: each
/// package plugin's member `name`, by node then plugin.
async fn packages_by_documents(store: &DynStore, name: &str) -> Vec<(String, String, Value)> {
    let mut want = Vec::new();
    for n in store.nodes().await.expect("nodes") {
        let rec = store.node(&n.name).await.expect("node").expect("listed");
        for plugin in crate::PACKAGE_KEYS {
            if let Some(v) = rec.keys.get(*plugin).and_then(|l| l.as_object()?.get(name)) {
                want.push((n.name.clone(), plugin.to_string(), v.clone()));
            }
        }
    }
    want.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    want
}

/// Package lookups follow every write that changes a package list (a new list, a
/// changed, removed or added package, an import, a delete, a list that is not an
/// object) and always agree with the node documents, as do path reads of one
/// package (`dpkg.openssl`): a backend that keeps a package index must keep it exact.
pub async fn packages_follow_every_write(store: DynStore) {
    let names = [
        "openssl",
        "bash",
        "curl",
        "lib.dotted",
        "q\"uote",
        "num",
        "",
    ];
    let check = |store: DynStore, when: &'static str| async move {
        for name in names {
            let got = store.packages(name).await.expect("packages");
            assert!(got.skipped.is_empty(), "{when}: {name}: {:?}", got.skipped);
            let want = packages_by_documents(&store, name).await;
            assert_eq!(got.rows, want, "{when}: {name}");
            // A filter or fact page on one plugin's package reads the same.
            for plugin in crate::PACKAGE_KEYS {
                let path = KeyPath::from_segments(vec![plugin.to_string(), name.to_string()])
                    .expect("package path");
                let by_path = store.key_values(&path).await.expect("key_values").rows;
                let want_here: Vec<(String, Value)> = want
                    .iter()
                    .filter(|w| w.1 == *plugin)
                    .map(|w| (w.0.clone(), w.2.clone()))
                    .collect();
                assert_eq!(by_path, want_here, "{when}: {plugin}.{name}");
            }
        }
    };
    apply(
        &store,
        vec![
            plugin(
                "a",
                10,
                "dpkg",
                json!({"openssl": "3.0.11-1", "bash": "5.2", "lib.dotted": "1", "q\"uote": "2"}),
            ),
            plugin(
                "b",
                10,
                "dpkg",
                json!({"openssl": "3.0.13-1", "num": 1.5e300, "": {"v": [1, 2]}}),
            ),
            plugin("b", 10, "rpm", json!({"openssl": "3.0.7-27.el9"})),
            plugin("c", 10, "dpkg", json!(["openssl"])),
            plugin("d", 10, "facter", json!({"openssl": "not a package"})),
        ],
    )
    .await;
    check(store.clone(), "first lists").await;
    assert_eq!(
        store
            .packages("openssl")
            .await
            .expect("packages")
            .rows
            .len(),
        3
    );
    // A package changes, one goes, one comes; the same list again changes nothing.
    let a2 = json!({"openssl": "3.0.14-1", "curl": "8.5", "lib.dotted": "1", "q\"uote": "2"});
    apply(&store, vec![plugin("a", 20, "dpkg", a2.clone())]).await;
    apply(&store, vec![plugin("a", 30, "dpkg", a2)]).await;
    check(store.clone(), "after an update").await;
    assert!(store.packages("bash").await.expect("bash").rows.is_empty());
    assert_eq!(
        store.packages("openssl").await.expect("openssl").rows[0],
        ("a".to_string(), "dpkg".to_string(), json!("3.0.14-1"))
    );
    // A list becomes an object, an object stops being one.
    apply(
        &store,
        vec![
            plugin("c", 40, "dpkg", json!({"bash": "5.1"})),
            plugin("b", 40, "rpm", json!("gone")),
        ],
    )
    .await;
    check(store.clone(), "after type changes").await;
    // An import replaces a node's lists; a delete takes them away.
    let mut rec = store.node("c").await.expect("node").expect("c");
    rec.name = "e".into();
    rec.keys.insert("dpkg".into(), json!({"openssl": "1.1.1"}));
    store.import(&rec, &[]).await.expect("import");
    assert!(store.delete_node("b").await.expect("delete"));
    check(store.clone(), "after import and delete").await;
    let openssl: Vec<String> = store
        .packages("openssl")
        .await
        .expect("openssl")
        .rows
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(openssl, ["a", "e"]);
}

/// A record rewound to a past time holds the values it had then.
pub async fn record_at_a_past_time(store: DynStore) {
    for (at, v) in [(10, "5.10"), (20, "6.1"), (30, "6.4")] {
        apply(
            &store,
            vec![plugin("n", at, "facter", json!({"kernel": v}))],
        )
        .await;
    }
    apply(&store, vec![plugin("n", 25, "ps", json!(["init"]))]).await;
    let then = store
        .record_at("n", t(22))
        .await
        .expect("record_at")
        .expect("existed");
    assert_eq!(then.keys["facter"]["kernel"], "6.1");
    assert!(!then.keys.contains_key("ps"));
    let then = store
        .record_at("n", t(26))
        .await
        .expect("record_at")
        .expect("existed");
    assert_eq!(then.keys["ps"], json!(["init"]));
    let now = store
        .record_at("n", t(1000))
        .await
        .expect("record_at")
        .expect("existed");
    assert_eq!(now.keys["facter"]["kernel"], "6.4");
    assert!(store
        .record_at("nobody", t(1000))
        .await
        .expect("unknown")
        .is_none());
}

/// When a package version appeared on a node and when it went away.
pub async fn timeline_of_a_package(store: DynStore) {
    for (at, pkgs) in [
        (10, json!({"openssl": "3.0.1"})),
        (20, json!({"openssl": "3.0.1", "curl": "7"})),
        (30, json!({"openssl": "3.0.2", "curl": "7"})),
        (40, json!({"curl": "7"})),
    ] {
        apply(&store, vec![plugin("n", at, "dpkg", pkgs)]).await;
    }
    let spans = store
        .timeline("n", &path("dpkg.openssl"))
        .await
        .expect("timeline")
        .rows;
    type Row = (Option<Value>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let seen: Vec<Row> = spans
        .into_iter()
        .map(|s| (s.value, s.from, s.until))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some(json!("3.0.1")), Some(t(10)), Some(t(30))),
            (Some(json!("3.0.2")), Some(t(30)), Some(t(40))),
            (None, Some(t(40)), None),
        ]
    );
}

/// Changes across the fleet since a time, oldest first, bounded.
pub async fn changes_across_the_fleet(store: DynStore) {
    for (node, at, v) in [("a", 10, 1), ("b", 20, 1), ("a", 30, 2), ("b", 40, 2)] {
        apply(&store, vec![plugin(node, at, "k", json!(v))]).await;
    }
    let got = store.changes(t(20), 100).await.expect("changes").rows;
    let seen: Vec<(String, DateTime<Utc>)> = got.iter().map(|h| (h.node.clone(), h.at)).collect();
    assert_eq!(
        seen,
        vec![
            ("b".to_string(), t(20)),
            ("a".to_string(), t(30)),
            ("b".to_string(), t(40))
        ]
    );
    assert_eq!(got[1].old, Some(json!(1)));
    assert_eq!(got[1].new, Some(json!(2)));
    assert_eq!(store.changes(t(0), 2).await.expect("limit").rows.len(), 2);
    // Outlines: a first appearance says what arrived, an update keeps its values.
    apply(
        &store,
        vec![
            plugin("c", 50, "obj", json!({"x": 1, "y": {"z": 2}})),
            plugin("c", 50, "arr", json!([1, 2, 3])),
            plugin("c", 50, "s", json!("text")),
            plugin("c", 50, "one", json!({"only": 1})),
            plugin("c", 50, "single", json!(["x"])),
        ],
    )
    .await;
    let out = store
        .change_outlines(t(20), 100)
        .await
        .expect("outlines")
        .rows;
    let by = |node: &str, key: &str| {
        out.iter()
            .find(|h| h.node == node && h.key == key)
            .and_then(|h| h.new.clone())
    };
    assert_eq!(by("c", "obj"), Some(json!("(added: 2 keys)")));
    assert_eq!(by("c", "arr"), Some(json!("(added: 3 items)")));
    assert_eq!(by("c", "s"), Some(json!("text")));
    assert_eq!(by("c", "one"), Some(json!("(added: 1 key)")));
    assert_eq!(by("c", "single"), Some(json!("(added: 1 item)")));
    let update = out
        .iter()
        .find(|h| h.node == "a" && h.at == t(30))
        .expect("update");
    assert_eq!(
        (update.old.clone(), update.new.clone()),
        (Some(json!(1)), Some(json!(2)))
    );
}

/// A plugin whose output is JSON `null` stored `null`: a value like any other, so its
/// history entries say `Some(null)` where the key had it, and `None` only where the key
/// did not exist, in `history`, `changes` and the record, on every backend.
pub async fn a_null_value_is_a_value(store: DynStore) {
    for (at, v) in [(1, json!(null)), (2, json!(1)), (3, json!(null))] {
        apply(&store, vec![plugin("n", at, "k", v)]).await;
    }
    let want = vec![
        (None, Some(json!(null))),
        (Some(json!(null)), Some(json!(1))),
        (Some(json!(1)), Some(json!(null))),
    ];
    assert_eq!(old_new(store.as_ref(), "n", "k").await, want);
    assert_eq!(changed(store.as_ref()).await, want);
    let record = store.node("n").await.expect("node").expect("stored");
    assert_eq!(
        record.keys.get("k"),
        Some(&json!(null)),
        "{:?}",
        record.keys
    );
}

/// Retention deletes history before a time and nothing else.
pub async fn retention_prunes_old_history(store: DynStore) {
    for (at, v) in [(10, 1), (20, 2), (30, 3)] {
        apply(&store, vec![plugin("n", at, "k", json!(v))]).await;
    }
    assert_eq!(store.prune_history(t(25)).await.expect("prune"), 2);
    let left = store.history("n", None).await.expect("history").rows;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].at, t(30));
    assert_eq!(
        store.node("n").await.expect("node").expect("kept").keys["k"],
        3
    );
    assert_eq!(store.prune_history(t(25)).await.expect("prune again"), 0);
}

/// A deleted node is gone from every read, with its history; other nodes keep theirs;
/// a second delete says so; the node's next result starts a new record.
pub async fn a_deleted_node_is_gone_with_its_history(store: DynStore) {
    for (at, v) in [(10, 1), (20, 2)] {
        apply(
            &store,
            vec![
                plugin("gone", at, "k", json!(v)),
                plugin("kept", at, "k", json!(v)),
            ],
        )
        .await;
    }
    assert!(store.delete_node("gone").await.expect("delete"));
    assert!(store.node("gone").await.expect("node").is_none());
    let names: Vec<String> = store
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["kept"]);
    assert!(store
        .history("gone", None)
        .await
        .expect("history")
        .rows
        .is_empty());
    assert_eq!(
        store
            .history("kept", None)
            .await
            .expect("history")
            .rows
            .len(),
        2
    );
    let values = store
        .values(&KeyPath::parse("k").expect("path"))
        .await
        .expect("values")
        .rows;
    assert_eq!(values, vec![("kept".to_string(), json!(2))]);
    assert!(!store.delete_node("gone").await.expect("delete again"));
    let out = apply(&store, vec![plugin("gone", 30, "k", json!(3))]).await;
    assert_eq!(out, vec![Outcome::Created]);
}

/// An imported record replaces what was there, keeps its times and history, and
/// still refuses results older than what it holds.
pub async fn import_replaces_a_node(store: DynStore) {
    let source = store.clone();
    for (at, v) in [(10, 1), (20, 2)] {
        source
            .apply(vec![plugin("n", at, "k", json!(v))].into())
            .await
            .expect("apply");
    }
    let rec = source.node("n").await.expect("node").expect("stored");
    let hist = source.history("n", None).await.expect("history").rows;
    assert_eq!(rec.keys_collected.get("k"), Some(&t(20)));
    // Import twice over an existing node: one copy, same content.
    store.import(&rec, &hist).await.expect("import");
    store.import(&rec, &hist).await.expect("import again");
    let got = store.node("n").await.expect("node").expect("imported");
    assert_eq!(got.keys, rec.keys);
    assert_eq!(got.created_at, rec.created_at);
    assert_eq!(got.keys_collected, rec.keys_collected);
    assert_eq!(store.history("n", None).await.expect("history").rows, hist);
    let out = apply(&store, vec![plugin("n", 15, "k", json!(9))]).await;
    assert_eq!(out, vec![Outcome::Stale]);
    let mut other = rec.clone();
    other.name = "m".into();
    store.import(&other, &[]).await.expect("import another");
    assert_eq!(store.nodes().await.expect("nodes").len(), 2);
}

/// The request ledger: answers recorded before their request still count, a second
/// record of the same request or answer changes nothing, newest requests come first,
/// and a missing node shows once the ttl passed.
pub async fn ledger_records_requests_and_answers_in_any_order(store: DynStore) {
    let request = |id: &str, at: i64| LedgerRequest {
        id: id.into(),
        command: "facter".into(),
        sender: "vogeler-runner@admin".into(),
        sent_at: t(at),
        ttl: 60,
        expected: vec!["a".into(), "b".into(), "c".into()],
    };
    let answer = |id: &str, node: &str, error: Option<&str>| LedgerAnswer {
        request_id: id.into(),
        node: node.into(),
        plugin: "facter".into(),
        error: error.map(str::to_string),
        stale: false,
        at: t(5),
    };
    // Answers first (a result overtook the announcement), then the request.
    store
        .record_ledger(
            &[],
            &[answer("r1", "a", None), answer("r1", "b", Some("boom"))],
        )
        .await
        .expect("answers");
    assert!(store.ledger("r1", t(10)).await.expect("ledger").is_none());
    store
        .record_ledger(
            &[request("r1", 0), request("r2", 100)],
            &[answer("r2", "a", None)],
        )
        .await
        .expect("requests");
    // Redelivery: the same records again, and a later different answer, change nothing.
    store
        .record_ledger(
            &[request("r1", 0)],
            &[answer("r1", "a", None), answer("r1", "b", None)],
        )
        .await
        .expect("again");
    let l = store
        .ledger("r1", t(10))
        .await
        .expect("ledger")
        .expect("recorded");
    assert_eq!(l.request, request("r1", 0));
    assert_eq!(l.state, RequestState::Pending);
    let got: Vec<(String, NodeOutcome, Option<String>)> = l
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.outcome.clone(), n.error.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".to_string(), NodeOutcome::Stored, None),
            (
                "b".to_string(),
                NodeOutcome::Error,
                Some("boom".to_string())
            ),
            ("c".to_string(), NodeOutcome::Pending, None),
        ]
    );
    let l = store
        .ledger("r1", t(61))
        .await
        .expect("ledger")
        .expect("recorded");
    assert_eq!(l.state, RequestState::Expired);
    assert_eq!(l.count(NodeOutcome::Missing), 1);
    // A stale answer reads back as stale.
    let mut stale = answer("r2", "c", None);
    stale.stale = true;
    store
        .record_ledger(&[], &[stale])
        .await
        .expect("stale answer");
    let l = store
        .ledger("r2", t(101))
        .await
        .expect("ledger")
        .expect("r2");
    assert_eq!(l.count(NodeOutcome::Stale), 1);
    let all = store.ledgers(10, t(61)).await.expect("ledgers");
    let ids: Vec<&str> = all.iter().map(|l| l.request.id.as_str()).collect();
    assert_eq!(ids, ["r2", "r1"], "newest first");
    assert_eq!(all[0].count(NodeOutcome::Stored), 1);
    assert_eq!(store.ledgers(1, t(61)).await.expect("limit").len(), 1);
    // The ledger is not a node.
    assert!(store.nodes().await.expect("nodes").is_empty());
}

fn volatile(node: &str, at: i64, name: &str, value: Value) -> Observation {
    let mut obs = plugin(node, at, name, value);
    if let Change::Plugin { history, .. } = &mut obs.change {
        *history = false;
    }
    obs
}

fn names_of(nodes: &[crate::NodeSummary]) -> Vec<&str> {
    nodes.iter().map(|n| n.name.as_str()).collect()
}

async fn active_fleet(store: &DynStore, include_inactive: bool) -> Vec<String> {
    let q = Query {
        include_inactive,
        ..Query::default()
    };
    let rows = store.select(&q).await.expect("select").rows;
    names_of(&rows).into_iter().map(str::to_string).collect()
}

/// A deactivated node keeps its record and history, shows its deactivation time, and is
/// left out of `select` (every fleet view) unless the query lets inactive nodes in; a
/// second deactivation keeps the first time; an unknown node is `false`; an import
/// carries the mark.
pub async fn a_deactivated_node_keeps_its_history_out_of_the_fleet(store: DynStore) {
    for (at, v) in [(10, 1), (20, 2)] {
        apply(
            &store,
            vec![
                plugin("off", at, "k", json!(v)),
                plugin("on", at, "k", json!(v)),
            ],
        )
        .await;
    }
    assert!(!store.any_deactivated().await.expect("any"), "all active");
    assert!(store
        .deactivate_node("off", t(100))
        .await
        .expect("deactivate"));
    assert!(
        store.any_deactivated().await.expect("any"),
        "off is deactivated"
    );
    assert!(!store
        .deactivate_node("nobody", t(100))
        .await
        .expect("deactivate"));
    assert!(store.deactivate_node("off", t(200)).await.expect("again"));
    let rec = store.node("off").await.expect("node").expect("kept");
    assert_eq!(rec.deactivated_at, Some(t(100)));
    assert_eq!(rec.keys.get("k"), Some(&json!(2)));
    assert_eq!(
        rec.document().get("deactivated_at"),
        Some(&json!(crate::rfc3339(t(100))))
    );
    assert_eq!(
        store
            .history("off", None)
            .await
            .expect("history")
            .rows
            .len(),
        2
    );
    let nodes = store.nodes().await.expect("nodes");
    assert_eq!(names_of(&nodes), ["off", "on"], "the node list keeps it");
    assert_eq!(nodes[0].deactivated_at, Some(t(100)));
    assert_eq!(nodes[1].deactivated_at, None);
    assert_eq!(active_fleet(&store, false).await, ["on"]);
    assert_eq!(active_fleet(&store, true).await, ["off", "on"]);
    let filtered = store
        .select(&Query::parse(&["k=2".into()], &[]).expect("query"))
        .await
        .expect("select")
        .rows;
    assert_eq!(names_of(&filtered), ["on"]);
    let history = store.history("off", None).await.expect("history").rows;
    store.import(&rec, &history).await.expect("import");
    let back = store.node("off").await.expect("node").expect("imported");
    assert_eq!(back.deactivated_at, Some(t(100)));
}

/// A heartbeat leaves a deactivated node deactivated; its next result (even one whose
/// value is unchanged, or an error) reactivates it.
pub async fn a_new_result_reactivates_a_node(store: DynStore) {
    apply(
        &store,
        vec![
            plugin("n", 10, "k", json!(1)),
            plugin("m", 10, "k", json!(1)),
        ],
    )
    .await;
    let seen = Observation {
        node: "n".into(),
        at: t(20),
        change: Change::Seen,
    };
    for node in ["n", "m"] {
        assert!(store
            .deactivate_node(node, t(15))
            .await
            .expect("deactivate"));
    }
    apply(&store, vec![seen]).await;
    assert_eq!(
        store
            .node("n")
            .await
            .expect("node")
            .expect("n")
            .deactivated_at,
        Some(t(15))
    );
    assert!(active_fleet(&store, false).await.is_empty());
    let error = Observation {
        node: "m".into(),
        at: t(30),
        change: Change::Error {
            plugin: Some("k".into()),
            message: "boom".into(),
            raw: None,
        },
    };
    let outcomes = apply(&store, vec![plugin("n", 30, "k", json!(1)), error]).await;
    assert_eq!(outcomes[0], Outcome::Unchanged);
    for node in ["n", "m"] {
        let rec = store.node(node).await.expect("node").expect("kept");
        assert_eq!(rec.deactivated_at, None, "{node}");
    }
    assert!(
        !store.any_deactivated().await.expect("any"),
        "both reactivated"
    );
    assert_eq!(active_fleet(&store, false).await, ["m", "n"]);
}

/// `deactivate_inactive` marks exactly the active nodes not seen since the cut-off,
/// counts only those, and leaves a node already deactivated with its first time.
pub async fn inactivity_deactivates_exactly_the_old_nodes(store: DynStore) {
    apply(
        &store,
        vec![
            plugin("old1", 0, "k", json!(1)),
            plugin("old2", 0, "k", json!(1)),
        ],
    )
    .await;
    apply(&store, vec![plugin("gone", 0, "k", json!(1))]).await;
    assert!(store
        .deactivate_node("gone", t(5))
        .await
        .expect("deactivate"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let cut = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    apply(&store, vec![plugin("new", 0, "k", json!(1))]).await;
    let n = store
        .deactivate_inactive(cut, t(100))
        .await
        .expect("deactivate inactive");
    assert_eq!(n, 2);
    let nodes = store.nodes().await.expect("nodes");
    let marks: Vec<(&str, Option<DateTime<Utc>>)> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.deactivated_at))
        .collect();
    assert_eq!(
        marks,
        [
            ("gone", Some(t(5))),
            ("new", None),
            ("old1", Some(t(100))),
            ("old2", Some(t(100))),
        ]
    );
    assert_eq!(
        store.deactivate_inactive(cut, t(200)).await.expect("again"),
        0
    );
    assert_eq!(active_fleet(&store, false).await, ["new"]);
}

/// Pairs `(old, new)` of the fleet's changes since the epoch, oldest first.
async fn changed(store: &dyn crate::Store) -> Vec<(Option<Value>, Option<Value>)> {
    store
        .changes(t(0), 100)
        .await
        .expect("changes")
        .rows
        .into_iter()
        .map(|e| (e.old, e.new))
        .collect()
}

/// Pairs `(old, new)` of a node's key history, oldest first.
pub async fn old_new(
    store: &dyn crate::Store,
    node: &str,
    key: &str,
) -> Vec<(Option<Value>, Option<Value>)> {
    store
        .history(node, Some(key))
        .await
        .expect("history")
        .rows
        .into_iter()
        .map(|e| (e.old, e.new))
        .collect()
}

/// A volatile key (`history = false`) stores its current value only: no history rows
/// and no `changes` for it. A key that had history keeps it exactly as it was (its
/// last row still ends at the value it recorded), and history resumes when the key
/// is no longer volatile.
pub async fn a_volatile_key_keeps_no_history(store: DynStore) {
    apply(&store, vec![plugin("n", 10, "k", json!(1))]).await;
    apply(&store, vec![plugin("n", 20, "k", json!(2))]).await;
    let outcomes = apply(
        &store,
        vec![
            volatile("n", 30, "k", json!(3)),
            volatile("n", 31, "ps", json!(["a"])),
        ],
    )
    .await;
    assert_eq!(outcomes, [Outcome::Updated, Outcome::Updated]);
    apply(
        &store,
        vec![
            volatile("n", 40, "k", json!(4)),
            volatile("n", 41, "ps", json!(["b"])),
        ],
    )
    .await;
    let rec = store.node("n").await.expect("node").expect("n");
    assert_eq!(rec.keys.get("k"), Some(&json!(4)));
    assert_eq!(rec.keys.get("ps"), Some(&json!(["b"])));
    let k = old_new(&*store, "n", "k").await;
    assert_eq!(
        k,
        [(None, Some(json!(1))), (Some(json!(1)), Some(json!(2)))]
    );
    assert!(store
        .history("n", Some("ps"))
        .await
        .expect("history")
        .rows
        .is_empty());
    let changes = store.changes(t(25), 100).await.expect("changes").rows;
    assert!(changes.is_empty(), "{changes:?}");
    let outlines = store
        .change_outlines(t(0), 100)
        .await
        .expect("outlines")
        .rows;
    assert_eq!(outlines.len(), 2, "{outlines:?}");
    // Back to keeping history: the next change is recorded from the current value.
    apply(&store, vec![plugin("n", 50, "k", json!(5))]).await;
    let k = old_new(&*store, "n", "k").await;
    assert_eq!(
        k,
        [
            (None, Some(json!(1))),
            (Some(json!(1)), Some(json!(2))),
            (Some(json!(4)), Some(json!(5))),
        ]
    );
}

/// A volatile result in the same batch as a kept one for the same key: the kept
/// change's entry still ends at the value it recorded (SQLite pins its row inside the
/// batch's transaction), in `history` and in `changes`.
pub async fn a_volatile_result_after_a_kept_one_in_one_batch(store: DynStore) {
    apply(&store, vec![plugin("n", 10, "k", json!(1))]).await;
    apply(
        &store,
        vec![
            plugin("n", 20, "k", json!(2)),
            volatile("n", 30, "k", json!(3)),
        ],
    )
    .await;
    assert_eq!(
        old_new(&*store, "n", "k").await,
        [(None, Some(json!(1))), (Some(json!(1)), Some(json!(2)))]
    );
    // Kept, volatile, kept in one batch.
    apply(
        &store,
        vec![
            plugin("n", 40, "k", json!(4)),
            volatile("n", 50, "k", json!(5)),
            plugin("n", 60, "k", json!(6)),
        ],
    )
    .await;
    assert_eq!(
        old_new(&*store, "n", "k").await,
        [
            (None, Some(json!(1))),
            (Some(json!(1)), Some(json!(2))),
            (Some(json!(3)), Some(json!(4))),
            (Some(json!(5)), Some(json!(6))),
        ]
    );
    assert_eq!(changed(&*store).await, old_new(&*store, "n", "k").await);
}
