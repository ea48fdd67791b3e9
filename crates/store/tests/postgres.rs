//! The conformance suite on a real PostgreSQL: a database of its own per case.

use std::sync::Arc;

use vogeler_store::postgres::PostgresStore;
use vogeler_store::testing::fresh_postgres;
use vogeler_store::DynStore;

async fn fresh() -> DynStore {
    Arc::new(
        PostgresStore::connect(&fresh_postgres().await)
            .await
            .expect("connect store"),
    )
}

vogeler_store::conformance_tests!(fresh());

/// A database written by schema version 1 (every key in one `doc` column) is migrated
/// to per-key rows at start, keeping values and collection times, and on through the
/// last version (the lifecycle column, the package index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated() {
    let url = fresh_postgres().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE vogeler_schema (version INT NOT NULL);
             INSERT INTO vogeler_schema VALUES (1);
             CREATE TABLE nodes (name TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL, last_seen TIMESTAMPTZ NOT NULL, last_error JSONB,
                 last_error_at TIMESTAMPTZ, doc JSONB NOT NULL DEFAULT '{}'::jsonb,
                 key_times JSONB NOT NULL DEFAULT '{}'::jsonb);
             CREATE INDEX nodes_doc ON nodes USING GIN (doc jsonb_path_ops);
             CREATE TABLE history (id BIGSERIAL PRIMARY KEY, node TEXT NOT NULL, key TEXT NOT NULL,
                 old JSONB, new JSONB, at TIMESTAMPTZ NOT NULL);
             INSERT INTO nodes VALUES ('web01', '2026-01-01Z', '2026-01-02Z', '2026-01-03Z', NULL, NULL,
                 '{\"facter\": {\"os\": {\"family\": \"Debian\"}}, \"ps\": [\"init\"], \"dpkg\": {\"openssl\": \"3.0.11-1\"}}',
                 '{\"facter\": \"2026-01-02T00:00:00Z\"}');",
        )
        .await
        .expect("version 1 schema");
    let store = PostgresStore::connect(&url).await.expect("migrate");
    let rec = vogeler_store::Store::node(&store, "web01")
        .await
        .expect("node")
        .expect("kept");
    assert_eq!(rec.keys["facter"]["os"]["family"], "Debian");
    assert_eq!(rec.keys["ps"], serde_json::json!(["init"]));
    assert_eq!(
        vogeler_store::rfc3339(rec.keys_collected["facter"]),
        "2026-01-02T00:00:00.000000Z"
    );
    // A key without a recorded time takes the node's updated_at.
    assert_eq!(rec.keys_collected["ps"], rec.updated_at);
    // Every later version came along: the lifecycle column (version 5) holds a
    // deactivation, and the node list carries it.
    let at = chrono::Utc::now();
    assert!(vogeler_store::Store::deactivate_node(&store, "web01", at)
        .await
        .expect("deactivate on a migrated database"));
    let listed = vogeler_store::Store::nodes(&store).await.expect("nodes");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].deactivated_at.is_some(), "{listed:?}");
    assert_eq!(
        vogeler_store::Store::node(&store, "web01")
            .await
            .expect("node")
            .expect("kept")
            .keys["facter"]["os"]["family"],
        "Debian",
        "deactivation keeps the document"
    );
    // The package index (version 6) was filled from the lists already stored.
    assert_eq!(
        vogeler_store::Store::packages(&store, "openssl")
            .await
            .expect("packages")
            .rows,
        [(
            "web01".to_string(),
            "dpkg".to_string(),
            serde_json::json!("3.0.11-1")
        )]
    );
    // Connecting again changes nothing.
    drop(PostgresStore::connect(&url).await.expect("second start"));
}

/// A database a newer server migrated (a schema version past this code's) is refused
/// with both versions named, by a server and by read-only commands alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_naming_both_versions() {
    let url = fresh_postgres().await;
    PostgresStore::connect(&url)
        .await
        .expect("create the schema");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute("INSERT INTO vogeler_schema VALUES (9999)")
        .await
        .expect("a newer version");
    let err = PostgresStore::connect(&url)
        .await
        .err()
        .expect("a newer schema is refused")
        .to_string();
    assert!(
        err.contains("version 9999") && err.contains("newer than this program's 10"),
        "{err}"
    );
    let err = PostgresStore::connect_existing(&url)
        .await
        .err()
        .expect("read-only commands refuse it too")
        .to_string();
    assert!(err.contains("version 9999"), "{err}");
}
