//! A client's requests on NATS: live on two plain subscriptions, the requests stream read
//! only to catch up.
//!
//! **Why not a consumer per client.** Every JetStream consumer, even an ephemeral
//! memory-only one, costs the server about 40 KB; two per client came to 95–165 KB of
//! nats-server memory per node, against about 1 KB for a plain subscription. So a
//! client holds no consumer while it runs: it subscribes to `P.req.all` and
//! `P.req.node.<node>` like any core NATS subscriber, and the requests stream, which
//! stores every request anyway, is read only where the live feed may have missed
//! something:
//! - after a restart, from the place the client saved ([`Resume`]);
//! - after a reconnect, or when the client library dropped messages for a slow reader;
//! - now and then to move the saved place on (see below);
//! - when a look at the last stream message of each subject (every 5 to 10 minutes, two
//!   small requests, no consumer) finds one the client has not seen: a core delivery lost
//!   on a cluster route that came back without the client noticing.
//!
//! A catch-up makes one short-lived consumer per subject (memory, one copy, no acks),
//! reads to the end of the stream and deletes it.
//!
//! **The place.** A live message carries no stream sequence, so the place has two
//! parts: per subject, the stream sequence up to which a catch-up read everything, and
//! the identities of requests handled live since. An identity is a hash of subject and
//! body ([`request_id`]); the same request is the same bytes on both paths. A restart
//! reads the stream from the sequence on and skips what the identities name; each
//! catch-up that reads an identity's stream copy moves the sequence past it and drops
//! the identity. When the identities pile up (32 to 63, chosen at random per client
//! so a fleet does not catch up all at once), a catch-up is made to fold them in, at
//! most one a minute.
//!
//! **Exactly what runs.** A request reaches the program once: a live copy after a
//! catch-up delivered it is dropped, and a catch-up copy of a request delivered live is
//! skipped. A request counts as handled only when the program acks it: one still
//! running when the client stops runs again after the restart (at least once, never
//! lost). Identical bodies on one subject (the 2010 wire has no request id) are
//! counted, not merged.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;

use super::{now_ms, parse_headers};
use crate::seam::{AckHandle, AckInner, Message, Resume, Subscription};
use crate::TransportError;

/// How many live-handled identities a client keeps before it catches up to fold them
/// into the sequence: this plus a random share of as many again.
const REFRESH_AT: usize = 32;
/// Most identities of requests a catch-up delivered kept to drop their live copies: as
/// many as the client library buffers for a subscription (past that it drops live
/// messages for a slow reader, and a catch-up follows anyway). A catch-up can deliver
/// far more than a few requests whose live copies still wait behind it: every request
/// of a burst the client has not reached yet.
const CAUGHT_KEPT: usize = 64 * 1024;
/// How long the live feed stays quiet before the identities a catch-up delivered until
/// then are forgotten. A live copy is on its way (in the client's buffer, on a single
/// server) by the time a catch-up reads the stored one, so once the feed has been quiet
/// this long none is still to come: a request sent while the client was away has none,
/// and a later request with the same body (the 2010 wire has no request id) must not be
/// taken for one. Not a fixed age: a burst the program takes minutes to work through
/// keeps its live copies queued all that time.
const CAUGHT_QUIET: Duration = Duration::from_secs(30);
/// Most live-handled identities kept when catch-ups keep failing (the stream unreachable
/// while live requests still arrive): past it the oldest is forgotten, and a restart may
/// run that request again (at least once) rather than the place growing without end.
const LIVE_DONE_KEPT: usize = 2048;
/// Messages one catch-up fetch asks for.
const CATCH_UP_BATCH: usize = 256;
/// How often a client looks at each subject's last stored request (plus a random share
/// of as much again, so a fleet does not look in step).
const CHECK_EVERY: Duration = Duration::from_secs(300);
/// The shortest time between two catch-ups made to fold live-handled requests in: a
/// flood of requests (anyone allowed to publish to the request subjects can make one)
/// costs each client at most one catch-up a minute, not one every 32 requests.
const REFRESH_GAP: Duration = Duration::from_secs(60);
/// The longest wait between failed catch-up attempts.
const CATCH_UP_MAX_DELAY: Duration = Duration::from_secs(60);
/// How long a catch-up waits for the next message of a fetch before it fails (and is
/// tried again): a fetch whose connection dropped is never answered, and without this
/// the catch-up, and with it every live request, would wait for ever.
const CATCH_UP_STALL: Duration = Duration::from_secs(10);

/// Which of a client's two subjects a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    Broadcast,
    Node,
}

impl Feed {
    fn slot(self) -> usize {
        match self {
            Feed::Broadcast => 0,
            Feed::Node => 1,
        }
    }
}

/// A request's identity on both paths: its subject and body, hashed (128 bits, hex).
pub(crate) fn request_id(subject: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(subject.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a catch-up can read a stored request with this header block. The NATS client
/// library drops the whole connection on one it cannot parse (not UTF-8, no `NATS/1.0`
/// line, a line without `:`, a bad header name), a fetch swallows one with a status
/// line, and anyone who may publish a request can store
/// such a message: this follows the library's parser (async-nats 0.46, `connection.rs`)
/// so a catch-up can pass over it instead of reading it again on every attempt.
pub(crate) fn headers_readable(block: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(block) else {
        return false;
    };
    let mut lines = text.lines().peekable();
    let Some(status) = lines.next().and_then(|l| l.strip_prefix("NATS/1.0")) else {
        return false;
    };
    // A status (`NATS/1.0 404`, `100 Idle Heartbeat`…) parses, but a fetch takes it
    // for the server's own word (the end of a batch, a heartbeat) and never hands the
    // request over: no publisher of requests writes one.
    if !status.trim().is_empty() {
        return false;
    }
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return false;
        };
        if name.parse::<async_nats::HeaderName>().is_err() {
            return false;
        }
        while lines
            .next_if(|l| l.starts_with(char::is_whitespace))
            .is_some()
        {}
    }
    true
}

/// Whether a request stored at `published_ms` with `expiration` (ms, the publisher's
/// header: any number at all) is past it at `now_ms`.
fn expired(published_ms: i128, expiration: Option<i128>, now_ms: i128) -> bool {
    expiration.is_some_and(|ms| published_ms.saturating_add(ms) < now_ms)
}

/// Takes one `id` from a count of identities (dropping it at zero); false when there was
/// none.
fn take_one(counts: &mut HashMap<String, u32>, id: &str) -> bool {
    let Some(n) = counts.get_mut(id) else {
        return false;
    };
    *n -= 1;
    if *n == 0 {
        counts.remove(id);
    }
    true
}

/// What a client has handled: see the module docs. Pure bookkeeping, unit-tested.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Per feed: the highest stream sequence handled.
    acked: [u64; 2],
    /// Per feed: stream sequences delivered (or matched to a live copy) and not handled.
    running: [BTreeSet<u64>; 2],
    /// Per feed: the highest stream sequence a catch-up of this process read.
    read: [u64; 2],
    /// Identities delivered live and not yet handled.
    live_running: HashMap<String, u32>,
    /// Identities handled live that no catch-up has read yet, each with the number of
    /// catch-ups begun when it was handled.
    live_done: Vec<(String, u64)>,
    /// Stream copies a catch-up found of requests still running live.
    live_seq: HashMap<String, Vec<(Feed, u64)>>,
    /// Identities a catch-up delivered lately, by count: their live copies are dropped.
    caught: HashMap<String, u32>,
    /// The same, oldest first, with when each was read (to forget them).
    caught_order: VecDeque<(String, Instant)>,
    /// Catch-ups begun.
    passes: u64,
    /// How many live-handled identities call for a catch-up.
    refresh_at: usize,
}

impl Tracker {
    pub(crate) fn new(start: &Resume, refresh_at: usize) -> Self {
        let at = [start.broadcast, start.node];
        Tracker {
            acked: at,
            running: Default::default(),
            read: at,
            live_running: HashMap::new(),
            live_done: start.handled.iter().map(|id| (id.clone(), 0)).collect(),
            live_seq: HashMap::new(),
            caught: HashMap::new(),
            caught_order: VecDeque::new(),
            passes: 0,
            refresh_at,
        }
    }

    /// Whether the stored request `seq` with identity `id` was delivered or passed over
    /// already (a look at the stream's last message tells whether to catch up).
    fn knows(&self, feed: Feed, seq: u64, id: &str) -> bool {
        seq <= self.read[feed.slot()]
            || self.live_running.contains_key(id)
            || self.live_seq.contains_key(id)
            || self.live_done.iter().any(|(d, _)| d == id)
            || self.caught.contains_key(id)
    }

    /// Forgets the caught identities read before `before` (the live feed has been quiet
    /// since: their live copies, if any, came), and the oldest past [`CAUGHT_KEPT`].
    pub(crate) fn forget_caught(&mut self, before: Option<Instant>) {
        while let Some((id, at)) = self.caught_order.front() {
            let old = before.is_some_and(|b| *at < b);
            if !old && self.caught_order.len() <= CAUGHT_KEPT {
                break;
            }
            take_one(&mut self.caught, id);
            self.caught_order.pop_front();
        }
    }

    /// Where a catch-up of `feed` starts reading (after this sequence).
    fn read_from(&self, feed: Feed) -> u64 {
        self.read[feed.slot()]
    }

    /// A live copy arrived: whether to deliver it.
    pub(crate) fn on_live(&mut self, id: &str) -> bool {
        if take_one(&mut self.caught, id) {
            return false;
        }
        *self.live_running.entry(id.to_string()).or_default() += 1;
        true
    }

    /// A catch-up read `seq`: whether to deliver it. `expired` requests are passed
    /// over as handled.
    pub(crate) fn on_stream(&mut self, feed: Feed, seq: u64, id: &str, expired: bool) -> bool {
        let i = feed.slot();
        if seq <= self.read[i] {
            return false;
        }
        self.read[i] = seq;
        if let Some(pos) = self.live_done.iter().position(|(d, _)| d == id) {
            self.live_done.swap_remove(pos);
            self.done(feed, seq);
            return false;
        }
        if take_one(&mut self.live_running, id) {
            self.running[i].insert(seq);
            self.live_seq
                .entry(id.to_string())
                .or_default()
                .push((feed, seq));
            return false;
        }
        if expired {
            self.done(feed, seq);
            return false;
        }
        self.running[i].insert(seq);
        *self.caught.entry(id.to_string()).or_default() += 1;
        self.caught_order
            .push_back((id.to_string(), Instant::now()));
        self.forget_caught(None);
        true
    }

    /// The program handled a request delivered live; true when a catch-up is due.
    pub(crate) fn live_handled(&mut self, id: &str) -> bool {
        if let Some(copies) = self.live_seq.get_mut(id) {
            if let Some((feed, seq)) = copies.pop() {
                if copies.is_empty() {
                    self.live_seq.remove(id);
                }
                self.done(feed, seq);
                return false;
            }
        }
        take_one(&mut self.live_running, id);
        if self.live_done.len() == LIVE_DONE_KEPT {
            self.live_done.remove(0);
        }
        self.live_done.push((id.to_string(), self.passes));
        self.live_done.len() >= self.refresh_at
    }

    /// The program handled a request a catch-up delivered.
    pub(crate) fn done(&mut self, feed: Feed, seq: u64) {
        let i = feed.slot();
        self.running[i].remove(&seq);
        self.acked[i] = self.acked[i].max(seq);
    }

    /// A catch-up begins; hand its number to [`Tracker::end_pass`].
    fn begin_pass(&mut self) -> u64 {
        self.passes += 1;
        self.passes
    }

    /// Catch-up `pass` read both subjects to the end: an identity handled before it
    /// began that it did not read has no stream copy left (expired, or never stored),
    /// and is dropped.
    fn end_pass(&mut self, pass: u64) {
        // Kept through one more catch-up: on a cluster the stream may store a request a
        // moment after its live copy was delivered and handled.
        self.live_done.retain(|(_, p)| *p + 1 >= pass);
    }

    /// Where a restart resumes: just before the oldest request still running, else
    /// after the highest handled, and the identities handled live since.
    pub(crate) fn resume(&self) -> Resume {
        let at = |i: usize| match self.running[i].first() {
            Some(oldest) => self.acked[i].min(oldest.saturating_sub(1)),
            None => self.acked[i],
        };
        Resume {
            broadcast: at(0),
            node: at(1),
            handled: self.live_done.iter().map(|(id, _)| id.clone()).collect(),
        }
    }
}

/// A locked tracker, poisoned or not (the bookkeeping stays consistent between calls).
fn lock(t: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// A delivered request's ack: moves the client's place; nothing goes to the server.
pub(crate) struct RequestAck {
    tracker: Arc<Mutex<Tracker>>,
    refresh: Arc<Notify>,
    feed: Feed,
    /// The stream sequence of a catch-up copy; `None` for a live one.
    seq: Option<u64>,
    id: String,
}

impl std::fmt::Debug for RequestAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAck")
            .field("feed", &self.feed)
            .field("stream_sequence", &self.seq)
            .finish()
    }
}

impl RequestAck {
    pub(crate) fn handled(&self) {
        let mut t = lock(&self.tracker);
        match self.seq {
            Some(seq) => t.done(self.feed, seq),
            None => {
                if t.live_handled(&self.id) {
                    self.refresh.notify_one();
                }
            }
        }
    }
}

/// What a client's request subscription is made of.
pub(crate) struct Parts {
    pub stream: stream::Stream,
    pub subjects: [String; 2],
    pub live: [async_nats::Subscriber; 2],
    pub gaps: broadcast::Receiver<()>,
    pub client: async_nats::Client,
    pub start: Resume,
    /// Whether the stream must be read from `start` first (a restart).
    pub catch_up_first: bool,
    pub inactive: Duration,
    pub prefetch: u16,
    pub addr: String,
}

/// A client's requests as one [`Subscription`], fed by a task that forwards live
/// requests and runs the catch-ups.
pub(crate) struct Requests {
    rx: mpsc::Receiver<Result<Message, TransportError>>,
    tracker: Arc<Mutex<Tracker>>,
    task: tokio::task::JoinHandle<()>,
}

impl Requests {
    pub(crate) fn start(p: Parts) -> Self {
        let refresh_at = REFRESH_AT + rand::random::<u32>() as usize % REFRESH_AT;
        let tracker = Arc::new(Mutex::new(Tracker::new(&p.start, refresh_at)));
        let (tx, rx) = mpsc::channel(usize::from(p.prefetch.max(1)));
        let [b, n] = p.live;
        let live = futures_util::stream::select(
            b.map(|m| (Feed::Broadcast, m)),
            n.map(|m| (Feed::Node, m)),
        );
        let pump = Pump {
            stream: p.stream,
            subjects: p.subjects,
            client: p.client,
            tracker: tracker.clone(),
            refresh: Arc::new(Notify::new()),
            tx,
            addr: p.addr,
            inactive: p.inactive,
        };
        let task = tokio::spawn(pump.run(Box::pin(live), p.gaps, p.catch_up_first));
        Requests { rx, tracker, task }
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait::async_trait]
impl Subscription for Requests {
    async fn next(&mut self) -> Option<Result<Message, TransportError>> {
        self.rx.recv().await
    }

    fn resume(&self) -> Option<Resume> {
        Some(lock(&self.tracker).resume())
    }
}

type Live = std::pin::Pin<Box<dyn futures_util::Stream<Item = (Feed, async_nats::Message)> + Send>>;

struct Pump {
    stream: stream::Stream,
    subjects: [String; 2],
    client: async_nats::Client,
    tracker: Arc<Mutex<Tracker>>,
    refresh: Arc<Notify>,
    tx: mpsc::Sender<Result<Message, TransportError>>,
    addr: String,
    inactive: Duration,
}

/// Why forwarding stopped.
enum Stop {
    /// The program dropped its subscription.
    Gone,
    /// A catch-up failed; tried again later.
    Failed(String),
    /// A catch-up failed at stored requests it could not read, now passed over: tried
    /// again soon.
    PassedOver(String),
}

impl Pump {
    async fn run(self, mut live: Live, gaps: broadcast::Receiver<()>, catch_up_first: bool) {
        let mut gaps = Some(gaps);
        let mut due = catch_up_first.then(Instant::now);
        let check_every = || CHECK_EVERY + CHECK_EVERY.mul_f64(rand::random::<f64>());
        let mut next_check = Instant::now() + check_every();
        let mut delay = Duration::from_secs(1);
        let mut last_catch_up: Option<Instant> = None;
        // When caught identities are next forgotten: the live feed quiet that long.
        let mut quiet_at: Option<Instant> = None;
        loop {
            if due.is_some_and(|at| at <= Instant::now()) {
                match self.catch_up().await {
                    Ok(()) => {
                        due = None;
                        last_catch_up = Some(Instant::now());
                        delay = Duration::from_secs(1);
                        quiet_at = Some(Instant::now() + CAUGHT_QUIET);
                    }
                    Err(Stop::Gone) => return,
                    Err(Stop::PassedOver(e)) => {
                        tracing::warn!(broker = %self.addr, error = %e, "a catch-up stopped at unreadable stored requests, passed over; reading on");
                        due = Some(Instant::now() + Duration::from_secs(1));
                    }
                    Err(Stop::Failed(e)) => {
                        tracing::warn!(broker = %self.addr, error = %e, retry_in = ?delay, "cannot read the requests stream to catch up; live requests still arrive");
                        due = Some(Instant::now() + delay);
                        delay = (delay * 2).min(CATCH_UP_MAX_DELAY);
                    }
                }
                continue;
            }
            let wait = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let quiet = async {
                match quiet_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let gap = async {
                match gaps.as_mut() {
                    Some(g) => g.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = live.next() => match m {
                    Some((feed, m)) => {
                        if !self.live(feed, m).await {
                            return;
                        }
                        // From when it was passed on: the program may have taken long.
                        quiet_at = Some(Instant::now() + CAUGHT_QUIET);
                    }
                    None => {
                        let _ = self
                            .tx
                            .send(Err(TransportError::Session(format!(
                                "request subscriptions on {} closed",
                                self.addr
                            ))))
                            .await;
                        return;
                    }
                },
                g = gap => match g {
                    // Reconnected, or messages dropped for a slow reader (or missed
                    // events: the same answer).
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        due.get_or_insert_with(Instant::now);
                    }
                    Err(broadcast::error::RecvError::Closed) => gaps = None,
                },
                () = self.refresh.notified() => {
                    let at = last_catch_up.map_or_else(Instant::now, |t| {
                        (t + REFRESH_GAP).max(Instant::now())
                    });
                    due.get_or_insert(at);
                }
                () = wait => {}
                () = quiet => {
                    // Nothing came live for CAUGHT_QUIET: every live copy of what
                    // catch-ups delivered before that came already.
                    lock(&self.tracker).forget_caught(Instant::now().checked_sub(CAUGHT_QUIET));
                    quiet_at = None;
                }
                () = tokio::time::sleep_until(next_check) => {
                    next_check = Instant::now() + check_every();
                    if self.missed_something().await {
                        tracing::info!(broker = %self.addr, "a stored request never arrived live; catching up");
                        due.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
    }

    /// Whether the last stored request of either subject is one this client never saw
    /// (two direct reads, no consumer). A failed read says no: the next look, or a
    /// reconnect, catches up.
    async fn missed_something(&self) -> bool {
        for (feed, subject) in [Feed::Broadcast, Feed::Node]
            .into_iter()
            .zip(&self.subjects)
        {
            match self.stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => {
                    let id = request_id(m.subject.as_str(), &m.payload);
                    if !lock(&self.tracker).knows(feed, m.sequence, &id) {
                        return true;
                    }
                }
                Err(e) => tracing::debug!(%subject, error = %e, "no last request to look at"),
            }
        }
        false
    }

    /// Forwards a live request unless a catch-up delivered it; false when the program
    /// has gone.
    async fn live(&self, feed: Feed, m: async_nats::Message) -> bool {
        let subject = m.subject.to_string();
        let id = request_id(&subject, &m.payload);
        let (headers, reply_to, expiration) = parse_headers(m.headers.as_ref());
        // Live means just published: only an expiration of zero or less is past, as a
        // catch-up would judge it (by the stream's publish time).
        if expiration.is_some_and(|ms| ms <= 0) {
            tracing::debug!("dropping a request that expired as it was sent");
            return true;
        }
        if !lock(&self.tracker).on_live(&id) {
            return true;
        }
        let msg = Message {
            body: m.payload.to_vec(),
            headers,
            reply_to,
            redelivered: false,
            source: self.addr.clone(),
            key: subject,
            ack: self.ack(feed, None, id),
        };
        self.tx.send(Ok(msg)).await.is_ok()
    }

    fn ack(&self, feed: Feed, seq: Option<u64>, id: String) -> AckHandle {
        AckHandle(AckInner::Nats(Box::new(super::NatsAck::Request(
            RequestAck {
                tracker: self.tracker.clone(),
                refresh: self.refresh.clone(),
                feed,
                seq,
                id,
            },
        ))))
    }

    /// Reads both subjects from where the last catch-up stopped to the end of the
    /// stream.
    async fn catch_up(&self) -> Result<(), Stop> {
        let failed = |what: &str, e: &dyn std::fmt::Display| Stop::Failed(format!("{what}: {e}"));
        // Subscriptions made again after a reconnect are on the server before the read.
        self.client.flush().await.map_err(|e| failed("flush", &e))?;
        let pass = lock(&self.tracker).begin_pass();
        for (feed, subject) in [Feed::Broadcast, Feed::Node]
            .into_iter()
            .zip(&self.subjects)
        {
            let from = lock(&self.tracker).read_from(feed);
            let c = self
                .stream
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: from.saturating_add(1),
                    },
                    filter_subject: subject.clone(),
                    inactive_threshold: self.inactive,
                    memory_storage: true,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(&format!("consumer on {subject}"), &e))?;
            let name = c.cached_info().name.clone();
            let read = self.read_all(&c, feed).await;
            if let Err(e) = self.stream.delete_consumer(&name).await {
                tracing::debug!(consumer = %name, error = %e, "catch-up consumer left to expire");
            }
            if let Err(Stop::Failed(e)) = &read {
                // The read may have stopped at stored requests a fetch cannot read (the
                // library dropped the connection on one): passed over, the next attempt
                // (soon, not backed off) gets past them.
                if self.pass_over_unreadable(feed, subject).await {
                    return Err(Stop::PassedOver(e.clone()));
                }
            }
            read?;
        }
        lock(&self.tracker).end_pass(pass);
        Ok(())
    }

    /// Looks at the next stored requests of `feed` after the place read through, by the
    /// stream's JSON message API (which carries the headers as base64, so the library
    /// never parses them), and passes over those in a row whose headers a fetch cannot
    /// read. Stops at the first readable one, no message or a failed look; true when
    /// it passed over any.
    async fn pass_over_unreadable(&self, feed: Feed, subject: &str) -> bool {
        let stream = self.stream.cached_info().config.name.clone();
        let mut passed = false;
        for _ in 0..CATCH_UP_BATCH {
            let from = lock(&self.tracker).read_from(feed).saturating_add(1);
            let Some(m) = super::raw_next(&self.client, &stream, from, Some(subject)).await else {
                break;
            };
            if m.readable() {
                break;
            }
            let id = request_id(
                if m.subject.is_empty() {
                    subject
                } else {
                    &m.subject
                },
                &m.body,
            );
            tracing::warn!(
                broker = %self.addr,
                %subject,
                stream_sequence = m.seq,
                "passing over a stored request whose headers a catch-up cannot read (the NATS client drops the connection on them, or takes them for the server's status)"
            );
            // Marked handled, as an expired request is: never delivered, the place
            // moves past it.
            lock(&self.tracker).on_stream(feed, m.seq, &id, true);
            passed = true;
        }
        passed
    }

    async fn read_all(
        &self,
        c: &consumer::Consumer<consumer::pull::Config>,
        feed: Feed,
    ) -> Result<(), Stop> {
        let failed = |e: &dyn std::fmt::Display| Stop::Failed(format!("catch-up read: {e}"));
        loop {
            let mut batch = c
                .fetch()
                .max_messages(CATCH_UP_BATCH)
                .messages()
                .await
                .map_err(|e| failed(&e))?;
            let mut n = 0;
            loop {
                let Ok(next) = tokio::time::timeout(CATCH_UP_STALL, batch.next()).await else {
                    return Err(failed(&format!(
                        "no message from the requests stream in {CATCH_UP_STALL:?} (the connection dropped?)"
                    )));
                };
                let Some(m) = next else { break };
                let m = m.map_err(|e| failed(&e))?;
                n += 1;
                let info = m.info().map_err(|e| failed(&e))?;
                let (seq, published_ms) = (
                    info.stream_sequence,
                    info.published.unix_timestamp_nanos() / 1_000_000,
                );
                let subject = m.subject.to_string();
                let id = request_id(&subject, &m.payload);
                let (headers, reply_to, expiration) = parse_headers(m.headers.as_ref());
                let expired = expired(published_ms, expiration, now_ms());
                if expired {
                    tracing::debug!(stream_sequence = seq, "dropping an expired request");
                }
                if !lock(&self.tracker).on_stream(feed, seq, &id, expired) {
                    continue;
                }
                let msg = Message {
                    body: m.payload.to_vec(),
                    headers,
                    reply_to,
                    redelivered: false,
                    source: self.addr.clone(),
                    key: subject,
                    ack: self.ack(feed, Some(seq), id),
                };
                if self.tx.send(Ok(msg)).await.is_err() {
                    return Err(Stop::Gone);
                }
            }
            if n == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        expired, headers_readable, request_id, Feed, Tracker, CAUGHT_KEPT, LIVE_DONE_KEPT,
    };
    use crate::Resume;
    use tokio::time::Instant;

    fn at(b: u64, n: u64) -> Resume {
        Resume {
            broadcast: b,
            node: n,
            handled: Vec::new(),
        }
    }

    #[test]
    fn the_resume_point_never_passes_a_request_still_running() {
        let mut t = Tracker::new(&at(10, 20), 32);
        assert!(t.on_stream(Feed::Broadcast, 11, "a", false));
        assert!(t.on_stream(Feed::Broadcast, 12, "b", false));
        assert!(t.on_stream(Feed::Node, 21, "c", false));
        t.done(Feed::Broadcast, 12);
        // 11 still runs: a restart starts at it, not after 12.
        assert_eq!(t.resume(), at(10, 20));
        t.done(Feed::Broadcast, 11);
        t.done(Feed::Node, 21);
        assert_eq!(t.resume(), at(12, 21));
        // A sequence read once is never delivered again.
        assert!(!t.on_stream(Feed::Broadcast, 12, "b", false));
    }

    #[test]
    fn a_request_comes_once_whichever_path_brings_it_first() {
        let mut t = Tracker::new(&at(0, 0), 32);
        // Live first: the stream copy is matched, not delivered.
        assert!(t.on_live("x"));
        assert!(!t.on_stream(Feed::Node, 1, "x", false));
        // Still running: the place stays before it.
        assert_eq!(t.resume().node, 0);
        assert!(!t.live_handled("x"));
        assert_eq!(t.resume(), at(0, 1));
        // Stream first: the live copy is dropped.
        assert!(t.on_stream(Feed::Node, 2, "y", false));
        assert!(!t.on_live("y"));
        t.done(Feed::Node, 2);
        assert_eq!(t.resume(), at(0, 2));
    }

    #[test]
    fn requests_handled_live_are_named_in_the_place_until_a_catch_up_reads_them() {
        let mut t = Tracker::new(&at(5, 5), 32);
        assert!(t.on_live("p"));
        assert!(t.on_live("q"));
        t.live_handled("p");
        // q still runs: after a restart it runs again.
        let r = t.resume();
        assert_eq!((r.broadcast, r.handled.clone()), (5, vec!["p".to_string()]));

        // The restart: p's stream copy is skipped, q's delivered.
        let mut back = Tracker::new(&r, 32);
        assert!(!back.on_stream(Feed::Broadcast, 6, "p", false));
        assert!(back.on_stream(Feed::Broadcast, 7, "q", false));
        back.done(Feed::Broadcast, 7);
        assert_eq!(back.resume(), at(7, 5));
    }

    #[test]
    fn identical_requests_are_counted_not_merged() {
        let mut t = Tracker::new(&at(0, 0), 32);
        assert!(t.on_live("same"));
        assert!(t.on_live("same"));
        t.live_handled("same");
        t.live_handled("same");
        let mut back = Tracker::new(&t.resume(), 32);
        assert!(!back.on_stream(Feed::Broadcast, 1, "same", false));
        assert!(!back.on_stream(Feed::Broadcast, 2, "same", false));
        // A third copy the client never had runs.
        assert!(back.on_stream(Feed::Broadcast, 3, "same", false));
    }

    #[test]
    fn a_catch_up_folds_identities_in_and_forgets_those_without_a_stream_copy() {
        let mut t = Tracker::new(&at(0, 0), 2);
        assert!(t.on_live("a"));
        assert!(!t.live_handled("a"));
        assert!(t.on_live("gone"));
        // The second identity calls for a catch-up.
        assert!(t.live_handled("gone"));
        let pass = t.begin_pass();
        assert!(!t.on_stream(Feed::Broadcast, 4, "a", false));
        t.end_pass(pass);
        // "gone" had no stream copy yet: kept through one more catch-up (a cluster may
        // store it a moment late), then forgotten.
        let r = t.resume();
        assert_eq!((r.broadcast, r.handled), (4, vec!["gone".to_string()]));
        let pass = t.begin_pass();
        t.end_pass(pass);
        assert_eq!(t.resume().handled.len(), 0);
    }

    #[test]
    fn a_stored_request_never_seen_is_told_apart_from_those_seen() {
        let mut t = Tracker::new(&at(5, 5), 32);
        assert!(t.knows(Feed::Node, 5, "old"));
        assert!(t.on_live("running"));
        assert!(t.knows(Feed::Node, 9, "running"));
        t.live_handled("running");
        assert!(t.knows(Feed::Node, 9, "running"));
        assert!(t.on_stream(Feed::Broadcast, 7, "caught", false));
        assert!(t.knows(Feed::Broadcast, 7, "caught"));
        assert!(!t.knows(Feed::Node, 6, "lost on a route"));
    }

    #[test]
    fn the_place_stays_bounded_when_no_catch_up_succeeds() {
        let mut t = Tracker::new(&at(0, 0), 32);
        for i in 0..LIVE_DONE_KEPT + 10 {
            let id = format!("{i:x}");
            assert!(t.on_live(&id));
            t.live_handled(&id);
        }
        let r = t.resume();
        assert_eq!(r.handled.len(), LIVE_DONE_KEPT);
        assert_eq!(r.handled[0], format!("{:x}", 10));
        // The text reads back.
        assert_eq!(r.to_string().parse::<Resume>().ok(), Some(r));
    }

    #[test]
    fn an_expired_request_is_passed_over_as_handled() {
        let mut t = Tracker::new(&at(0, 0), 32);
        assert!(!t.on_stream(Feed::Node, 3, "old", true));
        assert_eq!(t.resume(), at(0, 3));
    }

    #[test]
    fn identities_differ_by_subject_and_body() {
        let a = request_id("v.req.all", b"x");
        assert_eq!(a.len(), 32);
        assert_eq!(a, request_id("v.req.all", b"x"));
        assert_ne!(a, request_id("v.req.node.a", b"x"));
        assert_ne!(a, request_id("v.req.all", b"y"));
    }

    #[test]
    fn any_expiration_a_publisher_writes_is_judged_without_overflow() {
        let now = 1_800_000_000_000;
        assert!(!expired(now - 5, Some(i128::MAX), now));
        assert!(!expired(now - 5, None, now));
        assert!(expired(now - 5, Some(i128::MIN), now));
        assert!(expired(now - 5, Some(-1), now));
        assert!(!expired(now - 5, Some(60_000), now));
        assert!(expired(now - 70_000, Some(60_000), now));
    }

    #[test]
    fn a_burst_caught_up_drops_every_live_copy_still_queued() {
        // 3,000 requests arrived live and wait behind the program; a catch-up reads
        // them all first. Not one live copy runs again.
        let mut t = Tracker::new(&at(0, 0), 32);
        let ids: Vec<String> = (0..3000).map(|i| format!("{i:x}")).collect();
        for (seq, id) in ids.iter().enumerate() {
            assert!(t.on_stream(Feed::Node, seq as u64 + 1, id, false));
        }
        for id in &ids {
            assert!(!t.on_live(id), "{id} ran twice");
        }
        // Bounded all the same.
        for i in 0..CAUGHT_KEPT + 5 {
            t.on_stream(Feed::Broadcast, i as u64 + 1, &format!("b{i}"), false);
        }
        assert_eq!(t.caught_order.len(), CAUGHT_KEPT);
        assert!(t.caught.len() <= CAUGHT_KEPT);
    }

    #[test]
    fn a_request_caught_up_does_not_swallow_a_later_one_with_the_same_body() {
        // A 2010-wire request (no id) sent while the client was away, caught up after
        // the restart; the same command sent again later must run.
        let mut t = Tracker::new(&at(0, 0), 32);
        assert!(t.on_stream(Feed::Node, 1, "facter", false));
        t.done(Feed::Node, 1);
        // The live feed stayed quiet since: no live copy of it is still to come.
        t.forget_caught(Some(Instant::now() + std::time::Duration::from_millis(1)));
        assert!(t.on_live("facter"), "the later request runs");
        assert!(!t.knows(Feed::Node, 2, "other"));
        // Forgetting keeps what was read after the quiet began.
        assert!(t.on_stream(Feed::Node, 3, "late", false));
        t.forget_caught(Instant::now().checked_sub(std::time::Duration::from_secs(30)));
        assert!(!t.on_live("late"));
    }

    #[test]
    fn header_blocks_a_catch_up_cannot_read_are_told_apart() {
        for ok in [
            &b"NATS/1.0\r\n\r\n"[..],
            b"NATS/1.0\r\nx-vogeler-reply-to: _INBOX.a\r\nx-vogeler-expiration-ms: 300000\r\n\r\n",
            b"NATS/1.0\r\nx-long: a\r\n  folded\r\n\r\n",
            b"NATS/1.0\r\nx-empty:\r\n\r\n",
        ] {
            assert!(headers_readable(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"HTTP/1.1\r\n\r\n",
            b"NATS/1.0\r\nx-a: \xff\xfe\r\n\r\n",
            b"NATS/1.0\r\nno colon\r\n\r\n",
            b"NATS/1.0\r\nbad name: v\r\n\r\n",
            b"NATS/1.0 404 No Messages\r\n\r\n",
            b"NATS/1.0 100 Idle Heartbeat\r\n\r\n",
            b"NATS/1.0 abc\r\n\r\n",
        ] {
            assert!(!headers_readable(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
