//! Record stores: one document per node, behind one [`Store`] contract.
//!
//! The server hands a batch of [`Observation`]s to [`Store::apply`]; the backend
//! commits the whole batch or nothing, so the caller may ack the batch's messages
//! only after `apply` returned `Ok`. Backends are chosen by DSN scheme in [`open`].

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "couch")]
pub mod couch;
pub mod ledger;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod query;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "conformance")]
pub mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use ledger::{Ledger, LedgerAnswer, LedgerRequest, NodeOutcome, RequestState};
pub use query::{Condition, Expr, KeyPath, Query, Span};

/// The document key where the server records the signature verdict on a node's latest
/// result: `{"verified": true, "key_id": …}` or `{"verified": false, "reason": …, "plugin": …}`.
/// Written by the server only; a result claiming this name (or [`signature_key`]'s) is refused.
pub const SIGNATURE_KEY: &str = "signature";

/// The key beside plugin `plugin` holding the verdict on its own latest result
/// (`signature.facter`), so one key's provenance never hides another's. A plain key
/// (quoted in paths: `"signature.facter".verified`), so every backend and the 2010
/// document read it as any other.
pub fn signature_key(plugin: &str) -> String {
    format!("{SIGNATURE_KEY}.{plugin}")
}

/// Whether `name` is one of the server's signature keys, which no plugin may use.
pub fn is_signature_key(name: &str) -> bool {
    name == SIGNATURE_KEY
        || name
            .strip_prefix(SIGNATURE_KEY)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Fields every node document carries; a plugin may not use one of these names.
pub const RESERVED_KEYS: &[&str] = &[
    "_id",
    "_rev",
    "doc_type",
    "system_name",
    "created_at",
    "updated_at",
    "last_seen",
    "last_error",
    "deactivated_at",
];

/// The field where the CouchDB backend keeps its own bookkeeping in each document (when
/// each key was collected). Refused as a plugin name on every backend, not only CouchDB,
/// so the same results are stored everywhere and records migrate between backends.
pub const STORE_META_KEY: &str = "vogeler_meta";

/// Whether `name` may not be used as a plugin key in a node document: a document field,
/// a name starting with `_` (CouchDB's own), or [`STORE_META_KEY`].
pub fn is_reserved_key(name: &str) -> bool {
    name.starts_with('_') || RESERVED_KEYS.contains(&name) || name == STORE_META_KEY
}

/// One thing the server learned about a node, in the order it learned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Node name (the document id).
    pub node: String,
    /// When the node produced it (`collected_at`); an older observation never
    /// overwrites a newer stored value of the same key.
    pub at: DateTime<Utc>,
    /// What was observed.
    pub change: Change,
}

/// A plugin's converted output: a parsed tree, or the JSON text it arrived in.
///
/// The server's hot path never builds a tree: a result's `data` goes from the wire to
/// SQLite as text (parsing a facter result into a tree, dropping it and writing it
/// back out was most of the server's CPU). Backends that need a tree ask for one.
/// v1 clients send canonical JSON (compact, keys sorted), so equal values arrive as
/// equal text and SQLite compares text.
#[derive(Debug, Clone)]
pub enum Data {
    /// Already a tree (converted by a result format, or built in code).
    Tree(Value),
    /// Valid JSON text, as received.
    Text(Box<serde_json::value::RawValue>),
}

impl Data {
    /// The JSON text (compact when it was a tree).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Data::Tree(v) => std::borrow::Cow::Owned(v.to_string()),
            Data::Text(t) => std::borrow::Cow::Borrowed(t.get()),
        }
    }

    /// The tree (parsed when it was text).
    pub fn tree(&self) -> Result<std::borrow::Cow<'_, Value>, StoreError> {
        match self {
            Data::Tree(v) => Ok(std::borrow::Cow::Borrowed(v)),
            Data::Text(t) => serde_json::from_str(t.get())
                .map(std::borrow::Cow::Owned)
                .map_err(|e| StoreError::Invalid(format!("plugin data is not JSON: {e}"))),
        }
    }
}

impl From<Value> for Data {
    fn from(v: Value) -> Data {
        Data::Tree(v)
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        match (self, other) {
            (Data::Text(a), Data::Text(b)) if a.get() == b.get() => true,
            _ => match (self.tree(), other.tree()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
        }
    }
}

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Tree(v) => v.serialize(s),
            Data::Text(t) => t.serialize(s),
        }
    }
}

/// What an [`Observation`] says.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A plugin's result, already converted to JSON by its result format.
    Plugin {
        /// Plugin name: the document key.
        name: String,
        /// The converted value.
        value: Data,
        /// False for a volatile plugin (`history = false`): only the current value is
        /// kept, with no history rows and no entries in `changes` for this key.
        history: bool,
    },
    /// An error result: becomes the document's `last_error`, until a later good
    /// result of the same plugin clears it (the error stays in history).
    Error {
        /// The plugin that failed, when known.
        plugin: Option<String>,
        /// What went wrong, in the client's words.
        message: String,
        /// Raw plugin output kept beside the error (a format that did not parse).
        raw: Option<String>,
    },
    /// A heartbeat or pong: only `last_seen` moves.
    Seen,
}

/// What [`Store::apply`] did with one observation, index for index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node had no document; one was created with this observation.
    Created,
    /// The document's content changed.
    Updated,
    /// Same value as stored (a redelivery or an unchanged result): only `last_seen` moved.
    Unchanged,
    /// Older than the stored value of that key: ignored, only `last_seen` moved.
    Stale,
    /// Refused (for example a reserved key name); the reason says why.
    Refused(String),
}

/// A node's whole document as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// First time any message from the node was stored.
    pub created_at: DateTime<Utc>,
    /// Last time the content changed.
    pub updated_at: DateTime<Utc>,
    /// Last time any message from the node arrived.
    pub last_seen: DateTime<Utc>,
    /// The last error result: `{"plugin", "message", "at", "raw"?}`.
    pub last_error: Option<Value>,
    /// When the node was deactivated (`vogeler-admin node NAME --deactivate`, `prune
    /// --inactive-for`): left out of the fleet, its record and history kept; its next
    /// result clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<DateTime<Utc>>,
    /// One key per plugin name.
    pub keys: BTreeMap<String, Value>,
    /// When each key's value was collected (the stale-result guard); carried so a
    /// migrated store keeps refusing results older than what it holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys_collected: BTreeMap<String, DateTime<Utc>>,
    /// Keys (and history rows, for a record rewound in time) that are stored but do not
    /// read back: left out of `keys`, listed here so views can say so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Unreadable>,
}

impl NodeRecord {
    /// The record as the flat JSON document users see (and CouchDB stores):
    /// `system_name`, `doc_type: "SystemRecord"`, the times, `last_error` and one key per plugin.
    pub fn document(&self) -> Value {
        let mut doc = serde_json::Map::new();
        doc.insert("system_name".into(), Value::String(self.name.clone()));
        doc.insert("doc_type".into(), Value::String("SystemRecord".into()));
        doc.insert("created_at".into(), Value::String(rfc3339(self.created_at)));
        doc.insert("updated_at".into(), Value::String(rfc3339(self.updated_at)));
        doc.insert("last_seen".into(), Value::String(rfc3339(self.last_seen)));
        doc.insert(
            "last_error".into(),
            self.last_error.clone().unwrap_or(Value::Null),
        );
        if let Some(t) = self.deactivated_at {
            doc.insert("deactivated_at".into(), Value::String(rfc3339(t)));
        }
        for (k, v) in &self.keys {
            doc.insert(k.clone(), v.clone());
        }
        Value::Object(doc)
    }
}

/// The `last_error` value every backend stores for an error result:
/// `{"plugin", "message", "at", "raw"?}`. The message and the raw output are each cut
/// to [`MAX_LAST_ERROR_BYTES`] (at a character boundary, marked), so a plugin printing
/// megabytes of garbage leaves a few kilobytes in the record, on every backend.
///
/// [`MAX_LAST_ERROR_BYTES`]: vogeler_protocol::limits::MAX_LAST_ERROR_BYTES
pub fn last_error_value(
    plugin: &Option<String>,
    message: &str,
    raw: &Option<String>,
    at: DateTime<Utc>,
) -> Value {
    let mut e = serde_json::Map::new();
    e.insert(
        "plugin".into(),
        plugin.clone().map(Value::String).unwrap_or(Value::Null),
    );
    let bounded = |s: &str| {
        vogeler_protocol::limits::bounded(s, vogeler_protocol::limits::MAX_LAST_ERROR_BYTES)
            .into_owned()
    };
    e.insert("message".into(), Value::String(bounded(message)));
    e.insert("at".into(), Value::String(rfc3339(at)));
    if let Some(raw) = raw {
        e.insert("raw".into(), Value::String(bounded(raw)));
    }
    Value::Object(e)
}

/// Times in documents: RFC 3339, UTC, microseconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One line of the node list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node name.
    pub name: String,
    /// Last time any message from the node arrived.
    pub last_seen: DateTime<Utc>,
    /// First time any message from the node was stored: carried so a filter on
    /// `created_at` never reads whole records.
    #[serde(default)]
    pub created_at: DateTime<Utc>,
    /// Last time the content changed (for `updated_at` filters, as `created_at`).
    #[serde(default)]
    pub updated_at: DateTime<Utc>,
    /// Plugin keys present in the document, sorted.
    pub plugins: Vec<String>,
    /// The last error message, if any.
    pub last_error: Option<String>,
    /// When the node was deactivated, if it is (see [`NodeRecord::deactivated_at`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<DateTime<Utc>>,
}

/// One recorded change of one key of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Node name.
    pub node: String,
    /// Plugin key (or `last_error`).
    pub key: String,
    /// Value before the change; `None` when the key first appeared.
    pub old: Option<Value>,
    /// Value after the change.
    pub new: Option<Value>,
    /// When the change was observed (the observation's `at`).
    pub at: DateTime<Utc>,
}

/// A stored row that does not read back: JSON text that no longer parses, a number
/// outside what a reader accepts, nesting deeper than the parser's limit. Rows like these
/// were written by earlier versions (before decode validated every value) or by hand;
/// reads skip them and say so instead of failing a whole view, and `vogeler-admin check`
/// lists and quarantines them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    /// The node whose row it is.
    pub node: String,
    /// The plugin key, or `last_error`.
    pub key: String,
    /// For a history row: its id in the backend (SQL row id, CouchDB document id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
    /// Why it does not read back, in the parser's words.
    pub why: String,
}

impl Unreadable {
    /// A current value (not a history row) of `node`'s `key` that did not read back.
    pub fn current(node: &str, key: &str, why: impl std::fmt::Display) -> Unreadable {
        Unreadable {
            node: node.to_string(),
            key: key.to_string(),
            history: None,
            why: why.to_string(),
        }
    }
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.history {
            Some(id) => write!(
                f,
                "node {} key {} (history row {id}): {}",
                self.node, self.key, self.why
            ),
            None => write!(f, "node {} key {}: {}", self.node, self.key, self.why),
        }
    }
}

/// What a [`Query`] selected: positions in the shared node list it was judged on,
/// in the list's (name) order, and the stored rows that did not read back.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The node list the positions point into.
    pub nodes: Arc<Vec<NodeSummary>>,
    /// Positions in `nodes` of the selected nodes, ascending.
    pub picked: Vec<usize>,
    /// Rows that did not read back while judging.
    pub skipped: Vec<Unreadable>,
}

/// Runs CPU-bound filter work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Invalid(format!("filter failed: {e}")))
}

/// What a read returns: the rows that read back, and the ones it skipped.
///
/// One bad row never fails a fleet view: backends put what they cannot read into
/// `skipped`, and every view (reports, web pages, the JSON API, migrate, discovery)
/// passes the count on to its reader ([`skipped_notice`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<T> {
    /// The rows that read back, in the order the call promises.
    pub rows: Vec<T>,
    /// The rows that did not.
    pub skipped: Vec<Unreadable>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Rows {
            rows: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

impl<T> From<Vec<T>> for Rows<T> {
    fn from(rows: Vec<T>) -> Self {
        Rows {
            rows,
            skipped: Vec::new(),
        }
    }
}

impl<T> Rows<T> {
    /// Records a row that did not read back.
    pub fn skip(&mut self, node: &str, key: &str, history: Option<String>, why: impl ToString) {
        self.skipped.push(Unreadable {
            node: node.to_string(),
            key: key.to_string(),
            history,
            why: why.to_string(),
        });
    }

    /// Takes another read's rows, keeping its skipped rows with these.
    pub fn absorb<U>(&mut self, other: Rows<U>) -> Vec<U> {
        self.skipped.extend(other.skipped);
        other.rows
    }

    /// The same skipped rows over rows made by `f`.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Rows<U> {
        Rows {
            rows: self.rows.into_iter().map(f).collect(),
            skipped: self.skipped,
        }
    }

    /// What a view says about the skipped rows, if any (see [`skipped_notice`]).
    pub fn notice(&self) -> Option<String> {
        skipped_notice(self.skipped.len())
    }
}

/// The one sentence every view prints when it skipped unreadable rows:
/// `1 unreadable row skipped (run vogeler-admin check)`; `None` for none.
pub fn skipped_notice(count: usize) -> Option<String> {
    match count {
        0 => None,
        1 => Some("1 unreadable row skipped (run vogeler-admin check)".into()),
        n => Some(format!(
            "{n} unreadable rows skipped (run vogeler-admin check)"
        )),
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or failed mid-call: retry later.
    #[error("{backend} store unavailable: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// What the backend said.
        message: String,
    },
    /// The backend is compiled out of this build.
    #[error("store backend {0} is not compiled into this build (cargo feature `{0}`)")]
    NotCompiled(&'static str),
    /// A request the store cannot serve (bad query, bad path).
    #[error("{0}")]
    Invalid(String),
    /// A query ran past its time limit (web, admin and discovery queries have one, so
    /// a heavy question ends in a clear error instead of a stall).
    #[error("{what} took longer than its time limit of {limit:?} (narrow the question, or raise query_timeout)")]
    TimedOut {
        /// What was asked.
        what: String,
        /// The limit it ran past.
        limit: std::time::Duration,
    },
    /// A store call panicked (a bug, or a value the code did not expect); the server
    /// catches it and dead-letters the message with reason `panic`.
    #[error("the store call panicked: {0}")]
    Panicked(String),
    /// The store does not exist yet (no SQLite file, no PostgreSQL database or tables,
    /// an older schema): read-only commands never create or migrate one.
    #[error("{0}; create it with `vogeler-admin setup --persistence`")]
    NotSetUp(String),
    /// Anything else the backend reported.
    #[error("{backend} store error: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What the backend said.
        message: String,
    },
}

impl StoreError {
    /// The store could not be reached or failed mid-call: the caller retries.
    pub fn unavailable(backend: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            backend,
            message: e.to_string(),
        }
    }

    /// The backend refused or failed in a way a retry will not fix.
    pub fn backend(backend: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            backend,
            message: e.to_string(),
        }
    }
}

/// Runs a query under a time limit: past `limit` it ends with [`StoreError::TimedOut`]
/// naming `what` (web, admin and discovery queries use it, so a heavy question is a
/// clear error, never a stall). Generic over the caller's error type (`anyhow`, the
/// web's API error) so every caller writes it once.
pub async fn within<T, E: From<StoreError>>(
    limit: std::time::Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::TimedOut {
            what: what.to_string(),
            limit,
        }
        .into()),
    }
}

/// The contract every backend fulfils; the conformance suite checks it on each.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name for logs and metrics (`sqlite`, `postgres`, `couch`).
    fn backend(&self) -> &'static str;

    /// How many batches the server may have in `apply` at once. A store with one writer
    /// (SQLite) gains nothing from more; a database server works on one batch while
    /// another waits for its commit to reach the disk. The server never gives two
    /// batches that share a node to the store at once, so each node's results are
    /// still applied in the order they arrived.
    fn write_concurrency(&self) -> usize {
        1
    }

    /// Applies a batch in order. SQLite and PostgreSQL commit all of it or none;
    /// CouchDB (no multi-document transactions) commits node by node, so a failed call
    /// may have stored part of it. Either way an `Ok` means all of it is stored, and a
    /// retry of the same batch is harmless: what is already stored comes back `Unchanged`.
    async fn apply(&self, batch: Batch) -> Result<Vec<Outcome>, StoreError>;

    /// One node's document.
    async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;

    /// Every node, sorted by name.
    async fn nodes(&self) -> Result<Vec<NodeSummary>, StoreError>;

    /// Recorded changes of a node, oldest first; only those of `key` when given.
    async fn history(
        &self,
        node: &str,
        key: Option<&str>,
    ) -> Result<Rows<HistoryEntry>, StoreError>;

    /// Cheap round trip proving the store answers.
    async fn health(&self) -> Result<(), StoreError>;

    /// Clears a node's `last_error` (`vogeler-admin node NAME --clear-error`), keeping
    /// the error in history; `Ok(false)` when the node has none (or is unknown). A good
    /// result of the failed plugin clears it in `apply` the same way.
    async fn clear_error(&self, node: &str) -> Result<bool, StoreError>;

    /// Each node's value of plugin key `path.root()` (or of `last_error`) walked down
    /// `path.rest()`, sorted by node; nodes without it are left out. Backends push the
    /// walk down where they can.
    async fn key_values(&self, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError>;

    /// Changes across the fleet observed at or after `since`, oldest first, at most `limit`.
    async fn changes(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError>;

    /// Deletes history observed before `before` (retention); returns how many entries went.
    async fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Deletes a node's record and its history for good (`vogeler-admin node NAME
    /// --delete`: a host that is gone); the request ledger keeps what it answered.
    /// False when no such node is stored. Its next result starts a new record.
    async fn delete_node(&self, name: &str) -> Result<bool, StoreError>;

    /// Marks a node deactivated at `at` (`vogeler-admin node NAME --deactivate`): out of
    /// the fleet views, discovery and broadcast expectations, its record and history
    /// kept; its next plugin or error result reactivates it (in `apply`, in the same
    /// transaction). An already deactivated node keeps its first time. False when no
    /// such node is stored.
    async fn deactivate_node(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Deactivates (at `at`) every active node not seen since `since` (`vogeler-admin
    /// prune --inactive-for`); returns how many it deactivated. A node seen meanwhile
    /// is left active.
    async fn deactivate_inactive(
        &self,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Whether any stored node is deactivated. A report over the whole fleet asks this
    /// first: when every node is active (the usual case) it needs no node list at all,
    /// which at 100,000 nodes is most of a package report's time on PostgreSQL.
    async fn any_deactivated(&self) -> Result<bool, StoreError> {
        Ok(self
            .nodes()
            .await?
            .iter()
            .any(|n| n.deactivated_at.is_some()))
    }

    /// Replaces a node's record and history with the given ones (migration between
    /// stores); a second import of the same node leaves one copy.
    async fn import(&self, record: &NodeRecord, history: &[HistoryEntry])
        -> Result<(), StoreError>;

    /// Records announced requests and stored answers (the request ledger). Idempotent
    /// and order-free: a request or answer already recorded is kept as it is, and an
    /// answer may arrive before its request.
    async fn record_ledger(
        &self,
        requests: &[LedgerRequest],
        answers: &[LedgerAnswer],
    ) -> Result<(), StoreError>;

    /// The most recently sent requests, newest first, at most `limit`.
    async fn ledger_requests(&self, limit: usize) -> Result<Vec<LedgerRequest>, StoreError>;

    /// One recorded request.
    async fn ledger_request(&self, id: &str) -> Result<Option<LedgerRequest>, StoreError>;

    /// The answers recorded for these requests, in any order.
    async fn ledger_answers(&self, ids: &[String]) -> Result<Vec<LedgerAnswer>, StoreError>;

    /// Recent requests with what became of them at `now` (see [`Ledger::build`]).
    async fn ledgers(&self, limit: usize, now: DateTime<Utc>) -> Result<Vec<Ledger>, StoreError> {
        let requests = self.ledger_requests(limit).await?;
        let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
        let answers = self.ledger_answers(&ids).await?;
        Ok(requests
            .into_iter()
            .map(|r| Ledger::build(r, &answers, now))
            .collect())
    }

    /// One request with what became of each node at `now`; `None` when unknown.
    async fn ledger(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Ledger>, StoreError> {
        let Some(request) = self.ledger_request(id).await? else {
            return Ok(None);
        };
        let answers = self.ledger_answers(&[id.to_string()]).await?;
        Ok(Some(Ledger::build(request, &answers, now)))
    }

    /// Each node's value at `path`, sorted by node. Plugin keys go to
    /// [`Store::key_values`]; document fields (`system_name`, `last_seen`, `created_at`,
    /// `updated_at`, `doc_type`) are answered from the node list, never from whole records.
    async fn values(&self, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError> {
        if !is_reserved_key(path.root()) || path.root() == "last_error" {
            return self.key_values(path).await;
        }
        let mut out = Vec::new();
        for n in self.nodes().await? {
            let field = match path.root() {
                "system_name" | "_id" => Value::String(n.name.clone()),
                "last_seen" => Value::String(rfc3339(n.last_seen)),
                "created_at" => Value::String(rfc3339(n.created_at)),
                "updated_at" => Value::String(rfc3339(n.updated_at)),
                "doc_type" => Value::String("SystemRecord".into()),
                "deactivated_at" => match n.deactivated_at {
                    Some(t) => Value::String(rfc3339(t)),
                    None => continue,
                },
                _ => continue,
            };
            if let Some(v) = path.lookup(&field) {
                if !v.is_null() {
                    out.push((n.name, v.clone()));
                }
            }
        }
        Ok(out.into())
    }

    /// The node list behind an `Arc`: a caching store hands out its one copy, so a
    /// page of 100 out of 100,000 nodes never copies the other 99,900.
    async fn nodes_shared(&self) -> Result<Arc<Vec<NodeSummary>>, StoreError> {
        Ok(Arc::new(self.nodes().await?))
    }

    /// [`Store::key_values`] behind an `Arc`, for the same reason as
    /// [`Store::nodes_shared`].
    async fn key_values_shared(
        &self,
        path: &KeyPath,
    ) -> Result<Arc<Rows<(String, Value)>>, StoreError> {
        Ok(Arc::new(self.key_values(path).await?))
    }

    /// [`Store::values`] behind an `Arc` (plugin keys through
    /// [`Store::key_values_shared`]).
    async fn values_shared(
        &self,
        path: &KeyPath,
    ) -> Result<Arc<Rows<(String, Value)>>, StoreError> {
        if !is_reserved_key(path.root()) || path.root() == "last_error" {
            return self.key_values_shared(path).await;
        }
        Ok(Arc::new(self.values(path).await?))
    }

    /// The nodes a [`Query`] selects, as positions in the shared node list (sorted by
    /// name), so a web page sorts and cuts positions and copies only what it shows.
    /// Conditions are tested on a blocking thread: a heavy regular expression over a
    /// large fleet must not hold an async worker (and with it the tasks that share it).
    async fn select_shared(&self, query: &Query) -> Result<Selection, StoreError> {
        let names = query.name_matcher()?;
        let nodes = self.nodes_shared().await?;
        let mut skipped = Vec::new();
        let mut picked: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| query.admits(n, names.as_ref()))
            .map(|(i, _)| i)
            .collect();
        for c in &query.conditions {
            if picked.is_empty() {
                break;
            }
            let values = self.values_shared(&c.path).await?;
            skipped.extend(values.skipped.iter().cloned());
            let (c, all) = (c.clone(), nodes.clone());
            picked = blocking(move || {
                let passing: std::collections::HashSet<&str> = values
                    .rows
                    .iter()
                    .filter(|(_, v)| c.test(Some(v)))
                    .map(|(n, _)| n.as_str())
                    .collect();
                picked.retain(|&i| passing.contains(all[i].name.as_str()));
                picked
            })
            .await?;
        }
        if !query.expressions.is_empty() && !picked.is_empty() {
            // Each path any expression reads, asked once; then each node is judged on a
            // blocking thread, with `None` for a path it lacks (so `not` can hold).
            let mut by_path: HashMap<KeyPath, Arc<Rows<(String, Value)>>> = HashMap::new();
            for e in &query.expressions {
                for path in e.paths() {
                    if !by_path.contains_key(path) {
                        let values = self.values_shared(path).await?;
                        skipped.extend(values.skipped.iter().cloned());
                        by_path.insert(path.clone(), values);
                    }
                }
            }
            let (exprs, all) = (query.expressions.clone(), nodes.clone());
            picked = blocking(move || {
                let index: HashMap<&KeyPath, HashMap<&str, &Value>> = by_path
                    .iter()
                    .map(|(p, rows)| (p, rows.rows.iter().map(|(n, v)| (n.as_str(), v)).collect()))
                    .collect();
                picked.retain(|&i| {
                    let node = all[i].name.as_str();
                    let value_at =
                        |p: &KeyPath| index.get(p).and_then(|m| m.get(node)).map(|v| (*v).clone());
                    exprs.iter().all(|e| e.eval(&value_at))
                });
                picked
            })
            .await?;
        }
        Ok(Selection {
            nodes,
            picked,
            skipped,
        })
    }

    /// The nodes a [`Query`] selects, sorted by name (see [`Store::select_shared`]).
    async fn select(&self, query: &Query) -> Result<Rows<NodeSummary>, StoreError> {
        let s = self.select_shared(query).await?;
        Ok(Rows {
            rows: s.picked.iter().map(|&i| s.nodes[i].clone()).collect(),
            skipped: s.skipped,
        })
    }

    /// Nodes that have package `name` installed, with its version, from every package
    /// plugin key (`dpkg`, `rpm`): `(node, plugin, version)` sorted by node.
    async fn packages(&self, name: &str) -> Result<Rows<(String, String, Value)>, StoreError> {
        let mut out = Rows::default();
        for plugin in PACKAGE_KEYS {
            let path = KeyPath::from_segments(vec![plugin.to_string(), name.to_string()])?;
            for (node, version) in out.absorb(self.key_values(&path).await?) {
                out.rows.push((node, plugin.to_string(), version));
            }
        }
        out.rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        Ok(out)
    }

    /// A node's record as it was at `at` (see [`query::rewind`]); `None` when the node
    /// is unknown or did not exist yet. History rows that do not read back are listed
    /// in the record's `unreadable`.
    async fn record_at(
        &self,
        node: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let Some(current) = self.node(node).await? else {
            return Ok(None);
        };
        let history = self.history(node, None).await?;
        Ok(query::rewind(current, &history.rows, at).map(|mut r| {
            r.unreadable.extend(history.skipped);
            r
        }))
    }

    /// [`Store::changes`] for reports: a key's first appearance (no old value) carries
    /// an outline of its value (`"(added: 112 keys)"`, see [`query::outline`]) instead of
    /// the value, which can be tens of kilobytes. Backends compute the outline in the
    /// database where they can.
    async fn change_outlines(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let mut entries = self.changes(since, limit).await?;
        for e in &mut entries.rows {
            if e.old.is_none() {
                e.new = e.new.as_ref().map(|v| query::outline(v, "added"));
            }
        }
        Ok(entries)
    }

    /// The values `path` took on `node` over time (see [`query::timeline`]).
    async fn timeline(&self, node: &str, path: &KeyPath) -> Result<Rows<Span>, StoreError> {
        let history = self.history(node, Some(path.root())).await?;
        Ok(Rows {
            rows: query::timeline(path, &history.rows),
            skipped: history.skipped,
        })
    }

    /// Every stored row that does not read back, across the whole store (what
    /// `vogeler-admin check` lists and the server logs at start). Built from the reads
    /// themselves, so it finds exactly what views skip.
    async fn check(&self) -> Result<Vec<Unreadable>, StoreError> {
        check_nodes(self).await
    }

    /// Moves unreadable rows aside (kept for inspection, out of every view); returns how
    /// many moved. Backends that cannot refuse with [`StoreError::Invalid`].
    async fn quarantine(&self, rows: &[Unreadable]) -> Result<u64, StoreError> {
        let _ = rows;
        Err(StoreError::Invalid(format!(
            "the {} store cannot quarantine rows; fix them by hand",
            self.backend()
        )))
    }
}

/// What [`Store::check`] finds through the reads themselves: each listed node's
/// unreadable current values and history rows. Backends that can also hold rows no
/// read reaches (a CouchDB document that does not parse) add those to it.
pub async fn check_nodes<S: Store + ?Sized>(store: &S) -> Result<Vec<Unreadable>, StoreError> {
    let mut out = Vec::new();
    for n in store.nodes().await? {
        if let Some(rec) = store.node(&n.name).await? {
            out.extend(rec.unreadable);
        }
        out.extend(store.history(&n.name, None).await?.skipped);
    }
    Ok(out)
}

/// Plugin keys whose value maps package names to versions.
pub const PACKAGE_KEYS: &[&str] = &["dpkg", "rpm"];

/// `(plugin, package)` when `path` names one package in a package plugin's list
/// (`dpkg.openssl`), which a backend with a package index answers from it. A step of
/// digits is left to the path walk: on a list that is not an object it is an index.
pub fn package_member(path: &KeyPath) -> Option<(&str, &str)> {
    match path.rest() {
        [name]
            if PACKAGE_KEYS.contains(&path.root()) && !name.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some((path.root(), name.as_str()))
        }
        _ => None,
    }
}

/// A batch of observations, shared rather than copied: the server keeps its batch
/// for a retry while the store works on it (results are kilobytes of JSON each).
pub type Batch = Arc<[Observation]>;

/// An error with its causes, `outer: inner: innermost`: drivers often say only "error
/// performing TLS handshake" and keep the reason (an untrusted certificate) in the chain.
#[allow(dead_code)] // unused when every backend is compiled out
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// A shareable store handle.
pub type DynStore = Arc<dyn Store>;

/// Opens the store a DSN names, by scheme. A backend compiled out of this build is
/// refused with [`StoreError::NotCompiled`], never a panic.
pub async fn open(dsn: &vogeler_config::StoreDsn) -> Result<DynStore, StoreError> {
    // Unused when every backend is compiled out (the client package builds that way).
    #[allow(unused_imports)]
    use vogeler_config::StoreDsn;
    match dsn {
        #[cfg(feature = "sqlite")]
        StoreDsn::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path)?)),
        #[cfg(feature = "postgres")]
        StoreDsn::Postgres { url } => Ok(Arc::new(postgres::PostgresStore::connect(url).await?)),
        #[cfg(feature = "couch")]
        StoreDsn::Couch { .. } => Ok(Arc::new(connect_couch(dsn).await?)),
        #[allow(unreachable_patterns)]
        other => Err(StoreError::NotCompiled(other.scheme())),
    }
}

/// Opens a store that already exists, for commands that only read (or prune): a
/// missing SQLite file or PostgreSQL database, or one without Vogeler's tables, is
/// [`StoreError::NotSetUp`], and nothing is created or migrated. CouchDB opens as
/// [`open`] does.
pub async fn open_existing(dsn: &vogeler_config::StoreDsn) -> Result<DynStore, StoreError> {
    #[allow(unused_imports)]
    use vogeler_config::StoreDsn;
    match dsn {
        #[cfg(feature = "sqlite")]
        StoreDsn::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open_existing(path)?)),
        #[cfg(feature = "postgres")]
        StoreDsn::Postgres { url } => Ok(Arc::new(
            postgres::PostgresStore::connect_existing(url).await?,
        )),
        _ => open(dsn).await,
    }
}

/// Prepares a new store for `setup --persistence`: creates the PostgreSQL database
/// when it does not exist (see [`postgres::PostgresStore::create_database`]);
/// `Ok(true)` when it made one. Other backends create theirs in [`open`].
pub async fn create(dsn: &vogeler_config::StoreDsn) -> Result<bool, StoreError> {
    match dsn {
        #[cfg(feature = "postgres")]
        vogeler_config::StoreDsn::Postgres { url } => {
            postgres::PostgresStore::create_database(url).await
        }
        _ => Ok(false),
    }
}

/// Connects to the CouchDB database a `couch://` DSN names (any other DSN is refused).
#[cfg(feature = "couch")]
async fn connect_couch(dsn: &vogeler_config::StoreDsn) -> Result<couch::CouchStore, StoreError> {
    let vogeler_config::StoreDsn::Couch {
        base_url,
        db,
        user,
        password,
        ca_file,
        ..
    } = dsn
    else {
        return Err(StoreError::Invalid(format!("{dsn} is not a CouchDB DSN")));
    };
    couch::CouchStore::connect_with_ca(
        base_url,
        db,
        user.as_deref(),
        password.as_deref(),
        ca_file.as_deref(),
    )
    .await
}

/// Loads CouchDB design docs (`DIR/<ddoc>/views/<view>/map.js`) into the store a DSN
/// names; one line per design doc. Other stores have no views and say so.
pub async fn load_design_docs(
    dsn: &vogeler_config::StoreDsn,
    dir: &std::path::Path,
) -> Result<Vec<String>, StoreError> {
    match dsn {
        #[cfg(feature = "couch")]
        vogeler_config::StoreDsn::Couch { .. } => {
            connect_couch(dsn).await?.load_design_docs(dir).await
        }
        other => {
            let _ = dir;
            Err(StoreError::Invalid(format!(
                "design docs are CouchDB views; the store {other} is not CouchDB (use --dbhost couch://host:5984/dbname)"
            )))
        }
    }
}
