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
