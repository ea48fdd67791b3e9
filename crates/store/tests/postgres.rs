//! The conformance suite on a real PostgreSQL: a database of its own per case.

use std::sync::Arc;

use vogeler_store::postgres::PostgresStore;
use vogeler_store::DynStore;

fn admin_url() -> String {
    std::env::var("VOGELER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://vogeler:vogeler@127.0.0.1:5432/postgres".into())
}

/// Creates `vogeler_t_<random>` and returns a store on it; fails naming the server if unreachable.
async fn fresh() -> DynStore {
    let url = admin_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {url}: {e}; start it with `scripts/services.sh ensure-postgres`")
        });
    tokio::spawn(conn);
    let name = format!("vogeler_t_{:016x}", rand_u64());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {url}: {e}"));
    let db_url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("VOGELER_TEST_POSTGRES must end in /database: {url}"),
    };
    Arc::new(
        PostgresStore::connect(&db_url)
            .await
            .expect("connect store"),
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

vogeler_store::conformance_tests!(fresh());
