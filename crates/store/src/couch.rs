//! The CouchDB store, over CouchDB's documented HTTP API only.
//!
//! One document per node, `_id` = node name, shaped like the 2010 project's records
//! (`doc_type: "SystemRecord"`, `system_name`, one key per plugin) so its design docs
//! work unchanged. Per-key collection times live in `vogeler_meta` (CouchDB reserves
//! `_`-prefixed fields): `{"key_times": {"<plugin>": "<collected_at>"}, "history_seq": n}`,
//! with `implicit_new` for history (below).
//! History entries are their own documents (`doc_type: "History"`, `_id`
//! `history:<node>:<key>:<at>:<write token>.<n>`), written in the same `_bulk_docs`
//! call as the node. A plugin key's entry leaves its `new` out (`"new_implicit": true`),
//! as the SQLite store does: it is the next entry's `old`, or the key's current value for
//! the latest entry, so a value is not written twice (`CouchStore::resolve_new`). A
//! revision conflict (another server wrote the node) is retried with a fresh read, and
//! the failed attempt's history documents are deleted, so no update is lost and none is
//! recorded twice.
//!
//! The request ledger lives beside them: `ledger:request:<id>` (`doc_type: "LedgerRequest"`)
//! and `ledger:answer:<id>:<node>` (`doc_type: "LedgerAnswer"`), created once and never
//! updated, so a second write of the same record is a conflict that changes nothing.
//!
//! CouchDB has no multi-document transactions: a batch touching several nodes is
//! committed node by node. A failed `apply` may have stored part of the batch; the
//! caller redelivers it and the stored part comes back `Unchanged`.
//!
//! Where pouchdb-server (the test server) differs from Apache CouchDB, as seen in
//! the tests (kept in sync with `docs/COUCHDB.md`):
//! - Integers beyond 2^53 come back rounded to doubles, and `1.0` comes back as `1`;
//!   CouchDB keeps the number as written. Value comparison here therefore treats
//!   numbers equal as doubles as equal, so a re-sent result stays `Unchanged`.
//! - A body without `Content-Type: application/json` is silently ignored (an empty
//!   document is stored) where CouchDB parses it anyway; every request here sends
//!   that header.
//! - It writes `log.txt` and `config.json` into its working directory unless started
//!   elsewhere; the tests start it in a temporary directory.
//! - Out of the box it runs as "admin party" (no users); CouchDB 3 requires an admin,
//!   which is what `user`/`password` in [`CouchStore::connect`] are for.
//! - `GET /` says `{"express-pouchdb": "Welcome!"}` instead of `{"couchdb": "Welcome"}`;
//!   [`Store::health`] only checks for HTTP 200.
//! - `_all_docs` orders ids by UTF-16 code units, CouchDB by bytes; they agree for
//!   the ASCII ids (host names) the `nodes`/`history` ranges rely on.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::{
    is_reserved_key, rfc3339, Change, HistoryEntry, KeyPath, LedgerAnswer, LedgerRequest,
    NodeRecord, NodeSummary, Observation, Outcome, Rows, Store, StoreError, Unreadable,
    RESERVED_KEYS,
};

const BACKEND: &str = "couch";
const META: &str = crate::STORE_META_KEY;
/// Read-modify-write rounds before a node that keeps conflicting is given up on.
const MAX_ATTEMPTS: u32 = 30;

/// A store in one CouchDB database.
#[derive(Clone)]
pub struct CouchStore {
    http: reqwest::Client,
    db_url: String,
    base_url: String,
    user: Option<String>,
    password: Option<String>,
    /// Set once this handle has checked the store's own views hold what this version
    /// reads through them: whether they can be used ([`CouchStore::ensure_views`]).
    views: tokio::sync::OnceCell<bool>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

impl CouchStore {
    /// Connects and creates the database when missing.
    pub async fn connect(
        base_url: &str,
        db: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<CouchStore, StoreError> {
        Self::connect_with_ca(base_url, db, user, password, None).await
    }

    /// As [`CouchStore::connect`], also trusting the PEM CA certificate(s) in `ca_file`
    /// for an `https://` (`couchs://`) server whose certificate a private CA signed.
    pub async fn connect_with_ca(
        base_url: &str,
        db: &str,
        user: Option<&str>,
        password: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<CouchStore, StoreError> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(path) = ca_file {
            let invalid = |e: &dyn std::fmt::Display| {
                StoreError::Invalid(format!("CouchDB ca_file {}: {e}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|e| invalid(&e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| invalid(&e))?;
            if certs.is_empty() {
                return Err(invalid(&"no PEM certificate in the file"));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(backend)?;
        let base = base_url.trim_end_matches('/').to_string();
        let store = CouchStore {
            http,
            db_url: format!("{base}/{}", encode(db)),
            base_url: base,
            user: user.map(str::to_string),
            password: password.map(str::to_string),
            views: tokio::sync::OnceCell::new(),
        };
        let resp = store
            .req(reqwest::Method::PUT, &store.db_url)
            .send()
            .await
            // reqwest's message stops at "error sending request"; the cause (a refused
            // connection, an untrusted certificate) is down the chain.
            .map_err(|e| unavailable(crate::error_chain(&e)))?;
        match resp.status().as_u16() {
            201 | 202 | 412 => {
                // CouchDB builds a view when it is first read: start that now, so the
                // first `changes` on a large database does not wait for all of it.
                let warm = store.clone();
                tokio::spawn(async move {
                    if let Err(e) = warm.warm_views().await {
                        tracing::debug!(error = %e, "building the CouchDB history view");
                    }
                });
                Ok(store)
            }
            s => Err(backend(format!(
                "cannot create database {db}: HTTP {s}: {}",
                resp.text().await.unwrap_or_default()
            ))),
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.user {
            Some(u) => r.basic_auth(u, self.password.as_deref()),
            None => r,
        }
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<(u16, Value), StoreError> {
        let (status, bytes) = self.raw(r).await?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
            if status >= 500 {
                unavailable(format!("HTTP {status}"))
            } else {
                // The same answer comes back on a retry: not an outage.
                backend(format!(
                    "HTTP {status}: the answer does not read back as JSON: {e}"
                ))
            }
        })?;
        if status >= 500 {
            return Err(unavailable(format!("HTTP {status}: {body}")));
        }
        Ok((status, body))
    }

    /// The status and body of a call, unparsed (5xx is an outage).
    async fn raw(&self, r: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), StoreError> {
        let resp = r.send().await.map_err(unavailable)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(unavailable)?.to_vec();
        if status >= 500 {
            return Err(unavailable(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
            )));
        }
        Ok((status, bytes))
    }

    /// An `_all_docs` answer parsed row by row, so one document that does not read back
    /// (nested deeper than the parser goes, a number outside f64: written by hand or by
    /// an earlier version) is set aside with its reason instead of failing the call.
    async fn all_docs(&self, r: reqwest::RequestBuilder, what: &str) -> Result<Docs, StoreError> {
        let (status, bytes) = self.raw(r).await?;
        if status != 200 {
            return Err(backend(format!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
            )));
        }
        parse_all_docs(&bytes).map_err(|e| backend(format!("{what}: {e}")))
    }

    /// Current documents for `ids` (missing ones absent), by `_all_docs` with keys.
    async fn fetch(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Map<String, Value>>, StoreError> {
        let (docs, bad) = self.fetch_checked(ids).await?;
        if let Some(b) = bad.first() {
            return Err(backend(format!(
                "document {:?} does not read back: {} (run vogeler-admin check)",
                b.id, b.why
            )));
        }
        Ok(docs)
    }

    /// [`CouchStore::fetch`], with the documents that do not read back apart.
    async fn fetch_checked(
        &self,
        ids: &[String],
    ) -> Result<(HashMap<String, Map<String, Value>>, Vec<BadDoc>), StoreError> {
        let (docs, bad) = self
            .all_docs(
                self.req(
                    reqwest::Method::POST,
                    &format!("{}/_all_docs?include_docs=true", self.db_url),
                )
                .json(&json!({ "keys": ids })),
                "_all_docs",
            )
            .await?;
        let docs = docs
            .into_iter()
            .filter_map(|doc| Some((doc.get("_id")?.as_str()?.to_string(), doc)))
            .collect();
        Ok((docs, bad))
    }

    /// Documents with ids in `[start, end)` (no end: to the last), by `_all_docs`,
    /// where ids collate as raw strings. Documents that do not read back are logged and
    /// left out; [`CouchStore::range_checked`] returns them.
    async fn range(
        &self,
        start: &str,
        end: Option<&str>,
    ) -> Result<Vec<Map<String, Value>>, StoreError> {
        let (docs, bad) = self.range_checked(start, end).await?;
        warn_unreadable(&bad);
        Ok(docs)
    }

    /// [`CouchStore::range`], with the documents that do not read back apart.
    async fn range_checked(&self, start: &str, end: Option<&str>) -> Result<Docs, StoreError> {
        let mut url = format!(
            "{}/_all_docs?include_docs=true&inclusive_end=false&startkey={}",
            self.db_url,
            encode(&Value::String(start.to_string()).to_string()),
        );
        if let Some(end) = end {
            url.push_str("&endkey=");
            url.push_str(&encode(&Value::String(end.to_string()).to_string()));
        }
        self.all_docs(
            self.req(reqwest::Method::GET, &url),
            &format!("_all_docs {start:?}..{end:?}"),
        )
        .await
    }

    /// Writes documents with one `_bulk_docs`; returns its per-document rows.
    async fn bulk_docs(&self, docs: Vec<Value>) -> Result<Vec<Value>, StoreError> {
        let (status, body) = self
            .json(
                self.req(
                    reqwest::Method::POST,
                    &format!("{}/_bulk_docs", self.db_url),
                )
                .json(&json!({ "docs": docs })),
            )
            .await?;
        match body {
            Value::Array(rows) if status == 201 || status == 200 => Ok(rows),
            body => Err(backend(format!("_bulk_docs: HTTP {status}: {body}"))),
        }
    }

    /// Loads `DIR/<ddoc>/views/<view>/map.js` (and `reduce.js`) as `_design/<ddoc>`;
    /// unchanged documents are left alone. Returns one line per design doc.
    pub async fn load_design_docs(&self, dir: &Path) -> Result<Vec<String>, StoreError> {
        let read_dir = |p: &Path| {
            std::fs::read_dir(p)
                .map_err(|e| StoreError::Invalid(format!("cannot read {}: {e}", p.display())))
        };
        let mut lines = Vec::new();
        let mut ddocs: Vec<_> = read_dir(dir)?
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        ddocs.sort_by_key(|e| e.file_name());
        if ddocs.is_empty() {
            return Err(StoreError::Invalid(format!(
                "no design docs under {} (expected {}/<ddoc>/views/<view>/map.js)",
                dir.display(),
                dir.display()
            )));
        }
        for ddoc in ddocs {
            let name = ddoc.file_name().to_string_lossy().into_owned();
            let views_dir = ddoc.path().join("views");
            let mut views = Map::new();
            let mut entries: Vec<_> = read_dir(&views_dir)?
                .flatten()
                .filter(|e| e.path().is_dir())
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for view in entries {
                let map_path = view.path().join("map.js");
                let map = std::fs::read_to_string(&map_path).map_err(|e| {
                    StoreError::Invalid(format!("cannot read {}: {e}", map_path.display()))
                })?;
                let mut v = Map::new();
                v.insert("map".into(), Value::String(map));
                if let Ok(reduce) = std::fs::read_to_string(view.path().join("reduce.js")) {
                    v.insert("reduce".into(), Value::String(reduce));
                }
                views.insert(
                    view.file_name().to_string_lossy().into_owned(),
                    Value::Object(v),
                );
            }
            let id = format!("_design/{name}");
            if !self.put_design_doc(&name, &views).await? {
                lines.push(format!("{id}: unchanged ({} views)", views.len()));
                continue;
            }
            let names: Vec<&String> = views.keys().collect();
            lines.push(format!(
                "{id}: loaded views {}",
                names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(lines)
    }
}

impl CouchStore {
    /// Saves `_design/<name>` with `views` unless it already holds exactly them;
    /// true when it was written. Two servers saving the same document at once is
    /// not an error: the one that loses finds it saved.
    async fn put_design_doc(
        &self,
        name: &str,
        views: &Map<String, Value>,
    ) -> Result<bool, StoreError> {
        match self.try_put_design_doc(name, views).await? {
            Ok(saved) => Ok(saved),
            Err(refused) => Err(backend(refused)),
        }
    }

    /// [`CouchStore::put_design_doc`], telling a refusal apart (`Err` inside: CouchDB
    /// lets only a database's admins write design documents).
    async fn try_put_design_doc(
        &self,
        name: &str,
        views: &Map<String, Value>,
    ) -> Result<Result<bool, String>, StoreError> {
        let id = format!("_design/{name}");
        let url = format!("{}/_design/{}", self.db_url, encode(name));
        let views = Value::Object(views.clone());
        for _ in 0..MAX_ATTEMPTS {
            let (status, current) = self.json(self.req(reqwest::Method::GET, &url)).await?;
            let mut doc = json!({"_id": id, "language": "javascript", "views": views});
            if status == 200 {
                if current["views"] == views && current["language"] == "javascript" {
                    return Ok(Ok(false));
                }
                doc["_rev"] = current["_rev"].clone();
            }
            let (status, body) = self
                .json(self.req(reqwest::Method::PUT, &url).json(&doc))
                .await?;
            match status {
                201 | 202 => return Ok(Ok(true)),
                409 => continue,
                401 | 403 => return Ok(Err(format!("saving {id}: HTTP {status}: {body}"))),
                _ => return Err(backend(format!("saving {id}: HTTP {status}: {body}"))),
            }
        }
        Err(backend(format!(
            "saving {id}: it kept changing under this write"
        )))
    }

    /// Saves the store's own views (`_design/vogeler_store`) unless the database holds
    /// them as this version writes them: missing in a database an earlier version
    /// wrote, or edited by hand.
    ///
    /// False when the database holds them otherwise and this user may not write design
    /// documents (a CouchDB member, not an admin): reads then fall back to reading every
    /// history document, as before the view existed.
    async fn ensure_views(&self) -> Result<bool, StoreError> {
        let mut views = Map::new();
        views.insert("history_by_at".into(), json!({ "map": HISTORY_BY_AT }));
        match self.try_put_design_doc(STORE_DDOC, &views).await? {
            Ok(_) => Ok(true),
            Err(refused) => {
                tracing::warn!(
                    %refused,
                    "this CouchDB user may not save the store's view; changes and history pruning read every history document (grant the user admin on the database, or save it once as an admin)"
                );
                Ok(false)
            }
        }
    }

    /// Saves the store's views when needed and reads the history view once (no rows),
    /// which makes CouchDB bring its index up to date.
    async fn warm_views(&self) -> Result<(), StoreError> {
        self.view_rows("limit=0").await.map(|_| ())
    }

    /// The history entries whose time is in `from..to` (either end open), oldest
    /// first, as the store's own view ([`HISTORY_BY_AT`]) lists them: id, time, node,
    /// key and sequence, no document, so a time range reads its entries' stamps, not
    /// every entry of the database; entries whose time does not parse are listed as
    /// skipped. The view is saved when missing (a database written by an earlier
    /// version); CouchDB builds it on its first read. None when the view cannot be
    /// had (see [`CouchStore::ensure_views`]).
    async fn history_stamps(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Option<Rows<Stamp>>, StoreError> {
        // A second of margin each side: the keys are text in this store's own form,
        // which sorts as the times do but for fractions of different lengths; the exact
        // bounds are applied to the parsed times below.
        let key = |t: DateTime<Utc>| encode(&Value::String(rfc3339(t)).to_string());
        let mut range = Vec::new();
        if let Some(from) = from {
            range.push(format!(
                "startkey={}",
                key(from - chrono::Duration::seconds(1))
            ));
        }
        if let Some(to) = to {
            range.push(format!("endkey={}", key(to + chrono::Duration::seconds(1))));
        }
        let Some(mut rows) = self.view_rows(&range.join("&")).await? else {
            return Ok(None);
        };
        // Times in another form are keyed `null`, which sorts before every text: a
        // range without a start has them already.
        if from.is_some() {
            match self.view_rows("key=null").await? {
                Some(other) => rows.extend(other),
                None => return Ok(None),
            }
        }
        let mut out = Rows::default();
        for r in rows {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let Some(id) = r["id"].as_str().map(str::to_string) else {
                continue;
            };
            let at = match &r["key"] {
                Value::Null => time_of(Some(&r["value"][3])),
                key => time_of(Some(key)),
            };
            let (node, key) = (text(&r["value"][0]), text(&r["value"][1]));
            match at {
                Some(at) => {
                    if from.is_none_or(|from| at >= from) && to.is_none_or(|to| at < to) {
                        out.rows.push(Stamp {
                            id,
                            at,
                            node,
                            key,
                            seq: r["value"][2].as_u64().unwrap_or(0),
                        });
                    }
                }
                // As a read of the document itself says it ([`to_history`]).
                None => {
                    let why = format!(
                        "history document {} has no valid \"at\" time",
                        Value::String(id.clone())
                    );
                    out.skip(&node, &key, Some(id), why);
                }
            }
        }
        out.rows
            .sort_by(|a, b| (a.at, a.seq, &a.id).cmp(&(b.at, b.seq, &b.id)));
        Ok(Some(out))
    }

    /// The rows of the history view for a query string; None when the view cannot be
    /// had. A view deleted since this handle checked it is saved again.
    async fn view_rows(&self, query: &str) -> Result<Option<Vec<Value>>, StoreError> {
        if !*self.views.get_or_try_init(|| self.ensure_views()).await? {
            return Ok(None);
        }
        let url = format!(
            "{}/_design/{STORE_DDOC}/_view/history_by_at?{query}",
            self.db_url
        );
        let mut saved = false;
        loop {
            let (status, mut body) = self
                .json(
                    self.req(reqwest::Method::GET, &url)
                        .timeout(VIEW_BUILD_TIME),
                )
                .await?;
            match status {
                200 => {
                    return match body["rows"].take() {
                        Value::Array(rows) => Ok(Some(rows)),
                        _ => Err(backend(format!("history view: no rows in {body}"))),
                    }
                }
                404 if !saved => {
                    if !self.ensure_views().await? {
                        return Ok(None);
                    }
                    saved = true;
                }
                _ => return Err(backend(format!("history view: HTTP {status}: {body}"))),
            }
        }
    }

    /// The entries `changes` needs from a time range's stamps, oldest first: the first
    /// `limit`, and after them each one's next entry of its node and key (an implicit
    /// `new` is that entry's `old`); no other entry is read.
    async fn changes_from(
        &self,
        stamps: Rows<Stamp>,
        limit: usize,
    ) -> Result<Rows<(HistoryEntry, u64, Map<String, Value>)>, StoreError> {
        let (skipped, stamps) = (stamps.skipped, stamps.rows);
        let upto = limit.min(stamps.len());
        let next = next_of_same_key(stamps.iter().map(|s| (s.node.as_str(), s.key.as_str())));
        let mut wanted: Vec<usize> = (0..upto)
            .chain(
                next[..upto]
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|&j| j >= upto),
            )
            .collect();
        wanted[upto..].sort_unstable();
        wanted.dedup();
        let ids: Vec<String> = wanted.iter().map(|&i| stamps[i].id.clone()).collect();
        let mut docs = self.history_by_ids(&ids).await?;
        if !docs.skipped.is_empty() || docs.rows.len() < ids.len() {
            // An entry that did not read back (or went meanwhile) leaves a gap the
            // entries after the limit fill: read them all.
            let ids: Vec<String> = stamps.into_iter().map(|s| s.id).collect();
            docs = self.history_by_ids(&ids).await?;
        }
        docs.skipped.extend(skipped);
        Ok(docs)
    }

    /// The history entries with these ids, oldest first (missing ones absent; those
    /// that do not read back listed as skipped).
    async fn history_by_ids(
        &self,
        ids: &[String],
    ) -> Result<Rows<(HistoryEntry, u64, Map<String, Value>)>, StoreError> {
        let mut docs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(FETCH_CHUNK) {
            let (mut found, bad) = self.fetch_checked(chunk).await?;
            warn_unreadable(&bad);
            // In the order asked for: entries at one time and sequence stay by id.
            docs.extend(chunk.iter().filter_map(|id| found.remove(id)));
        }
        Ok(history_rows(docs))
    }
}

/// One history entry as the store's view lists it ([`HISTORY_BY_AT`]).
struct Stamp {
    id: String,
    at: DateTime<Utc>,
    node: String,
    key: String,
    seq: u64,
}

/// How long a read of the history view may wait for CouchDB to build its index (a
/// database written before the view existed indexes all its history on that read).
const VIEW_BUILD_TIME: Duration = Duration::from_secs(600);

/// Ids fetched per `_all_docs` call.
const FETCH_CHUNK: usize = 5_000;

/// The design document of the store's own views (`_design/vogeler_store`), apart from
/// any a user loads with `-l`.
const STORE_DDOC: &str = "vogeler_store";

/// Every history entry by its time, for `changes` and `prune_history`: keyed by the
/// `at` text itself when it is in the form this store writes (UTC, `T`, `Z`: such text
/// sorts as the times do), else by `null` (another form, or no time), those read apart
/// and placed by their parsed time; the value is `[node, key, seq, at]`. Plain ES5, no
/// date parsing: CouchDB's JavaScript engines and PouchDB agree on it.
const HISTORY_BY_AT: &str = r"function (doc) { if (doc.doc_type === 'History') { var at = doc.at; var plain = typeof at === 'string' && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(at); emit(plain ? at : null, [doc.node, doc.key, doc.seq, at === undefined ? null : at]); } }";

/// For entries oldest first, given as (node, key): each one's next entry of the same
/// node and key, by position.
fn next_of_same_key<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<Option<usize>> {
    let keys: Vec<(&str, &str)> = entries.collect();
    let mut next = vec![None; keys.len()];
    let mut later: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, k) in keys.into_iter().enumerate().rev() {
        next[i] = later.insert(k, i);
    }
    next
}

/// History entries from documents (others ignored), oldest first; an entry that does
/// not read back is listed as skipped.
fn history_rows(docs: Vec<Map<String, Value>>) -> Rows<(HistoryEntry, u64, Map<String, Value>)> {
    let mut out = Rows::default();
    for doc in docs {
        if doc.get("doc_type") != Some(&json!("History")) {
            continue;
        }
        match to_history(&doc) {
            Ok((e, seq)) => out.rows.push((e, seq, doc)),
            Err(e) => {
                let text = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or_default();
                let id = doc.get("_id").and_then(Value::as_str).map(str::to_string);
                out.skip(text("node"), text("key"), id, e);
            }
        }
    }
    out.rows.sort_by_key(|(e, seq, _)| (e.at, *seq));
    out
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn time_of(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
}

/// A token unique to one write attempt, so history ids never collide.
fn write_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Where [`apply_one`] puts the history documents of one node's write attempt.
struct HistorySink<'a> {
    docs: Vec<Value>,
    /// Entries (by id) whose implicit `new` must be written out, with that value.
    pins: Vec<(String, Value)>,
    token: &'a str,
    /// Next `seq` (orders entries with the same `at`); stored back in `vogeler_meta`.
    seq: u64,
}

impl<'a> HistorySink<'a> {
    /// A sink continuing `doc`'s history sequence (`vogeler_meta.history_seq`).
    fn continuing(doc: &serde_json::Map<String, Value>, token: &'a str) -> HistorySink<'a> {
        let seq = doc
            .get(META)
            .and_then(|m| m.get("history_seq"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        HistorySink {
            docs: Vec::new(),
            pins: Vec::new(),
            token,
            seq,
        }
    }

    /// Records a change of `last_error`, whose `null` is "no error" (none), not a value.
    fn record_error(&mut self, node: &str, at: &str, old: Option<Value>, new: Value) {
        let some = |v: Value| Some(v).filter(|v| !v.is_null());
        self.push(node, "last_error", at, old.and_then(some), Some(some(new)));
    }

    /// Records a change whose new value is the node document's (see the module doc):
    /// returns the entry's id, which the document's meta keeps for a volatile change
    /// to pin (`IMPLICIT_NEW_IDS`).
    fn record_implicit(&mut self, node: &str, key: &str, at: &str, old: Option<Value>) -> String {
        self.push(node, key, at, old, None)
    }

    /// Gives entry `id` its `new` before a volatile change replaces the value it would
    /// read: in place when this attempt is writing the entry too (a kept and a volatile
    /// result of one key in one batch), else by [`CouchStore::pin`] before the write.
    fn pin(&mut self, id: String, value: Value) {
        match self
            .docs
            .iter_mut()
            .find(|h| h["_id"].as_str() == Some(id.as_str()))
            .and_then(Value::as_object_mut)
        {
            Some(h) => {
                h.remove(IMPLICIT_NEW);
                put_value(h, "new", Some(value));
            }
            None => self.pins.push((id, value)),
        }
    }

    /// `new: None` leaves it implicit; `Some(None)` says the entry ended at none.
    fn push(
        &mut self,
        node: &str,
        key: &str,
        at: &str,
        old: Option<Value>,
        new: Option<Option<Value>>,
    ) -> String {
        let id = format!(
            "history:{node}:{key}:{at}:{}.{}",
            self.token,
            self.docs.len()
        );
        let mut doc = json!({
            "_id": id, "doc_type": "History", "node": node, "key": key,
            "at": at, "seq": self.seq,
        });
        if let Some(h) = doc.as_object_mut() {
            put_value(h, "old", old);
            match new {
                Some(v) => put_value(h, "new", v),
                None => {
                    h.insert(IMPLICIT_NEW.into(), Value::Bool(true));
                }
            }
        }
        self.docs.push(doc);
        self.seq += 1;
        id
    }
}

/// Marks a history document whose `new` is left out (see the module doc).
const IMPLICIT_NEW: &str = "new_implicit";

/// Whether history document `doc` leaves its `new` implicit ([`IMPLICIT_NEW`]).
fn leaves_new_implicit(doc: &Map<String, Value>) -> bool {
    doc.get(IMPLICIT_NEW) == Some(&Value::Bool(true))
}

/// Writes a history value: `null` in the field says "none" (the key did not exist), as
/// documents always have; a plugin's own JSON `null` is `FIELD_null: true` beside it,
/// so the two read back apart ([`get_value`]) and older documents read as before.
fn put_value(doc: &mut Map<String, Value>, field: &str, value: Option<Value>) {
    let null_marker = format!("{field}_null");
    doc.remove(&null_marker);
    match value {
        Some(Value::Null) => {
            doc.insert(field.into(), Value::Null);
            doc.insert(null_marker, Value::Bool(true));
        }
        value => {
            doc.insert(field.into(), value.unwrap_or(Value::Null));
        }
    }
}

/// Reads a history value written by [`put_value`].
fn get_value(doc: &Map<String, Value>, field: &str) -> Option<Value> {
    if doc.get(&format!("{field}_null")) == Some(&Value::Bool(true)) {
        return Some(Value::Null);
    }
    doc.get(field).filter(|v| !v.is_null()).cloned()
}

/// In a node's meta: per key, the id of its latest history entry with `new` implicit,
/// so a volatile change knows, without a read, whether it has an entry to pin.
const IMPLICIT_NEW_IDS: &str = "implicit_new";

/// The object `field` of a node document's meta, made (with the meta) when missing or
/// not an object.
fn meta_map<'d>(
    doc: &'d mut Map<String, Value>,
    field: &str,
) -> Option<&'d mut Map<String, Value>> {
    let meta = doc.entry(META).or_insert_with(|| json!({"key_times": {}}));
    if !meta.is_object() {
        *meta = json!({"key_times": {}});
    }
    let map = meta
        .as_object_mut()?
        .entry(field)
        .or_insert_with(|| json!({}));
    if !map.is_object() {
        *map = json!({});
    }
    map.as_object_mut()
}

/// Sets `last_error` to null, recording the old error in history and the time in the
/// document's meta (an error result older than that is stale).
fn clear_last_error(
    doc: &mut Map<String, Value>,
    node: &str,
    at: &str,
    history: &mut HistorySink<'_>,
) {
    let old = doc.insert("last_error".into(), Value::Null);
    if let Some(meta) = doc.get_mut(META).and_then(Value::as_object_mut) {
        meta.insert("error_cleared_at".into(), Value::String(at.to_string()));
    }
    history.record_error(node, at, old, Value::Null);
}

/// Applies one observation to a node document in memory (empty map: no document yet).
fn apply_one(
    doc: &mut Map<String, Value>,
    obs: &Observation,
    now: &str,
    history: &mut HistorySink<'_>,
) -> Outcome {
    let created = doc.is_empty();
    if created {
        doc.insert("_id".into(), Value::String(obs.node.clone()));
        doc.insert("doc_type".into(), json!("SystemRecord"));
        doc.insert("system_name".into(), Value::String(obs.node.clone()));
        doc.insert("created_at".into(), json!(now));
        doc.insert("updated_at".into(), json!(now));
        doc.insert("last_error".into(), Value::Null);
        doc.insert(META.into(), json!({"key_times": {}}));
    }
    doc.insert("last_seen".into(), json!(now));
    // A result (not a heartbeat) reactivates a deactivated node.
    if !matches!(obs.change, Change::Seen) {
        doc.remove("deactivated_at");
    }
    let at = rfc3339(obs.at);
    let changed = match &obs.change {
        Change::Seen => false,
        Change::Plugin {
            name,
            value,
            history: keep,
        } => {
            let tree = match value.tree() {
                Ok(v) => v,
                Err(e) => return Outcome::Refused(e.to_string()),
            };
            let value: &Value = &tree;
            if let Some(times) = meta_map(doc, "key_times") {
                if time_of(times.get(name.as_str())).is_some_and(|t| obs.at < t) {
                    return Outcome::Stale;
                }
                times.insert(name.clone(), Value::String(at.clone()));
            }
            let old = doc.get(name.as_str()).cloned();
            let value_changed = if old
                .as_ref()
                .is_some_and(|o| crate::query::same_value(o, value))
            {
                false
            } else {
                doc.insert(name.clone(), value.clone());
                // A volatile key (`history = false`) keeps only its current value. When
                // its latest entry left `new` implicit, that value is about to go: the
                // entry is given it first (`CouchStore::pin`).
                if *keep {
                    let id = history.record_implicit(&obs.node, name, &at, old);
                    if let Some(ids) = meta_map(doc, IMPLICIT_NEW_IDS) {
                        ids.insert(name.clone(), Value::String(id));
                    }
                } else if let Some(Value::String(id)) =
                    meta_map(doc, IMPLICIT_NEW_IDS).and_then(|ids| ids.remove(name.as_str()))
                {
                    history.pin(id, old.unwrap_or(Value::Null));
                }
                true
            };
            // A good result clears that plugin's error (the error stays in history).
            let clears = doc.get("last_error").is_some_and(|e| {
                e.get("plugin").and_then(Value::as_str) == Some(name.as_str())
                    && time_of(e.get("at")).is_none_or(|t| t <= obs.at)
            });
            if clears {
                clear_last_error(doc, &obs.node, &at, history);
            }
            value_changed || clears
        }
        Change::Error {
            plugin,
            message,
            raw,
        } => {
            let old = doc.get("last_error").cloned().filter(|v| !v.is_null());
            let cleared_at = time_of(doc.get(META).and_then(|m| m.get("error_cleared_at")));
            if time_of(old.as_ref().and_then(|o| o.get("at")))
                .or(cleared_at)
                .is_some_and(|t| obs.at < t)
            {
                return Outcome::Stale;
            }
            let e = crate::last_error_value(plugin, message, raw, obs.at);
            if old.as_ref() == Some(&e) {
                false
            } else {
                doc.insert("last_error".into(), e.clone());
                history.record_error(&obs.node, &at, old, e);
                true
            }
        }
    };
    if changed {
        doc.insert("updated_at".into(), json!(now));
    }
    if created {
        Outcome::Created
    } else if changed {
        Outcome::Updated
    } else {
        Outcome::Unchanged
    }
}

/// Why a node name cannot be a CouchDB document id, if it cannot.
fn refuse_node(node: &str) -> Option<String> {
    if node.is_empty() {
        Some("empty node name".into())
    } else if node.starts_with('_') {
        Some(format!(
            "node name {node:?} starts with '_', which CouchDB reserves for its own documents"
        ))
    } else if node.starts_with("history:") {
        Some(format!(
            "node name {node:?} starts with \"history:\", which this store uses for history documents"
        ))
    } else if node.starts_with("ledger:") {
        Some(format!(
            "node name {node:?} starts with \"ledger:\", which this store uses for the request ledger"
        ))
    } else {
        None
    }
}

fn to_record(doc: &Map<String, Value>) -> Result<NodeRecord, StoreError> {
    let t =
        |k: &str| time_of(doc.get(k)).ok_or_else(|| backend(format!("document lacks a valid {k}")));
    Ok(NodeRecord {
        name: doc
            .get("_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        created_at: t("created_at")?,
        updated_at: t("updated_at")?,
        last_seen: t("last_seen")?,
        last_error: doc.get("last_error").cloned().filter(|v| !v.is_null()),
        deactivated_at: time_of(doc.get("deactivated_at")),
        keys: doc
            .iter()
            .filter(|(k, _)| k.as_str() != META && !RESERVED_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        keys_collected: doc
            .get(META)
            .and_then(|m| m.get("key_times"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), time_of(Some(v))?)))
            .collect(),
        unreadable: Vec::new(),
    })
}

/// A history document as an entry, with its `seq` for ordering equal times.
fn to_history(doc: &Map<String, Value>) -> Result<(HistoryEntry, u64), StoreError> {
    let text = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let at = time_of(doc.get("at")).ok_or_else(|| {
        backend(format!(
            "history document {} has no valid \"at\" time",
            doc.get("_id").unwrap_or(&Value::Null)
        ))
    })?;
    Ok((
        HistoryEntry {
            node: text("node"),
            key: text("key"),
            old: get_value(doc, "old"),
            new: get_value(doc, "new"),
            at,
        },
        doc.get("seq").and_then(Value::as_u64).unwrap_or(0),
    ))
}

/// Documents that parsed, and those that did not.
type Docs = (Vec<Map<String, Value>>, Vec<BadDoc>);

/// A document `_all_docs` returned that does not parse: its id and why.
#[derive(Debug, Clone)]
struct BadDoc {
    id: String,
    why: String,
}

/// Splits an `_all_docs` body into its documents, each parsed on its own. The rows are
/// taken as raw text first (skipping a value needs no recursion), so a document nested
/// past serde_json's limit, or holding a number it cannot read, fails alone.
fn parse_all_docs(bytes: &[u8]) -> Result<Docs, String> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        rows: Vec<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Row<'a> {
        #[serde(default)]
        id: Option<String>,
        #[serde(default, borrow)]
        doc: Option<&'a RawValue>,
    }
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("not an _all_docs answer: {e}"))?;
    let (mut docs, mut bad) = (Vec::new(), Vec::new());
    for raw in envelope.rows {
        let row: Row = match serde_json::from_str(raw.get()) {
            Ok(r) => r,
            Err(e) => {
                bad.push(BadDoc {
                    id: String::new(),
                    why: e.to_string(),
                });
                continue;
            }
        };
        // Keys that are missing or deleted come back without a document.
        let Some(doc) = row.doc.filter(|d| d.get() != "null") else {
            continue;
        };
        match serde_json::from_str::<Map<String, Value>>(doc.get()) {
            Ok(doc) => docs.push(doc),
            Err(e) => bad.push(BadDoc {
                id: row.id.unwrap_or_default(),
                why: e.to_string(),
            }),
        }
    }
    Ok((docs, bad))
}

/// Logs the documents a read skipped because they do not read back.
fn warn_unreadable(bad: &[BadDoc]) {
    for b in bad {
        tracing::warn!(id = %b.id, why = %b.why, "skipping a CouchDB document that does not read back (run vogeler-admin check)");
    }
}

/// The key an unreadable CouchDB document is listed under: the whole document.
const WHOLE_DOCUMENT: &str = "(document)";

impl CouchStore {
    /// Moves document `id`, as text, into a `quarantine:` document (kept for
    /// inspection, out of every view) and deletes it; the node's next result starts a
    /// new document. A node document's history entries that read it are pinned first
    /// ([`CouchStore::pin_readers`]). False when it is already gone.
    async fn quarantine_doc(
        &self,
        id: &str,
        why: &str,
        node_doc: bool,
    ) -> Result<bool, StoreError> {
        let url = format!("{}/{}", self.db_url, encode(id));
        let (status, text) = self.raw(self.req(reqwest::Method::GET, &url)).await?;
        if status == 404 {
            return Ok(false);
        }
        if status != 200 {
            return Err(backend(format!("GET {id}: HTTP {status}")));
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        // The revision is read from the text itself: the document does not parse.
        let rev = text
            .split("\"_rev\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| backend(format!("document {id:?} has no _rev to delete it by")))?
            .to_string();
        if node_doc {
            self.pin_readers(id, &text).await?;
        }
        let now = rfc3339(Utc::now());
        let rows = self
            .bulk_docs(vec![
                json!({
                    "_id": format!("quarantine:{id}:{}", write_token()),
                    "doc_type": "Quarantine",
                    "source": id,
                    "text": text,
                    "why": why,
                    "at": now,
                }),
                json!({"_id": id, "_rev": rev, "_deleted": true}),
            ])
            .await?;
        if let Some(e) = rows.iter().find_map(|r| r["error"].as_str()) {
            return Err(backend(format!("quarantining {id:?}: {e}")));
        }
        Ok(true)
    }
}

impl CouchStore {
    /// Before node document `node` (`text`, which does not parse whole) is moved aside:
    /// each key's latest history entry that leaves `new` implicit reads that document, so
    /// it is written out, as the SQLite store pins a row before a quarantine. Otherwise the
    /// node's next document (a volatile key written without an entry, say) would give it
    /// a value it never had. The value is the key's own, where that part of the text
    /// parses alone; else none, as the entry reads while the document does not parse.
    async fn pin_readers(&self, node: &str, text: &str) -> Result<(), StoreError> {
        use serde_json::value::RawValue;
        let docs = self.node_history_docs(node, None).await?;
        let next = next_of_same_key(
            docs.rows
                .iter()
                .map(|(e, _, _)| (e.node.as_str(), e.key.as_str())),
        );
        // Skipping a value needs no recursion: one nested past serde_json's limit fails
        // alone when it is parsed.
        let parts: Option<HashMap<String, &RawValue>> = serde_json::from_str(text).ok();
        let pins = docs
            .rows
            .iter()
            .zip(next)
            .filter(|((_, _, d), next)| next.is_none() && leaves_new_implicit(d))
            .filter_map(|((e, _, d), _)| {
                let id = d.get("_id")?.as_str()?.to_string();
                let value = parts
                    .as_ref()
                    .and_then(|p| p.get(&e.key))
                    .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
                Some((id, value))
            })
            .collect();
        self.pin(pins).await
    }

    /// Every node document (both sides of the `history:` id range).
    async fn node_docs(&self) -> Result<Vec<Map<String, Value>>, StoreError> {
        let mut docs = self.range("", Some("history:")).await?;
        docs.extend(self.range("history;", Some("ledger:")).await?);
        docs.extend(self.range("ledger;", None).await?);
        docs.retain(|d| d.get("doc_type") == Some(&json!("SystemRecord")));
        Ok(docs)
    }

    /// Every history document with its entry, oldest first.
    async fn history_docs(
        &self,
        prefix: &str,
    ) -> Result<Rows<(HistoryEntry, u64, Map<String, Value>)>, StoreError> {
        Ok(history_rows(
            self.range(prefix, Some(&format!("{prefix}\u{fff0}")))
                .await?,
        ))
    }

    /// The history documents of `node` (of its `key` alone when given), oldest first.
    async fn node_history_docs(
        &self,
        node: &str,
        key: Option<&str>,
    ) -> Result<Rows<(HistoryEntry, u64, Map<String, Value>)>, StoreError> {
        let prefix = match key {
            Some(k) => format!("history:{node}:{k}:"),
            None => format!("history:{node}:"),
        };
        let mut docs = self.history_docs(&prefix).await?;
        // Names may contain ':', so the id prefix can match other nodes or keys.
        docs.skipped.retain(|u| u.node == node);
        docs.rows
            .retain(|(e, _, _)| e.node == node && key.is_none_or(|k| e.key == k));
        Ok(docs)
    }

    /// Fills in the `new` of the first `upto` entries that leave it implicit (`rows`
    /// oldest first, as [`CouchStore::history_docs`] gives them, holding every later
    /// entry of each node and key they hold one of): the next entry's `old`, else the
    /// key's current value, read from the node documents of those entries alone.
    async fn resolve_new(
        &self,
        rows: &mut [(HistoryEntry, u64, Map<String, Value>)],
        upto: usize,
    ) -> Result<(), StoreError> {
        let upto = upto.min(rows.len());
        let next = next_of_same_key(
            rows.iter()
                .map(|(e, _, _)| (e.node.as_str(), e.key.as_str())),
        );
        let mut nodes: Vec<String> = (0..upto)
            .filter(|&i| next[i].is_none() && leaves_new_implicit(&rows[i].2))
            .map(|i| rows[i].0.node.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        // A node document that does not read back is listed by `check`; its entries'
        // implicit values read as none here rather than failing the whole history.
        let docs = if nodes.is_empty() {
            HashMap::new()
        } else {
            self.fetch_checked(&nodes).await?.0
        };
        for i in 0..upto {
            if !leaves_new_implicit(&rows[i].2) {
                continue;
            }
            let new = match next[i] {
                Some(j) => rows[j].0.old.clone(),
                // The node's current value, `null` included: a key the node document
                // lacks reads as none.
                None => {
                    let e = &rows[i].0;
                    docs.get(&e.node).and_then(|n| n.get(&e.key)).cloned()
                }
            };
            rows[i].0.new = new;
        }
        Ok(())
    }

    /// Writes `new` into history entries that left it implicit (`pins`: id and value),
    /// as the SQLite store pins its latest row before a volatile change. Idempotent: a
    /// conflict (another server pinning the same entry to the same value) is read
    /// again, and an entry already deleted (retention) needs none.
    async fn pin(&self, mut pins: Vec<(String, Option<Value>)>) -> Result<(), StoreError> {
        for attempt in 1..=MAX_ATTEMPTS {
            if pins.is_empty() {
                return Ok(());
            }
            let ids: Vec<String> = pins.iter().map(|(id, _)| id.clone()).collect();
            let (mut docs, _) = self.fetch_checked(&ids).await?;
            let mut bulk = Vec::new();
            let mut waiting = Vec::new();
            for (id, value) in pins {
                let Some(mut doc) = docs.remove(&id) else {
                    continue;
                };
                if doc.remove(IMPLICIT_NEW).is_some() {
                    put_value(&mut doc, "new", value.clone());
                    bulk.push(Value::Object(doc));
                    waiting.push((id, value));
                }
            }
            let mut conflicted = Vec::new();
            for row in self.bulk_docs(bulk).await? {
                let id = row["id"].as_str().unwrap_or_default();
                match row["error"].as_str() {
                    None => {}
                    Some("conflict") => {
                        conflicted.extend(waiting.iter().filter(|(w, _)| w == id).cloned())
                    }
                    Some(e) => {
                        return Err(backend(format!(
                            "_bulk_docs refused history document {id:?}: {e}: {}",
                            row["reason"]
                        )))
                    }
                }
            }
            if !conflicted.is_empty() {
                tokio::time::sleep(Duration::from_millis(10u64 << attempt.min(6))).await;
            }
            pins = conflicted;
        }
        Err(unavailable(format!(
            "revision conflicts pinning {} history entries did not settle after {MAX_ATTEMPTS} attempts",
            pins.len()
        )))
    }

    /// Sets a node document's `deactivated_at` (kept when already set), retrying
    /// revision conflicts; with `unseen_since`, only while the node is still not seen
    /// since then (a result arriving meanwhile wins). Whether it marked (or found
    /// marked) the node.
    async fn deactivate(
        &self,
        name: &str,
        at: DateTime<Utc>,
        unseen_since: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let mut docs = self.fetch(&[name.to_string()]).await?;
            let Some(mut doc) = docs
                .remove(name)
                .filter(|d| d.get("doc_type") == Some(&json!("SystemRecord")))
            else {
                return Ok(false);
            };
            if doc.get("deactivated_at").is_some_and(|v| !v.is_null()) {
                return Ok(unseen_since.is_none());
            }
            if let Some(since) = unseen_since {
                if time_of(doc.get("last_seen")).is_none_or(|t| t >= since) {
                    return Ok(false);
                }
            }
            doc.insert("deactivated_at".into(), json!(rfc3339(at)));
            let rows = self.bulk_docs(vec![Value::Object(doc)]).await?;
            match rows.first().and_then(|r| r["error"].as_str()) {
                None => return Ok(true),
                Some("conflict") => {
                    tokio::time::sleep(Duration::from_millis(10u64 << attempt.min(6))).await;
                }
                Some(e) => {
                    return Err(backend(format!(
                        "_bulk_docs refused document {name:?}: {e}"
                    )))
                }
            }
        }
        Err(unavailable(format!(
            "revision conflicts on {name:?} did not settle after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Deletes documents by `_id`/`_rev`.
    async fn delete_docs(&self, docs: &[Map<String, Value>]) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        let deletions = docs
            .iter()
            .map(|d| json!({"_id": d.get("_id"), "_rev": d.get("_rev"), "_deleted": true}))
            .collect();
        for row in self.bulk_docs(deletions).await? {
            if let Some(e) = row["error"].as_str() {
                return Err(backend(format!("cannot delete {}: {e}", row["id"])));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for CouchStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Two: CouchDB works on one batch's reads and writes while the other's answers
    /// travel; conflicts between them are retried like another server's.
    fn write_concurrency(&self) -> usize {
        2
    }

    async fn apply(&self, batch: crate::Batch) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        // Indices still to apply, grouped per node in batch order.
        let mut pending: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, obs) in batch.iter().enumerate() {
            if let Some(why) = refuse_node(&obs.node) {
                outcomes[i] = Some(Outcome::Refused(why));
                continue;
            }
            if let Change::Plugin { name, .. } = &obs.change {
                if is_reserved_key(name) {
                    outcomes[i] = Some(Outcome::Refused(format!(
                        "plugin name {name:?} clashes with a document field"
                    )));
                    continue;
                }
            }
            pending.entry(obs.node.clone()).or_default().push(i);
        }
        let mut attempt = 0u32;
        while !pending.is_empty() {
            attempt += 1;
            if attempt > MAX_ATTEMPTS {
                return Err(unavailable(format!(
                    "revision conflicts on {} node(s) (first: {:?}) did not settle after {MAX_ATTEMPTS} attempts",
                    pending.len(),
                    pending.keys().next().cloned().unwrap_or_default()
                )));
            }
            let ids: Vec<String> = pending.keys().cloned().collect();
            let (mut docs, bad) = self.fetch_checked(&ids).await?;
            // A node whose document does not read back cannot be updated without losing
            // it: its results are refused (dead-lettered with the reason), not retried.
            for b in bad {
                if let Some(idxs) = pending.remove(&b.id) {
                    for i in idxs {
                        outcomes[i] = Some(Outcome::Refused(format!(
                            "the stored document of {:?} does not read back ({}); run vogeler-admin check",
                            b.id, b.why
                        )));
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            let now = rfc3339(Utc::now());
            let token = write_token();
            let mut bulk = Vec::new();
            let mut tentative: HashMap<String, Vec<(usize, Outcome)>> = HashMap::new();
            // History document id → its node, to clean up after a conflict.
            let mut history_node: HashMap<String, String> = HashMap::new();
            let mut pins = Vec::new();
            for (node, idxs) in &pending {
                let mut doc = docs.remove(node).unwrap_or_default();
                let mut history = HistorySink::continuing(&doc, &token);
                let mut outs = Vec::new();
                for &i in idxs {
                    outs.push((i, apply_one(&mut doc, &batch[i], &now, &mut history)));
                }
                if let Some(meta) = doc
                    .entry(META)
                    .or_insert_with(|| json!({"key_times": {}}))
                    .as_object_mut()
                {
                    meta.insert("history_seq".into(), json!(history.seq));
                }
                bulk.push(Value::Object(doc));
                pins.append(&mut history.pins);
                for h in history.docs {
                    if let Some(id) = h["_id"].as_str() {
                        history_node.insert(id.to_string(), node.clone());
                    }
                    bulk.push(h);
                }
                tentative.insert(node.clone(), outs);
            }
            // Pinned before the nodes are written: a pin is true whatever becomes of this
            // attempt (the value it writes is the one the entry's `new` named), while a
            // node written without its pin would leave the entry reading a later value.
            self.pin(pins.into_iter().map(|(id, v)| (id, Some(v))).collect())
                .await?;
            let rows = self.bulk_docs(bulk).await?;
            let mut conflicted = BTreeMap::new();
            let mut written_history: Vec<(String, String, String)> = Vec::new();
            for row in &rows {
                let id = row["id"].as_str().unwrap_or_default();
                match (row["error"].as_str(), history_node.get(id)) {
                    (None, Some(node)) => written_history.push((
                        id.to_string(),
                        row["rev"].as_str().unwrap_or_default().to_string(),
                        node.clone(),
                    )),
                    (None, None) => {}
                    (Some("conflict"), None) if pending.contains_key(id) => {
                        conflicted.insert(id.to_string(), pending[id].clone());
                    }
                    (Some(e), _) => {
                        return Err(backend(format!(
                            "_bulk_docs refused document {id:?}: {e}: {}",
                            row["reason"]
                        )))
                    }
                }
            }
            // History written for a node whose document lost the race did not happen.
            let orphans: Vec<Value> = written_history
                .into_iter()
                .filter(|(_, _, node)| conflicted.contains_key(node))
                .map(|(id, rev, _)| json!({"_id": id, "_rev": rev, "_deleted": true}))
                .collect();
            if !orphans.is_empty() {
                for row in self.bulk_docs(orphans).await? {
                    if let Some(e) = row["error"].as_str() {
                        tracing::warn!(id = %row["id"], error = e, "could not delete an orphan history entry");
                    }
                }
            }
            for (node, outs) in tentative {
                if !conflicted.contains_key(&node) {
                    for (i, o) in outs {
                        outcomes[i] = Some(o);
                    }
                }
            }
            if !conflicted.is_empty() {
                tracing::debug!(
                    nodes = conflicted.len(),
                    attempt,
                    "CouchDB revision conflicts; retrying with a fresh read"
                );
                let backoff = 10u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            pending = conflicted;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Unchanged))
            .collect())
    }

    async fn check(&self) -> Result<Vec<Unreadable>, StoreError> {
        let mut out = Vec::new();
        // Documents no read can parse: each is one unreadable row, the whole document.
        for (start, end) in [
            ("", Some("history:")),
            ("history:", Some("history;")),
            ("history;", Some("ledger:")),
            ("ledger;", None),
        ] {
            let (_, bad) = self.range_checked(start, end).await?;
            out.extend(
                bad.into_iter()
                    .map(|b| match b.id.strip_prefix("history:") {
                        Some(rest) => Unreadable {
                            node: rest.split(':').next().unwrap_or_default().to_string(),
                            key: WHOLE_DOCUMENT.into(),
                            history: Some(b.id.clone()),
                            why: b.why,
                        },
                        None => Unreadable::current(&b.id, WHOLE_DOCUMENT, b.why),
                    }),
            );
        }
        out.extend(crate::check_nodes(self).await?);
        Ok(out)
    }

    async fn quarantine(&self, rows: &[Unreadable]) -> Result<u64, StoreError> {
        let mut moved = 0;
        for row in rows {
            let id = row.history.clone().unwrap_or_else(|| row.node.clone());
            if row.key != WHOLE_DOCUMENT && row.history.is_none() {
                // Parsed documents keep nothing unreadable inside them on this backend.
                continue;
            }
            if self
                .quarantine_doc(&id, &row.why, row.history.is_none())
                .await?
            {
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let (status, body) = self
            .json(self.req(
                reqwest::Method::GET,
                &format!("{}/{}", self.db_url, encode(name)),
            ))
            .await
            .map_err(|e| match e {
                StoreError::Backend { message, .. } => backend(format!(
                    "the document of {name:?} does not read back: {message} (run vogeler-admin check)"
                )),
                e => e,
            })?;
        match (status, body) {
            (404, _) => Ok(None),
            (200, Value::Object(doc)) if doc.get("doc_type") == Some(&json!("SystemRecord")) => {
                to_record(&doc).map(Some)
            }
            (200, _) => Ok(None),
            (s, b) => Err(backend(format!("GET {name}: HTTP {s}: {b}"))),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>, StoreError> {
        let mut out = Vec::new();
        for doc in self.node_docs().await? {
            // A document without valid times is left out of the list (and logged), not
            // allowed to fail it.
            let rec = match to_record(&doc) {
                Ok(rec) => rec,
                Err(e) => {
                    tracing::warn!(id = ?doc.get("_id"), error = %e, "skipping an unreadable node document (run vogeler-admin check)");
                    continue;
                }
            };
            out.push(NodeSummary {
                name: rec.name,
                last_seen: rec.last_seen,
                created_at: rec.created_at,
                updated_at: rec.updated_at,
                plugins: rec.keys.keys().cloned().collect(),
                last_error: rec
                    .last_error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                deactivated_at: rec.deactivated_at,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn history(
        &self,
        node: &str,
        key: Option<&str>,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let mut docs = self.node_history_docs(node, key).await?;
        let all = docs.rows.len();
        self.resolve_new(&mut docs.rows, all).await?;
        Ok(docs.map(|(e, _, _)| e))
    }

    async fn clear_error(&self, node: &str) -> Result<bool, StoreError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let mut docs = self.fetch(&[node.to_string()]).await?;
            let Some(mut doc) = docs.remove(node) else {
                return Ok(false);
            };
            if doc.get("last_error").is_none_or(Value::is_null) {
                return Ok(false);
            }
            let now = rfc3339(Utc::now());
            let token = write_token();
            let mut history = HistorySink::continuing(&doc, &token);
            clear_last_error(&mut doc, node, &now, &mut history);
            doc.insert("updated_at".into(), json!(now));
            if let Some(meta) = doc.get_mut(META).and_then(Value::as_object_mut) {
                meta.insert("history_seq".into(), json!(history.seq));
            }
            let rows = self.bulk_docs(vec![Value::Object(doc)]).await?;
            match rows.first().and_then(|r| r["error"].as_str()) {
                None => {
                    self.bulk_docs(history.docs).await?;
                    return Ok(true);
                }
                Some("conflict") => {
                    tokio::time::sleep(Duration::from_millis(10u64 << attempt.min(6))).await;
                }
                Some(e) => {
                    return Err(backend(format!(
                        "_bulk_docs refused document {node:?}: {e}"
                    )))
                }
            }
        }
        Err(unavailable(format!(
            "revision conflicts on {node:?} did not settle after {MAX_ATTEMPTS} attempts"
        )))
    }

    async fn health(&self) -> Result<(), StoreError> {
        let (status, body) = self
            .json(self.req(reqwest::Method::GET, &format!("{}/", self.base_url)))
            .await?;
        if status == 200 {
            Ok(())
        } else {
            Err(unavailable(format!("HTTP {status}: {body}")))
        }
    }

    async fn key_values(&self, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError> {
        let mut out: Vec<(String, Value)> = self
            .node_docs()
            .await?
            .iter()
            .filter_map(|doc| {
                // A node without an error holds `last_error: null`: no value.
                let root = doc
                    .get(path.root())
                    .filter(|v| !(path.root() == "last_error" && v.is_null()))?;
                let v = path.lookup(root)?;
                Some((doc.get("_id")?.as_str()?.to_string(), v.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into())
    }

    async fn changes(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        let mut docs = match self.history_stamps(Some(since), None).await? {
            Some(stamps) => self.changes_from(stamps, limit).await?,
            None => {
                let mut docs = self.history_docs("history:").await?;
                docs.rows.retain(|(e, _, _)| e.at >= since);
                docs
            }
        };
        // Only the entries within the limit are resolved, and only their nodes read.
        self.resolve_new(&mut docs.rows, limit).await?;
        docs.rows.truncate(limit);
        Ok(docs.map(|(e, _, _)| e))
    }

    async fn delete_node(&self, name: &str) -> Result<bool, StoreError> {
        let (mut docs, bad) = self.fetch_checked(&[name.to_string()]).await?;
        if let Some(b) = bad.first() {
            return Err(StoreError::Invalid(format!(
                "the document of {:?} does not read back ({}); `vogeler-admin check --quarantine` moves it aside",
                b.id, b.why
            )));
        }
        let history: Vec<Map<String, Value>> = self
            .history_docs(&format!("history:{name}:"))
            .await?
            .rows
            .into_iter()
            .filter(|(e, _, _)| e.node == name)
            .map(|(_, _, d)| d)
            .collect();
        let node = docs
            .remove(name)
            .filter(|d| d.get("doc_type") == Some(&json!("SystemRecord")));
        // History first: a node document left behind by a failure can be deleted again.
        self.delete_docs(&history).await?;
        match node {
            Some(doc) => {
                self.delete_docs(std::slice::from_ref(&doc)).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn deactivate_node(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.deactivate(name, at, None).await
    }

    async fn deactivate_inactive(
        &self,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for node in self.nodes().await? {
            if node.deactivated_at.is_none()
                && node.last_seen < since
                && self.deactivate(&node.name, at, Some(since)).await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let docs = match self.history_stamps(None, Some(before)).await? {
            Some(stamps) => {
                let ids: Vec<String> = stamps.rows.into_iter().map(|s| s.id).collect();
                self.history_by_ids(&ids).await?
            }
            None => self.history_docs("history:").await?,
        };
        let old: Vec<Map<String, Value>> = docs
            .rows
            .into_iter()
            .filter(|(e, _, _)| e.at < before)
            .map(|(_, _, d)| d)
            .collect();
        self.delete_docs(&old).await?;
        Ok(old.len() as u64)
    }

    async fn import(
        &self,
        record: &NodeRecord,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        if let Some(why) = refuse_node(&record.name) {
            return Err(StoreError::Invalid(why));
        }
        let node = &record.name;
        let old: Vec<Map<String, Value>> = self
            .history_docs(&format!("history:{node}:"))
            .await?
            .rows
            .into_iter()
            .filter(|(e, _, _)| &e.node == node)
            .map(|(_, _, d)| d)
            .collect();
        self.delete_docs(&old).await?;
        let mut doc = match record.document() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        doc.insert("_id".into(), Value::String(node.clone()));
        let times: Map<String, Value> = record
            .keys_collected
            .iter()
            .map(|(k, t)| (k.clone(), Value::String(rfc3339(*t))))
            .collect();
        doc.insert(
            META.into(),
            json!({"key_times": times, "history_seq": history.len()}),
        );
        if let Some(rev) = self
            .fetch(std::slice::from_ref(node))
            .await?
            .get(node)
            .and_then(|d| d.get("_rev"))
        {
            doc.insert("_rev".into(), rev.clone());
        }
        let mut bulk = vec![Value::Object(doc)];
        for (seq, h) in history.iter().enumerate() {
            let at = rfc3339(h.at);
            let mut doc = json!({
                "_id": format!("history:{node}:{}:{at}:import.{seq}", h.key),
                "doc_type": "History", "node": node, "key": h.key, "at": at, "seq": seq,
            });
            if let Some(d) = doc.as_object_mut() {
                put_value(d, "old", h.old.clone());
                put_value(d, "new", h.new.clone());
            }
            bulk.push(doc);
        }
        for row in self.bulk_docs(bulk).await? {
            if let Some(e) = row["error"].as_str() {
                return Err(backend(format!("import of {node}: {}: {e}", row["id"])));
            }
        }
        Ok(())
    }

    async fn record_ledger(
        &self,
        requests: &[LedgerRequest],
        answers: &[LedgerAnswer],
    ) -> Result<(), StoreError> {
        let mut docs = Vec::new();
        for r in requests {
            docs.push(json!({
                "_id": format!("ledger:request:{}", r.id), "doc_type": "LedgerRequest",
                "id": r.id, "command": r.command, "sender": r.sender,
                "sent_at": rfc3339(r.sent_at), "ttl": r.ttl, "expected": r.expected,
            }));
        }
        for a in answers {
            docs.push(json!({
                "_id": format!("ledger:answer:{}:{}", a.request_id, a.node),
                "doc_type": "LedgerAnswer", "request_id": a.request_id, "node": a.node,
                "plugin": a.plugin, "error": a.error, "at": rfc3339(a.at),
                "stale": a.stale,
            }));
        }
        if docs.is_empty() {
            return Ok(());
        }
        for row in self.bulk_docs(docs).await? {
            match row["error"].as_str() {
                // Recorded before (a redelivery): the first record stands.
                None | Some("conflict") => {}
                Some(e) => {
                    return Err(backend(format!(
                        "_bulk_docs refused ledger document {}: {e}: {}",
                        row["id"], row["reason"]
                    )))
                }
            }
        }
        Ok(())
    }

    async fn ledger_requests(&self, limit: usize) -> Result<Vec<LedgerRequest>, StoreError> {
        let mut out = Vec::new();
        for doc in self
            .range("ledger:request:", Some("ledger:request;"))
            .await?
        {
            if doc.get("doc_type") == Some(&json!("LedgerRequest")) {
                out.push(to_ledger_request(&doc)?);
            }
        }
        out.sort_by(|a, b| b.sent_at.cmp(&a.sent_at).then(a.id.cmp(&b.id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn ledger_request(&self, id: &str) -> Result<Option<LedgerRequest>, StoreError> {
        let key = format!("ledger:request:{id}");
        match self.fetch(std::slice::from_ref(&key)).await?.get(&key) {
            Some(doc) if doc.get("doc_type") == Some(&json!("LedgerRequest")) => {
                to_ledger_request(doc).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn ledger_answers(&self, ids: &[String]) -> Result<Vec<LedgerAnswer>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            let prefix = format!("ledger:answer:{id}:");
            for doc in self
                .range(&prefix, Some(&format!("{prefix}\u{fff0}")))
                .await?
            {
                if doc.get("doc_type") != Some(&json!("LedgerAnswer"))
                    || doc.get("request_id").and_then(Value::as_str) != Some(id.as_str())
                {
                    continue;
                }
                let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
                out.push(LedgerAnswer {
                    request_id: id.clone(),
                    node: text("node").unwrap_or_default(),
                    plugin: text("plugin").unwrap_or_default(),
                    error: text("error"),
                    stale: doc.get("stale").and_then(Value::as_bool).unwrap_or(false),
                    at: time_of(doc.get("at")).ok_or_else(|| {
                        backend(format!("ledger answer {prefix}… has no valid \"at\" time"))
                    })?,
                });
            }
        }
        Ok(out)
    }
}

/// A `LedgerRequest` document as a record.
fn to_ledger_request(doc: &Map<String, Value>) -> Result<LedgerRequest, StoreError> {
    let text = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(LedgerRequest {
        id: text("id"),
        command: text("command"),
        sender: text("sender"),
        sent_at: time_of(doc.get("sent_at")).ok_or_else(|| {
            backend(format!(
                "ledger request {} has no valid \"sent_at\" time",
                doc.get("_id").unwrap_or(&Value::Null)
            ))
        })?,
        ttl: doc.get("ttl").and_then(Value::as_u64).unwrap_or(0),
        expected: doc
            .get("expected")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_equal_as_doubles_are_the_same_value() {
        for (a, b, same) in [
            (json!(1), json!(1.0), true),
            (json!({"x": [1.0, 2]}), json!({"x": [1, 2.0]}), true),
            (
                json!(12345678901234567890u64),
                json!(12345678901234567000u64),
                true,
            ),
            (json!(1), json!(2), false),
            (json!("1"), json!(1), false),
            (json!({"x": 1}), json!({"x": 1, "y": 2}), false),
            (json!([1]), json!([1, 1]), false),
        ] {
            assert_eq!(crate::query::same_value(&a, &b), same, "{a} vs {b}");
        }
    }

    #[test]
    fn couchdb_reserved_node_names_are_refused() {
        for (node, refused) in [
            ("web01", false),
            ("web01.example.com", false),
            ("", true),
            ("_design/x", true),
            ("_users", true),
            ("history:web01", true),
            ("ledger:x", true),
            ("history", false),
        ] {
            assert_eq!(refuse_node(node).is_some(), refused, "{node:?}");
        }
    }

    #[test]
    fn ids_are_percent_encoded_for_urls() {
        assert_eq!(encode("web01.example.com"), "web01.example.com");
        assert_eq!(encode("_design/x"), "_design%2Fx");
        assert_eq!(encode("\"a b\""), "%22a%20b%22");
    }

    fn obs(at: i64, change: Change) -> Observation {
        Observation {
            node: "n".into(),
            at: DateTime::from_timestamp(1_790_000_000 + at, 0).unwrap_or_default(),
            change,
        }
    }

    fn plugin(at: i64, value: Value) -> Observation {
        obs(
            at,
            Change::Plugin {
                name: "k".into(),
                value: value.into(),
                history: true,
            },
        )
    }

    #[test]
    fn a_document_in_memory_follows_the_store_rules() {
        let mut doc = Map::new();
        let mut sink = HistorySink {
            docs: Vec::new(),
            pins: Vec::new(),
            token: "t",
            seq: 0,
        };
        let now = "2026-01-01T00:00:00.000000Z";
        let outcomes: Vec<Outcome> = [
            plugin(10, json!(1)),
            plugin(20, json!(2)),
            plugin(30, json!(2)),
            plugin(15, json!(9)),
            obs(40, Change::Seen),
        ]
        .iter()
        .map(|o| apply_one(&mut doc, o, now, &mut sink))
        .collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Created,
                Outcome::Updated,
                Outcome::Unchanged,
                Outcome::Stale,
                Outcome::Unchanged
            ]
        );
        assert_eq!(doc["k"], json!(2));
        assert_eq!(doc["doc_type"], "SystemRecord");
        assert_eq!(doc["system_name"], "n");
        assert!(doc[META]["key_times"]["k"].is_string());
        assert_eq!(sink.docs.len(), 2);
        assert_eq!(sink.seq, 2);
        assert_eq!(sink.docs[1]["old"], json!(1));
        // `new` is the node's value: left out, and the latest entry named in the meta.
        for h in &sink.docs {
            assert!(h.get("new").is_none(), "{h}");
            assert_eq!(h[IMPLICIT_NEW], true, "{h}");
        }
        assert_eq!(doc[META][IMPLICIT_NEW_IDS]["k"], sink.docs[1]["_id"]);
        assert!(sink.pins.is_empty());
        // A volatile change replaces that value: the entry is to be pinned to it, once
        // (by a later write: a sink of its own).
        let volatile = |at: i64, v: Value| {
            obs(
                at,
                Change::Plugin {
                    name: "k".into(),
                    value: v.into(),
                    history: false,
                },
            )
        };
        let mut later = HistorySink {
            docs: Vec::new(),
            pins: Vec::new(),
            token: "u",
            seq: 2,
        };
        assert_eq!(
            apply_one(&mut doc, &volatile(50, json!(3)), now, &mut later),
            Outcome::Updated
        );
        apply_one(&mut doc, &volatile(60, json!(4)), now, &mut later);
        let id = sink.docs[1]["_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(later.pins, [(id, json!(2))]);
        assert!(doc[META][IMPLICIT_NEW_IDS].get("k").is_none());
        assert!(later.docs.is_empty());
        // A kept change and a volatile one in the same write: pinned in place.
        apply_one(&mut doc, &plugin(70, json!(5)), now, &mut later);
        apply_one(&mut doc, &volatile(80, json!(6)), now, &mut later);
        assert_eq!(later.pins.len(), 1);
        assert_eq!(later.docs.len(), 1);
        assert_eq!(later.docs[0]["old"], json!(4));
        assert_eq!(later.docs[0]["new"], json!(5));
        assert!(later.docs[0].get(IMPLICIT_NEW).is_none());
        let rec = to_record(&doc).expect("record");
        assert_eq!(rec.keys.keys().collect::<Vec<_>>(), vec!["k"]);
    }
}
