//! `vogeler-server`: consumes results from `master.in` and keeps one document per node.
//!
//! The pipeline runs one way: broker → [`mod@convert`] → batch → [`Store::apply`] (one
//! transaction) → `stored` confirmations → one multiple-ack for the batch. A message
//! that cannot be used is republished (confirmed) to the dead-letter queue with its
//! reason before the ack. A store outage stops acking and retries; a broker outage
//! reconnects; in both cases the broker still holds every unacked message.
//!
//! [`Store::apply`]: vogeler_store::Store::apply

pub mod convert;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use vogeler_protocol::{Message, Stored};
use vogeler_signing::{PublicKey, Rejection, KEY_ID_HEADER, SIGNATURE_HEADER};
use vogeler_store::{Batch, Change, DynStore, Observation, Outcome, StoreError};
use vogeler_transport::{Backoff, Connector, Message as Inbound, Outgoing, Topology, Transport};

use crate::shutdown::Shutdown;
use convert::{convert, Confirm, Converted};

/// Header carrying the reason code of a dead-lettered message.
pub const REASON_HEADER: &str = "x-vogeler-reason";
/// Header carrying the human-readable detail of a dead-lettered message.
pub const DETAIL_HEADER: &str = "x-vogeler-detail";

/// Longest detail a dead letter's header (and its log line) carries. Details quote what
/// they refuse (an unknown kind, a value of the wrong type), and a header larger than
/// the broker's frame size closes the connection: the batch would be redelivered, and
/// refused again, for ever.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// How the server talks to the broker and batches its writes.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The broker (RabbitMQ or NATS) and its addresses.
    pub broker: Connector,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Most results committed in one store transaction.
    pub batch_size: usize,
    /// Unacked deliveries the broker may push ahead (more than a batch keeps the pipe full).
    pub prefetch: u16,
    /// Largest message accepted; larger ones are dead-lettered.
    pub max_message_bytes: usize,
    /// How long to wait for more messages before committing a partial batch.
    pub linger: Duration,
    /// History older than this is pruned at start and hourly; `None` keeps it all.
    pub history_retention: Option<Duration>,
    /// Public keys by node name (`[server] node_keys`): when set, every result is checked
    /// against its node's key and the verdict recorded under [`SIGNATURE_KEY`].
    pub node_keys: Option<Arc<HashMap<String, PublicKey>>>,
    /// Dead-letter (reason `unverified`) results that do not verify, instead of storing them.
    pub require_verified: bool,
    /// A result whose `collected_at` is further than this ahead of the server's clock is
    /// stored as collected at its arrival (and flagged), so a wrong client clock cannot
    /// freeze a key against every later real result.
    pub max_clock_skew: Duration,
    /// Time limit of one discovery query (`[server] query_timeout_ms`); past it the
    /// `discovered` reply carries the error.
    pub query_timeout: Duration,
    /// Discovery queries answered at once, beside ingest; more are answered "busy".
    pub discovery_concurrency: usize,
}

pub use vogeler_store::SIGNATURE_KEY;

impl ServerOptions {
    /// Defaults tuned on this project's benchmark (see BENCHMARKS.md).
    pub fn new(broker: Connector, topology: Topology) -> Self {
        ServerOptions {
            broker,
            topology,
            batch_size: 500,
            prefetch: 2000,
            max_message_bytes: vogeler_protocol::limits::MAX_MESSAGE_BYTES,
            linger: Duration::from_millis(5),
            history_retention: None,
            node_keys: None,
            require_verified: false,
            max_clock_skew: Duration::from_secs(300),
            query_timeout: Duration::from_secs(10),
            discovery_concurrency: 4,
        }
    }
}

/// Counters the web UI and logs read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Results and heartbeats committed.
    pub stored: AtomicU64,
    /// Messages republished to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Store transactions committed.
    pub commits: AtomicU64,
    /// Total store commit time, microseconds.
    pub store_micros: AtomicU64,
    /// Dead-lettered messages by reason code (`/metrics`): the codes are the fixed
    /// ones of `vogeler_protocol::limits` and this module, so the map stays small.
    pub dead_by_reason: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Stats {
    /// Counts one dead-lettered message under its reason.
    pub fn count_dead(&self, reason: &str) {
        if let Ok(mut m) = self.dead_by_reason.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    /// The dead-letter counts by reason, sorted by reason.
    pub fn dead_reasons(&self) -> Vec<(String, u64)> {
        self.dead_by_reason
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

enum End {
    Shutdown,
}

/// Runs the server until `shutdown` fires, reconnecting as often as needed.
pub async fn run(
    opts: ServerOptions,
    store: DynStore,
    stats: Arc<Stats>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(broker = %opts.broker.describe(), store = store.backend(), queue = %opts.topology.master_queue, "vogeler-server has started");
    if let Some(keep) = opts.history_retention {
        tokio::spawn(prune_history(store.clone(), keep, shutdown.clone()));
    }
    tokio::spawn(check_at_start(store.clone()));
    let mut backoff = Backoff::default();
    loop {
        let mut stop = Box::pin(shutdown.clone().wait_owned());
        let Some(session) = opts.broker.connect_retrying(&mut backoff, &mut stop).await else {
            return Ok(());
        };
        match serve(
            &opts,
            session.clone(),
            &store,
            &stats,
            &mut shutdown,
            &mut backoff,
        )
        .await
        {
            Ok(End::Shutdown) => {
                session.close().await;
                tracing::info!("vogeler-server stopped");
                return Ok(());
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker session lost; unacked results will be redelivered");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
        }
    }
}

/// At start, in the background (ingest never waits on it): finds stored rows that do
/// not read back (`vogeler-admin check`) and logs them, so an operator learns of rows
/// views are skipping.
async fn check_at_start(store: DynStore) {
    match store.check().await {
        Ok(found) if found.is_empty() => tracing::debug!("every stored row reads back"),
        Ok(found) => {
            for u in found.iter().take(20) {
                tracing::warn!(node = %u.node, key = %u.key, history = ?u.history, why = %u.why, "unreadable stored row");
            }
            tracing::warn!(rows = found.len(), "stored rows that do not read back are skipped by every view; run `vogeler-admin check --quarantine` to move them aside");
        }
        Err(e) => tracing::warn!(error = %e, "the start-up check of stored rows failed"),
    }
}

/// Retention: deletes history older than `keep` now and every hour until shutdown.
/// A failure is logged and retried at the next round; ingest never waits on it.
async fn prune_history(store: DynStore, keep: Duration, mut shutdown: Shutdown) {
    loop {
        let before = chrono::Duration::from_std(keep)
            .ok()
            .and_then(|k| chrono::Utc::now().checked_sub_signed(k));
        if let Some(before) = before {
            match store.prune_history(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, before = %before, "pruned old history"),
                Err(e) => {
                    tracing::warn!(error = %e, "history retention failed; retrying in an hour")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// A batch decoded and ready to commit: the deliveries and what each turned into.
struct Prepared {
    /// The deliveries, in order (bodies kept for dead-lettering).
    batch: Vec<Inbound>,
    /// What each usable message observed, shared with the store without copying.
    observations: Batch,
    /// Delivery index, confirmation and request id of each observation, index for
    /// index; a confirmation of `None` marks the server's own record (a signature record
    /// beside a result, or the note that a result was refused): not counted, never
    /// dead-lettered (its result is).
    meta: Vec<(usize, Option<Option<Confirm>>, Option<String>)>,
    /// Delivery index, reason code and detail for each unusable message.
    dead: Vec<(usize, String, String)>,
    /// Discovery questions to answer once the batch is committed.
    discover: Vec<vogeler_protocol::Discover>,
    /// Requests announced by runners, for the ledger.
    announce: Vec<vogeler_protocol::Announce>,
}

fn prepare(opts: &ServerOptions, batch: Vec<Inbound>) -> Prepared {
    let mut observations = Vec::with_capacity(batch.len());
    let mut meta = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    let mut discover = Vec::new();
    let mut announce = Vec::new();
    let arrival = Utc::now();
    for (i, d) in batch.iter().enumerate() {
        // A panic decoding one message dead-letters that message (reason `panic`); it
        // must never take the server's session down and loop on the redelivery.
        let converted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            test_panic_hook(PanicPlace::Decode, &d.body);
            convert(&d.body, opts.max_message_bytes, d.reply_to.as_deref())
        }))
        .unwrap_or_else(|p| Converted::Dead {
            reason: "panic",
            detail: format!("decoding the message panicked: {}", panic_text(&*p)),
        });
        match converted {
            Converted::Store {
                mut observation,
                mut confirm,
                request_id,
            } => {
                if let Some(why) = server_key(&observation.change) {
                    let detail = format!("node {}: {why}", observation.node);
                    dead.push((i, "refused".into(), detail));
                    continue;
                }
                let mut clamp_note = None;
                if let Some(claimed) = clamp_future(&mut observation, arrival, opts.max_clock_skew)
                {
                    if !matches!(observation.change, Change::Seen) {
                        tracing::warn!(
                            node = %observation.node,
                            collected_at = %claimed,
                            max_clock_skew_secs = opts.max_clock_skew.as_secs(),
                            "a result's collected_at is ahead of the server's clock by more than [server] max_clock_skew; stored as collected at its arrival"
                        );
                        if let Some(c) = confirm.as_mut() {
                            c.clamped_from = Some(claimed);
                        }
                        clamp_note = Some(clamp_record(&observation, claimed));
                    }
                }
                let record = match &opts.node_keys {
                    Some(keys) if !matches!(observation.change, Change::Seen) => {
                        match signature_record(keys, d, &observation) {
                            Err((reason, detail)) => {
                                dead.push((i, reason.to_string(), detail));
                                continue;
                            }
                            Ok((verdict, record)) => {
                                if let Err(r) = verdict {
                                    let detail = format!(
                                        "result from {} is not verified: {r}",
                                        observation.node
                                    );
                                    if opts.require_verified {
                                        dead.push((i, "unverified".into(), detail));
                                        continue;
                                    }
                                    tracing::info!(node = %observation.node, reason = r.reason(), "{detail}; storing it marked unverified");
                                }
                                Some(record)
                            }
                        }
                    }
                    _ => None,
                };
                observations.push(observation);
                meta.push((i, Some(confirm), request_id));
                for record in record.into_iter().flatten().chain(clamp_note) {
                    observations.push(record);
                    meta.push((i, None, None));
                }
            }
            Converted::Discover(q) => discover.push(q),
            Converted::Announce(a) => announce.push(a),
            Converted::Dead { reason, detail } => {
                // The node's record says a result was refused and why, unless results
                // must be verified (then an unverified body cannot name the node).
                if !opts.require_verified {
                    if let Some(note) = convert::refusal_note(&d.body, reason, &detail) {
                        observations.push(note);
                        meta.push((i, None, None));
                    }
                }
                dead.push((i, reason.to_string(), detail))
            }
        }
    }
    Prepared {
        batch,
        observations: observations.into(),
        meta,
        dead,
        discover,
        announce,
    }
}

/// Environment variable naming a text whose presence in a message body makes decoding
/// panic: the integration tests' way to prove a panic is caught (unset in production).
/// `ledger:TEXT` panics instead while recording the ledger of a request whose command
/// holds TEXT, after its batch is committed.
pub const TEST_PANIC_ENV: &str = "VOGELER_TEST_PANIC_ON";

/// Where the test hook panics: decoding a message, or recording the ledger.
#[derive(PartialEq)]
enum PanicPlace {
    Decode,
    Ledger,
}

fn test_panic_hook(place: PanicPlace, bytes: &[u8]) {
    static TRIGGER: std::sync::OnceLock<Option<(PanicPlace, Vec<u8>)>> = std::sync::OnceLock::new();
    let trigger = TRIGGER.get_or_init(|| {
        let v = std::env::var(TEST_PANIC_ENV)
            .ok()
            .filter(|v| !v.is_empty())?;
        Some(match v.strip_prefix("ledger:") {
            Some(text) => (PanicPlace::Ledger, text.as_bytes().to_vec()),
            None => (PanicPlace::Decode, v.into_bytes()),
        })
    });
    if let Some((at, t)) = trigger {
        if *at == place && !t.is_empty() && bytes.windows(t.len()).any(|w| w == t.as_slice()) {
            panic!("{TEST_PANIC_ENV} matched");
        }
    }
}

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// One session: a gather stage (consume and decode the next batch) runs while the
/// commit stage stores the previous one, so decoding overlaps the store's work. Batches
/// are committed and acked strictly in order.
async fn serve(
    opts: &ServerOptions,
    session: Arc<dyn Transport>,
    store: &DynStore,
    stats: &Arc<Stats>,
    shutdown: &mut Shutdown,
    backoff: &mut Backoff,
) -> anyhow::Result<End> {
    session.declare().await?;
    let mut consumer = session.consume_results(opts.prefetch).await?;
    // Only a session that got this far counts as reconnected (see `connect_retrying`).
    backoff.reset();
    tracing::info!(queue = %opts.topology.master_queue, "waiting for results");
    let (to_commit, mut commits) = tokio::sync::mpsc::channel::<Prepared>(1);
    // Discovery runs beside ingest in tasks of its own, at most this many at once.
    let discovery = Arc::new(tokio::sync::Semaphore::new(
        opts.discovery_concurrency.max(1),
    ));
    let mut committer = {
        let (opts, session, store, stats, mut shutdown) = (
            opts.clone(),
            session.clone(),
            store.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let limit = store.write_concurrency().max(1);
            // Batches in the store, oldest first, each with its nodes; finished in order.
            let mut in_flight = InFlight::default();
            // A batch that waits for room, or for an earlier batch of one of its nodes.
            let mut next: Option<(HashSet<String>, Prepared)> = None;
            let mut open = true;
            loop {
                if let Some((nodes, p)) = next.take() {
                    if in_flight.0.len() < limit
                        && in_flight.0.iter().all(|(busy, _)| busy.is_disjoint(&nodes))
                    {
                        let committing = start_commit(&store, &shutdown, p);
                        in_flight.0.push_back((nodes, committing));
                    } else {
                        next = Some((nodes, p));
                    }
                }
                if in_flight.0.is_empty() && next.is_none() && !open {
                    return Ok::<_, anyhow::Error>(End::Shutdown);
                }
                let oldest = async {
                    match in_flight.0.front_mut() {
                        Some((_, committing)) => committing.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    done = oldest => {
                        in_flight.0.pop_front();
                        let (p, outcomes, took) =
                            done.map_err(|e| anyhow::anyhow!("a commit task ended: {e}"))?;
                        let Some(outcomes) = outcomes else {
                            return Ok(End::Shutdown);
                        };
                        if !process(
                            &opts,
                            &session,
                            &store,
                            &stats,
                            &mut shutdown,
                            &discovery,
                            p,
                            outcomes,
                            took,
                        )
                        .await?
                        {
                            return Ok(End::Shutdown);
                        }
                    }
                    p = commits.recv(), if open && next.is_none() => match p {
                        Some(p) => {
                            // With one batch at a time (SQLite) there is nothing to overlap.
                            let nodes = if limit > 1 {
                                p.observations.iter().map(|o| o.node.clone()).collect()
                            } else {
                                HashSet::new()
                            };
                            next = Some((nodes, p));
                        }
                        None => open = false,
                    },
                }
            }
        })
    };
    let mut joined = false;
    let outcome = loop {
        let first = tokio::select! {
            d = consumer.next() => d,
            done = &mut committer => {
                joined = true;
                break done.map_err(anyhow::Error::from).and_then(|r| r);
            }
            _ = shutdown.wait() => break Ok(End::Shutdown),
        };
        let mut batch: Vec<Inbound> = Vec::with_capacity(opts.batch_size);
        match first {
            Some(Ok(d)) => batch.push(d),
            Some(Err(e)) => break Err(e.into()),
            None => break Err(anyhow::anyhow!("the broker closed the consumer")),
        }
        let mut failed = None;
        while batch.len() < opts.batch_size {
            match tokio::time::timeout(opts.linger, consumer.next()).await {
                Ok(Some(Ok(d))) => batch.push(d),
                Ok(Some(Err(e))) => {
                    failed = Some(e.into());
                    break;
                }
                Ok(None) => {
                    failed = Some(anyhow::anyhow!("the broker closed the consumer"));
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if to_commit.send(prepare(opts, batch)).await.is_err() {
            joined = true;
            break (&mut committer)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r);
        }
    };
    // Let the commit stage finish what it holds (in-flight work drains before exit).
    drop(to_commit);
    if !joined {
        if let Ok(Err(e)) = committer.await {
            return Err(e);
        }
    }
    outcome
}

/// A batch in the store: the batch back, its outcomes (`None`: shutdown came first)
/// and how long the store took.
type Committing =
    tokio::task::JoinHandle<(Prepared, Option<Vec<Result<Outcome, StoreError>>>, Duration)>;

/// The batches a session's commit stage has in the store. When the stage ends early
/// (shutdown, a lost connection) they are stopped: nothing of theirs was acked, so the
/// broker redelivers them to the next session, and none keeps retrying for a session
/// that is gone.
#[derive(Default)]
struct InFlight(std::collections::VecDeque<(HashSet<String>, Committing)>);

impl Drop for InFlight {
    fn drop(&mut self) {
        for (_, committing) in &self.0 {
            committing.abort();
        }
    }
}

/// Gives a batch to the store in a task of its own, so the store may hold several
/// (up to [`vogeler_store::Store::write_concurrency`]) while their answers are
/// finished in order.
fn start_commit(store: &DynStore, shutdown: &Shutdown, prepared: Prepared) -> Committing {
    let (store, mut shutdown) = (store.clone(), shutdown.clone());
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let outcomes = commit(&store, &mut shutdown, &prepared.observations).await;
        (prepared, outcomes, started.elapsed())
    })
}

/// One committed batch: ledger, dead letters, confirmations, ack. Returns `false` when
/// shutdown interrupted a ledger retry (nothing acked; the broker redelivers).
#[allow(clippy::too_many_arguments)]
async fn process(
    opts: &ServerOptions,
    session: &Arc<dyn Transport>,
    store: &DynStore,
    stats: &Stats,
    shutdown: &mut Shutdown,
    discovery: &Arc<tokio::sync::Semaphore>,
    prepared: Prepared,
    outcomes: Vec<Result<Outcome, StoreError>>,
    took: Duration,
) -> anyhow::Result<bool> {
    let Prepared {
        batch,
        observations,
        meta,
        mut dead,
        discover,
        announce,
    } = prepared;
    if batch.is_empty() {
        return Ok(true);
    }
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats
        .store_micros
        .fetch_add(took.as_micros() as u64, Ordering::Relaxed);

    let mut stored = 0u64;
    let mut answers = Vec::new();
    let mut confirms = Vec::new();
    let now = Utc::now();
    for (((i, confirm, request_id), obs), outcome) in
        meta.iter().zip(observations.iter()).zip(outcomes)
    {
        let Some(confirm) = confirm else {
            if let Ok(Outcome::Refused(e)) = &outcome {
                tracing::warn!(node = %obs.node, error = %e, "the server's own record (signature or refusal note) not stored");
            } else if let Err(e) = &outcome {
                tracing::warn!(node = %obs.node, error = %e, "the server's own record (signature or refusal note) not stored");
            }
            continue;
        };
        match outcome {
            Ok(Outcome::Refused(reason)) => {
                dead.push((*i, "refused".into(), format!("node {}: {reason}", obs.node)))
            }
            Err(e @ StoreError::Panicked(_)) => dead.push((*i, "panic".into(), e.to_string())),
            Err(e) => dead.push((*i, "store-rejected".into(), e.to_string())),
            Ok(outcome) => {
                stored += 1;
                // Older than the stored value: nothing changed, and the runner and the
                // ledger are told so rather than "stored".
                let stale = outcome == Outcome::Stale;
                if stale {
                    tracing::info!(node = %obs.node, collected_at = %obs.at, "result older than the stored value of its key; the stored value is kept (stale)");
                } else {
                    tracing::debug!(node = %obs.node, ?outcome, "stored");
                }
                if let Some(id) = request_id {
                    answers.push(ledger_answer(id, obs, now, stale));
                }
                if let Some(c) = confirm {
                    let mut c = c.clone();
                    c.stale = stale;
                    // Only a value that was stored goes back: not an error's, not a
                    // stale result's (the stored value is another one).
                    if c.want_value && !stale {
                        if let Change::Plugin { value, .. } = &obs.change {
                            (c.value, c.value_truncated) = convert::stored_value(value);
                        }
                    }
                    confirms.push(c);
                }
            }
        }
    }
    // The ledger first, so a runner told "stored" finds the answer recorded. The batch
    // is committed by now: a panic here loses ledger records (logged), never the batch's
    // acks, so one odd request cannot make every redelivery of its batch panic again.
    if !(answers.is_empty() && announce.is_empty()) {
        use futures_util::FutureExt as _;
        let ledger = async {
            let requests = ledger_requests(store, announce).await;
            record_ledger(store, shutdown, &requests, &answers).await
        };
        match std::panic::AssertUnwindSafe(ledger).catch_unwind().await {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(p) => {
                tracing::error!(panic = %panic_text(&*p), answers = answers.len(), "recording the request ledger panicked; these ledger records are dropped, the results stay stored")
            }
        }
    }
    // Confirmations go out together (pipelined), as do dead letters below.
    let replies = futures_util::future::join_all(confirms.iter().map(|c| send_stored(session, c)));
    let mut dead_letters = Vec::with_capacity(dead.len());
    for (i, reason, detail) in &dead {
        let d = &batch[*i];
        let detail = vogeler_protocol::limits::bounded(detail, MAX_DETAIL_BYTES);
        tracing::warn!(reason = %reason, detail = %detail, bytes = d.body.len(), "dead-lettering a message the server cannot use");
        let mut headers = vec![
            (REASON_HEADER.into(), reason.clone()),
            (DETAIL_HEADER.into(), detail.into_owned()),
            ("x-original-exchange".into(), d.source.clone()),
            ("x-original-routing-key".into(), d.key.clone()),
        ];
        // Kept so `vogeler-admin dead --requeue` republishes a signed message still signed;
        // one too long to be a signature is left off (with the others it could overflow
        // the frame).
        for name in [SIGNATURE_HEADER, KEY_ID_HEADER] {
            if let Some(v) = d.header(name).filter(|v| v.len() <= MAX_DETAIL_BYTES) {
                headers.push((name.to_string(), v.to_string()));
            }
        }
        let msg = Outgoing {
            body: d.body.clone(),
            headers,
            ..Default::default()
        };
        dead_letters.push(session.dead_letter(msg, reason));
    }
    replies.await;
    for sent in futures_util::future::join_all(dead_letters).await {
        sent?;
    }
    // Discovery is answered beside ingest (after this batch's commit, so a node whose
    // first result shared the batch is already known); the batch does not wait for it.
    for q in discover {
        match discovery.clone().try_acquire_owned() {
            Ok(permit) => {
                let (session, store, limit) = (session.clone(), store.clone(), opts.query_timeout);
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = answer_discovery(&session, &store, q, limit).await {
                        tracing::warn!(error = %e, "cannot send a discovery answer");
                    }
                });
            }
            Err(_) => {
                reply_discovered(
                    session,
                    q,
                    Vec::new(),
                    Some(format!(
                        "the server is busy answering {} discovery requests; try again",
                        opts.discovery_concurrency
                    )),
                )
                .await
            }
        }
    }
    let acks: Vec<_> = batch.iter().map(|d| &d.ack).collect();
    session.ack_batch(&acks).await?;
    stats.stored.fetch_add(stored, Ordering::Relaxed);
    stats
        .dead_lettered
        .fetch_add(dead.len() as u64, Ordering::Relaxed);
    for (_, reason, _) in &dead {
        stats.count_dead(reason);
    }
    Ok(true)
}

/// A result's signature check: the verifying key id, or why it is not verified.
type Verdict = Result<String, Rejection>;

/// Checks a result against its node's key. `Err((reason, detail))`: dead-letter it
/// (a result under a reserved signature key name); otherwise the verdict and the
/// observations recording it: under [`SIGNATURE_KEY`] and beside the result's own key.
fn signature_record(
    keys: &HashMap<String, PublicKey>,
    d: &Inbound,
    result: &Observation,
) -> Result<(Verdict, Vec<Observation>), (&'static str, String)> {
    let plugin = match &result.change {
        Change::Plugin { name, .. } => Some(name.clone()),
        Change::Error { plugin, .. } => plugin.clone(),
        Change::Seen => None,
    };
    if plugin
        .as_deref()
        .is_some_and(vogeler_store::is_signature_key)
    {
        return Err((
            "refused",
            format!(
                "node {}: plugin names {SIGNATURE_KEY:?} and \"{SIGNATURE_KEY}.*\" are reserved for the server's signature records",
                result.node
            ),
        ));
    }
    let verdict = match (keys.get(&result.node), d.header(SIGNATURE_HEADER)) {
        (None, _) => Err(Rejection::UnknownKey(format!(
            "no {}.pub in [server] node_keys",
            result.node
        ))),
        (Some(_), None) => Err(Rejection::Unsigned(
            "the result carries no signature".into(),
        )),
        (Some(key), Some(sig)) => key.verify(&d.body, sig).map(|()| key.id().to_string()),
    };
    let value = match &verdict {
        Ok(key_id) => serde_json::json!({"verified": true, "key_id": key_id}),
        Err(r) => serde_json::json!({
            "verified": false,
            "reason": r.reason(),
            "plugin": plugin,
        }),
    };
    let record = |name: String, value: serde_json::Value| Observation {
        node: result.node.clone(),
        at: result.at,
        change: Change::Plugin {
            name,
            value: value.into(),
            history: true,
        },
    };
    // The latest verdict under `signature` (as before), and the plugin's own verdict
    // beside its key, so a signed key keeps its verdict when another key's is not.
    let mut records = Vec::with_capacity(2);
    if let Some(p) = plugin.as_deref() {
        let mut own = value.clone();
        if let Some(o) = own.as_object_mut() {
            o.remove("plugin");
        }
        records.push(record(vogeler_store::signature_key(p), own));
    }
    records.push(record(SIGNATURE_KEY.into(), value));
    Ok((verdict, records))
}

/// Why a result's key is one the server writes itself, whatever the configuration: its
/// signature verdicts ([`SIGNATURE_KEY`], `signature.*`, written only with `[server]
/// node_keys`, so a node without a key could otherwise forge one) and its clock-skew note.
/// `None` for any other key (the store refuses its own fields itself).
fn server_key(change: &Change) -> Option<String> {
    let Change::Plugin { name, .. } = change else {
        return None;
    };
    if vogeler_store::is_signature_key(name) {
        return Some(format!(
            "plugin name {name:?} is reserved: {SIGNATURE_KEY:?} and \"{SIGNATURE_KEY}.*\" hold the server's signature records"
        ));
    }
    (name == CLOCK_SKEW_KEY).then(|| {
        format!("plugin name {CLOCK_SKEW_KEY:?} is reserved for the server's clock-skew note")
    })
}

/// The document key where the server notes the latest clamped `collected_at`:
/// `{"key": …, "claimed": …, "clamped_to": …}` (one entry, so it stays bounded).
pub const CLOCK_SKEW_KEY: &str = "clock_skew";

/// The server's note that `obs` (already moved to its arrival) claimed `claimed`.
fn clamp_record(obs: &Observation, claimed: chrono::DateTime<Utc>) -> Observation {
    let key = match &obs.change {
        Change::Plugin { name, .. } => Some(name.as_str()),
        Change::Error { plugin, .. } => plugin.as_deref(),
        Change::Seen => None,
    };
    Observation {
        node: obs.node.clone(),
        at: obs.at,
        change: Change::Plugin {
            name: CLOCK_SKEW_KEY.into(),
            value: serde_json::json!({
                "key": key,
                "claimed": vogeler_store::rfc3339(claimed),
                "clamped_to": vogeler_store::rfc3339(obs.at),
            })
            .into(),
            history: true,
        },
    }
}

/// Moves an observation claiming a time further than `skew` ahead of `now` back to
/// `now`; returns the time it claimed when it did.
fn clamp_future(
    obs: &mut Observation,
    now: chrono::DateTime<Utc>,
    skew: Duration,
) -> Option<chrono::DateTime<Utc>> {
    let limit = now.checked_add_signed(chrono::Duration::from_std(skew).ok()?)?;
    if obs.at <= limit {
        return None;
    }
    Some(std::mem::replace(&mut obs.at, now))
}

/// The ledger line of a stored (or `stale`) result that answered request `id`.
fn ledger_answer(
    id: &str,
    obs: &vogeler_store::Observation,
    now: chrono::DateTime<Utc>,
    stale: bool,
) -> vogeler_store::LedgerAnswer {
    let (plugin, error) = match &obs.change {
        vogeler_store::Change::Plugin { name, .. } => (name.clone(), None),
        vogeler_store::Change::Error {
            plugin, message, ..
        } => (plugin.clone().unwrap_or_default(), Some(message.clone())),
        vogeler_store::Change::Seen => (String::new(), None),
    };
    vogeler_store::LedgerAnswer {
        request_id: id.to_string(),
        node: obs.node.clone(),
        plugin,
        error,
        stale,
        at: now,
    }
}

/// Announced requests as ledger records; a broadcast expects every node in the
/// registry (read now: a node that joins later answers as unexpected).
async fn ledger_requests(
    store: &DynStore,
    announce: Vec<vogeler_protocol::Announce>,
) -> Vec<vogeler_store::LedgerRequest> {
    let mut registry: Option<Vec<String>> = None;
    let mut out = Vec::with_capacity(announce.len());
    for a in announce {
        test_panic_hook(PanicPlace::Ledger, a.command.as_bytes());
        let mut expected = match a.expected {
            Some(nodes) => nodes,
            None => {
                if registry.is_none() {
                    registry = Some(match store.nodes().await {
                        // Deactivated nodes are not expected to answer.
                        Ok(nodes) => nodes
                            .into_iter()
                            .filter(|n| n.deactivated_at.is_none())
                            .map(|n| n.name)
                            .collect(),
                        Err(e) => {
                            tracing::warn!(error = %e, request = %a.request_id, "cannot read the node registry for a broadcast's expected nodes");
                            Vec::new()
                        }
                    });
                }
                // Whoever answers a broadcast was asked, known to the registry yet or not.
                let mut nodes = registry.clone().unwrap_or_default();
                nodes.push(vogeler_store::ledger::BROADCAST.to_string());
                nodes
            }
        };
        expected.sort();
        expected.dedup();
        out.push(vogeler_store::LedgerRequest {
            id: a.request_id,
            command: a.command,
            sender: a.sender,
            sent_at: a.sent_at,
            ttl: a.ttl,
            expected,
        });
    }
    out
}

/// Writes the batch's ledger records before the batch is acked, retrying while the
/// store is unavailable. A record the store refuses is logged and dropped: the ledger
/// never blocks ingest. `false` means shutdown came first (nothing acked).
async fn record_ledger(
    store: &DynStore,
    shutdown: &mut Shutdown,
    requests: &[vogeler_store::LedgerRequest],
    answers: &[vogeler_store::LedgerAnswer],
) -> bool {
    let written = retry_unavailable(shutdown, "while recording the request ledger", || {
        store.record_ledger(requests, answers)
    })
    .await;
    match written {
        None => false,
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!(error = %e, requests = requests.len(), answers = answers.len(), "the store refused request ledger records; they are dropped");
            true
        }
    }
}

/// Answers a discovery question from the store, in its own task beside ingest, within
/// `limit`. A bad filter, a store error, a time-out or a panic is answered too, so the
/// runner says why instead of waiting; rows that do not read back are logged.
async fn answer_discovery(
    session: &Arc<dyn Transport>,
    store: &DynStore,
    q: vogeler_protocol::Discover,
    limit: Duration,
) -> anyhow::Result<()> {
    use futures_util::FutureExt as _;
    let answer = async {
        let mut query = vogeler_store::Query::parse(&q.filters, &q.names)?;
        query.seen_since = q.seen_within_secs.and_then(|s| {
            Utc::now().checked_sub_signed(chrono::Duration::seconds(i64::try_from(s).ok()?))
        });
        vogeler_store::within(limit, "the discovery query", store.select(&query)).await
    };
    let answer = std::panic::AssertUnwindSafe(answer)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(StoreError::Panicked(panic_text(&*p))));
    let (nodes, error) = match answer {
        Ok(found) => {
            if let Some(notice) = found.notice() {
                tracing::warn!(id = %q.id, "discovery: {notice}");
            }
            (found.rows.into_iter().map(|n| n.name).collect(), None)
        }
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    tracing::debug!(id = %q.id, nodes = nodes.len(), error = ?error, "answered a discovery request");
    reply_discovered(session, q, nodes, error).await;
    Ok(())
}

/// Publishes a `discovered` reply; a reply address that is gone is the runner's
/// business, logged, never a reason to redeliver the batch.
async fn reply_discovered(
    session: &Arc<dyn Transport>,
    q: vogeler_protocol::Discover,
    nodes: Vec<String>,
    error: Option<String>,
) {
    if !crate::client::valid_reply_to(&q.reply_to) {
        // Publishing to it would fail the session, again on every redelivery.
        tracing::warn!(id = %q.id, "discovery request with an unusable reply_to; not answered");
        return;
    }
    let body = vogeler_protocol::encode(&Message::Discovered(vogeler_protocol::Discovered {
        discover_id: q.id,
        nodes,
        error,
    }));
    if let Err(e) = session
        .publish_reply(&q.reply_to, Outgoing::new(body))
        .await
    {
        tracing::debug!(error = %e, "discovery answer not confirmed");
    }
}

/// Applies the batch, retrying while the store is unavailable. A batch the store
/// rejects as a whole is retried item by item so one bad item cannot block the rest.
/// `None` means shutdown came first.
async fn commit(
    store: &DynStore,
    shutdown: &mut Shutdown,
    batch: &Batch,
) -> Option<Vec<Result<Outcome, StoreError>>> {
    if batch.is_empty() {
        return Some(Vec::new());
    }
    match apply_retrying(store, shutdown, batch.clone()).await? {
        Ok(outcomes) => Some(outcomes.into_iter().map(Ok).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "store rejected a batch; applying its items one by one");
            let mut out = Vec::with_capacity(batch.len());
            for o in batch.iter() {
                match apply_retrying(store, shutdown, Arc::from(vec![o.clone()])).await? {
                    Ok(mut v) => out.push(
                        v.pop()
                            .ok_or(StoreError::Invalid("store returned no outcome".into())),
                    ),
                    Err(e) => out.push(Err(e)),
                }
            }
            Some(out)
        }
    }
}

async fn apply_retrying(
    store: &DynStore,
    shutdown: &mut Shutdown,
    batch: Batch,
) -> Option<Result<Vec<Outcome>, StoreError>> {
    use futures_util::FutureExt as _;
    // A panicking store call is an error for this batch (then for the one item that
    // panics, dead-lettered with reason `panic`), not the end of the commit task.
    retry_unavailable(shutdown, "(results held unacked)", || {
        std::panic::AssertUnwindSafe(store.apply(batch.clone()))
            .catch_unwind()
            .map(|r| r.unwrap_or_else(|p| Err(StoreError::Panicked(panic_text(&*p)))))
    })
    .await
}

/// Calls the store until it answers anything but "unavailable", waiting with backoff
/// between tries; `None` when shutdown came first. `what` says in the log what waits.
async fn retry_unavailable<T, F, Fut>(
    shutdown: &mut Shutdown,
    what: &str,
    mut call: F,
) -> Option<Result<T, StoreError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match call().await {
            Err(StoreError::Unavailable { backend, message }) => {
                let wait = backoff.next_delay();
                tracing::warn!(backend, error = %message, retry_in_ms = wait.as_millis() as u64, "store unavailable {what}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return None,
                }
            }
            other => return Some(other),
        }
    }
}

/// Publishes the `stored` confirmation. An unusable reply address is not published to
/// (it would fail the session, again on every redelivery), and a vanished one is the
/// runner's business: both are logged, neither redelivers the batch.
async fn send_stored(session: &Arc<dyn Transport>, c: &Confirm) {
    if !crate::client::valid_reply_to(&c.reply_to) {
        tracing::warn!(node = %c.node, "result with an unusable reply_to; stored, not confirmed");
        return;
    }
    let msg = Message::Stored(Stored {
        request_id: c.request_id.clone(),
        node: c.node.clone(),
        plugin: c.plugin.clone(),
        ok: c.error.is_none(),
        error: c.error.clone(),
        stale: c.stale,
        clamped_from: c.clamped_from,
        stored_at: Utc::now(),
        value: c.value.clone(),
        value_truncated: c.value_truncated,
    });
    let body = vogeler_protocol::encode(&msg);
    if let Err(e) = session
        .publish_reply(&c.reply_to, Outgoing::new(body))
        .await
    {
        tracing::debug!(error = %e, "stored confirmation not confirmed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vogeler_signing::SecretKey;

    fn delivery(body: &[u8], headers: Vec<(String, String)>) -> Inbound {
        Inbound {
            body: body.to_vec(),
            redelivered: false,
            key: String::new(),
            source: "m".into(),
            reply_to: None,
            headers,
            ack: vogeler_transport::AckHandle::detached(),
        }
    }

    fn result(node: &str, plugin: &str) -> Observation {
        Observation {
            node: node.into(),
            at: Utc::now(),
            change: Change::Plugin {
                name: plugin.into(),
                value: serde_json::json!(1).into(),
                history: true,
            },
        }
    }

    #[test]
    fn the_servers_own_keys_are_refused_whatever_the_configuration() {
        for name in [SIGNATURE_KEY, "signature.facter", CLOCK_SKEW_KEY] {
            let why = server_key(&result("web01", name).change).expect(name);
            assert!(why.contains(&format!("{name:?}")), "{why}");
        }
        for name in ["signatures", "facter", "clock"] {
            assert_eq!(server_key(&result("web01", name).change), None, "{name}");
        }
        let error = Change::Error {
            plugin: Some(SIGNATURE_KEY.into()),
            message: "x".into(),
            raw: None,
        };
        assert_eq!(
            server_key(&error),
            None,
            "an error result writes last_error only"
        );
    }

    #[test]
    fn only_times_beyond_the_skew_are_clamped_to_arrival() {
        let now = Utc::now();
        let skew = Duration::from_secs(300);
        let mut obs = result("web01", "facter");
        obs.at = now + chrono::Duration::seconds(299);
        assert_eq!(clamp_future(&mut obs, now, skew), None);
        let far = now + chrono::Duration::days(365);
        obs.at = far;
        assert_eq!(clamp_future(&mut obs, now, skew), Some(far));
        assert_eq!(obs.at, now);
        obs.at = now - chrono::Duration::days(1);
        assert_eq!(
            clamp_future(&mut obs, now, skew),
            None,
            "the past is never clamped"
        );
    }

    #[test]
    fn results_are_checked_against_their_nodes_key() {
        let web01 = SecretKey::from_seed([5; 32]);
        let keys: HashMap<String, PublicKey> =
            [("web01".to_string(), web01.public("web01"))].into();
        let body = b"{\"v\":1}";
        let verdict = |d: &Inbound, node: &str| {
            let (v, records) = signature_record(&keys, d, &result(node, "facter")).expect("record");
            let mut values = records.into_iter().map(|r| {
                let Change::Plugin { name, value, .. } = r.change else {
                    panic!("a plugin key");
                };
                (name, value.tree().expect("JSON").into_owned())
            });
            let (own_name, own) = values.next().expect("the key's own verdict");
            assert_eq!(own_name, "signature.facter");
            assert!(own.get("plugin").is_none(), "{own}");
            let (name, value) = values.next().expect("the latest verdict");
            assert_eq!(name, SIGNATURE_KEY);
            assert_eq!(own["verified"], value["verified"]);
            (v.map_err(|r| r.reason()), value)
        };
        let (v, value) = verdict(&delivery(body, web01.headers(body)), "web01");
        assert_eq!(v, Ok(web01.id().to_string()));
        assert_eq!(value["verified"], true);
        let (v, value) = verdict(&delivery(body, vec![]), "web01");
        assert_eq!(v, Err("unsigned"));
        assert_eq!(value["plugin"], "facter");
        let other = SecretKey::from_seed([6; 32]);
        assert_eq!(
            verdict(&delivery(body, other.headers(body)), "web01").0,
            Err("bad-signature")
        );
        assert_eq!(
            verdict(&delivery(body, web01.headers(b"other")), "web01").0,
            Err("bad-signature")
        );
        assert_eq!(
            verdict(&delivery(body, web01.headers(body)), "db01").0,
            Err("unknown-key")
        );
        let reserved = signature_record(
            &keys,
            &delivery(body, web01.headers(body)),
            &result("web01", SIGNATURE_KEY),
        );
        assert!(matches!(reserved, Err(("refused", _))));
        let reserved = signature_record(
            &keys,
            &delivery(body, web01.headers(body)),
            &result("web01", "signature.facter"),
        );
        assert!(matches!(reserved, Err(("refused", _))));
    }
}
