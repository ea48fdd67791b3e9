//! A read cache in front of the store for the web UI: the node list and per-path
//! values (what list, search, charts and stats read on every request) are handed out
//! shared (`Arc`), so a page of 100 out of 100,000 nodes copies 100 rows.
//!
//! An entry is fresh until this server commits again (its commit counter moves) or
//! for `max_age` (another server writing the same store). A commit of this server
//! means the next read waits for a new copy (one read of the store however many
//! requests wait), so a page never hides what this server stored. An entry that only
//! aged is served while one background read replaces it, for at most
//! [`STALE_LIMIT`]: a slow re-read of 100,000 rows no longer stalls every request.
//! Writes pass straight through.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use vogeler_store::{
    Batch, DynStore, HistoryEntry, KeyPath, LedgerAnswer, LedgerRequest, NodeRecord, NodeSummary,
    Outcome, Rows, Store, StoreError, Unreadable,
};

use crate::server::Stats;

/// Paths kept at most; the cache is emptied when full (a burst of odd queries).
const MAX_PATHS: usize = 64;

/// Sorted orders kept at most, emptied when full as the paths are.
const MAX_ORDERS: usize = 32;

/// How old an aged entry may be and still be served while it is re-read.
pub const STALE_LIMIT: Duration = Duration::from_secs(60);

type Values = Rows<(String, Value)>;

/// One cached answer and whether a background re-read is under way.
struct SlotState<T> {
    /// The commit generation and time it was read at, and the answer.
    entry: Option<(u64, Instant, Arc<T>)>,
    refreshing: bool,
}

/// A cached answer with single-flight loading (see the module docs).
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    /// Held while reading the store, so concurrent misses read it once.
    loading: tokio::sync::Mutex<()>,
}

impl<T: Send + Sync + 'static> Slot<T> {
    fn new() -> Arc<Slot<T>> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                entry: None,
                refreshing: false,
            }),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    fn forget(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.entry = None;
        }
    }

    fn put(&self, generation: u64, value: Arc<T>) {
        if let Ok(mut s) = self.state.lock() {
            s.entry = Some((generation, Instant::now(), value));
        }
    }

    /// The fresh entry, or an aged one (then a background re-read is started once).
    fn ready<F, Fut>(self: &Arc<Self>, cache: &CachedStore, load: &F) -> Option<Arc<T>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let generation = cache.generation();
        let mut s = self.state.lock().ok()?;
        let (g, at, value) = s.entry.as_ref()?;
        if *g != generation {
            return None;
        }
        let value = value.clone();
        let age = at.elapsed();
        if age < cache.max_age {
            return Some(value);
        }
        if age >= STALE_LIMIT {
            return None;
        }
        if !s.refreshing {
            s.refreshing = true;
            let (slot, read) = (self.clone(), load());
            tokio::spawn(async move {
                // Tagged with the generation before the read: a commit during it
                // makes the next request read again.
                let result = read.await;
                if let Ok(mut s) = slot.state.lock() {
                    s.refreshing = false;
                    if let Ok(v) = result {
                        s.entry = Some((generation, Instant::now(), Arc::new(v)));
                    }
                }
            });
        }
        Some(value)
    }

    async fn get<F, Fut>(
        self: &Arc<Self>,
        cache: &CachedStore,
        load: F,
    ) -> Result<Arc<T>, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if let Some(v) = self.ready(cache, &load) {
            return Ok(v);
        }
        let _one_reader = self.loading.lock().await;
        if let Some(v) = self.ready(cache, &load) {
            return Ok(v);
        }
        let generation = cache.generation();
        let value = Arc::new(load().await?);
        self.put(generation, value.clone());
        Ok(value)
    }
}

/// A sorted order of a node list: which list (and values) it was made from, and the
/// positions in it.
type Order = (Arc<Vec<NodeSummary>>, Option<Arc<Values>>, Arc<Vec<usize>>);

/// The store, with its hot reads cached (see the module docs).
pub struct CachedStore {
    inner: DynStore,
    stats: Arc<Stats>,
    max_age: Duration,
    nodes: Arc<Slot<Vec<NodeSummary>>>,
    values: Mutex<HashMap<KeyPath, Arc<Slot<Values>>>>,
    orders: Mutex<HashMap<String, Order>>,
}

impl CachedStore {
    /// Wraps `inner`; entries are fresh until `stats.commits` moves or `max_age` passes.
    pub fn new(inner: DynStore, stats: Arc<Stats>, max_age: Duration) -> CachedStore {
        CachedStore {
            inner,
            stats,
            max_age,
            nodes: Slot::new(),
            values: Mutex::new(HashMap::new()),
            orders: Mutex::new(HashMap::new()),
        }
    }

    fn generation(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Drops the cached node list, so a deactivation made through this handle shows
    /// at once (the list carries `deactivated_at`, which every fleet view filters on).
    fn forget_nodes(&self) {
        self.nodes.forget();
    }

    fn values_slot(&self, path: &KeyPath) -> Arc<Slot<Values>> {
        let Ok(mut map) = self.values.lock() else {
            return Slot::new();
        };
        if let Some(slot) = map.get(path) {
            return slot.clone();
        }
        if map.len() >= MAX_PATHS {
            map.clear();
        }
        map.entry(path.clone()).or_insert_with(Slot::new).clone()
    }

    /// The order `key` of `nodes` (positions, every node), made by `sort` once per
    /// node list (and per `values`, for a column sort) and kept while they are.
    pub fn order(
        &self,
        key: &str,
        nodes: &Arc<Vec<NodeSummary>>,
        values: Option<&Arc<Values>>,
        sort: impl FnOnce() -> Vec<usize>,
    ) -> Arc<Vec<usize>> {
        let same = |(n, v, _): &Order| {
            Arc::ptr_eq(n, nodes)
                && match (v, values) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        };
        if let Ok(map) = self.orders.lock() {
            if let Some(o) = map.get(key).filter(|o| same(o)) {
                return o.2.clone();
            }
        }
        let order = Arc::new(sort());
        if let Ok(mut map) = self.orders.lock() {
            if map.len() >= MAX_ORDERS {
                map.clear();
            }
            map.insert(
                key.to_string(),
                (nodes.clone(), values.cloned(), order.clone()),
            );
        }
        order
    }
}

#[async_trait::async_trait]
impl Store for CachedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn write_concurrency(&self) -> usize {
        self.inner.write_concurrency()
    }

    async fn apply(&self, batch: Batch) -> Result<Vec<Outcome>, StoreError> {
        self.inner.apply(batch).await
    }

    async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.inner.node(name).await
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>, StoreError> {
        Ok(self.nodes_shared().await?.as_ref().clone())
    }

    async fn nodes_shared(&self) -> Result<Arc<Vec<NodeSummary>>, StoreError> {
        let inner = self.inner.clone();
        self.nodes
            .get(self, move || {
                let inner = inner.clone();
                async move { inner.nodes().await }
            })
            .await
    }

    async fn any_deactivated(&self) -> Result<bool, StoreError> {
        self.inner.any_deactivated().await
    }

    async fn key_values(&self, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError> {
        // Whole plugin values (all of dpkg, all of ohai) are too big to keep.
        if path.rest().is_empty() {
            return self.inner.key_values(path).await;
        }
        Ok(self.key_values_shared(path).await?.as_ref().clone())
    }

    async fn key_values_shared(&self, path: &KeyPath) -> Result<Arc<Values>, StoreError> {
        if path.rest().is_empty() {
            return Ok(Arc::new(self.inner.key_values(path).await?));
        }
        let (inner, owned) = (self.inner.clone(), path.clone());
        self.values_slot(path)
            .get(self, move || {
                let (inner, path) = (inner.clone(), owned.clone());
                async move { inner.key_values(&path).await }
            })
            .await
    }

    async fn history(
        &self,
        node: &str,
        key: Option<&str>,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        self.inner.history(node, key).await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }

    async fn clear_error(&self, node: &str) -> Result<bool, StoreError> {
        self.inner.clear_error(node).await
    }

    async fn changes(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        self.inner.changes(since, limit).await
    }

    async fn change_outlines(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Rows<HistoryEntry>, StoreError> {
        self.inner.change_outlines(since, limit).await
    }

    async fn quarantine(&self, rows: &[Unreadable]) -> Result<u64, StoreError> {
        self.inner.quarantine(rows).await
    }

    async fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.prune_history(before).await
    }

    async fn delete_node(&self, name: &str) -> Result<bool, StoreError> {
        let found = self.inner.delete_node(name).await;
        self.forget_nodes();
        found
    }

    async fn deactivate_node(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let found = self.inner.deactivate_node(name, at).await;
        self.forget_nodes();
        found
    }

    async fn deactivate_inactive(
        &self,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let n = self.inner.deactivate_inactive(since, at).await;
        self.forget_nodes();
        n
    }

    async fn import(
        &self,
        record: &NodeRecord,
        history: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        self.inner.import(record, history).await
    }

    async fn record_ledger(
        &self,
        requests: &[LedgerRequest],
        answers: &[LedgerAnswer],
    ) -> Result<(), StoreError> {
        self.inner.record_ledger(requests, answers).await
    }

    async fn ledger_requests(&self, limit: usize) -> Result<Vec<LedgerRequest>, StoreError> {
        self.inner.ledger_requests(limit).await
    }

    async fn ledger_request(&self, id: &str) -> Result<Option<LedgerRequest>, StoreError> {
        self.inner.ledger_request(id).await
    }

    async fn ledger_answers(&self, ids: &[String]) -> Result<Vec<LedgerAnswer>, StoreError> {
        self.inner.ledger_answers(ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn reads_are_cached_until_the_server_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: DynStore = Arc::new(
            vogeler_store::sqlite::SqliteStore::open(&dir.path().join("c.db")).expect("sqlite"),
        );
        let stats = Arc::new(Stats::default());
        let cached = CachedStore::new(inner.clone(), stats.clone(), Duration::from_secs(60));
        let obs = |node: &str, v: &str| vogeler_store::Observation {
            node: node.into(),
            at: Utc::now(),
            change: vogeler_store::Change::Plugin {
                name: "facter".into(),
                value: json!({"os": {"family": v}}).into(),
                history: true,
            },
        };
        inner
            .apply(vec![obs("a", "Debian")].into())
            .await
            .expect("apply");
        let path = KeyPath::parse("facter.os.family").expect("path");
        assert_eq!(
            cached.key_values(&path).await.expect("values").rows.len(),
            1
        );
        assert_eq!(cached.nodes().await.expect("nodes").len(), 1);
        // Written behind the cache's back, without a commit counted: still cached.
        inner
            .apply(vec![obs("b", "RedHat")].into())
            .await
            .expect("apply");
        assert_eq!(
            cached.key_values(&path).await.expect("values").rows.len(),
            1
        );
        assert_eq!(cached.nodes().await.expect("nodes").len(), 1);
        // The server commits: the next read sees it.
        stats.commits.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            cached.key_values(&path).await.expect("values").rows.len(),
            2
        );
        assert_eq!(cached.nodes().await.expect("nodes").len(), 2);
    }
}
