//! The PostgreSQL store: JSONB documents, a pool, and row locks so several servers
//! can write the same nodes at once without losing an update.
//!
//! Schema (created on first use, versioned in `vogeler_schema`, migrated forward at
//! start): `nodes` holds one row per node (times, last error); `node_keys` one row
//! per node and plugin key with its JSONB value and `collected_at`, so a query of
//! one key (facter) never reads another's (ohai) and a write rewrites only its key;
//! `history` holds one row per change; `requests` and `request_answers` are the
//! request ledger (schema version 4: answers record whether they were stale); version 7
//! compresses documents with LZ4 where the server has it; version 8 makes the package
//! index cover a package report; version 10 leaves a plugin key's history `new` implicit
//! (`new_implicit`: the next entry's `old`, or the key's current value), as the SQLite
//! and CouchDB stores do, so a changed value is written once, not twice.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use vogeler_config::PgSslMode;

use crate::{
    is_reserved_key, last_error_value, Change, HistoryEntry, KeyPath, LedgerAnswer, LedgerRequest,
    NodeRecord, NodeSummary, Outcome, Rows, Store, StoreError, Unreadable,
};

const BACKEND: &str = "postgres";

/// Schema version this code writes; older schemas are migrated forward at start.
const SCHEMA_VERSION: i32 = 10;

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    last_error JSONB,
    last_error_at TIMESTAMPTZ,
    doc JSONB NOT NULL DEFAULT '{}'::jsonb,
    key_times JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS nodes_last_seen ON nodes (last_seen);
CREATE INDEX IF NOT EXISTS nodes_doc ON nodes USING GIN (doc jsonb_path_ops);
CREATE TABLE IF NOT EXISTS history (
    id BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    key TEXT NOT NULL,
    old JSONB,
    new JSONB,
    at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS history_node_key ON history (node, key, at);
CREATE INDEX IF NOT EXISTS history_at ON history (at);
",
    "
CREATE TABLE node_keys (
    node TEXT NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value JSONB NOT NULL,
    collected_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (node, key)
);
CREATE INDEX node_keys_key ON node_keys (key, node);
INSERT INTO node_keys (node, key, value, collected_at)
    SELECT n.name, d.key, d.value, COALESCE((n.key_times ->> d.key)::timestamptz, n.updated_at)
    FROM nodes n, jsonb_each(n.doc) d;
DROP INDEX IF EXISTS nodes_doc;
ALTER TABLE nodes DROP COLUMN doc, DROP COLUMN key_times;
",
    "
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    sender TEXT NOT NULL,
    sent_at TIMESTAMPTZ NOT NULL,
    ttl BIGINT NOT NULL,
    expected TEXT[] NOT NULL
);
CREATE INDEX requests_sent_at ON requests (sent_at);
CREATE TABLE request_answers (
    request_id TEXT NOT NULL,
    node TEXT NOT NULL,
    plugin TEXT NOT NULL,
    error TEXT,
    at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (request_id, node)
);
",
    "
ALTER TABLE request_answers ADD COLUMN stale BOOLEAN NOT NULL DEFAULT false;
",
    "
ALTER TABLE nodes ADD COLUMN deactivated_at TIMESTAMPTZ;
",
    // The package index: one row per (node, package plugin, package), kept in step with
    // node_keys by triggers (so ingest, import, delete and quarantine all maintain it),
    // so "which nodes have openssl" reads one index range instead of every package list.
    // The plugin list is crate::PACKAGE_KEYS (a unit test holds them together).
    "
CREATE TABLE packages (
    node TEXT NOT NULL,
    plugin TEXT NOT NULL,
    name TEXT NOT NULL,
    version JSONB NOT NULL,
    PRIMARY KEY (node, plugin, name)
);
CREATE INDEX packages_name ON packages (name, node);
CREATE FUNCTION vogeler_index_packages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM packages WHERE node = OLD.node AND plugin = OLD.key;
    END IF;
    IF TG_OP <> 'DELETE' AND jsonb_typeof(NEW.value) = 'object' THEN
        INSERT INTO packages (node, plugin, name, version)
        SELECT NEW.node, NEW.key, j.key, j.value FROM jsonb_each(NEW.value) j;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER packages_on_insert AFTER INSERT ON node_keys FOR EACH ROW
    WHEN (NEW.key IN ('dpkg', 'rpm')) EXECUTE FUNCTION vogeler_index_packages();
CREATE TRIGGER packages_on_update AFTER UPDATE OF value ON node_keys FOR EACH ROW
    WHEN (NEW.key IN ('dpkg', 'rpm') AND OLD.value IS DISTINCT FROM NEW.value)
    EXECUTE FUNCTION vogeler_index_packages();
CREATE TRIGGER packages_on_delete AFTER DELETE ON node_keys FOR EACH ROW
    WHEN (OLD.key IN ('dpkg', 'rpm')) EXECUTE FUNCTION vogeler_index_packages();
INSERT INTO packages (node, plugin, name, version)
    SELECT k.node, k.key, j.key, j.value
    FROM node_keys k,
         jsonb_each(CASE WHEN jsonb_typeof(k.value) = 'object' THEN k.value ELSE '{}'::jsonb END) j
    WHERE k.key IN ('dpkg', 'rpm');
",
    // Documents are compressed with LZ4 where the server has it (PostgreSQL 14 and later,
    // built with lz4, as Debian's is): pglz took a third of the database's time on ingest
    // (a facter document is 4 KB, written to node_keys and history). Rows written before
    // keep pglz; both read back alike. Older servers keep pglz and are not refused.
    "
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE node_keys ALTER COLUMN value SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE history ALTER COLUMN old SET COMPRESSION lz4,
                                     ALTER COLUMN new SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE nodes ALTER COLUMN last_error SET COMPRESSION lz4';
    END IF;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not built into this server: documents stay compressed with pglz';
END $$;
",
    // A package report reads one index and nothing else (an index-only scan, in the
    // order it prints): at 100,000 nodes the old index made it fetch one table page per
    // node, 810 ms against 33 ms. Building it over a large existing package table is a
    // one-time cost at the upgrade (1.5 to 3 minutes for 77 million package rows here).
    "
CREATE INDEX packages_by_name ON packages (name, node, plugin) INCLUDE (version);
DROP INDEX packages_name;
",
    // "Is any node deactivated?" (`any_deactivated`, asked by every fleet-wide report)
    // answers from this index, empty while every node is active, not from a table scan.
    "
CREATE INDEX nodes_deactivated ON nodes (deactivated_at) WHERE deactivated_at IS NOT NULL;
",
    // A plugin key's history row leaves `new` out (NULL, `new_implicit`): it is the next
    // row's `old`, or the key's current value ([`RESOLVED_NEW`]), so a changed value is
    // stored once (store alone, first sight: 6,641–8,221 → 8,406–10,252 results/s; the
    // history table 186 MB → 67 MB; BENCHMARKS.md). Rows written before keep theirs.
    "
ALTER TABLE history ADD COLUMN new_implicit BOOLEAN NOT NULL DEFAULT false;
",
];

/// A history row's `new` (the row aliased `h`): an implicit one is the next row's `old`
/// for that key, or the key's current value for the latest row. A volatile change
/// (`history = false`) pins the latest row's `new` first (`apply`), so it never reads a
/// value the row did not see.
const RESOLVED_NEW: &str = "CASE WHEN h.new_implicit THEN COALESCE(
    (SELECT n.old FROM history n WHERE n.node = h.node AND n.key = h.key
       AND (n.at, n.id) > (h.at, h.id) ORDER BY n.at, n.id LIMIT 1),
    (SELECT v.value FROM node_keys v WHERE v.node = h.node AND v.key = h.key))
  ELSE h.new END";

/// An UPDATE writing out the implicit `new` of the history row `row` selects (by id, from
/// `$1` node and `$2`), as it reads now.
fn pin_sql(row: &str) -> String {
    format!(
        "UPDATE history h SET new = {RESOLVED_NEW}, new_implicit = false
         WHERE h.new_implicit AND h.id = ({row})"
    )
}

/// One row when any node is deactivated, read from the partial index `nodes_deactivated`.
const ANY_DEACTIVATED: &str = "SELECT 1 FROM nodes WHERE deactivated_at IS NOT NULL LIMIT 1";

/// A database a newer version migrated holds rows this one would misread (version 10's
/// implicit history values, say): refused, neither read nor written.
fn newer_schema(version: i32) -> StoreError {
    StoreError::Invalid(format!(
        "the database's schema is version {version}, newer than this program's \
         {SCHEMA_VERSION}: a newer Vogeler migrated it; upgrade this one"
    ))
}

/// A store in a PostgreSQL database.
pub struct PostgresStore {
    pool: Pool,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

/// Runs `sql` as a statement cached on its connection (prepared once per connection,
/// not once per batch: a batch's fixed round trips stay fixed).
async fn query_cached(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(pg_err)?;
    tx.query(&stmt, params).await.map_err(pg_err)
}

/// [`query_cached`] for a statement whose rows are not read: the count it touched.
async fn execute_cached(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(pg_err)?;
    tx.execute(&stmt, params).await.map_err(pg_err)
}

/// Every node's key names from one scan of (node, key) rows, each node's in the
/// scan's order: the node list reads all key names in one index scan beside the nodes,
/// not an `ARRAY(...)` per node (760 ms at 100,000 nodes, against 280 for both scans).
/// A map, not a merge of the two orders: the database's collation need not be byte order.
fn keys_by_node<E>(
    rows: impl Iterator<Item = Result<(String, String), E>>,
) -> Result<HashMap<String, Vec<String>>, E> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        let (node, key) = row?;
        out.entry(node).or_default().push(key);
    }
    Ok(out)
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let transient = e.is_closed()
        || e.code().is_none()
        || e.code().is_some_and(|c| {
            let c = c.code();
            c.starts_with("08")
                || c.starts_with("57")
                || c.starts_with("53")
                || c == "40001"
                || c == "40P01"
        });
    // `Display` of a server error says only "db error"; the detail is in the DbError.
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    };
    if transient {
        unavailable(message)
    } else {
        StoreError::Backend {
            backend: BACKEND,
            message,
        }
    }
}

/// Column `i` of a row, or an error naming it: `Row::get` panics on a value it
/// cannot convert (JSONB holding a number outside f64, nesting deeper than serde_json
/// reads), and nothing read from the database may panic.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    r: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    r.try_get(i).map_err(|e| {
        let name = r.columns().get(i).map(|c| c.name()).unwrap_or("?");
        StoreError::backend(
            BACKEND,
            format!("column {name}: {}", crate::error_chain(&e)),
        )
    })
}

/// A pool for the DSN (its database, or `dbname` instead): TLS as `sslmode` says.
fn pool(url: &str, dbname: Option<&str>) -> Result<Pool, StoreError> {
    let (url, tls) =
        vogeler_config::postgres_tls(url).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        StoreError::Invalid(format!(
            "bad PostgreSQL DSN: {e} (example: postgres://vogeler:secret@127.0.0.1:5432/vogeler?sslmode=verify-full&sslrootcert=/etc/vogeler/pg-ca.pem)"
        ))
    })?;
    if let Some(db) = dbname {
        config.dbname(db);
    }
    // No JIT: at 100,000 nodes the planner judged a package report costly enough to
    // compile, and compiling took 460 ms of its 1,540 (the query itself 810 ms without).
    // Options given in the DSN come after, so an operator can still turn it on.
    let options = match config.get_options() {
        Some(given) => format!("-c jit=off {given}"),
        None => "-c jit=off".to_string(),
    };
    config.options(&options);
    let manager_config = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls.mode {
        PgSslMode::Disable => {
            config.ssl_mode(SslMode::Disable);
            Manager::from_config(config, NoTls, manager_config())
        }
        mode => {
            config.ssl_mode(if mode == PgSslMode::Prefer {
                SslMode::Prefer
            } else {
                SslMode::Require
            });
            Manager::from_config(config, tls::connector(&tls)?, manager_config())
        }
    };
    Pool::builder(manager)
        .max_size(8)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(unavailable)
}

/// A failed first connection: a database that does not exist is
/// [`StoreError::NotSetUp`]; anything else is unavailable, as `client()` says.
fn missing_database(url: &str, e: deadpool_postgres::PoolError) -> StoreError {
    if let deadpool_postgres::PoolError::Backend(pg) = &e {
        if pg.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
            let name = vogeler_config::postgres_tls(url)
                .ok()
                .and_then(|(plain, _)| plain.parse::<tokio_postgres::Config>().ok())
                .and_then(|c| c.get_dbname().map(str::to_string))
                .unwrap_or_default();
            return StoreError::NotSetUp(format!("database {name:?} does not exist"));
        }
    }
    pool_error(&e)
}

/// A pool failure in the server's own words: deadpool's wrapper ("Error occurred
/// while creating a new object") says nothing an operator can act on.
fn pool_error(e: &deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => unavailable(crate::error_chain(pg)),
        other => unavailable(crate::error_chain(other)),
    }
}

impl PostgresStore {
    /// Connects a pool and creates or migrates the schema. `sslmode` and `sslrootcert`
    /// in the DSN choose TLS as libpq does (see [`vogeler_config::PgSslMode`]); without
    /// `sslmode` the connection is plain.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore {
            pool: pool(url, None)?,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to a store that `setup --persistence` (or a server) made: a missing
    /// database, missing tables or an older schema are [`StoreError::NotSetUp`], and
    /// nothing is created or migrated (read-only commands use this).
    pub async fn connect_existing(url: &str) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore {
            pool: pool(url, None)?,
        };
        let client = store
            .pool
            .get()
            .await
            .map_err(|e| missing_database(url, e))?;
        let version: Option<i32> = match client
            .query_one("SELECT max(version) FROM vogeler_schema", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
            Err(e) => return Err(pg_err(e)),
        };
        match version {
            None => Err(StoreError::NotSetUp(
                "the database has no Vogeler tables".into(),
            )),
            Some(v) if v < SCHEMA_VERSION => Err(StoreError::NotSetUp(format!(
                "the database's schema version {v} is older than {SCHEMA_VERSION} (setup migrates it)"
            ))),
            Some(v) if v > SCHEMA_VERSION => Err(newer_schema(v)),
            Some(_) => {
                drop(client);
                Ok(store)
            }
        }
    }

    /// Creates the database a DSN names when it does not exist, connecting to the
    /// server's `postgres` database as the DSN's role; `Ok(true)` when it was created.
    /// A role that may not create databases gets an error naming `createdb`.
    pub async fn create_database(url: &str) -> Result<bool, StoreError> {
        let probe = pool(url, None)?;
        match probe.get().await {
            Ok(_) => return Ok(false),
            Err(e) => {
                if !matches!(missing_database(url, e), StoreError::NotSetUp(_)) {
                    // Not a missing database: let connect() report it as it does.
                    return Ok(false);
                }
            }
        }
        let (name, user) = {
            let (plain, _) = vogeler_config::postgres_tls(url)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let config: tokio_postgres::Config = plain
                .parse()
                .map_err(|e| StoreError::Invalid(format!("bad PostgreSQL DSN: {e}")))?;
            (
                config.get_dbname().unwrap_or("postgres").to_string(),
                config.get_user().unwrap_or("").to_string(),
            )
        };
        let admin = pool(url, Some("postgres"))?;
        let client = admin.get().await.map_err(|e| pool_error(&e))?;
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match client.batch_execute(&sql).await {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
                Ok(false)
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                Err(StoreError::NotSetUp(format!(
                    "database {name:?} does not exist and role {user:?} may not create it; as a PostgreSQL superuser run `createdb -O {user} {name}`"
                )))
            }
            Err(e) => Err(pg_err(e)),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| pool_error(&e))
    }

    /// Nodes with package `name` (in `only` that plugin's list), by node and plugin,
    /// from the package index.
    async fn package_rows(
        &self,
        name: &str,
        only: Option<&str>,
    ) -> Result<Rows<(String, String, Value)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT node, plugin, version FROM packages
                 WHERE name = $1 AND ($2::text IS NULL OR plugin = $2) ORDER BY node, plugin",
                &[&name, &only],
            )
            .await
            .map_err(pg_err)?;
        let mut out = Rows::default();
        for r in &rows {
            let (node, plugin): (String, String) = (col(r, 0)?, col(r, 1)?);
            match col::<Value>(r, 2) {
                Ok(v) => out.rows.push((node, plugin, v)),
                Err(e) => out.skip(&node, &plugin, None, e),
            }
        }
        Ok(out)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // One migrator at a time, also across servers starting together.
        tx.execute("SELECT pg_advisory_xact_lock(7261001)", &[])
            .await
            .map_err(pg_err)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS vogeler_schema (version INT NOT NULL)")
            .await
            .map_err(pg_err)?;
        let current: i32 = tx
            .query_opt("SELECT max(version) FROM vogeler_schema", &[])
            .await
            .map_err(pg_err)?
            .and_then(|r| r.try_get::<_, Option<i32>>(0).ok().flatten())
            .unwrap_or(0);
        // A newer server's schema holds rows this one would misread (version 10's
        // implicit history values): refused, not written.
        if current > SCHEMA_VERSION {
            return Err(newer_schema(current));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i32 + 1;
            if version > current {
                tx.batch_execute(sql).await.map_err(pg_err)?;
                tx.execute(
                    "INSERT INTO vogeler_schema (version) VALUES ($1)",
                    &[&version],
                )
                .await
                .map_err(pg_err)?;
            }
        }
        debug_assert_eq!(MIGRATIONS.len() as i32, SCHEMA_VERSION);
        tx.commit().await.map_err(pg_err)
    }
}

/// A key a batch reads or writes: its value (JSON text) and time as the batch leaves
/// them. Text, borrowed from the batch where it can be, keeps a batch of large
/// documents from being held as trees several times over.
struct KeyState<'a> {
    text: Cow<'a, str>,
    at: DateTime<Utc>,
    /// The value is new or different: the row is written.
    value_changed: bool,
    /// Only `collected_at` moved.
    time_changed: bool,
    /// `text` is still the value stored before this batch: history takes it from the
    /// row itself instead of having it sent back and parsed again.
    stored: bool,
}

/// The old value of a history row.
enum Old<'a> {
    /// None: the key is new (or the error cleared was none).
    None,
    /// The value stored before this batch, read from its row by the write itself.
    Stored,
    /// A value this batch wrote earlier (or an error), as JSON text.
    Text(Cow<'a, str>),
}

/// History rows of one batch, column by column for `unnest`, in batch order; values
/// as JSON text.
#[derive(Default)]
struct HistoryRows<'a> {
    nodes: Vec<String>,
    keys: Vec<String>,
    olds: Vec<Old<'a>>,
    news: Vec<Option<Cow<'a, str>>>,
    /// `new` left out ([`RESOLVED_NEW`]).
    implicit: Vec<bool>,
    ats: Vec<DateTime<Utc>>,
}

/// The distinct JSON texts a batch writes, each sent (and parsed into JSONB by the
/// database, the costliest part of a write) once however many rows hold it: a new
/// value is both the key's row and its history row's `new`.
#[derive(Default)]
struct Texts<'t> {
    texts: Vec<&'t str>,
    index: HashMap<&'t str, i32>,
}

impl<'t> Texts<'t> {
    /// The 1-based position of `text` (`WITH ORDINALITY` counts from 1).
    fn add(&mut self, text: &'t str) -> i32 {
        *self.index.entry(text).or_insert_with(|| {
            self.texts.push(text);
            self.texts.len() as i32
        })
    }
}

/// Whether JSON text `stored` holds the same value as `value`. A stored value that
/// does not read back (written before decode validated values) is never the same, so
/// a new result replaces it instead of being refused.
fn same_json(stored: &str, value: &Value) -> Result<bool, StoreError> {
    Ok(serde_json::from_str::<Value>(stored).is_ok_and(|stored| stored == *value))
}

impl<'a> HistoryRows<'a> {
    fn push(
        &mut self,
        node: &str,
        key: &str,
        old: Old<'a>,
        new: Option<Cow<'a, str>>,
        at: DateTime<Utc>,
    ) {
        self.nodes.push(node.to_string());
        self.keys.push(key.to_string());
        self.olds.push(old);
        self.news.push(new);
        self.implicit.push(false);
        self.ats.push(at);
    }

    /// A plugin key's change: its `new` is the value the key now has ([`RESOLVED_NEW`]).
    fn push_implicit(&mut self, node: &str, key: &str, old: Old<'a>, at: DateTime<Utc>) {
        self.push(node, key, old, None, at);
        if let Some(last) = self.implicit.last_mut() {
            *last = true;
        }
    }

    /// Before a volatile change replaces `value` in a key this batch already changed:
    /// the batch's latest row of the key, if its `new` was implicit, is given `value`.
    fn pin_latest(&mut self, node: &str, key: &str, value: Cow<'a, str>) {
        let latest = (0..self.nodes.len())
            .rev()
            .find(|&i| self.nodes[i] == node && self.keys[i] == key);
        if let Some(i) = latest.filter(|&i| self.implicit[i]) {
            self.news[i] = Some(value);
            self.implicit[i] = false;
        }
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Two: one batch's statements run while the other's commit is flushed (the
    /// bench's single server went from 4,600 to 6,400 results/s).
    fn write_concurrency(&self) -> usize {
        2
    }

    /// A batch costs a fixed number of round trips, not a few per result: the nodes
    /// are created and locked (sorted, so servers writing the same nodes cannot
    /// deadlock), the keys it touches read, every outcome decided in memory in batch
    /// order, and the final rows written with `unnest` arrays.
    async fn apply(&self, batch: crate::Batch) -> Result<Vec<Outcome>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = Utc::now();

        // A reserved name is refused and touches nothing.
        let refused = |obs: &crate::Observation| matches!(&obs.change, Change::Plugin { name, .. } if is_reserved_key(name));
        let mut names: Vec<&str> = batch
            .iter()
            .filter(|o| !refused(o))
            .map(|o| o.node.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut created: std::collections::HashSet<String> = query_cached(
            &tx,
            "INSERT INTO nodes (name, created_at, updated_at, last_seen)
                 SELECT n, $2, $2, $2 FROM unnest($1::text[]) AS n ORDER BY n
                 ON CONFLICT (name) DO NOTHING RETURNING name",
            &[&names, &now],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_, _>>()?;
        // Locking the node rows serialises writers of one node across servers. A stored
        // error that does not read back is replaced like any other.
        let mut errors: HashMap<String, (Option<Value>, Option<DateTime<Utc>>)> = query_cached(
            &tx,
            "SELECT name, last_error, last_error_at FROM nodes WHERE name = ANY($1)
                 ORDER BY name FOR UPDATE",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| Ok((col(r, 0)?, (col(r, 1).ok().flatten(), col(r, 2)?))))
        .collect::<Result<_, StoreError>>()?;
        // Each key once, so a node answering twice in a batch is not read twice.
        let (key_nodes, key_names): (Vec<&str>, Vec<&str>) = batch
            .iter()
            .filter(|o| !refused(o))
            .filter_map(|o| match &o.change {
                Change::Plugin { name, .. } => Some((o.node.as_str(), name.as_str())),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .unzip();
        // The stored value (as JSON text: a tree only while compared) and time of each
        // key, then what the batch makes of them.
        let mut keys: HashMap<(String, String), KeyState> = query_cached(
            &tx,
            "SELECT k.node, k.key, k.value::text, k.collected_at
                 FROM node_keys k JOIN unnest($1::text[], $2::text[]) AS u (node, key)
                 ON k.node = u.node AND k.key = u.key",
            &[&key_nodes, &key_names],
        )
        .await?
        .iter()
        .map(|r| {
            let state = KeyState {
                text: Cow::Owned(col(r, 2)?),
                at: col(r, 3)?,
                value_changed: false,
                time_changed: false,
                stored: true,
            };
            Ok(((col(r, 0)?, col(r, 1)?), state))
        })
        .collect::<Result<_, StoreError>>()?;

        let mut history = HistoryRows::default();
        // Keys whose stored value a volatile change replaces (see `RESOLVED_NEW`).
        let mut pins: Vec<(&str, &str)> = Vec::new();
        let mut errors_changed = std::collections::BTreeSet::new();
        let mut nodes_changed = std::collections::BTreeSet::new();
        // Nodes a result (not a heartbeat) arrived for: reactivated if deactivated.
        let mut nodes_answered = std::collections::BTreeSet::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for obs in batch.iter() {
            let outcome = match &obs.change {
                Change::Plugin { name, .. } if refused(obs) => {
                    outcomes.push(Outcome::Refused(format!(
                        "plugin name {name:?} clashes with a document field"
                    )));
                    continue;
                }
                Change::Plugin {
                    name,
                    value,
                    history: keep,
                } => {
                    let text = value.text();
                    match keys.entry((obs.node.clone(), name.clone())) {
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            let k = e.get_mut();
                            if obs.at < k.at {
                                Outcome::Stale
                            } else if k.text == text || same_json(&k.text, &*value.tree()?)? {
                                k.at = obs.at;
                                k.time_changed = true;
                                Outcome::Unchanged
                            } else {
                                let old = std::mem::replace(&mut k.text, text.clone());
                                let was_stored = std::mem::take(&mut k.stored);
                                if *keep {
                                    let old = if was_stored {
                                        Old::Stored
                                    } else {
                                        Old::Text(old)
                                    };
                                    history.push_implicit(&obs.node, name, old, obs.at);
                                } else if was_stored {
                                    // The stored value goes: the key's latest stored
                                    // row, if implicit, is given it first.
                                    pins.push((obs.node.as_str(), name.as_str()));
                                } else {
                                    history.pin_latest(&obs.node, name, old);
                                }
                                k.at = obs.at;
                                k.value_changed = true;
                                Outcome::Updated
                            }
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            if *keep {
                                history.push_implicit(&obs.node, name, Old::None, obs.at);
                            }
                            e.insert(KeyState {
                                text,
                                at: obs.at,
                                value_changed: true,
                                time_changed: false,
                                stored: false,
                            });
                            Outcome::Updated
                        }
                    }
                }
                Change::Error {
                    plugin,
                    message,
                    raw,
                } => {
                    let (old_error, old_error_at) =
                        errors.entry(obs.node.clone()).or_insert((None, None));
                    if old_error_at.is_some_and(|t| obs.at < t) {
                        Outcome::Stale
                    } else {
                        let new = last_error_value(plugin, message, raw, obs.at);
                        if old_error.as_ref() == Some(&new) {
                            Outcome::Unchanged
                        } else {
                            let (old_text, new_text) = (
                                old_error
                                    .as_ref()
                                    .map_or(Old::None, |v| Old::Text(Cow::Owned(v.to_string()))),
                                Cow::Owned(new.to_string()),
                            );
                            *old_error = Some(new);
                            *old_error_at = Some(obs.at);
                            history.push(&obs.node, "last_error", old_text, Some(new_text), obs.at);
                            errors_changed.insert(obs.node.as_str());
                            Outcome::Updated
                        }
                    }
                }
                Change::Seen => Outcome::Unchanged,
            };
            // A good result clears that plugin's error (the error stays in history).
            let outcome = match &obs.change {
                Change::Plugin { name, .. } if outcome != Outcome::Stale => {
                    match errors.get_mut(&obs.node) {
                        Some((error @ Some(_), error_at))
                            if error
                                .as_ref()
                                .and_then(|e| e.get("plugin"))
                                .and_then(Value::as_str)
                                == Some(name.as_str())
                                && error_at.is_none_or(|t| t <= obs.at) =>
                        {
                            let old = error
                                .take()
                                .map_or(Old::None, |v| Old::Text(Cow::Owned(v.to_string())));
                            *error_at = Some(obs.at);
                            history.push(&obs.node, "last_error", old, None, obs.at);
                            errors_changed.insert(obs.node.as_str());
                            Outcome::Updated
                        }
                        _ => outcome,
                    }
                }
                _ => outcome,
            };
            if outcome == Outcome::Updated {
                nodes_changed.insert(obs.node.as_str());
            }
            if !matches!(obs.change, Change::Seen) {
                nodes_answered.insert(obs.node.as_str());
            }
            outcomes.push(match outcome {
                Outcome::Updated | Outcome::Unchanged if created.remove(&obs.node) => {
                    Outcome::Created
                }
                o => o,
            });
        }

        // The final rows: changed values and history (one statement, each distinct value
        // parsed once), refreshed times, errors, node times.
        let mut texts = Texts::default();
        let (mut set_nodes, mut set_keys, mut set_values, mut set_ats) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut time_nodes, mut time_keys, mut time_ats) = (Vec::new(), Vec::new(), Vec::new());
        for ((node, key), k) in &keys {
            if k.value_changed {
                set_nodes.push(node.as_str());
                set_keys.push(key.as_str());
                set_values.push(texts.add(&k.text));
                set_ats.push(k.at);
            } else if k.time_changed {
                time_nodes.push(node.as_str());
                time_keys.push(key.as_str());
                time_ats.push(k.at);
            }
        }
        let (mut old_stored, mut old_values, mut new_values) = (
            Vec::with_capacity(history.olds.len()),
            Vec::with_capacity(history.olds.len()),
            Vec::with_capacity(history.olds.len()),
        );
        for (old, new) in history.olds.iter().zip(&history.news) {
            old_stored.push(matches!(old, Old::Stored));
            old_values.push(match old {
                Old::Text(t) => Some(texts.add(t)),
                Old::None | Old::Stored => None,
            });
            new_values.push(new.as_deref().map(|t| texts.add(t)));
        }
        let (pin_nodes, pin_keys): (Vec<&str>, Vec<&str>) = pins.into_iter().unzip();
        if !(set_nodes.is_empty() && history.nodes.is_empty()) {
            // `v` parses each text once; both writes take their values from it. `p` pins
            // a volatile key's latest row before `k` writes the key, and history reads a
            // stored old value from the key's row as this statement found it
            // (before the write: every part of one statement sees one snapshot), and
            // WITH ORDINALITY keeps the batch's order in the ids `history` sorts ties by.
            execute_cached(
                &tx,
                "WITH v AS MATERIALIZED (
                         SELECT i, t::jsonb AS j FROM unnest($1::text[]) WITH ORDINALITY AS u (t, i)
                     ), p AS (
                         UPDATE history h SET new = s.value, new_implicit = false
                         FROM unnest($13::text[], $14::text[]) AS u (node, key)
                         JOIN node_keys s ON s.node = u.node AND s.key = u.key
                         WHERE h.new_implicit AND h.id = (
                             SELECT l.id FROM history l WHERE l.node = u.node AND l.key = u.key
                             ORDER BY l.at DESC, l.id DESC LIMIT 1)
                     ), k AS (
                         INSERT INTO node_keys (node, key, value, collected_at)
                         SELECT u.node, u.key, v.j, u.at
                         FROM unnest($2::text[], $3::text[], $4::int[], $5::timestamptz[])
                              AS u (node, key, vi, at)
                         JOIN v ON v.i = u.vi
                         ON CONFLICT (node, key) DO UPDATE
                         SET value = excluded.value, collected_at = excluded.collected_at
                     )
                     INSERT INTO history (node, key, old, new, new_implicit, at)
                     SELECT h.node, h.key, CASE WHEN h.stored THEN s.value ELSE o.j END, n.j,
                            h.implicit, h.at
                     FROM unnest($6::text[], $7::text[], $8::bool[], $9::int[], $10::int[],
                                 $11::timestamptz[], $12::bool[])
                          WITH ORDINALITY AS h (node, key, stored, oi, ni, at, implicit, ord)
                     LEFT JOIN node_keys s ON h.stored AND s.node = h.node AND s.key = h.key
                     LEFT JOIN v o ON o.i = h.oi
                     LEFT JOIN v n ON n.i = h.ni
                     ORDER BY h.ord",
                &[
                    &texts.texts,
                    &set_nodes,
                    &set_keys,
                    &set_values,
                    &set_ats,
                    &history.nodes,
                    &history.keys,
                    &old_stored,
                    &old_values,
                    &new_values,
                    &history.ats,
                    &history.implicit,
                    &pin_nodes,
                    &pin_keys,
                ],
            )
            .await?;
        }
        if !time_nodes.is_empty() {
            execute_cached(
                &tx,
                "UPDATE node_keys k SET collected_at = u.at
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u (node, key, at)
                 WHERE k.node = u.node AND k.key = u.key",
                &[&time_nodes, &time_keys, &time_ats],
            )
            .await?;
        }
        if !errors_changed.is_empty() {
            let (mut err_nodes, mut err_values, mut err_ats) = (Vec::new(), Vec::new(), Vec::new());
            for node in &errors_changed {
                if let Some((value, Some(at))) = errors.get(*node) {
                    err_nodes.push(*node);
                    err_values.push(value.as_ref());
                    err_ats.push(*at);
                }
            }
            execute_cached(
                &tx,
                "UPDATE nodes n SET last_error = u.error, last_error_at = u.at
                 FROM unnest($1::text[], $2::jsonb[], $3::timestamptz[]) AS u (name, error, at)
                 WHERE n.name = u.name",
                &[&err_nodes, &err_values, &err_ats],
            )
            .await?;
        }
        if !names.is_empty() {
            let changed: Vec<bool> = names.iter().map(|n| nodes_changed.contains(n)).collect();
            let answered: Vec<bool> = names.iter().map(|n| nodes_answered.contains(n)).collect();
            execute_cached(
                &tx,
                "UPDATE nodes n SET last_seen = $3,
                     updated_at = CASE WHEN u.changed THEN $3 ELSE n.updated_at END,
                     deactivated_at = CASE WHEN u.answered THEN NULL ELSE n.deactivated_at END
                 FROM unnest($1::text[], $2::bool[], $4::bool[]) AS u (name, changed, answered)
                 WHERE n.name = u.name",
                &[&names, &changed, &now, &answered],
            )
            .await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(outcomes)
    }

    async fn clear_error(&self, node: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = Utc::now();
        let old: Option<Value> = tx
            .query_opt(
                "SELECT last_error FROM nodes WHERE name = $1 AND last_error IS NOT NULL FOR UPDATE",
                &[&node],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.get(0));
        let Some(old) = old else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE nodes SET last_error = NULL, last_error_at = $2, updated_at = $2 WHERE name = $1",
            &[&node, &now],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO history (node, key, old, new, at) VALUES ($1, 'last_error', $2, NULL, $3)",
            &[&node, &old, &now],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT created_at, updated_at, last_seen, last_error, deactivated_at FROM nodes WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut keys = BTreeMap::new();
        let mut keys_collected = BTreeMap::new();
        let mut unreadable = Vec::new();
        let mut skip =
            |key: &str, why: StoreError| unreadable.push(Unreadable::current(name, key, why));
        for r in client
            .query(
                "SELECT key, value, collected_at FROM node_keys WHERE node = $1",
                &[&name],
            )
            .await
            .map_err(pg_err)?
        {
            let key: String = col(&r, 0)?;
            match (col(&r, 1), col(&r, 2)) {
                (Ok(value), Ok(at)) => {
                    keys_collected.insert(key.clone(), at);
                    keys.insert(key, value);
                }
                (Err(e), _) | (_, Err(e)) => skip(&key, e),
            }
        }
        let last_error = match col(&row, 3) {
            Ok(e) => e,
            Err(e) => {
                skip("last_error", e);
                None
            }
        };
        Ok(Some(NodeRecord {
            name: name.to_string(),
            created_at: col(&row, 0)?,
            updated_at: col(&row, 1)?,
            last_seen: col(&row, 2)?,
            last_error,
            deactivated_at: col(&row, 4)?,
            keys,
            keys_collected,
            unreadable,
        }))
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>, StoreError> {
        // Two scans in one snapshot, joined here (`keys_by_node`).
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let rows = tx
            .query(
                "SELECT name, last_seen, last_error ->> 'message', created_at, updated_at,
                        deactivated_at
                 FROM nodes ORDER BY name",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let key_rows = tx
            .query("SELECT node, key FROM node_keys ORDER BY node, key", &[])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let mut keys = keys_by_node(key_rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))))?;
        rows.iter()
            .map(|r| {
                let name: String = col(r, 0)?;
                Ok(NodeSummary {
                    plugins: keys.remove(&name).unwrap_or_default(),
                    name,
                    last_seen: col(r, 1)?,
                    last_error: col(r, 2)?,
                    created_at: col(r, 3)?,
                    updated_at: col(r, 4)?,
                    deactivated_at: col(r, 5)?,
                })
            })
            .collect()
    }

    async fn history(
        &self,
        node: &str,
        key: Option<&str>,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        self.history_rows(
            &format!(
                "SELECT h.node, h.key, h.old, {RESOLVED_NEW}, h.at, h.id FROM history h
                 WHERE h.node = $1 AND ($2::text IS NULL OR h.key = $2) ORDER BY h.at, h.id"
            ),
            &[&node, &key],
        )
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.query_one("SELECT 1", &[]).await.map_err(pg_err)?;
        Ok(())
    }

    async fn key_values(&self, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError> {
        if let Some((plugin, name)) = crate::package_member(path) {
            // `dpkg.openssl` (a filter, a fact page): from the package index.
            let mut out = Rows::default();
            for (node, _, v) in out.absorb(self.package_rows(name, Some(plugin)).await?) {
                out.rows.push((node, v));
            }
            return Ok(out);
        }
        let steps: Vec<&str> = path.rest().iter().map(String::as_str).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                // The path is walked once per row; missing ones are dropped here.
                "SELECT node, value #> $2::text[] FROM node_keys WHERE key = $1
                 UNION ALL
                 SELECT name, last_error #> $2::text[] FROM nodes WHERE $1 = 'last_error' AND last_error IS NOT NULL
                 ORDER BY 1",
                &[&path.root(), &steps],
            )
            .await
            .map_err(pg_err)?;
        let mut out = Rows::default();
        for r in &rows {
            let node: String = col(r, 0)?;
            match col::<Option<Value>>(r, 1) {
                Ok(Some(v)) => out.rows.push((node, v)),
                Ok(None) => {}
                Err(e) => out.skip(&node, path.root(), None, e),
            }
        }
        Ok(out)
    }

    /// From the package index (schema version 6): one index range, not a walk of
    /// every node's package list.
    async fn packages(&self, name: &str) -> Result<Rows<(String, String, Value)>, StoreError> {
        self.package_rows(name, None).await
    }

    async fn changes(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.history_rows(
            &format!(
                "SELECT h.node, h.key, h.old, {RESOLVED_NEW}, h.at, h.id FROM history h
                 WHERE h.at >= $1 ORDER BY h.at, h.id LIMIT $2"
            ),
            &[&since, &limit],
        )
        .await
    }

    async fn change_outlines(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The outline is made here so a first appearance's value never leaves PostgreSQL.
        self.history_rows(
            &format!("SELECT node, key, old,
                    CASE WHEN old IS NOT NULL THEN new
                         WHEN jsonb_typeof(new) = 'object' THEN (SELECT to_jsonb('(added: ' || n || CASE n WHEN 1 THEN ' key)' ELSE ' keys)' END) FROM (SELECT count(*) AS n FROM jsonb_object_keys(new)) c)
                         WHEN jsonb_typeof(new) = 'array' THEN to_jsonb('(added: ' || jsonb_array_length(new) || CASE jsonb_array_length(new) WHEN 1 THEN ' item)' ELSE ' items)' END)
                         ELSE new END,
                    at, id
             FROM (SELECT h.node, h.key, h.old, {RESOLVED_NEW} AS new, h.at, h.id FROM history h
                   WHERE h.at >= $1 ORDER BY h.at, h.id LIMIT $2) h
             ORDER BY at, id"),
            &[&since, &limit],
        )
        .await
    }

    async fn delete_node(&self, name: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // node_keys go with the node row (ON DELETE CASCADE); the row lock waits for a
        // server committing a result of this node meanwhile.
        let gone = tx
            .execute("DELETE FROM nodes WHERE name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        tx.execute("DELETE FROM history WHERE node = $1", &[&name])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(gone > 0)
    }

    async fn deactivate_node(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE nodes SET deactivated_at = COALESCE(deactivated_at, $2) WHERE name = $1",
                &[&name, &at],
            )
            .await
            .map(|n| n > 0)
            .map_err(pg_err)
    }

    async fn any_deactivated(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(ANY_DEACTIVATED, &[])
            .await
            .map(|row| row.is_some())
            .map_err(pg_err)
    }

    async fn deactivate_inactive(
        &self,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE nodes SET deactivated_at = $2 WHERE last_seen < $1 AND deactivated_at IS NULL",
                &[&since, &at],
            )
            .await
            .map_err(pg_err)
    }

    async fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM history WHERE at < $1", &[&before])
            .await
            .map_err(pg_err)
    }

    async fn import(
        &self,
        record: &NodeRecord,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("DELETE FROM history WHERE node = $1", &[&record.name])
            .await
            .map_err(pg_err)?;
        let error_at = record
            .last_error
            .as_ref()
            .and_then(|e| e.get("at"))
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        tx.execute(
            "INSERT INTO nodes (name, created_at, updated_at, last_seen, last_error, last_error_at, deactivated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET created_at = $2, updated_at = $3, last_seen = $4,
                 last_error = $5, last_error_at = $6, deactivated_at = $7",
            &[
                &record.name,
                &record.created_at,
                &record.updated_at,
                &record.last_seen,
                &record.last_error,
                &error_at,
                &record.deactivated_at,
            ],
        )
        .await
        .map_err(pg_err)?;
        tx.execute("DELETE FROM node_keys WHERE node = $1", &[&record.name])
            .await
            .map_err(pg_err)?;
        let put = tx
            .prepare_cached(
                "INSERT INTO node_keys (node, key, value, collected_at) VALUES ($1, $2, $3, $4)",
            )
            .await
            .map_err(pg_err)?;
        for (k, v) in &record.keys {
            let at = record
                .keys_collected
                .get(k)
                .copied()
                .unwrap_or(record.updated_at);
            tx.execute(&put, &[&record.name, k, v, &at])
                .await
                .map_err(pg_err)?;
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO history (node, key, old, new, at) VALUES ($1, $2, $3, $4, $5)",
            )
            .await
            .map_err(pg_err)?;
        for h in history {
            tx.execute(&insert, &[&record.name, &h.key, &h.old, &h.new, &h.at])
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn record_ledger(
        &self,
        requests: &[LedgerRequest],
        answers: &[LedgerAnswer],
    ) -> Result<(), StoreError> {
        if requests.is_empty() && answers.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let put_request = tx
            .prepare_cached(
                "INSERT INTO requests (id, command, sender, sent_at, ttl, expected)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .await
            .map_err(pg_err)?;
        for r in requests {
            let ttl = i64::try_from(r.ttl).unwrap_or(i64::MAX);
            tx.execute(
                &put_request,
                &[&r.id, &r.command, &r.sender, &r.sent_at, &ttl, &r.expected],
            )
            .await
            .map_err(pg_err)?;
        }
        if !answers.is_empty() {
            // One statement for a batch's answers (a broadcast brings thousands).
            let ids: Vec<&str> = answers.iter().map(|a| a.request_id.as_str()).collect();
            let nodes: Vec<&str> = answers.iter().map(|a| a.node.as_str()).collect();
            let plugins: Vec<&str> = answers.iter().map(|a| a.plugin.as_str()).collect();
            let errors: Vec<Option<&str>> = answers.iter().map(|a| a.error.as_deref()).collect();
            let ats: Vec<DateTime<Utc>> = answers.iter().map(|a| a.at).collect();
            let stale: Vec<bool> = answers.iter().map(|a| a.stale).collect();
            tx.execute(
                "INSERT INTO request_answers (request_id, node, plugin, error, at, stale)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bool[])
                 ON CONFLICT (request_id, node) DO NOTHING",
                &[&ids, &nodes, &plugins, &errors, &ats, &stale],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn ledger_requests(&self, limit: usize) -> Result<Vec<LedgerRequest>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.request_rows(
            "SELECT id, command, sender, sent_at, ttl, expected FROM requests
             ORDER BY sent_at DESC, id LIMIT $1",
            &[&limit],
        )
        .await
    }

    async fn ledger_request(&self, id: &str) -> Result<Option<LedgerRequest>, StoreError> {
        Ok(self
            .request_rows(
                "SELECT id, command, sender, sent_at, ttl, expected FROM requests WHERE id = $1",
                &[&id],
            )
            .await?
            .pop())
    }

    async fn quarantine(&self, rows: &[Unreadable]) -> Result<u64, StoreError> {
        self.quarantine_rows(rows).await
    }

    async fn ledger_answers(&self, ids: &[String]) -> Result<Vec<LedgerAnswer>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT request_id, node, plugin, error, at, stale FROM request_answers
                 WHERE request_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(LedgerAnswer {
                    request_id: col(r, 0)?,
                    node: col(r, 1)?,
                    plugin: col(r, 2)?,
                    error: col(r, 3)?,
                    at: col(r, 4)?,
                    stale: col(r, 5)?,
                })
            })
            .collect()
    }
}

impl PostgresStore {
    /// Moves unreadable rows into the `quarantine` table (created on first use) in one
    /// transaction; the values are copied inside PostgreSQL, never read into Rust.
    ///
    /// A history row whose `new` is implicit reads it from the row after it, or from the
    /// key's current value, so before either goes the row that reads it is pinned to
    /// what it reads now: moving one row aside never changes what another row says.
    async fn quarantine_rows(&self, rows: &[Unreadable]) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS quarantine (
                 id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, node TEXT NOT NULL,
                 key TEXT NOT NULL, value JSONB, old JSONB, why TEXT NOT NULL,
                 at TIMESTAMPTZ NOT NULL)",
        )
        .await
        .map_err(pg_err)?;
        let now = Utc::now();
        let mut moved = 0;
        for u in rows {
            match (&u.history, u.key.as_str()) {
                (Some(id), _) => {
                    let id: i64 = id.parse().map_err(|_| {
                        StoreError::Invalid(format!("history row id {id:?} is not a number"))
                    })?;
                    moved += tx
                        .execute(
                            &format!(
                                "INSERT INTO quarantine (source, node, key, value, old, why, at)
                                 SELECT 'history', h.node, h.key, {RESOLVED_NEW}, h.old, $3, $4
                                 FROM history h WHERE h.node = $1 AND h.id = $2"
                            ),
                            &[&u.node, &id, &u.why, &now],
                        )
                        .await
                        .map_err(pg_err)?;
                    // The row before it reads this row's `old`.
                    let before = pin_sql(
                        "SELECT p.id FROM history p JOIN history r
                           ON r.node = $1 AND r.id = $2 AND p.node = r.node AND p.key = r.key
                         WHERE (p.at, p.id) < (r.at, r.id)
                         ORDER BY p.at DESC, p.id DESC LIMIT 1",
                    );
                    tx.execute(&before, &[&u.node, &id]).await.map_err(pg_err)?;
                    tx.execute(
                        "DELETE FROM history WHERE node = $1 AND id = $2",
                        &[&u.node, &id],
                    )
                    .await
                    .map_err(pg_err)?;
                }
                (None, "last_error") => {
                    moved += tx
                        .execute(
                            "INSERT INTO quarantine (source, node, key, value, why, at)
                             SELECT 'nodes', name, 'last_error', last_error, $2, $3 FROM nodes
                             WHERE name = $1 AND last_error IS NOT NULL",
                            &[&u.node, &u.why, &now],
                        )
                        .await
                        .map_err(pg_err)?;
                    tx.execute(
                        "UPDATE nodes SET last_error = NULL, last_error_at = NULL WHERE name = $1",
                        &[&u.node],
                    )
                    .await
                    .map_err(pg_err)?;
                }
                (None, key) => {
                    // The key's latest row reads its current value.
                    let latest = pin_sql(
                        "SELECT id FROM history WHERE node = $1 AND key = $2
                         ORDER BY at DESC, id DESC LIMIT 1",
                    );
                    tx.execute(&latest, &[&u.node, &key])
                        .await
                        .map_err(pg_err)?;
                    moved += tx
                        .execute(
                            "WITH gone AS (DELETE FROM node_keys WHERE node = $1 AND key = $2 RETURNING node, key, value)
                             INSERT INTO quarantine (source, node, key, value, why, at)
                             SELECT 'node_keys', node, key, value, $3, $4 FROM gone",
                            &[&u.node, &key, &u.why, &now],
                        )
                        .await
                        .map_err(pg_err)?;
                }
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(moved)
    }

    async fn request_rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<LedgerRequest>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql, params).await.map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(LedgerRequest {
                    id: col(r, 0)?,
                    command: col(r, 1)?,
                    sender: col(r, 2)?,
                    sent_at: col(r, 3)?,
                    ttl: u64::try_from(col::<i64>(r, 4)?).unwrap_or(0),
                    expected: col(r, 5)?,
                })
            })
            .collect()
    }

    async fn history_rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(sql, params).await.map_err(pg_err)?;
        let mut out = Rows::default();
        for r in &rows {
            let (node, key): (String, String) = (col(r, 0)?, col(r, 1)?);
            let entry = (|| {
                Ok::<_, StoreError>(HistoryEntry {
                    node: node.clone(),
                    key: key.clone(),
                    old: col(r, 2)?,
                    new: col(r, 3)?,
                    at: col(r, 4)?,
                })
            })();
            match entry {
                Ok(e) => out.rows.push(e),
                Err(e) => {
                    let id = col::<i64>(r, 5).map(|i| i.to_string()).ok();
                    out.skip(&node, &key, id, e)
                }
            }
        }
        Ok(out)
    }
}

/// TLS for PostgreSQL over rustls, with libpq's meanings of `sslmode`.
mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tokio_postgres_rustls::MakeRustlsConnect;
    use vogeler_config::{PgSslMode, PgTls};

    use crate::StoreError;

    fn invalid(path: &Path, e: impl std::fmt::Display) -> StoreError {
        StoreError::Invalid(format!("sslrootcert {}: {e}", path.display()))
    }

    /// The CA certificates to check the server against: `sslrootcert`, else the web's roots.
    fn roots(root_cert: Option<&Path>) -> Result<Arc<RootCertStore>, StoreError> {
        let mut store = RootCertStore::empty();
        match root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| invalid(path, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(path, e))?;
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(invalid(path, "no usable PEM certificate in the file"));
                }
            }
            None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(Arc::new(store))
    }

    /// The connector for a TLS `sslmode`: `prefer` and `require` encrypt without checking
    /// the certificate (unless `require` has an `sslrootcert`, as libpq); `verify-ca` checks
    /// the chain; `verify-full` the chain and the host name.
    pub(super) fn connector(tls: &PgTls) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let root_cert = tls.root_cert.as_deref();
        let verify_chain = match tls.mode {
            PgSslMode::Disable | PgSslMode::Prefer => false,
            PgSslMode::Require => root_cert.is_some(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => true,
        };
        let verifier: Arc<dyn ServerCertVerifier> = if verify_chain {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(roots(root_cert)?, provider.clone())
                    .build()
                    .map_err(|e| StoreError::Invalid(format!("PostgreSQL TLS: {e}")))?;
            if tls.mode == PgSslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        } else {
            Arc::new(Unchecked(provider.clone()))
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// `verify-ca` (and `require` with a root certificate): the chain must lead to a
    /// trusted CA; the name in the certificate is not compared with the host.
    #[derive(Debug)]
    struct ChainOnly(Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            match self.0.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// `prefer` / `require` without a root certificate: encryption against passive
    /// listeners only, as libpq; the handshake signatures are still verified.
    #[derive(Debug)]
    struct Unchecked(Arc<CryptoProvider>);

    impl ServerCertVerifier for Unchecked {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    /// The package index's triggers name the package plugins in SQL; they must be
    /// exactly `PACKAGE_KEYS`, or a package plugin would go unindexed.
    #[test]
    fn the_package_index_names_every_package_plugin() {
        let list = crate::PACKAGE_KEYS
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = super::MIGRATIONS[5];
        assert_eq!(sql.matches(&format!("IN ({list})")).count(), 4, "{sql}");
        assert_eq!(sql.matches("IN (").count(), 4, "{sql}");
    }

    /// Every pooled connection runs without JIT, and options given in the DSN still apply.
    #[tokio::test]
    async fn connections_run_without_jit_and_keep_the_dsns_options() {
        let url = crate::testing::fresh_postgres().await;
        let store =
            super::PostgresStore::connect(&format!("{url}?options=-c%20statement_timeout%3D12345"))
                .await
                .expect("connect");
        let client = store.client().await.expect("client");
        let show = |what: &'static str| {
            let client = &client;
            async move {
                let row = client.query_one(what, &[]).await.expect(what);
                row.get::<_, String>(0)
            }
        };
        assert_eq!(show("SHOW jit").await, "off");
        assert_eq!(show("SHOW statement_timeout").await, "12345ms");
    }
}
