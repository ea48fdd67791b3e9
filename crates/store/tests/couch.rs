//! The conformance suite and CouchDB specifics on a real CouchDB-API server:
//! a private in-memory pouchdb-server per test binary, one database per case.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vogeler_store::couch::CouchStore;
use vogeler_store::testing::{pouchdb, unique};
use vogeler_store::{Change, DynStore, Observation, Outcome, Store};

async fn couch(db: &str) -> CouchStore {
    let url = pouchdb();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match CouchStore::connect(url, db, None, None).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("CouchDB API at {url} unusable: {e}"),
        }
    }
}

async fn fresh() -> DynStore {
    Arc::new(couch(&unique("vt_")).await)
}

vogeler_store::conformance_tests!(fresh());

/// A JSON answer of the CouchDB API, read straight (not through the store).
async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Writes a document as raw text, as an operator's tool or an earlier version might.
async fn put_text(url: &str, text: String) {
    let put = reqwest::Client::new()
        .put(url)
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert!(put.status().is_success(), "PUT {url}: {}", put.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_writing_the_same_nodes_lose_nothing() {
    let db = unique("vt_");
    let a = Arc::new(couch(&db).await);
    let b = Arc::new(couch(&db).await);
    let t0 = chrono::Utc::now();
    let batch = |prefix: &'static str| -> Vec<Observation> {
        (0..20)
            .flat_map(|n| {
                (0..5).map(move |k| Observation {
                    node: format!("node{n}"),
                    at: t0,
                    change: Change::Plugin {
                        name: format!("{prefix}{k}"),
                        value: json!(k).into(),
                        history: true,
                    },
                })
            })
            .collect()
    };
    let (ra, rb) = tokio::join!(a.apply(batch("a").into()), b.apply(batch("b").into()));
    ra.expect("server a");
    rb.expect("server b");
    for n in 0..20 {
        let rec = a
            .node(&format!("node{n}"))
            .await
            .expect("node")
            .expect("stored");
        assert_eq!(
            rec.keys.len(),
            10,
            "node{n} lost an update: {:?}",
            rec.keys.keys()
        );
        // Each key changed once: one history entry each, none from a lost race.
        let history = a
            .history(&format!("node{n}"), None)
            .await
            .expect("history")
            .rows;
        assert_eq!(history.len(), 10, "node{n}: {history:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_numbers_do_not_look_like_changes() {
    let store = couch(&unique("vt_")).await;
    let value = json!({"ratio": 1.0, "big": 12345678901234567890u64, "list": [2.0]});
    let obs = Observation {
        node: "n".into(),
        at: chrono::Utc::now(),
        change: Change::Plugin {
            name: "k".into(),
            value: value.into(),
            history: true,
        },
    };
    store.apply(vec![obs.clone()].into()).await.expect("apply");
    let again = store.apply(vec![obs].into()).await.expect("apply again");
    assert_eq!(again, vec![Outcome::Unchanged]);
    assert_eq!(
        store.history("n", None).await.expect("history").rows.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_names_couchdb_reserves_are_refused() {
    let store = couch(&unique("vt_")).await;
    let seen = |node: &str| Observation {
        node: node.into(),
        at: chrono::Utc::now(),
        change: Change::Seen,
    };
    let out = store
        .apply(vec![seen("_design/x"), seen("history:x"), seen("ok")].into())
        .await
        .expect("apply");
    assert!(matches!(out[0], Outcome::Refused(_)), "{out:?}");
    assert!(matches!(out[1], Outcome::Refused(_)), "{out:?}");
    assert_eq!(out[2], Outcome::Created);
    let names: Vec<String> = store
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["ok".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn design_docs_load_once_and_the_2010_views_answer() {
    let db = unique("vt_");
    let store = couch(&db).await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../etc/_design");
    let first = store.load_design_docs(&dir).await.expect("load");
    assert!(first.iter().any(|l| l.contains("loaded")), "{first:?}");
    let second = store.load_design_docs(&dir).await.expect("load again");
    assert!(second.iter().all(|l| l.contains("unchanged")), "{second:?}");
    store
        .apply(
            vec![Observation {
                node: "web01".into(),
                at: chrono::Utc::now(),
                change: Change::Plugin {
                    name: "facter".into(),
                    value: json!({"os": {"family": "Debian"}}).into(),
                    history: true,
                },
            }]
            .into(),
        )
        .await
        .expect("apply");
    let url = format!("{}/{db}/_design/system_records/_view/by_name", pouchdb());
    let body = get_json(&url).await;
    assert_eq!(body["rows"][0]["key"], "web01", "{body}");
}

/// A node document written by hand (or by an earlier version) that serde_json cannot
/// read, nested past its depth limit: the fleet view skips it, `check` lists it, a
/// result for that node is refused rather than retried for ever, and `quarantine`
/// moves it aside so the node's next result starts a new document.
#[tokio::test]
async fn a_document_that_does_not_read_back_is_skipped_refused_and_quarantined() {
    let db = unique("vt_");
    let store = couch(&db).await;
    let t0 = chrono::Utc::now();
    let result = |node: &str, n: i64| Observation {
        node: node.into(),
        at: t0,
        change: Change::Plugin {
            name: "facter".into(),
            value: json!({ "n": n }).into(),
            history: true,
        },
    };
    store
        .apply(vec![result("good", 1)].into())
        .await
        .expect("good node stored");
    let depth = 300;
    let deep = format!(
        r#"{{"doc_type":"SystemRecord","system_name":"deep","created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","facter":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    put_text(&format!("{}/{db}/deep", pouchdb()), deep).await;

    let nodes = store.nodes().await.expect("the node list still answers");
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["good"]);

    let found = store.check().await.expect("check");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].node, "deep");
    assert!(found[0].why.contains("recursion"), "{found:?}");

    let outcomes = store
        .apply(vec![result("deep", 2), result("good", 2)].into())
        .await
        .expect("a batch with the unreadable node is applied, not failed");
    assert!(
        matches!(&outcomes[0], Outcome::Refused(why) if why.contains("does not read back")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], Outcome::Updated);

    assert_eq!(store.quarantine(&found).await.expect("quarantine"), 1);
    assert!(store.check().await.expect("check").is_empty());
    let outcomes = store
        .apply(vec![result("deep", 3)].into())
        .await
        .expect("the node starts a new document");
    assert_eq!(outcomes[0], Outcome::Created);
    let rec = store.node("deep").await.expect("read").expect("stored");
    assert_eq!(rec.keys["facter"], json!({ "n": 3 }));
}

/// Quarantining a node document never changes what its history entries read: each
/// key's latest entry, whose `new` is the document's value, is written out first (the
/// key's value where that part of the document parses, else none, as it read before), so
/// the node's next document, here volatile values that write no entry, is not read into
/// entries that never had it.
#[tokio::test]
async fn quarantining_a_node_document_keeps_its_history_entries_values() {
    let db = unique("vt_");
    let store = couch(&db).await;
    let t0 = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now");
    let result = |secs: i64, name: &str, value: serde_json::Value, history: bool| Observation {
        node: "deep".into(),
        at: t0 + chrono::Duration::seconds(secs),
        change: Change::Plugin {
            name: name.into(),
            value: value.into(),
            history,
        },
    };
    store
        .apply(
            vec![
                result(0, "facter", json!({ "n": 0 }), true),
                result(0, "ohai", json!({ "m": 0 }), true),
            ]
            .into(),
        )
        .await
        .expect("stored");
    // The document rewritten by hand: `facter` as it was, `ohai` nested past the limit.
    let url = format!("{}/{db}/deep", pouchdb());
    let doc = get_json(&url).await;
    let depth = 300;
    let text = doc.to_string().replacen(
        r#""ohai":{"m":0}"#,
        &format!(r#""ohai":{}1{}"#, "[".repeat(depth), "]".repeat(depth)),
        1,
    );
    assert!(text.contains(&"[".repeat(depth)), "{doc}");
    put_text(&url, text).await;

    let reads = |h: vogeler_store::Rows<vogeler_store::HistoryEntry>| -> Vec<(String, Option<serde_json::Value>)> {
        let mut r: Vec<_> = h.rows.into_iter().map(|e| (e.key, e.new)).collect();
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    };
    let before = reads(store.history("deep", None).await.expect("history"));
    assert_eq!(before, [("facter".into(), None), ("ohai".into(), None)]);

    let found = store.check().await.expect("check");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(store.quarantine(&found).await.expect("quarantine"), 1);
    let outcomes = store
        .apply(
            vec![
                result(5, "facter", json!({ "n": 5 }), false),
                result(5, "ohai", json!({ "m": 5 }), false),
            ]
            .into(),
        )
        .await
        .expect("the node starts a new document");
    assert_eq!(outcomes[0], Outcome::Created);
    let after = reads(store.history("deep", None).await.expect("history"));
    assert_eq!(
        after,
        [
            ("facter".into(), Some(json!({ "n": 0 }))),
            ("ohai".into(), None)
        ],
        "the entries read the quarantined document's values, not the next document's"
    );
}

/// A plugin key's history documents leave `new` out (the value is the node's, or the
/// next entry's `old`: pouchdb-server's work is the bytes it parses, hashes and stores),
/// and reads fill it in, also across an entry written whole by an earlier version.
#[tokio::test]
async fn history_documents_leave_new_out_and_reads_fill_it_in() {
    let db = unique("vt_");
    let store = couch(&db).await;
    // Whole seconds: stored times need not keep a finer part.
    let t0 = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now");
    let result = |secs: i64, v: serde_json::Value| Observation {
        node: "n".into(),
        at: t0 + chrono::Duration::seconds(secs),
        change: Change::Plugin {
            name: "facter".into(),
            value: v.into(),
            history: true,
        },
    };
    store
        .apply(vec![result(1, json!({"v": 1}))].into())
        .await
        .expect("first");
    // An entry as an earlier version wrote it: `new` explicit (and the same value).
    let old_style = json!({
        "_id": "history:n:facter:0000-earlier:import.0", "doc_type": "History",
        "node": "n", "key": "facter", "old": {"v": 1}, "new": {"v": 2},
        "at": chrono::DateTime::to_rfc3339(&(t0 + chrono::Duration::seconds(2))), "seq": 1,
    });
    let put = reqwest::Client::new()
        .post(format!("{}/{db}", pouchdb()))
        .json(&old_style)
        .send()
        .await
        .expect("POST the earlier entry");
    assert!(put.status().is_success(), "{}", put.status());
    store
        .apply(vec![result(3, json!({"v": 2})), result(4, json!({"v": 3}))].into())
        .await
        .expect("later");

    let all = get_json(&format!(
        "{}/{db}/_all_docs?include_docs=true&startkey=%22history:%22&endkey=%22history:%EF%BF%B0%22",
        pouchdb()
    ))
    .await;
    let docs: Vec<&serde_json::Value> = all["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| &r["doc"])
        .filter(|d| d["_id"] != "history:n:facter:0000-earlier:import.0")
        .collect();
    // The store's own: first sight and two changes, the first from the node's value
    // ({v:1}: the earlier entry was put beside the node, not applied to it).
    assert_eq!(docs.len(), 3, "{all}");
    for d in &docs {
        assert!(d.get("new").is_none(), "{d}");
        assert_eq!(d["new_implicit"], true, "{d}");
    }

    let h = vogeler_store::conformance::old_new(&store, "n", "facter").await;
    assert_eq!(
        h,
        [
            (None, Some(json!({"v": 1}))),
            (Some(json!({"v": 1})), Some(json!({"v": 2}))),
            (Some(json!({"v": 1})), Some(json!({"v": 2}))),
            (Some(json!({"v": 2})), Some(json!({"v": 3}))),
        ]
    );
    let changes = store
        .changes(t0 + chrono::Duration::seconds(3), 1)
        .await
        .expect("changes");
    let c: Vec<_> = changes.rows.iter().map(|e| (&e.old, &e.new)).collect();
    assert_eq!(
        c,
        [(&Some(json!({"v": 1})), &Some(json!({"v": 2})))],
        "limited to one: its new is the next entry's old"
    );
}

/// `changes` and `prune_history` read a time range through the store's own view
/// (`_design/vogeler_store`), not every history document: the view is saved on first
/// use, put back when edited or deleted, and its text keys (whatever form a time was
/// written in) give exactly the entries in the range.
#[tokio::test]
async fn changes_and_prune_read_a_time_range_through_the_history_view() {
    let db = unique("vt_");
    let store = couch(&db).await;
    let t0 = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).expect("now");
    let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
    let result = |node: &str, secs: i64, v: i64| Observation {
        node: node.into(),
        at: at(secs),
        change: Change::Plugin {
            name: "facter".into(),
            value: json!({ "v": v }).into(),
            history: true,
        },
    };
    for secs in 1..=4 {
        store
            .apply(vec![result("a", secs, secs), result("b", secs, secs * 10)].into())
            .await
            .expect("apply");
    }
    // Entries as an earlier version, another tool or a hand wrote them: other forms
    // of time (their text does not sort as the times do), and times that do not parse.
    let form = |secs: i64, f: &str| {
        at(secs)
            .with_timezone(
                &chrono::FixedOffset::east_opt(match f {
                    "-05:00" => -5 * 3600,
                    "+01:00" => 3600,
                    _ => 0,
                })
                .expect("offset"),
            )
            .format(match f {
                "space" => "%Y-%m-%d %H:%M:%SZ",
                "lower" => "%Y-%m-%dt%H:%M:%Sz",
                "+00:00" => "%Y-%m-%dT%H:%M:%S+00:00",
                _ => "%Y-%m-%dT%H:%M:%S%:z",
            })
            .to_string()
    };
    let mut hand: Vec<serde_json::Value> = [
        ("c", 3, "+00:00"),
        ("d", 3, "space"),
        ("e", 3, "-05:00"),
        ("f", 4, "lower"),
        ("g", 2, "+01:00"),
    ]
    .iter()
    .map(|(node, secs, f)| {
        json!({
            "_id": format!("history:{node}:facter:hand"), "doc_type": "History", "node": node,
            "key": "facter", "old": {"v": 1}, "new": {"v": 2}, "at": form(*secs, f), "seq": 1,
        })
    })
    .collect();
    for (i, bad) in [json!(5), json!(null), json!("1999-bad"), json!("garbage")]
        .into_iter()
        .enumerate()
    {
        hand.push(json!({
            "_id": format!("history:x:facter:bad{i}"), "doc_type": "History", "node": "x",
            "key": "facter", "old": {"v": 1}, "new": {"v": 2}, "at": bad, "seq": 1,
        }));
    }
    let http = reqwest::Client::new();
    let put = http
        .post(format!("{}/{db}/_bulk_docs", pouchdb()))
        .json(&json!({ "docs": hand }))
        .send()
        .await
        .expect("POST the entries");
    assert!(put.status().is_success(), "{}", put.status());

    let times = |rows: &[vogeler_store::HistoryEntry]| {
        let mut t: Vec<(String, i64)> = rows
            .iter()
            .map(|e| (e.node.clone(), (e.at - t0).num_seconds()))
            .collect();
        t.sort();
        t
    };
    // Every read lists the four that do not parse as skipped, as a read of each
    // document would.
    let since = |secs: i64| {
        let store = &store;
        async move {
            let h = store.changes(at(secs), 1000).await.expect("changes");
            assert_eq!(h.skipped.len(), 4, "{:?}", h.skipped);
            h
        }
    };
    let want = |from: i64| {
        let mut w: Vec<(String, i64)> = (from..=4)
            .flat_map(|s| [("a".to_string(), s), ("b".to_string(), s)])
            .chain(
                [("c", 3), ("d", 3), ("e", 3), ("f", 4), ("g", 2)]
                    .iter()
                    .filter(|(_, s)| *s >= from)
                    .map(|(n, s)| (n.to_string(), *s)),
            )
            .collect();
        w.sort();
        w
    };
    assert_eq!(times(&since(3).await.rows), want(3));
    let ddoc = format!("{}/{db}/_design/vogeler_store", pouchdb());
    let saved: serde_json::Value = http
        .get(&ddoc)
        .send()
        .await
        .expect("GET the view")
        .json()
        .await
        .expect("json");
    assert!(
        saved["views"]["history_by_at"]["map"]
            .as_str()
            .is_some_and(|m| m.contains("emit(plain ? at : null")),
        "{saved}"
    );
    // Entries a second apart, at the bounds: exact.
    assert_eq!(times(&since(4).await.rows), want(4));
    let h = since(2).await;
    assert_eq!(times(&h.rows), want(2));
    // The implicit `new` of an entry is filled in from the next one.
    let a2 = h
        .rows
        .iter()
        .find(|e| e.node == "a" && e.at == at(2))
        .expect("a at 2");
    assert_eq!(a2.new, Some(json!({"v": 2})), "{a2:?}");

    // Edited by hand: a new handle puts it back before reading through it.
    let mut edited = saved.clone();
    edited["views"]["history_by_at"]["map"] = json!("function (doc) {}");
    let put = http.put(&ddoc).json(&edited).send().await.expect("PUT");
    assert!(put.status().is_success(), "{}", put.status());
    let again = couch(&db).await;
    let h = again.changes(at(3), 1000).await.expect("changes");
    assert_eq!(times(&h.rows), want(3));
    // Deleted: the handle that already checked it saves it again.
    let rev = http
        .get(&ddoc)
        .send()
        .await
        .expect("GET")
        .json::<serde_json::Value>()
        .await
        .expect("json")["_rev"]
        .as_str()
        .expect("rev")
        .to_string();
    let del = http
        .delete(format!("{ddoc}?rev={rev}"))
        .send()
        .await
        .expect("DELETE");
    assert!(del.status().is_success(), "{}", del.status());
    assert_eq!(
        times(&again.changes(at(3), 1000).await.expect("changes").rows),
        want(3)
    );

    // Prune removes what is before the time and nothing after it.
    assert_eq!(again.prune_history(at(3)).await.expect("prune"), 5);
    assert_eq!(
        times(&again.changes(at(0), 1000).await.expect("changes").rows),
        want(3)
    );
}
