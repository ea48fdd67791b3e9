//! The conformance suite on the embedded SQLite store (a fresh file per case).

use std::sync::Arc;

use vogeler_store::sqlite::SqliteStore;
use vogeler_store::DynStore;

async fn fresh() -> DynStore {
    // The directory must outlive the store, which the suite holds to the case's end:
    // it is left behind, so under the build's own scratch directory, not /tmp.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("v.db")).expect("open sqlite");
    std::mem::forget(dir);
    Arc::new(store)
}

vogeler_store::conformance_tests!(fresh());

/// Commits only append to the WAL (automatic checkpoints are off); the checkpointer
/// thread copies them into the database file soon after, and the data reads back.
#[tokio::test]
async fn the_checkpointer_copies_commits_into_the_database_file() {
    use vogeler_store::{Change, Observation, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.db");
    let store = SqliteStore::open(&path).expect("open sqlite");
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let empty = size();
    let value = serde_json::json!({ "blob": "x".repeat(4000) });
    let batch: Vec<Observation> = (0..500)
        .map(|i| Observation {
            node: format!("n{i:04}"),
            at: chrono::Utc::now(),
            change: Change::Plugin {
                name: "facter".into(),
                value: value.clone().into(),
                history: true,
            },
        })
        .collect();
    store.apply(batch.into()).await.expect("apply");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() < empty + 2_000_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        size() >= empty + 2_000_000,
        "the database file holds {} bytes after 2 MB were committed (it held {empty} when empty)",
        size()
    );
    assert_eq!(store.nodes().await.expect("nodes").len(), 500);
}

/// A database file made before nodes could be deactivated (no `deactivated_at` column)
/// gets the column at open: its nodes read back active and can be deactivated.
#[tokio::test]
async fn an_older_file_gains_the_deactivation_column() {
    use vogeler_store::Store as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE nodes (name TEXT PRIMARY KEY, created_at TEXT NOT NULL,
                 updated_at TEXT NOT NULL, last_seen TEXT NOT NULL, last_error TEXT, last_error_at TEXT);
             INSERT INTO nodes VALUES ('old', '2026-01-01T00:00:00.000000Z',
                 '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', NULL, NULL);",
        )
        .expect("old schema");
    }
    let store = SqliteStore::open_existing(&path).expect("open the older file");
    let nodes = store.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].deactivated_at, None);
    assert!(store
        .deactivate_node("old", chrono::Utc::now())
        .await
        .expect("deactivate"));
    let since = chrono::Utc::now();
    assert_eq!(
        store
            .deactivate_inactive(since, since)
            .await
            .expect("again"),
        0
    );
    assert!(store.nodes().await.expect("nodes")[0]
        .deactivated_at
        .is_some());
}

/// A database file made before the package index gets it at open, filled from the
/// package lists already stored; a list that is not JSON is counted skipped (as every
/// other read of it skips it), and later writes keep the index in step.
#[tokio::test]
async fn an_older_file_gains_a_filled_package_index() {
    use serde_json::json;
    use vogeler_store::{Change, Observation, Store as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let at = "2026-01-01T00:00:00.000000Z";
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(&format!(
            "CREATE TABLE nodes (name TEXT PRIMARY KEY, created_at TEXT NOT NULL,
                 updated_at TEXT NOT NULL, last_seen TEXT NOT NULL, last_error TEXT, last_error_at TEXT);
             CREATE TABLE node_keys (node TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                 collected_at TEXT NOT NULL, UNIQUE (node, key));
             INSERT INTO nodes VALUES ('a', '{at}', '{at}', '{at}', NULL, NULL),
                                      ('b', '{at}', '{at}', '{at}', NULL, NULL);
             INSERT INTO node_keys VALUES ('a', 'dpkg', '{{\"openssl\":\"3.0.11-1\",\"bash\":\"5.2\"}}', '{at}'),
                                          ('a', 'rpm', '{{\"openssl\":\"3.0.7\"}}', '{at}'),
                                          ('b', 'dpkg', '{{\"openssl\": broken', '{at}');"
        ))
        .expect("old schema");
    }
    let store = SqliteStore::open_existing(&path).expect("open the older file");
    let got = store.packages("openssl").await.expect("packages");
    assert_eq!(
        got.rows,
        [
            ("a".to_string(), "dpkg".to_string(), json!("3.0.11-1")),
            ("a".to_string(), "rpm".to_string(), json!("3.0.7")),
        ]
    );
    assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
    assert_eq!(
        (got.skipped[0].node.as_str(), got.skipped[0].key.as_str()),
        ("b", "dpkg")
    );
    // A filter on the package reads the index the same way, skipping the same list.
    let openssl = vogeler_store::KeyPath::parse("dpkg.openssl").expect("path");
    let by_path = store.key_values(&openssl).await.expect("key_values");
    assert_eq!(by_path.rows, [("a".to_string(), json!("3.0.11-1"))]);
    assert_eq!(by_path.skipped.len(), 1, "{:?}", by_path.skipped);
    // A good list replaces the broken one: nothing skipped any more.
    store
        .apply(
            vec![Observation {
                node: "b".into(),
                at: chrono::Utc::now(),
                change: Change::Plugin {
                    name: "dpkg".into(),
                    value: json!({"openssl": "3.0.13-1"}).into(),
                    history: true,
                },
            }]
            .into(),
        )
        .await
        .expect("apply");
    let got = store.packages("openssl").await.expect("packages");
    assert!(got.skipped.is_empty(), "{:?}", got.skipped);
    assert_eq!(got.rows.len(), 3);
    // Opening again does not fill twice.
    drop(store);
    let store = SqliteStore::open_existing(&path).expect("open again");
    assert_eq!(store.packages("bash").await.expect("bash").rows.len(), 1);
}
