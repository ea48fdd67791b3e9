//! The one conformance suite every backend runs unchanged, on a real server.
//!
//! Each case takes a fresh, empty store. A backend's test file instantiates all of
//! them with [`conformance_tests!`](crate::conformance_tests), giving one `#[tokio::test]`
//! per case, so a failure names the case and the backend.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use crate::{Change, DynStore, Observation, Outcome};

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
            value,
        },
    }
}

/// Expands to one `#[tokio::test]` per case; `$make` is an async expression giving a fresh `DynStore`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            created_on_first_sight, updated_unchanged_and_stale, redelivery_is_idempotent,
            reserved_keys_are_refused, errors_become_last_error, seen_only_moves_last_seen,
            history_records_changes_only, several_nodes_in_one_batch, fixtures_round_trip);
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

/// A node's document appears with its first observation.
pub async fn created_on_first_sight(store: DynStore) {
    assert!(store.node("web01").await.expect("node").is_none());
    let out = store
        .apply(
            vec![plugin(
                "web01",
                0,
                "facter",
                json!({"os": {"family": "Debian"}}),
            )]
            .into(),
        )
        .await
        .expect("apply");
    assert_eq!(out, vec![Outcome::Created]);
    let rec = store.node("web01").await.expect("node").expect("stored");
    assert_eq!(rec.keys["facter"]["os"]["family"], "Debian");
    assert!(rec.created_at <= rec.updated_at && rec.updated_at <= rec.last_seen);
    let doc = rec.document();
    assert_eq!(doc["system_name"], "web01");
    assert_eq!(doc["doc_type"], "SystemRecord");
    assert!(doc["last_error"].is_null());
}

/// New value → Updated; same value → Unchanged; older → Stale and kept.
pub async fn updated_unchanged_and_stale(store: DynStore) {
    store
        .apply(vec![plugin("n", 10, "k", json!(1))].into())
        .await
        .expect("apply");
    let first = store.node("n").await.expect("node").expect("stored");
    let out = store
        .apply(
            vec![
                plugin("n", 20, "k", json!(2)),
                plugin("n", 30, "k", json!(2)),
                plugin("n", 15, "k", json!(99)),
            ]
            .into(),
        )
        .await
        .expect("apply");
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
    let history_before = store.history("a", None).await.expect("history").len();
    let again = store.apply(batch.into()).await.expect("apply again");
    assert_eq!(again, vec![Outcome::Unchanged; 3]);
    let after = store.node("a").await.expect("node").expect("stored");
    assert_eq!(before.keys, after.keys);
    assert_eq!(before.updated_at, after.updated_at);
    assert_eq!(
        store.history("a", None).await.expect("history").len(),
        history_before
    );
}

/// A plugin named like a document field is refused; the rest of the batch goes in.
pub async fn reserved_keys_are_refused(store: DynStore) {
    let out = store
        .apply(
            vec![
                plugin("n", 1, "created_at", json!(1)),
                plugin("n", 1, "_id", json!(1)),
                plugin("n", 1, "ok", json!(1)),
            ]
            .into(),
        )
        .await
        .expect("apply");
    assert!(matches!(out[0], Outcome::Refused(_)), "{out:?}");
    assert!(matches!(out[1], Outcome::Refused(_)), "{out:?}");
    assert_eq!(out[2], Outcome::Created);
    let rec = store.node("n").await.expect("node").expect("stored");
    assert_eq!(rec.keys.len(), 1);
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
    store
        .apply(vec![err(10, "boom")].into())
        .await
        .expect("apply");
    let out = store
        .apply(vec![err(5, "older")].into())
        .await
        .expect("apply");
    assert_eq!(out, vec![Outcome::Stale]);
    let rec = store.node("n").await.expect("node").expect("stored");
    let e = rec.last_error.expect("last_error");
    assert_eq!(e["message"], "boom");
    assert_eq!(e["plugin"], "ohai");
    assert_eq!(e["raw"], "not json");
    let summary = store.nodes().await.expect("nodes");
    assert_eq!(summary[0].last_error.as_deref(), Some("boom"));
}

/// A heartbeat creates the document if needed and moves only `last_seen`.
pub async fn seen_only_moves_last_seen(store: DynStore) {
    store
        .apply(vec![plugin("n", 1, "k", json!(1))].into())
        .await
        .expect("apply");
    let before = store.node("n").await.expect("node").expect("stored");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let out = store
        .apply(
            vec![Observation {
                node: "n".into(),
                at: t(2),
                change: Change::Seen,
            }]
            .into(),
        )
        .await
        .expect("apply");
    assert_eq!(out, vec![Outcome::Unchanged]);
    let after = store.node("n").await.expect("node").expect("stored");
    assert_eq!(before.updated_at, after.updated_at);
    assert!(after.last_seen > before.last_seen);
    let out = store
        .apply(
            vec![Observation {
                node: "fresh".into(),
                at: t(2),
                change: Change::Seen,
            }]
            .into(),
        )
        .await
        .expect("apply");
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
    store
        .apply(
            vec![
                plugin("n", 1, "kernel", json!("6.1")),
                plugin("n", 2, "kernel", json!("6.1")),
                plugin("n", 3, "kernel", json!("6.18")),
                plugin("n", 3, "other", json!(true)),
            ]
            .into(),
        )
        .await
        .expect("apply");
    let h = store.history("n", Some("kernel")).await.expect("history");
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0].old, None);
    assert_eq!(h[0].new, Some(json!("6.1")));
    assert_eq!(h[1].old, Some(json!("6.1")));
    assert_eq!(h[1].new, Some(json!("6.18")));
    assert_eq!(h[1].at, t(3));
    assert_eq!(store.history("n", None).await.expect("history").len(), 3);
    assert!(store
        .history("nobody", None)
        .await
        .expect("history")
        .is_empty());
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
    store
        .apply(
            vec![
                plugin("web01", 1, "facter", facter.clone()),
                plugin("web01", 1, "ohai", ohai.clone()),
                plugin("web01", 1, "dpkg", dpkg.clone()),
            ]
            .into(),
        )
        .await
        .expect("apply");
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
            let big = |n: &serde_json::Number| n.as_u64().is_some_and(|v| v > (1 << 53));
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
