//! The conformance suite on the embedded SQLite store (a fresh file per case).

use std::sync::Arc;

use vogeler_store::sqlite::SqliteStore;
use vogeler_store::DynStore;

async fn fresh() -> DynStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("v.db")).expect("open sqlite");
    // The directory must outlive the store: leak it for the test's lifetime.
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
