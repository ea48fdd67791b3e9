//! A PostgreSQL database of its own per test on the shared server
//! (`VOGELER_TEST_POSTGRES`), for stores several servers share (`faults.rs`,
//! `nats_faults.rs`) or that are taken away mid-ingest.

use super::{rt, Deployment};

pub fn pg_admin_url() -> String {
    vogeler_store::testing::postgres_admin_url()
}

/// A connection to the admin database; fails naming the server if unreachable.
pub async fn pg_admin() -> tokio_postgres::Client {
    let url = pg_admin_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {url}: {e}; start it with `scripts/services.sh ensure-postgres`")
        });
    tokio::spawn(conn);
    client
}

pub fn pg_exec(sql: &str) {
    rt().block_on(async {
        pg_admin()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

/// A fresh database of its own, dropped with the guard.
pub struct PgDatabase {
    pub name: String,
    /// Its URL, as `[postgres] dsn` takes it.
    pub url: String,
}

impl PgDatabase {
    pub fn new(id: &str) -> PgDatabase {
        // Stamped with its creation time: `scripts/services.sh ensure` drops test
        // databases a killed run left behind once they are six hours old.
        let name = format!("{}{id}", vogeler_store::testing::test_database_prefix());
        pg_exec(&format!("CREATE DATABASE {name}"));
        let url = match pg_admin_url().rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("VOGELER_TEST_POSTGRES must end in /database"),
        };
        PgDatabase { name, url }
    }

    /// No new sessions, and the open ones terminated: the store is gone.
    pub fn take_away(&self) {
        pg_exec(&format!(
            "ALTER DATABASE {0} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
            self.name
        ));
    }

    pub fn give_back(&self) {
        pg_exec(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ));
    }

    pub fn store(&self) -> vogeler_store::postgres::PostgresStore {
        rt().block_on(vogeler_store::postgres::PostgresStore::connect(&self.url))
            .expect("connect to the test database")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        rt().block_on(async {
            let _ = pg_admin().await.batch_execute(&sql).await;
        });
    }
}

impl Deployment {
    /// This deployment on a PostgreSQL database of its own (several servers can share
    /// it; SQLite takes one), its config rewritten for it with `extra` lines and the
    /// broker settings [`Deployment::write_conf_on_bus`] keeps. The database goes with
    /// the returned guard.
    pub fn on_postgres(self, extra: &str) -> (Deployment, PgDatabase) {
        let db = PgDatabase::new(&self.id);
        let d = self.with_store("postgres", &db.url);
        d.write_conf_on_bus(extra);
        (d, db)
    }
}
