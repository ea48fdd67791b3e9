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
