//! A read cache in front of the store for the web UI: the node list and per-path
//! values (what list, search, charts and stats read on every request) are kept until
//! the server commits again (its commit counter moves) or for a few seconds (another
//! server writing the same store), whichever comes first. Writes pass straight through.

use std::collections::HashMap;
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

type Values = Arc<Rows<(String, Value)>>;

/// A cached answer: the commit generation and time it was read at, and the answer.
type Entry<T> = (u64, Instant, Arc<T>);

/// The store, with its hot reads cached (see the module docs).
pub struct CachedStore {
    inner: DynStore,
    stats: Arc<Stats>,
    max_age: Duration,
    nodes: Mutex<Option<Entry<Vec<NodeSummary>>>>,
    values: Mutex<HashMap<KeyPath, (u64, Instant, Values)>>,
}

impl CachedStore {
    /// Wraps `inner`; entries live until `stats.commits` moves or `max_age` passes.
    pub fn new(inner: DynStore, stats: Arc<Stats>, max_age: Duration) -> CachedStore {
        CachedStore {
            inner,
            stats,
            max_age,
            nodes: Mutex::new(None),
            values: Mutex::new(HashMap::new()),
        }
    }

    fn generation(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Drops the cached node list, so a deactivation made through this handle shows
    /// at once (the list carries `deactivated_at`, which every fleet view filters on).
    fn forget_nodes(&self) {
        if let Ok(mut guard) = self.nodes.lock() {
            *guard = None;
        }
    }

    fn fresh(&self, generation: u64, at: Instant) -> bool {
        generation == self.generation() && at.elapsed() < self.max_age
    }
}

#[async_trait::async_trait]
impl Store for CachedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn apply(&self, batch: Batch) -> Result<Vec<Outcome>, StoreError> {
        self.inner.apply(batch).await
    }

    async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.inner.node(name).await
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>, StoreError> {
        if let Ok(guard) = self.nodes.lock() {
            if let Some((g, at, list)) = guard.as_ref() {
                if self.fresh(*g, *at) {
                    return Ok(list.as_ref().clone());
                }
            }
        }
        let generation = self.generation();
        let list = self.inner.nodes().await?;
        if let Ok(mut guard) = self.nodes.lock() {
            *guard = Some((generation, Instant::now(), Arc::new(list.clone())));
        }
        Ok(list)
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

    async fn key_values(&self, path: &KeyPath) -> Result<Rows<(String, Value)>, StoreError> {
        // Whole plugin values (all of dpkg, all of ohai) are too big to keep.
        if path.rest().is_empty() {
            return self.inner.key_values(path).await;
        }
        if let Ok(guard) = self.values.lock() {
            if let Some((g, at, v)) = guard.get(path) {
                if self.fresh(*g, *at) {
                    return Ok(v.as_ref().clone());
                }
            }
        }
        let generation = self.generation();
        let v = self.inner.key_values(path).await?;
        if let Ok(mut guard) = self.values.lock() {
            if guard.len() >= MAX_PATHS {
                guard.clear();
            }
            guard.insert(
                path.clone(),
                (generation, Instant::now(), Arc::new(v.clone())),
            );
        }
        Ok(v)
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
        self.inner.delete_node(name).await
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
