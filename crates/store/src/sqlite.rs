//! The embedded SQLite store: one file, WAL mode, one writer thread.
//!
//! The connection lives on a dedicated thread so the async runtime never blocks on
//! disk; calls are closures sent to it. SQLite allows one writing server: run one
//! `vogeler-server` per file (PostgreSQL or CouchDB for several side by side).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::{
    is_reserved_key, last_error_value, rfc3339, Change, HistoryEntry, KeyPath, LedgerAnswer,
    LedgerRequest, NodeRecord, NodeSummary, Observation, Outcome, Rows, Store, StoreError,
    Unreadable,
};

const BACKEND: &str = "sqlite";

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A store in one SQLite file.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    /// Queries run on their own connection and thread, so a heavy report or discovery
    /// never holds up the writer (WAL lets a reader and the writer run side by side).
    reader: Reader,
    /// Tells the checkpointer thread that a batch was committed.
    checkpoints: mpsc::SyncSender<()>,
    path: PathBuf,
}

/// WAL frames (pages) past which the checkpointer waits for the writer and restarts the
/// log, so a server that never goes idle still has a bounded WAL (64 MB at 4 KB pages).
const WAL_RESTART_FRAMES: i64 = 16_384;

/// Starts the thread that copies the WAL back into the database file on its own
/// connection. With SQLite's automatic checkpoints, the commit that crosses the
/// threshold copies and syncs tens of megabytes inline while results wait; here the
/// writer only appends and a passive checkpoint runs beside it.
fn start_checkpointer(path: &Path) -> Result<mpsc::SyncSender<()>, StoreError> {
    let conn = connect(path)?;
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("vogeler-sqlite-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                if let Err(e) = checkpoint(&conn) {
                    tracing::warn!(database = %name, error = %e, "WAL checkpoint failed; retrying after the next commit");
                }
                // Commits that arrive meanwhile coalesce into the next round.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
        .map_err(err)?;
    Ok(tx)
}

/// A connection to the database file, as the writer and the checkpointer both want
/// it: a busy timeout, and a WAL truncated back to 64 MB after it restarts.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Unavailable {
        backend: BACKEND,
        message: format!("cannot open {}: {e}", path.display()),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql_err)?;
    conn.pragma_update(None, "journal_size_limit", 67_108_864)
        .map_err(sql_err)?;
    Ok(conn)
}

/// One round: a passive checkpoint (never blocks the writer); when the log has still
/// grown past [`WAL_RESTART_FRAMES`], a restart checkpoint that waits for the writer.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    let log: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if log > WAL_RESTART_FRAMES {
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
    }
    Ok(())
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::ReadOnly
            ) =>
        {
            StoreError::Unavailable {
                backend: BACKEND,
                message: e.to_string(),
            }
        }
        _ => err(e),
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
-- The writer's page cache: 16 MB holds the interior pages of a file of many GB; more only
-- grew the server's resident memory (64 MB cost 50 MB of it at 10,000 nodes, issue #21).
PRAGMA cache_size = -16384;
PRAGMA temp_store = MEMORY;
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_error TEXT,
    last_error_at TEXT,
    deactivated_at TEXT
);
CREATE TABLE IF NOT EXISTS node_keys (
    node TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    collected_at TEXT NOT NULL,
    -- A rowid table: values are kilobytes, which WITHOUT ROWID handles badly.
    UNIQUE (node, key)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    key TEXT NOT NULL,
    old TEXT,
    new TEXT,
    at TEXT NOT NULL
);
-- One key across the fleet (a fact report, a filter, `last_error`) reads its rows and no
-- other key's: without it every such read scanned the table, kilobytes per row, the
-- package lists included (issue #21: 2.7 s for a fact report at 100,000 nodes with dpkg).
CREATE INDEX IF NOT EXISTS node_keys_by_key ON node_keys (key, node);
CREATE INDEX IF NOT EXISTS history_node_key ON history (node, key, at);
CREATE INDEX IF NOT EXISTS history_at ON history (at);
CREATE INDEX IF NOT EXISTS nodes_last_seen ON nodes (last_seen);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    sender TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    ttl INTEGER NOT NULL,
    expected TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_sent_at ON requests (sent_at);
CREATE TABLE IF NOT EXISTS request_answers (
    request_id TEXT NOT NULL,
    node TEXT NOT NULL,
    plugin TEXT NOT NULL,
    error TEXT,
    at TEXT NOT NULL,
    stale INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, node)
);
-- Rows that did not read back, moved aside by `vogeler-admin check --quarantine`.
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    node TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    old TEXT,
    why TEXT NOT NULL,
    at TEXT NOT NULL
);
";

/// "Is any node deactivated?" (asked by every fleet-wide report) answers from this
/// index, empty while every node is active, not from a scan of the node table.
const DEACTIVATED_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS nodes_deactivated ON nodes (deactivated_at)
    WHERE deactivated_at IS NOT NULL";

/// One row when any node is deactivated (`Store::any_deactivated`).
const ANY_DEACTIVATED: &str = "SELECT 1 FROM nodes WHERE deactivated_at IS NOT NULL LIMIT 1";

/// Columns added after a table was first released: added to older files at open.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    (
        "request_answers",
        "stale",
        "ALTER TABLE request_answers ADD COLUMN stale INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "nodes",
        "deactivated_at",
        "ALTER TABLE nodes ADD COLUMN deactivated_at TEXT",
    ),
];

/// Adds the [`ADDED_COLUMNS`] a database file made by an earlier version lacks.
fn add_columns(conn: &Connection) -> Result<(), StoreError> {
    for (table, column, sql) in ADDED_COLUMNS {
        let present: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))
            .and_then(|mut s| s.exists(params![column]))
            .map_err(sql_err)?;
        if !present {
            conn.execute_batch(sql).map_err(sql_err)?;
        }
    }
    Ok(())
}

/// The package plugins' keys as an SQL list (`'dpkg', 'rpm'`).
fn package_key_list() -> String {
    crate::PACKAGE_KEYS
        .iter()
        .map(|k| format!("'{}'", k.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The package index: one row per (node, package plugin, package), kept in step with
/// `node_keys` by triggers, so every writer (ingest, import, delete, quarantine)
/// maintains it and "which nodes have openssl" reads one index range instead of
/// parsing every node's package list. A member's version is its JSON text as `->`
/// gives it (strings, the usual case, quoted directly), the same text
/// [`read_key_values`] reads for `dpkg.NAME`.
fn add_package_index(conn: &Connection) -> Result<(), StoreError> {
    let existed: bool = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'packages'")
        .and_then(|mut s| s.exists([]))
        .map_err(sql_err)?;
    let keys = package_key_list();
    // Indexes the members of the object `v` (a column of `from`) as (package,
    // version JSON text) rows; anything else stored under a package key (not JSON,
    // not an object) indexes nothing.
    let members = |v: &str| {
        format!("json_each(CASE WHEN json_valid({v}) THEN CASE WHEN json_type({v}) = 'object' THEN {v} ELSE '{{}}' END ELSE '{{}}' END)")
    };
    let version = |j: &str, v: &str| {
        format!(
            "CASE WHEN {j}.type = 'text' THEN json_quote({j}.value) ELSE {v} -> {j}.fullkey END"
        )
    };
    let index = |from: &str, v: &str, node: &str, key: &str| {
        format!(
            "INSERT OR REPLACE INTO packages (node, plugin, name, version)
             SELECT {node}, {key}, j.key, {} FROM {from}{} j",
            version("j", v),
            members(v)
        )
    };
    // A list that is not JSON is marked, and the mark goes with the list.
    let mark = "INSERT OR REPLACE INTO packages_unreadable (node, plugin) SELECT NEW.node, NEW.key WHERE NOT json_valid(NEW.value);";
    let unmark = "DELETE FROM packages_unreadable WHERE node = OLD.node AND plugin = OLD.key;";
    // A changed list touches only the packages that changed (an upgrade of a few
    // packages rewrites a few rows, not the whole list's).
    let changed = format!(
        "DELETE FROM packages WHERE node = OLD.node AND plugin = OLD.key
             AND (name, version) NOT IN (SELECT n.key, {new_version} FROM {new_members} n);
    INSERT OR REPLACE INTO packages (node, plugin, name, version)
        SELECT NEW.node, NEW.key, n.key, {new_version} FROM {new_members} n
        WHERE (n.key, {new_version}) NOT IN (SELECT o.key, {old_version} FROM {old_members} o);
    {unmark}
    {mark}",
        new_version = version("n", "NEW.value"),
        new_members = members("NEW.value"),
        old_version = version("o", "OLD.value"),
        old_members = members("OLD.value"),
    );
    let del =
        format!("DELETE FROM packages WHERE node = OLD.node AND plugin = OLD.key;\n    {unmark}");
    let ins = format!(
        "{};\n    {mark}",
        index("", "NEW.value", "NEW.node", "NEW.key")
    );
    // A file made before the index: filled once from what is stored.
    let backfill = if existed {
        String::new()
    } else {
        format!(
            "{} WHERE k.key IN ({keys});
             INSERT OR REPLACE INTO packages_unreadable (node, plugin)
             SELECT node, key FROM node_keys WHERE key IN ({keys}) AND NOT json_valid(value);",
            index("node_keys k, ", "k.value", "k.node", "k.key")
        )
    };
    let sql = format!(
        "BEGIN;
CREATE TABLE IF NOT EXISTS packages (
    node TEXT NOT NULL,
    plugin TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (node, plugin, name)
) WITHOUT ROWID;
-- Covers a package report (`name = ?` in node order, with each row's version): one
-- index range, no lookup of each row in the table. Replaces `packages_name`
-- (`(name, node)`), which left the version to a table lookup per row.
CREATE INDEX IF NOT EXISTS packages_by_name ON packages (name, node, plugin, version);
DROP INDEX IF EXISTS packages_name;
-- Package lists that are not JSON: listed so a package report counts them skipped.
CREATE TABLE IF NOT EXISTS packages_unreadable (
    node TEXT NOT NULL,
    plugin TEXT NOT NULL,
    PRIMARY KEY (node, plugin)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS packages_on_insert AFTER INSERT ON node_keys
WHEN NEW.key IN ({keys}) BEGIN
    {ins}
END;
CREATE TRIGGER IF NOT EXISTS packages_on_update AFTER UPDATE OF value ON node_keys
WHEN NEW.key IN ({keys}) AND OLD.value IS NOT NEW.value BEGIN
    {changed}
END;
CREATE TRIGGER IF NOT EXISTS packages_on_delete AFTER DELETE ON node_keys
WHEN OLD.key IN ({keys}) BEGIN
    {del}
END;
{backfill}
COMMIT;",
    );
    conn.execute_batch(&sql).map_err(sql_err)
}

/// The query thread: one read-only connection, and a way to stop the query it runs
/// when its caller gave up (a time limit passed), so the next query does not wait
/// behind one nobody reads.
struct Reader {
    jobs: mpsc::Sender<(u64, Job)>,
    /// The id of the call the thread is running, `None` between calls; interrupts
    /// are made under this lock so they only ever reach the call they were meant for.
    running: std::sync::Arc<std::sync::Mutex<Option<u64>>>,
    interrupt: std::sync::Arc<rusqlite::InterruptHandle>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Reader {
    fn start(path: &Path) -> Result<Reader, StoreError> {
        let conn = connect(path)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(sql_err)?;
        let interrupt = std::sync::Arc::new(conn.get_interrupt_handle());
        let running = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (tx, rx) = mpsc::channel::<(u64, Job)>();
        let on_thread = running.clone();
        std::thread::Builder::new()
            .name("vogeler-sqlite-read".into())
            .spawn(move || {
                let mut conn = conn;
                while let Ok((id, job)) = rx.recv() {
                    set_running(&on_thread, Some(id));
                    job(&mut conn);
                    set_running(&on_thread, None);
                }
            })
            .map_err(err)?;
        Ok(Reader {
            jobs: tx,
            running,
            interrupt,
            next_id: std::sync::atomic::AtomicU64::new(0),
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send((
                id,
                Box::new(move |conn| {
                    // A caller that gave up while this waited in line wants nothing.
                    if !tx.is_closed() {
                        let _ = tx.send(f(conn));
                    }
                }),
            ))
            .map_err(|_| StoreError::Unavailable {
                backend: BACKEND,
                message: "the SQLite query thread has stopped".into(),
            })?;
        let mut guard = StopOnDrop {
            id,
            reader: self,
            done: false,
        };
        let answer = rx.await;
        guard.done = true;
        answer.map_err(|_| StoreError::Unavailable {
            backend: BACKEND,
            message: "the SQLite query thread dropped a call".into(),
        })?
    }
}

fn set_running(running: &std::sync::Mutex<Option<u64>>, id: Option<u64>) {
    match running.lock() {
        Ok(mut r) => *r = id,
        Err(poisoned) => *poisoned.into_inner() = id,
    }
}

/// Interrupts the query of call `id` when its future is dropped before the answer
/// came (the caller's time limit passed): SQLite stops it at its next step.
struct StopOnDrop<'a> {
    id: u64,
    reader: &'a Reader,
    done: bool,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let running = match self.reader.running.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *running == Some(self.id) {
            self.reader.interrupt.interrupt();
            tracing::debug!(
                call = self.id,
                "SQLite query interrupted: its caller gave up"
            );
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable {
                    backend: BACKEND,
                    message: format!("cannot create directory {}: {e}", dir.display()),
                })?;
            }
        }
        let mut conn = connect(path)?;
        conn.execute_batch(SCHEMA).map_err(sql_err)?;
        add_columns(&conn)?;
        // After `add_columns`: a file from before deactivation gains the column first.
        conn.execute_batch(DEACTIVATED_INDEX).map_err(sql_err)?;
        add_package_index(&conn)?;
        // Checkpoints run on their own thread (`start_checkpointer`), not in commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sql_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        let checkpoints = start_checkpointer(path)?;
        let reader = Reader::start(path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vogeler-sqlite".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(err)?;
        Ok(SqliteStore {
            jobs: tx,
            reader,
            checkpoints,
            path: path.to_path_buf(),
        })
    }

    /// Opens a database file that exists and holds Vogeler's tables; a missing file
    /// or one without them is [`StoreError::NotSetUp`] and nothing is created (the
    /// read-only commands: a mistyped path must not leave an empty store behind).
    pub fn open_existing(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.is_file() {
            return Err(StoreError::NotSetUp(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| StoreError::Unavailable {
            backend: BACKEND,
            message: format!("cannot open {}: {e}", path.display()),
        })?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'nodes'",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        drop(conn);
        if tables == 0 {
            return Err(StoreError::NotSetUp(format!(
                "{} holds no Vogeler tables",
                path.display()
            )));
        }
        SqliteStore::open(path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StoreError::Unavailable {
                backend: BACKEND,
                message: "the SQLite thread has stopped".into(),
            })?;
        rx.await.map_err(|_| StoreError::Unavailable {
            backend: BACKEND,
            message: "the SQLite thread dropped a call".into(),
        })?
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| err(format!("bad stored time {s:?}: {e}")))
}

fn parse_json(s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| err(format!("bad stored JSON: {e}")))
}

/// Applies one batch inside one transaction.
fn apply_batch(conn: &mut Connection, batch: &[Observation]) -> Result<Vec<Outcome>, StoreError> {
    let tx = conn.transaction().map_err(sql_err)?;
    let now = rfc3339(Utc::now());
    let mut outcomes = Vec::with_capacity(batch.len());
    for obs in batch {
        if let Change::Plugin { name, .. } = &obs.change {
            if is_reserved_key(name) {
                outcomes.push(Outcome::Refused(format!(
                    "plugin name {name:?} clashes with a document field"
                )));
                continue;
            }
        }
        let created = tx
            .prepare_cached(
                "INSERT INTO nodes (name, created_at, updated_at, last_seen) VALUES (?1, ?2, ?2, ?2)
                 ON CONFLICT (name) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![obs.node, now]))
            .map_err(sql_err)?
            == 1;
        let at = rfc3339(obs.at);
        let changed = match &obs.change {
            Change::Seen => false,
            Change::Plugin {
                name,
                value,
                history,
            } => {
                let new = value.text();
                // A node created just now has no keys to read.
                let old: Option<(String, String)> = if created {
                    None
                } else {
                    tx.prepare_cached(
                        "SELECT value, collected_at FROM node_keys WHERE node = ?1 AND key = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![obs.node, name], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(sql_err)?
                };
                match old {
                    Some((_, old_at)) if at < old_at => {
                        outcomes.push(Outcome::Stale);
                        touch(&tx, &obs.node, &now, false, true)?;
                        continue;
                    }
                    Some((old_value, _)) if old_value == *new => {
                        tx.prepare_cached(
                            "UPDATE node_keys SET collected_at = ?3 WHERE node = ?1 AND key = ?2",
                        )
                        .and_then(|mut s| s.execute(params![obs.node, name, at]))
                        .map_err(sql_err)?;
                        false
                    }
                    old => {
                        if !history {
                            if let Some((old_value, _)) = &old {
                                pin_last_history(&tx, &obs.node, name, old_value)?;
                            }
                        }
                        tx.prepare_cached(
                            "INSERT INTO node_keys (node, key, value, collected_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (node, key) DO UPDATE SET value = excluded.value, collected_at = excluded.collected_at",
                        )
                        .and_then(|mut s| s.execute(params![obs.node, name, new.as_ref(), at]))
                        .map_err(sql_err)?;
                        // `new` is implicit: it is the current value (or the next
                        // entry's `old`), so the value's bytes are not written twice.
                        // A volatile key (`history = false`) records nothing.
                        if *history {
                            record_history(
                                &tx,
                                &obs.node,
                                name,
                                old.map(|o| o.0),
                                Some(String::new()),
                                &at,
                            )?;
                        }
                        true
                    }
                }
            }
            Change::Error {
                plugin,
                message,
                raw,
            } => {
                let new = last_error_value(plugin, message, raw, obs.at).to_string();
                let old: Option<(Option<String>, Option<String>)> = if created {
                    None
                } else {
                    tx.prepare_cached("SELECT last_error, last_error_at FROM nodes WHERE name = ?1")
                        .and_then(|mut s| {
                            s.query_row(params![obs.node], |r| Ok((r.get(0)?, r.get(1)?)))
                                .optional()
                        })
                        .map_err(sql_err)?
                };
                let (old_value, old_at) = old.unwrap_or((None, None));
                if old_at.as_deref().is_some_and(|o| at.as_str() < o) {
                    outcomes.push(Outcome::Stale);
                    touch(&tx, &obs.node, &now, false, true)?;
                    continue;
                }
                if old_value.as_deref() == Some(new.as_str()) {
                    false
                } else {
                    tx.prepare_cached(
                        "UPDATE nodes SET last_error = ?2, last_error_at = ?3 WHERE name = ?1",
                    )
                    .and_then(|mut s| s.execute(params![obs.node, new, at]))
                    .map_err(sql_err)?;
                    record_history(&tx, &obs.node, "last_error", old_value, Some(new), &at)?;
                    true
                }
            }
        };
        // A good result clears that plugin's error (the error stays in history).
        let changed = match &obs.change {
            Change::Plugin { name, .. } if !created => {
                clear_error(&tx, &obs.node, Some(name), &at)? || changed
            }
            _ => changed,
        };
        // A node created just now already has `last_seen` and `updated_at` = now. A
        // result (not a heartbeat) reactivates a deactivated node.
        if !created {
            let result = !matches!(obs.change, Change::Seen);
            touch(&tx, &obs.node, &now, changed, result)?;
        }
        outcomes.push(if created {
            Outcome::Created
        } else if changed {
            Outcome::Updated
        } else {
            Outcome::Unchanged
        });
    }
    tx.commit().map_err(sql_err)?;
    Ok(outcomes)
}

/// Clears a node's `last_error` when it is `plugin`'s (any plugin's when `None`) and
/// not newer than `at`, recording the change in history; whether it cleared one.
fn clear_error(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    plugin: Option<&str>,
    at: &str,
) -> Result<bool, StoreError> {
    let old: Option<String> = tx
        .prepare_cached(
            "SELECT last_error FROM nodes WHERE name = ?1 AND last_error IS NOT NULL
             AND (?2 IS NULL OR (json_extract(last_error, '$.plugin') = ?2
                                 AND (last_error_at IS NULL OR last_error_at <= ?3)))",
        )
        .and_then(|mut s| {
            s.query_row(params![node, plugin, at], |r| r.get(0))
                .optional()
        })
        .map_err(sql_err)?;
    let Some(old) = old else {
        return Ok(false);
    };
    tx.prepare_cached("UPDATE nodes SET last_error = NULL, last_error_at = ?2 WHERE name = ?1")
        .and_then(|mut s| s.execute(params![node, at]))
        .map_err(sql_err)?;
    record_history(tx, node, "last_error", Some(old), None, at)?;
    Ok(true)
}

/// Moves `last_seen` (and `updated_at` when the content `changed`); a `result` also
/// clears `deactivated_at` (reactivation).
fn touch(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    now: &str,
    changed: bool,
    result: bool,
) -> Result<(), StoreError> {
    let sql = match (changed, result) {
        (true, true) => {
            "UPDATE nodes SET last_seen = ?2, updated_at = ?2, deactivated_at = NULL WHERE name = ?1"
        }
        (true, false) => "UPDATE nodes SET last_seen = ?2, updated_at = ?2 WHERE name = ?1",
        (false, true) => "UPDATE nodes SET last_seen = ?2, deactivated_at = NULL WHERE name = ?1",
        (false, false) => "UPDATE nodes SET last_seen = ?2 WHERE name = ?1",
    };
    tx.prepare_cached(sql)
        .and_then(|mut s| s.execute(params![node, now]))
        .map_err(sql_err)?;
    Ok(())
}

/// Before a key's value changes without a history row (a volatile plugin), writes the
/// key's latest history row's `new` explicitly: an implicit one (`''`) would read the
/// current value, which is about to be one the row never saw.
fn pin_last_history(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    key: &str,
    current: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE history SET new = ?3 WHERE id = (
             SELECT id FROM history WHERE node = ?1 AND key = ?2 ORDER BY at DESC, id DESC LIMIT 1
         ) AND new = ''",
    )
    .and_then(|mut s| s.execute(params![node, key, current]))
    .map_err(sql_err)?;
    Ok(())
}

fn record_history(
    tx: &rusqlite::Transaction<'_>,
    node: &str,
    key: &str,
    old: Option<String>,
    new: Option<String>,
    at: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO history (node, key, old, new, at) VALUES (?1, ?2, ?3, ?4, ?5)")
        .and_then(|mut s| s.execute(params![node, key, old, new, at]))
        .map_err(sql_err)?;
    Ok(())
}

fn read_node(conn: &Connection, name: &str) -> Result<Option<NodeRecord>, StoreError> {
    type Row = (String, String, String, Option<String>, Option<String>);
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT created_at, updated_at, last_seen, last_error, deactivated_at FROM nodes WHERE name = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
        })
        .map_err(sql_err)?;
    let Some((created_at, updated_at, last_seen, last_error, deactivated_at)) = row else {
        return Ok(None);
    };
    let mut keys = BTreeMap::new();
    let mut keys_collected = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT key, value, collected_at FROM node_keys WHERE node = ?1")
        .map_err(sql_err)?;
    let rows = stmt
        .query_map(params![name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(sql_err)?;
    let mut unreadable = Vec::new();
    let mut skip =
        |key: &str, why: StoreError| unreadable.push(Unreadable::current(name, key, why));
    for row in rows {
        let (k, v, at) = row.map_err(sql_err)?;
        match (parse_json(&v), parse_time(&at)) {
            (Ok(v), Ok(at)) => {
                keys_collected.insert(k.clone(), at);
                keys.insert(k, v);
            }
            (Err(e), _) | (_, Err(e)) => skip(&k, e),
        }
    }
    let last_error = match last_error.as_deref().map(parse_json).transpose() {
        Ok(e) => e,
        Err(e) => {
            skip("last_error", e);
            None
        }
    };
    Ok(Some(NodeRecord {
        name: name.to_string(),
        created_at: parse_time(&created_at)?,
        updated_at: parse_time(&updated_at)?,
        last_seen: parse_time(&last_seen)?,
        last_error,
        deactivated_at: deactivated_at.as_deref().map(parse_time).transpose()?,
        keys,
        keys_collected,
        unreadable,
    }))
}

fn read_nodes(conn: &mut Connection) -> Result<Vec<NodeSummary>, StoreError> {
    // Two ordered scans in one read transaction (one snapshot), merged here: a
    // subquery per node for its key names cost 178 ms of SQLite's time at 100,000
    // nodes, the keys index scanned once in node order 35 ms (issue #21).
    let tx = conn.transaction().map_err(sql_err)?;
    let mut keys_stmt = tx
        .prepare_cached("SELECT node, key FROM node_keys ORDER BY node, key")
        .map_err(sql_err)?;
    let mut keys = keys_stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sql_err)?
        .peekable();
    let mut stmt = tx
        .prepare_cached(
            "SELECT name, last_seen,
                    CASE WHEN json_valid(last_error) THEN json_extract(last_error, '$.message') END,
                    created_at, updated_at, deactivated_at
             FROM nodes ORDER BY name",
        )
        .map_err(sql_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .map_err(sql_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (name, last_seen, last_error, created_at, updated_at, deactivated_at) =
            row.map_err(sql_err)?;
        // Both scans are in SQLite's text order (BINARY, byte order as `str`'s), so a
        // node's keys are the next ones; keys of a node with no row are passed over.
        let mut plugins = Vec::new();
        while keys
            .peek()
            .is_some_and(|k| k.as_ref().map_or(true, |(node, _)| *node <= name))
        {
            let Some(k) = keys.next() else { break };
            let (node, key) = k.map_err(sql_err)?;
            if node == name {
                plugins.push(key);
            }
        }
        out.push(NodeSummary {
            name,
            last_seen: parse_time(&last_seen)?,
            created_at: parse_time(&created_at)?,
            updated_at: parse_time(&updated_at)?,
            plugins,
            last_error,
            deactivated_at: deactivated_at.as_deref().map(parse_time).transpose()?,
        });
    }
    Ok(out)
}

fn read_history(
    conn: &Connection,
    node: &str,
    key: Option<&str>,
) -> Result<Rows<HistoryEntry>, StoreError> {
    history_rows(
        conn,
        &format!(
            "SELECT h.node, h.key, h.old, {RESOLVED_NEW}, h.at, h.id FROM history h
             WHERE h.node = ?1 AND (?2 IS NULL OR h.key = ?2) ORDER BY h.at, h.id"
        ),
        params![node, key],
    )
}

/// A history row's `new` value. Plugin keys store it as `''` (not JSON): it is the
/// next entry's `old` for that key, or the key's current value for the latest entry,
/// so a changed value is written once to `node_keys` and once more as the next
/// change's `old`, never a third time. Rows imported or from older versions carry it.
const RESOLVED_NEW: &str = "CASE WHEN h.new = '' THEN COALESCE(
    (SELECT n.old FROM history n WHERE n.node = h.node AND n.key = h.key
       AND (n.at > h.at OR (n.at = h.at AND n.id > h.id)) ORDER BY n.at, n.id LIMIT 1),
    (SELECT v.value FROM node_keys v WHERE v.node = h.node AND v.key = h.key))
  ELSE h.new END";

fn history_rows(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Rows<HistoryEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_err)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(sql_err)?;
    let mut out = Rows::default();
    for row in rows {
        let (node, key, old, new, at, id) = row.map_err(sql_err)?;
        let read = || {
            Ok::<_, StoreError>(HistoryEntry {
                node: node.clone(),
                key: key.clone(),
                old: old.as_deref().map(parse_json).transpose()?,
                new: new.as_deref().map(parse_json).transpose()?,
                at: parse_time(&at)?,
            })
        };
        match read() {
            Ok(e) => out.rows.push(e),
            Err(e) => out.skip(&node, &key, Some(id.to_string()), e),
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn apply(&self, batch: crate::Batch) -> Result<Vec<Outcome>, StoreError> {
        let outcomes = self.call(move |conn| apply_batch(conn, &batch)).await;
        // Full means a round is already due; that round sees this commit too.
        let _ = self.checkpoints.try_send(());
        outcomes
    }

    async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let name = name.to_string();
        self.reader.call(move |conn| read_node(conn, &name)).await
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>, StoreError> {
        self.reader.call(read_nodes).await
    }

    async fn history(
        &self,
        node: &str,
        key: Option<&str>,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let node = node.to_string();
        let key = key.map(str::to_string);
        self.reader
            .call(move |conn| read_history(conn, &node, key.as_deref()))
            .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.call(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sql_err))
            .await
    }

    async fn clear_error(&self, node: &str) -> Result<bool, StoreError> {
        let node = node.to_string();
        self.call(move |conn| {
            let tx = conn.transaction().map_err(sql_err)?;
            let now = rfc3339(Utc::now());
            let cleared = clear_error(&tx, &node, None, &now)?;
            if cleared {
                tx.execute(
                    "UPDATE nodes SET updated_at = ?2 WHERE name = ?1",
                    params![node, now],
                )
                .map_err(sql_err)?;
            }
            tx.commit().map_err(sql_err)?;
            Ok(cleared)
        })
        .await
    }

    async fn key_values(&self, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError> {
        let path = path.clone();
        self.reader
            .call(move |conn| match crate::package_member(&path) {
                // `dpkg.openssl` (a filter, a fact page): from the package index.
                Some((plugin, name)) => {
                    let mut out = Rows::default();
                    for (node, _, v) in out.absorb(read_packages(conn, name, Some(plugin))?) {
                        out.rows.push((node, v));
                    }
                    Ok(out)
                }
                None => read_key_values(conn, &path),
            })
            .await
    }

    async fn changes(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        self.changes_with("new", since, limit).await
    }

    /// From the package index (see `add_package_index`): one index range, not a
    /// parse of every node's package list.
    async fn packages(&self, name: &str) -> Result<Rows<(String, String, Value)>, StoreError> {
        let name = name.to_string();
        self.reader
            .call(move |conn| read_packages(conn, &name, None))
            .await
    }

    async fn change_outlines(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        // The outline is made here so a first appearance's value never leaves SQLite;
        // text that is not JSON is passed on as it is, to be skipped and counted.
        self.changes_with(
            "CASE WHEN old IS NOT NULL OR NOT json_valid(new) THEN new
                  WHEN json_type(new) = 'object' THEN (SELECT json_quote('(added: ' || n || CASE n WHEN 1 THEN ' key)' ELSE ' keys)' END) FROM (SELECT count(*) AS n FROM json_each(new)))
                  WHEN json_type(new) = 'array' THEN json_quote('(added: ' || json_array_length(new) || CASE json_array_length(new) WHEN 1 THEN ' item)' ELSE ' items)' END)
                  ELSE new END",
            since,
            limit,
        )
        .await
    }

    async fn delete_node(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.call(move |conn| {
            let tx = conn.transaction().map_err(sql_err)?;
            tx.execute("DELETE FROM node_keys WHERE node = ?1", params![name])
                .map_err(sql_err)?;
            tx.execute("DELETE FROM history WHERE node = ?1", params![name])
                .map_err(sql_err)?;
            let gone = tx
                .execute("DELETE FROM nodes WHERE name = ?1", params![name])
                .map_err(sql_err)?;
            tx.commit().map_err(sql_err)?;
            Ok(gone > 0)
        })
        .await
    }

    async fn deactivate_node(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let (name, at) = (name.to_string(), rfc3339(at));
        self.call(move |conn| {
            conn.execute(
                "UPDATE nodes SET deactivated_at = COALESCE(deactivated_at, ?2) WHERE name = ?1",
                params![name, at],
            )
            .map(|n| n > 0)
            .map_err(sql_err)
        })
        .await
    }

    async fn any_deactivated(&self) -> Result<bool, StoreError> {
        self.reader
            .call(|conn| {
                conn.prepare_cached(ANY_DEACTIVATED)
                    .and_then(|mut s| s.exists([]))
                    .map_err(sql_err)
            })
            .await
    }

    async fn deactivate_inactive(
        &self,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (since, at) = (rfc3339(since), rfc3339(at));
        self.call(move |conn| {
            conn.execute(
                "UPDATE nodes SET deactivated_at = ?2 WHERE last_seen < ?1 AND deactivated_at IS NULL",
                params![since, at],
            )
            .map(|n| n as u64)
            .map_err(sql_err)
        })
        .await
    }

    async fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let before = rfc3339(before);
        self.call(move |conn| {
            conn.execute("DELETE FROM history WHERE at < ?1", params![before])
                .map(|n| n as u64)
                .map_err(sql_err)
        })
        .await
    }

    async fn import(
        &self,
        record: &NodeRecord,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        let record = record.clone();
        let history = history.to_vec();
        self.call(move |conn| import_node(conn, &record, &history))
            .await
    }

    async fn record_ledger(
        &self,
        requests: &[LedgerRequest],
        answers: &[LedgerAnswer],
    ) -> Result<(), StoreError> {
        if requests.is_empty() && answers.is_empty() {
            return Ok(());
        }
        let (requests, answers) = (requests.to_vec(), answers.to_vec());
        self.call(move |conn| write_ledger(conn, &requests, &answers))
            .await
    }

    async fn ledger_requests(&self, limit: usize) -> Result<Vec<LedgerRequest>, StoreError> {
        self.reader
            .call(move |conn| read_requests(conn, None, limit))
            .await
    }

    async fn ledger_request(&self, id: &str) -> Result<Option<LedgerRequest>, StoreError> {
        let id = id.to_string();
        self.reader
            .call(move |conn| Ok(read_requests(conn, Some(&id), 1)?.pop()))
            .await
    }

    async fn ledger_answers(&self, ids: &[String]) -> Result<Vec<LedgerAnswer>, StoreError> {
        let ids = ids.to_vec();
        self.reader.call(move |conn| read_answers(conn, &ids)).await
    }

    async fn quarantine(&self, rows: &[Unreadable]) -> Result<u64, StoreError> {
        let rows = rows.to_vec();
        self.call(move |conn| quarantine_rows(conn, &rows)).await
    }
}

/// Moves unreadable rows into the `quarantine` table (source table, node, key, the
/// text as stored, why) in one transaction; returns how many rows moved.
///
/// A history row whose `new` is implicit reads it from the row after it, or from the
/// key's current value, so before either goes the row that reads it is pinned to what
/// it reads now (the same text, readable or not): moving one row aside never changes
/// what another row says.
fn quarantine_rows(conn: &mut Connection, rows: &[Unreadable]) -> Result<u64, StoreError> {
    let tx = conn.transaction().map_err(sql_err)?;
    let now = rfc3339(Utc::now());
    let mut moved = 0u64;
    for u in rows {
        let (copy, pin, delete, key): (String, Option<String>, &str, &dyn rusqlite::ToSql) =
            match (&u.history, u.key.as_str()) {
                (Some(id), _) => (
                    format!(
                        "INSERT INTO quarantine (source, node, key, value, old, why, at)
                         SELECT 'history', h.node, h.key, {RESOLVED_NEW}, h.old, ?3, ?4
                         FROM history h WHERE h.node = ?1 AND h.id = ?2"
                    ),
                    // The row before it reads this row's `old`.
                    Some(pin_sql(
                        "SELECT p.id FROM history p JOIN history r
                           ON r.node = ?1 AND r.id = ?2 AND p.node = r.node AND p.key = r.key
                         WHERE p.at < r.at OR (p.at = r.at AND p.id < r.id)
                         ORDER BY p.at DESC, p.id DESC LIMIT 1",
                    )),
                    "DELETE FROM history WHERE node = ?1 AND id = ?2",
                    id,
                ),
                (None, "last_error") => (
                    "INSERT INTO quarantine (source, node, key, value, why, at)
                     SELECT 'nodes', name, ?2, last_error, ?3, ?4 FROM nodes
                     WHERE name = ?1 AND last_error IS NOT NULL"
                        .into(),
                    None,
                    "UPDATE nodes SET last_error = NULL, last_error_at = NULL WHERE name = ?1 AND ?2 = 'last_error'",
                    &u.key,
                ),
                (None, _) => (
                    "INSERT INTO quarantine (source, node, key, value, why, at)
                     SELECT 'node_keys', node, key, value, ?3, ?4 FROM node_keys WHERE node = ?1 AND key = ?2"
                        .into(),
                    // The key's latest row reads its current value.
                    Some(pin_sql(
                        "SELECT id FROM history WHERE node = ?1 AND key = ?2
                         ORDER BY at DESC, id DESC LIMIT 1",
                    )),
                    "DELETE FROM node_keys WHERE node = ?1 AND key = ?2",
                    &u.key,
                ),
            };
        moved += tx
            .execute(&copy, params![u.node, key, u.why, now])
            .map_err(sql_err)? as u64;
        if let Some(pin) = pin {
            tx.execute(&pin, params![u.node, key]).map_err(sql_err)?;
        }
        tx.execute(delete, params![u.node, key]).map_err(sql_err)?;
    }
    tx.commit().map_err(sql_err)?;
    Ok(moved)
}

/// An UPDATE writing out the implicit `new` of the history row `row` selects (by id, from
/// `?1` node and `?2`), as it reads now.
fn pin_sql(row: &str) -> String {
    format!("UPDATE history AS h SET new = {RESOLVED_NEW} WHERE h.new = '' AND h.id = ({row})")
}

/// Writes ledger records in one transaction; what is already there is kept.
fn write_ledger(
    conn: &mut Connection,
    requests: &[LedgerRequest],
    answers: &[LedgerAnswer],
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sql_err)?;
    for r in requests {
        let expected = serde_json::to_string(&r.expected).map_err(err)?;
        let ttl = i64::try_from(r.ttl).unwrap_or(i64::MAX);
        tx.prepare_cached(
            "INSERT INTO requests (id, command, sender, sent_at, ttl, expected) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![r.id, r.command, r.sender, rfc3339(r.sent_at), ttl, expected])
        })
        .map_err(sql_err)?;
    }
    for a in answers {
        tx.prepare_cached(
            "INSERT INTO request_answers (request_id, node, plugin, error, at, stale) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (request_id, node) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![a.request_id, a.node, a.plugin, a.error, rfc3339(a.at), a.stale])
        })
        .map_err(sql_err)?;
    }
    tx.commit().map_err(sql_err)
}

fn read_requests(
    conn: &Connection,
    id: Option<&str>,
    limit: usize,
) -> Result<Vec<LedgerRequest>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, command, sender, sent_at, ttl, expected FROM requests
             WHERE ?1 IS NULL OR id = ?1 ORDER BY sent_at DESC, id LIMIT ?2",
        )
        .map_err(sql_err)?;
    let rows = stmt
        .query_map(params![id, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(sql_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, command, sender, sent_at, ttl, expected) = row.map_err(sql_err)?;
        out.push(LedgerRequest {
            id,
            command,
            sender,
            sent_at: parse_time(&sent_at)?,
            ttl: u64::try_from(ttl).unwrap_or(0),
            expected: serde_json::from_str(&expected)
                .map_err(|e| err(format!("bad stored expected nodes: {e}")))?,
        });
    }
    Ok(out)
}

fn read_answers(conn: &Connection, ids: &[String]) -> Result<Vec<LedgerAnswer>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT request_id, node, plugin, error, at, stale FROM request_answers WHERE request_id = ?1",
        )
        .map_err(sql_err)?;
    let mut out = Vec::new();
    for id in ids {
        let rows = stmt
            .query_map(params![id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })
            .map_err(sql_err)?;
        for row in rows {
            let (request_id, node, plugin, error, at, stale) = row.map_err(sql_err)?;
            out.push(LedgerAnswer {
                request_id,
                node,
                plugin,
                error,
                stale,
                at: parse_time(&at)?,
            });
        }
    }
    Ok(out)
}

impl SqliteStore {
    /// History across the fleet from `since`, with `new` read through the SQL expression given.
    async fn changes_with(
        &self,
        new: &'static str,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let since = rfc3339(since);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reader
            .call(move |conn| {
                history_rows(
                    conn,
                    &format!(
                        "SELECT node, key, old, {new}, at, id FROM (
                       SELECT h.id, h.node, h.key, h.old, {RESOLVED_NEW} AS new, h.at FROM history h
                       WHERE h.at >= ?1 ORDER BY h.at, h.id LIMIT ?2)
                     ORDER BY at, id"
                    ),
                    params![since, limit],
                )
            })
            .await
    }
}

/// Every node's value at a path under one key (`?1` the key, `?2` the JSON path). The
/// path is walked once per row; missing ones are dropped by the caller. Text SQLite
/// cannot parse is not walked (`->` would fail the whole query) but flagged, to be
/// skipped and counted.
const READ_KEY_VALUES: &str =
    "SELECT node, CASE WHEN json_valid(value) THEN value -> ?2 END, json_valid(value)
     FROM node_keys WHERE key = ?1
     UNION ALL
     SELECT name, CASE WHEN json_valid(last_error) THEN last_error -> ?2 END, json_valid(last_error)
     FROM nodes WHERE ?1 = 'last_error' AND last_error IS NOT NULL
     ORDER BY 1";

/// Each node's value at `path`: SQLite walks object members (`->`), Rust finishes
/// array steps so both read the path the same way.
fn read_key_values(conn: &Connection, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError> {
    // Object steps up to the first all-digit one go to SQLite; the rest is walked here.
    let split = path
        .rest()
        .iter()
        .position(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(path.rest().len());
    let (sql_steps, rust_steps) = path.rest().split_at(split);
    let mut json_path = String::from("$");
    for s in sql_steps {
        json_path.push_str(".\"");
        json_path.push_str(&s.replace('"', "\\\""));
        json_path.push('"');
    }
    let mut stmt = conn.prepare_cached(READ_KEY_VALUES).map_err(sql_err)?;
    let rows = stmt
        .query_map(params![path.root(), json_path], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })
        .map_err(sql_err)?;
    let mut out = Rows::default();
    for row in rows {
        let (node, text, valid) = row.map_err(sql_err)?;
        if !valid {
            out.skip(
                &node,
                path.root(),
                None,
                "bad stored JSON: the text does not parse",
            );
            continue;
        }
        let Some(text) = text else { continue };
        match parse_json(&text) {
            Ok(v) => {
                if let Some(v) = crate::query::lookup(&v, rust_steps) {
                    out.rows.push((node, v.clone()));
                }
            }
            Err(e) => out.skip(&node, path.root(), None, e),
        }
    }
    Ok(out)
}

/// A package report's one statement: `?1` the package, `?2` a plugin or `NULL`.
const READ_PACKAGES: &str = "SELECT node, plugin, version FROM packages
             WHERE name = ?1 AND (?2 IS NULL OR plugin = ?2)
             UNION ALL
             SELECT node, plugin, NULL FROM packages_unreadable WHERE ?2 IS NULL OR plugin = ?2
             ORDER BY 1, 2";

/// Nodes with package `name` in a package plugin's list (`only` that plugin's), by
/// node and plugin, and the package lists that did not read back (skipped, as
/// [`read_key_values`] skips them).
fn read_packages(
    conn: &Connection,
    name: &str,
    only: Option<&str>,
) -> Result<Rows<(String, String, Value)>, StoreError> {
    let mut stmt = conn.prepare_cached(READ_PACKAGES).map_err(sql_err)?;
    let rows = stmt
        .query_map(params![name, only], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(sql_err)?;
    let mut out = Rows::default();
    for row in rows {
        let (node, plugin, version) = row.map_err(sql_err)?;
        let Some(version) = version else {
            out.skip(
                &node,
                &plugin,
                None,
                "bad stored JSON: the text does not parse",
            );
            continue;
        };
        match parse_json(&version) {
            Ok(v) => out.rows.push((node, plugin, v)),
            Err(e) => out.skip(&node, &plugin, None, e),
        }
    }
    Ok(out)
}

/// Replaces one node's rows with an imported record and its history.
fn import_node(
    conn: &mut Connection,
    rec: &NodeRecord,
    history: &[HistoryEntry],
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(sql_err)?;
    for sql in [
        "DELETE FROM nodes WHERE name = ?1",
        "DELETE FROM node_keys WHERE node = ?1",
        "DELETE FROM history WHERE node = ?1",
    ] {
        tx.execute(sql, params![rec.name]).map_err(sql_err)?;
    }
    let error_at = rec
        .last_error
        .as_ref()
        .and_then(|e| e.get("at"))
        .and_then(Value::as_str)
        .map(str::to_string);
    tx.execute(
        "INSERT INTO nodes (name, created_at, updated_at, last_seen, last_error, last_error_at, deactivated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            rec.name,
            rfc3339(rec.created_at),
            rfc3339(rec.updated_at),
            rfc3339(rec.last_seen),
            rec.last_error.as_ref().map(Value::to_string),
            error_at,
            rec.deactivated_at.map(rfc3339),
        ],
    )
    .map_err(sql_err)?;
    for (k, v) in &rec.keys {
        let at = rec.keys_collected.get(k).copied().unwrap_or(rec.updated_at);
        tx.execute(
            "INSERT INTO node_keys (node, key, value, collected_at) VALUES (?1, ?2, ?3, ?4)",
            params![rec.name, k, v.to_string(), rfc3339(at)],
        )
        .map_err(sql_err)?;
    }
    for h in history {
        record_history(
            &tx,
            &rec.name,
            &h.key,
            h.old.as_ref().map(Value::to_string),
            h.new.as_ref().map(Value::to_string),
            &rfc3339(h.at),
        )?;
    }
    tx.commit().map_err(sql_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query that counts to ten billion: minutes of work unless it is stopped.
    const ENDLESS: &str = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 10000000000) SELECT count(*) FROM c";

    /// The plan SQLite picks for `sql`, one step a line.
    fn plan(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let rows = stmt
            .query_map(args, |r| r.get::<_, String>(3))
            .expect("plan");
        rows.map(|r| r.expect("step"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn fleet_wide_reads_use_an_index_range_and_older_files_get_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.db");
        // A file as an earlier version left it: the package index without versions.
        {
            drop(SqliteStore::open(&path).expect("open"));
            let conn = Connection::open(&path).expect("conn");
            conn.execute_batch(
                "DROP INDEX packages_by_name; CREATE INDEX packages_name ON packages (name, node);",
            )
            .expect("old index");
        }
        drop(SqliteStore::open(&path).expect("reopen"));
        let conn = Connection::open(&path).expect("conn");
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'packages'",
            )
            .expect("indexes")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect();
        assert_eq!(indexes, ["packages_by_name"]);
        for only in [None, Some("dpkg")] {
            let plan = plan(&conn, READ_PACKAGES, params!["openssl", only]);
            assert!(
                plan.contains("USING COVERING INDEX packages_by_name (name=?)"),
                "{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "a sort per report: {plan}");
        }
        // One key's values read that key's rows only, already in node order.
        let values = plan(&conn, READ_KEY_VALUES, params!["facter", "$.\"os\""]);
        assert!(
            values.contains("USING INDEX node_keys_by_key (key=?)"),
            "{values}"
        );
        assert!(!values.contains("TEMP B-TREE"), "a sort per read: {values}");
        let any = plan(&conn, ANY_DEACTIVATED, params![]);
        assert!(any.contains("INDEX nodes_deactivated"), "{any}");
    }

    #[tokio::test]
    async fn a_query_past_its_time_limit_is_stopped_and_writes_never_wait_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("v.db")).expect("open");
        let slow = store.reader.call(|conn| {
            conn.query_row(ENDLESS, [], |r| r.get::<_, i64>(0))
                .map_err(sql_err)
        });
        let limit = std::time::Duration::from_millis(200);
        let answer = crate::within(limit, "the endless query", slow).await;
        assert!(
            matches!(answer, Err(StoreError::TimedOut { .. })),
            "{answer:?}"
        );

        // The query thread is free again: the next question is answered (were the
        // endless query still running, this would wait for minutes, not a second).
        let margin = std::time::Duration::from_secs(20);
        let nodes = crate::within(margin, "the next query", store.nodes()).await;
        assert!(matches!(nodes, Ok(ref n) if n.is_empty()), "{nodes:?}");

        // A write while a long query runs goes through on the writer's own thread.
        let running = store.reader.call(|conn| {
            conn.query_row(ENDLESS, [], |r| r.get::<_, i64>(0))
                .map_err(sql_err)
        });
        let batch: crate::Batch = vec![Observation {
            node: "web01".into(),
            at: Utc::now(),
            change: Change::Seen,
        }]
        .into();
        let written = tokio::select! {
            w = crate::within(margin, "a write beside a long query", store.apply(batch)) => w,
            _ = running => panic!("the endless query ended"),
        };
        assert!(written.is_ok(), "{written:?}");
    }
}
