//! Fleet simulator: N simulated nodes answer a broadcast with the real facter fixture; a
//! real `vogeler-server` process stores the results; the benchmark broadcasts one request
//! and measures the time until the server has confirmed all N documents stored (its
//! `stored` replies, as `vogeler-runner --wait` counts them), then a second one (every
//! document updated). Both transports, each on a private broker the benchmark starts, so
//! it never loads the shared ones:
//!
//! - **AMQP**: each node has its own name and durable queue bound like a real client's,
//!   multiplexed as consumers over a few connections (one connection per node would not
//!   scale: the broker allows 2,047 channels per connection). The private RabbitMQ node
//!   (`tests/common/rabbit.rs`) runs with a raised open-file limit: every classic queue
//!   that receives a persistent message opens index files, and at the usual 1,024
//!   descriptors 10,000 node queues make RabbitMQ's file handle cache thrash
//!   (BENCHMARKS.md).
//! - **NATS**: a private `nats-server` with JetStream (file store in a temp dir, a free
//!   port; a fresh one per row, so its memory growth is the fleet's). Each node consumes
//!   through the transport's own `consume_node`, exactly as `vogeler-client` does: two
//!   core subscriptions (broadcast subject, own subject), no JetStream consumer while it
//!   runs; it answers with a JetStream publish to the results
//!   stream, awaits the ack, then acks the request. Nodes share a few connections. The
//!   broadcast goes out as `vogeler-runner` sends it, with a reply inbox.
//!
//! `cargo bench --bench fleet`. Environment: `VOGELER_FLEET_TRANSPORTS` (default
//! `amqp,nats`); `VOGELER_FLEET_SIZES`, the NATS sizes (default `1000,10000,50000`);
//! `VOGELER_FLEET_AMQP_SIZES` (default `1000,10000`); `VOGELER_BENCH_STORES` (default
//! `sqlite,postgres`); `VOGELER_FLEET_CONNECTIONS` (AMQP, default 16);
//! `VOGELER_FLEET_NATS_CONNECTIONS` (default 16); `VOGELER_FLEET_SETUP_CONCURRENCY`,
//! NATS nodes subscribing at once (default 64); `VOGELER_FLEET_OPEN_FILES`, the private
//! RabbitMQ node's `ulimit -n` (default 65536, capped at the hard limit);
//! `VOGELER_FLEET_AMQP`, an existing RabbitMQ to use instead
//! (`amqp://user:password@host:port/`, default vhost); `VOGELER_FLEET_QUEUE_POLICY`, a
//! policy definition (JSON) set on every queue of the private node before the fleet
//! declares (`{"queue-version":2}`); `VOGELER_FLEET_TRANSIENT` set:
//! broadcast a transient AMQP request (delivery mode 1, not what `vogeler-runner`
//! sends) to see what persistence costs; `VOGELER_NATS_SERVER`, the nats-server binary
//! (default `/usr/sbin/nats-server`), and `VOGELER_NATS_SERVER_ARGS`, extra flags for it
//! (`--profile 6061` serves Go's pprof, for where its memory goes).
//!
//! It prints the figures and writes its section of BENCHMARKS.md after every row: per
//! transport, store and size, the fleet's set-up, both broadcasts, the server's resident
//! memory, the broker's memory per node and its peak descriptors, and each target met or
//! missed. Rows it did not measure this time stay as they were.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use vogeler_protocol::{Message, Request};
use vogeler_transport::{
    Audience, Broker, Delivered, NatsOptions, NatsTransport, Outgoing, Session, Topology,
    Transport, BROADCAST_KEY,
};

mod support;

use support::ports::{alive, free_port, rand_u32};

#[path = "../tests/common/rabbit.rs"]
#[allow(dead_code)] // restarts and crashes are for the fault tests
mod rabbit;

/// The broker every session of this run uses: `amqp://user:password@host:port/`.
static AMQP: OnceLock<String> = OnceLock::new();

/// A broker handle on `amqp` (default vhost) whose connection is called `name`;
/// the password is masked in its label.
fn broker_named(amqp: &str, name: &str) -> Broker {
    let label = match amqp.rsplit_once('@') {
        Some((_, host)) => format!("amqp://****@{host}"),
        None => amqp.to_string(),
    };
    Broker::new(vec![format!("{amqp}%2f")], vec![label], name)
}

/// For `rabbit.rs`: a handle on a private node.
fn broker_at(amqp: &str) -> Broker {
    broker_named(amqp, "vogeler-fleet")
}

/// A handle on this run's broker.
fn broker(name: &str) -> Broker {
    broker_named(AMQP.get().expect("broker chosen before the run"), name)
}

/// The facter fixture with `uptime_seconds` set to `round`, as canonical JSON text.
fn facter_text(round: u64) -> String {
    let yaml = include_str!("../fixtures/facter-y.yaml");
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("facter fixture parses");
    let mut v = serde_json::to_value(v).expect("facter as json");
    v["uptime_seconds"] = serde_json::json!(round);
    v.to_string()
}

/// The simulated nodes: their sessions, and how many requests they answered.
struct Fleet {
    sessions: Vec<Arc<Session>>,
    /// Answers the broker confirmed.
    answered: Arc<AtomicU64>,
    /// When the latest answer was confirmed, microseconds after [`Fleet::epoch`].
    last_answer: Arc<AtomicU64>,
    epoch: Instant,
    /// The data each node sends, replaced between rounds.
    data: Arc<std::sync::RwLock<Arc<str>>>,
    /// Publishes of an answer that failed (NATS: no stream ack in time; published
    /// again), and the first error.
    failed: Arc<AtomicU64>,
    first_error: Arc<OnceLock<String>>,
    /// NATS: the fleet's connections, closed before its server stops.
    nats: Vec<Arc<dyn Transport>>,
    /// NATS: the nodes' tasks, stopped when the fleet is dropped.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    fn new(sessions: Vec<Arc<Session>>, nats: Vec<Arc<dyn Transport>>) -> Fleet {
        Fleet {
            sessions,
            answered: Arc::new(AtomicU64::new(0)),
            last_answer: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            data: Arc::new(std::sync::RwLock::new(Arc::from(facter_text(0)))),
            failed: Arc::new(AtomicU64::new(0)),
            first_error: Arc::new(OnceLock::new()),
            nats,
            tasks: Vec::new(),
        }
    }

    /// Stops the nodes and closes their connections.
    async fn close(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for c in &self.nats {
            c.close().await;
        }
    }
}

/// One node's answer: a v1 result carrying `data`, confirmed to the request's reply queue.
fn answer(node: &str, request: &Request, data: &str) -> Vec<u8> {
    let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
    format!(
        r#"{{"v":1,"kind":"result","request_id":{},"node":{},"plugin":"facter","format":"yaml","data":{data},"duration_ms":1,"collected_at":{},"reply_to":{}}}"#,
        s(&request.id),
        s(node),
        s(&chrono::Utc::now().to_rfc3339()),
        s(request.reply_to.as_deref().unwrap_or("")),
    )
    .into_bytes()
}

/// What node `node` answers to a request `body` (and the request's reply address), or
/// `None` for anything that is not a request.
fn answer_to(
    node: &str,
    body: &[u8],
    data: &std::sync::RwLock<Arc<str>>,
) -> Option<(Vec<u8>, Option<String>)> {
    let Ok(vogeler_protocol::Decoded::Message(Message::Request(r))) =
        vogeler_protocol::decode(body)
    else {
        return None;
    };
    let text = data.read().map(|g| g.clone()).expect("data lock");
    Some((answer(node, &r, &text), r.reply_to.clone()))
}

/// Counts one confirmed answer and when it was confirmed.
fn count_answer(answered: &AtomicU64, last_answer: &AtomicU64, epoch: Instant) {
    answered.fetch_add(1, Ordering::Relaxed);
    last_answer.fetch_max(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
}

async fn start_fleet(t: &Topology, names: &[String], connections: usize) -> Fleet {
    let mut sessions = Vec::new();
    for i in 0..connections {
        let s = broker(&format!("vogeler-fleet-{i}"))
            .connect()
            .await
            .expect("connect to the fleet's broker");
        s.declare_exchanges(t).await.expect("declare exchanges");
        sessions.push(Arc::new(s));
    }
    let fleet = Fleet::new(sessions, Vec::new());
    // Queues are declared and consumed concurrently (pipelined on each channel).
    stream::iter(names.iter().enumerate())
        .for_each_concurrent(256, |(i, name)| {
            let session = fleet.sessions[i % fleet.sessions.len()].clone();
            let (answered, data) = (fleet.answered.clone(), fleet.data.clone());
            let (last_answer, epoch) = (fleet.last_answer.clone(), fleet.epoch);
            let (name, master) = (name.clone(), t.master_exchange.clone());
            let broadcast = t.broadcast_exchange.clone();
            async move {
                session
                    .declare_queue(&name, &broadcast, &[BROADCAST_KEY, &name])
                    .await
                    .expect("declare node queue");
                let mut consumer = session.consume(&name, 10, "").await.expect("consume");
                tokio::spawn(async move {
                    while let Some(Ok(d)) = consumer.next().await {
                        let Some((body, _)) = answer_to(&name, &d.body, &data) else {
                            let _ = session.ack(d.tag, false).await;
                            continue;
                        };
                        let confirmed =
                            match session.publish(&master, "", Outgoing::new(body)).await {
                                Ok(p) => p.confirmed().await.is_ok(),
                                Err(_) => false,
                            };
                        if confirmed {
                            count_answer(&answered, &last_answer, epoch);
                        }
                        let _ = session.ack(d.tag, false).await;
                    }
                });
            }
        })
        .await;
    fleet
}

/// The server process, killed when dropped (also when the benchmark panics).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server under test: the real binary, on this run's broker (`qhost`), names
/// (`t`, AMQP; the prefix is in a NATS `qhost`) and store.
fn start_server(qhost: &str, t: Option<&Topology>, dsn: &str) -> Server {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vogeler-server"));
    cmd.args(["-c", "/dev/null"])
        .env("VOGELER_QHOST", qhost)
        .env("VOGELER_DBHOST", dsn)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(t) = t {
        cmd.env("VOGELER_MASTER_EXCHANGE", &t.master_exchange)
            .env("VOGELER_BROADCAST_EXCHANGE", &t.broadcast_exchange)
            .env("VOGELER_MASTER_QUEUE", &t.master_queue)
            .env("VOGELER_DEAD_QUEUE", &t.dead_queue);
    }
    Server(cmd.spawn().expect("start vogeler-server"))
}

/// Bytes the broker's queue processes of this fleet use (`rabbitmqctl list_queues
/// name memory`), divided by their number: the per-node cost of a node queue. Asks
/// the private node, or the local default node when the broker is an existing one.
fn queue_memory_per_node(node: Option<&rabbit::RabbitNode>, prefix: &str) -> Option<f64> {
    let args = ["-q", "list_queues", "--no-table-headers", "name", "memory"];
    let out = match node {
        Some(node) => node.ctl(&args),
        None => std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .ok()?,
    };
    let (mut total, mut count) = (0u64, 0u64);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.split_whitespace();
        if let (Some(name), Some(bytes)) = (parts.next(), parts.next()) {
            if name.starts_with(prefix) {
                total += bytes.parse::<u64>().unwrap_or(0);
                count += 1;
            }
        }
    }
    (count > 0).then(|| total as f64 / count as f64)
}

/// The node's open-file limit as RabbitMQ sees it (`rabbitmqctl status`: file
/// descriptors, total limit).
fn broker_fd_limit(node: &rabbit::RabbitNode) -> Option<u64> {
    let out = node.ctl(&["status", "--formatter", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["file_descriptors"]["total_limit"].as_u64()
}

/// Samples how many descriptors process `pid` has open (`/proc/PID/fd`) four times a
/// second until dropped; [`FdPeak::peak`] is the most seen.
struct FdPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl FdPeak {
    fn start(pid: u32) -> FdPeak {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(support::open_fds(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        FdPeak { stop, peak }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for FdPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn rss_mb(pid: u32) -> f64 {
    support::proc_status_kib(pid, "VmRSS:") as f64 / 1024.0
}

/// Where a broadcast's time went, each from the moment it was published.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// The broker confirmed the broadcast: persisted in every node queue.
    fanout: Duration,
    /// The first `stored` confirmation arrived.
    first: Duration,
    /// The last node's answer was confirmed by the broker.
    answered: Duration,
    /// The last `stored` confirmation arrived: the figure the targets are about.
    all: Duration,
    /// `stored` confirmations received (all of them, unless the wait gave up).
    stored: u64,
}

/// Broadcasts one request and waits for `n` `stored` confirmations.
async fn broadcast(t: &Topology, fleet: &Fleet, n: u64, round: u64) -> Timing {
    let session = broker("vogeler-fleet-runner")
        .connect()
        .await
        .expect("connect");
    let reply = session.declare_reply_queue().await.expect("reply queue");
    let mut replies = session.consume(&reply, 2000, "").await.expect("consume");
    let body = vogeler_protocol::encode(&Message::Request(request(round, &reply)));
    let started = Instant::now();
    let msg = Outgoing {
        transient: std::env::var_os("VOGELER_FLEET_TRANSIENT").is_some(),
        ..Outgoing::new(body)
    };
    let pending = session
        .publish(&t.broadcast_exchange, BROADCAST_KEY, msg)
        .await
        .expect("broadcast");
    // The confirm is awaited beside the replies: answers flow before the last queue
    // has persisted the broadcast.
    let fanout = tokio::spawn(async move {
        let delivered = pending.confirmed().await.expect("broadcast confirmed");
        assert_eq!(
            delivered,
            Delivered::Routed,
            "the broadcast reached the node queues"
        );
        started.elapsed()
    });
    let mut first = None;
    let mut stored = 0u64;
    let deadline = started + Duration::from_secs(600);
    while stored < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, replies.next()).await {
            Ok(Some(Ok(d))) => {
                first.get_or_insert_with(|| started.elapsed());
                stored += 1;
                if stored % 500 == 0 || stored == n {
                    let _ = session.ack(d.tag, true).await;
                }
            }
            _ => panic!("only {stored} of {n} stored within 600 s"),
        }
    }
    let all = started.elapsed();
    let fanout = fanout.await.expect("broadcast confirm task");
    session.close().await;
    Timing {
        fanout,
        first: first.unwrap_or(all),
        answered: last_answer(fleet, n, round, started).await,
        all,
        stored: n,
    }
}

/// When the last answer of broadcast `round` was confirmed, after `started`. Answers are
/// counted when their confirm arrives, which may be after the server stored them: waits
/// for the count (bounded) before reading the time of the last.
async fn last_answer(fleet: &Fleet, n: u64, round: u64, started: Instant) -> Duration {
    let wait_until = Instant::now() + Duration::from_secs(60);
    while fleet.answered.load(Ordering::Relaxed) < round * n && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = Duration::from_micros(fleet.last_answer.load(Ordering::Relaxed));
    (fleet.epoch + last).saturating_duration_since(started)
}

/// How many requests a simulated NATS node has in flight: the real client's default
/// `[client] concurrency`, which it passes to `consume_node` as its prefetch.
const NATS_PREFETCH: u16 = 4;

/// The options of one connection to the private server, on subject prefix `prefix`.
fn nats_options(prefix: &str, name: &str) -> NatsOptions {
    NatsOptions {
        prefix: prefix.to_string(),
        connection_name: name.to_string(),
        ..Default::default()
    }
}

/// N simulated nodes on NATS, each consuming exactly as a real client does: the
/// transport's own [`Transport::consume_node`] (core subscriptions to the broadcast
/// subject and the node's own; the requests stream is read only to catch up),
/// answering with [`Transport::publish_result`] (a JetStream publish, its ack awaited)
/// and then acking the request. Nodes share `connections` connections, as they cannot
/// have one process each.
async fn start_nats_fleet(url: &str, prefix: &str, names: &[String], connections: usize) -> Fleet {
    let mut conns: Vec<Arc<dyn Transport>> = Vec::new();
    for i in 0..connections {
        let t = NatsTransport::connect(url, nats_options(prefix, &format!("vogeler-fleet-{i}")))
            .await
            .expect("connect to the private nats-server");
        if i == 0 {
            t.declare().await.expect("declare the streams");
        }
        conns.push(Arc::new(t));
    }
    let mut fleet = Fleet::new(Vec::new(), conns);
    let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let concurrency = support::env_number("VOGELER_FLEET_SETUP_CONCURRENCY", 64usize);
    stream::iter(names.iter().enumerate())
        .for_each_concurrent(concurrency, |(i, name)| {
            let conn = fleet.nats[i % fleet.nats.len()].clone();
            let (answered, data) = (fleet.answered.clone(), fleet.data.clone());
            let (last, epoch) = (fleet.last_answer.clone(), fleet.epoch);
            let (name, tasks) = (name.clone(), tasks.clone());
            let (failed, first_error) = (fleet.failed.clone(), fleet.first_error.clone());
            async move {
                let mut sub = conn
                    .consume_node(&name, None, NATS_PREFETCH)
                    .await
                    .expect("consume as a node");
                let task = tokio::spawn(async move {
                    while let Some(Ok(m)) = sub.next().await {
                        if let Some((body, reply_to)) = answer_to(&name, &m.body, &data) {
                            let msg = Outgoing {
                                reply_to,
                                ..Outgoing::new(body)
                            };
                            // A real client whose publish fails does not ack: it
                            // reconnects and gets the request again. The simulated node
                            // publishes again after a pause, then acks.
                            for _ in 0..30 {
                                match conn.publish_result(msg.clone()).await {
                                    Ok(()) => {
                                        count_answer(&answered, &last, epoch);
                                        break;
                                    }
                                    Err(e) => {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                        let _ = first_error.set(e.to_string());
                                        tokio::time::sleep(Duration::from_secs(1)).await;
                                    }
                                }
                            }
                        }
                        let _ = conn.ack(&m.ack).await;
                    }
                });
                tasks.lock().expect("task list").push(task);
            }
        })
        .await;
    fleet.tasks = std::mem::take(&mut *tasks.lock().expect("task list"));
    fleet
}

/// Broadcasts one request on NATS as `vogeler-runner` does (to the broadcast subject,
/// its reply inbox in the request) and waits for `n` `stored` replies.
async fn broadcast_nats(url: &str, prefix: &str, fleet: &Fleet, n: u64, round: u64) -> Timing {
    let runner: Arc<dyn Transport> = Arc::new(
        NatsTransport::connect(url, nats_options(prefix, "vogeler-fleet-runner"))
            .await
            .expect("connect"),
    );
    let (inbox, mut replies) = runner.reply_inbox().await.expect("reply inbox");
    let body = vogeler_protocol::encode(&Message::Request(request(round, &inbox)));
    let started = Instant::now();
    let sender = runner.clone();
    // The stream's confirm is awaited beside the replies, as on AMQP.
    let stored_at = tokio::spawn(async move {
        let msg = Outgoing {
            reply_to: Some(inbox),
            expiration_ms: Some(600_000),
            ..Outgoing::new(body)
        };
        sender
            .publish_request(Audience::Everyone, msg)
            .await
            .expect("broadcast");
        started.elapsed()
    });
    let mut first = None;
    let mut stored = 0u64;
    // Gives up after a while without a confirmation, and the row says how many came.
    while stored < n {
        match tokio::time::timeout(Duration::from_secs(120), replies.next()).await {
            Ok(Some(Ok(_))) => {
                first.get_or_insert_with(|| started.elapsed());
                stored += 1;
            }
            _ => {
                println!("only {stored} of {n} stored: none more for 120 s");
                break;
            }
        }
    }
    let all = started.elapsed();
    let fanout = stored_at.await.expect("broadcast confirm task");
    runner.close().await;
    Timing {
        fanout,
        first: first.unwrap_or(all),
        answered: last_answer(fleet, n, round, started).await,
        all,
        stored,
    }
}

/// The broadcast request of `round`, answered to `reply_to`.
fn request(round: u64, reply_to: &str) -> Request {
    Request {
        id: format!("fleet-{round}-{}", std::process::id()),
        command: "facter".into(),
        targets: vec!["all".into()],
        sender: "fleet-bench".into(),
        sent_at: chrono::Utc::now(),
        ttl: 600,
        reply_to: Some(reply_to.to_string()),
        unsafe_command: false,
        want_value: false,
    }
}

async fn cleanup(t: &Topology, names: &[String]) {
    let s = broker("vogeler-fleet-cleanup")
        .connect()
        .await
        .expect("connect");
    for q in names.iter().chain([&t.master_queue, &t.dead_queue]) {
        let _ = s.delete_queue(q).await;
    }
    s.close().await;
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let transports =
        std::env::var("VOGELER_FLEET_TRANSPORTS").unwrap_or_else(|_| "amqp,nats".into());
    let transports: Vec<&str> = transports.split(',').map(str::trim).collect();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut run = Run::default();
    for transport in &transports {
        match *transport {
            "nats" => rt.block_on(run_nats(&mut run)),
            "amqp" => run_amqp(&rt, &mut run),
            other => panic!("VOGELER_FLEET_TRANSPORTS: unknown transport {other:?} (amqp, nats)"),
        }
    }
    // What is still open closes before the process ends.
    drop(rt);
}

/// Sizes from the environment variable `name`, else `default`.
fn sizes(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// What this run measured, for the table: its rows and a sentence per transport.
#[derive(Default)]
struct Run {
    rows: Vec<Row>,
    brokers: Vec<String>,
}

/// One row of the table.
struct Row {
    transport: &'static str,
    store: String,
    n: u64,
    /// Declaring and consuming every node's requests.
    setup: Duration,
    /// Per broadcast: timing, and the server's resident MB after it.
    figures: Vec<(Timing, f64)>,
    /// Broker memory per node (bytes): AMQP a node queue's process, NATS the growth of
    /// nats-server's resident memory with the idle fleet connected / after both
    /// broadcasts.
    broker_per_node: Option<(f64, Option<f64>)>,
    /// Broker descriptors in use at the peak.
    fds: Option<u64>,
    /// Answers' publishes that failed and were made again (NATS: the stream's ack did
    /// not come in time; a real client would reconnect and answer again).
    failed: u64,
}

impl Row {
    /// `(what, met)` for each target that applies to this row (issues #10 and #19).
    fn targets(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let all = self
            .figures
            .iter()
            .map(|f| f.0.all)
            .max()
            .unwrap_or_default();
        let time = match (self.transport, self.store.as_str(), self.n) {
            ("amqp", _, 1000) => Some(2.0),
            ("amqp", _, 10000) => Some(15.0),
            ("nats", "sqlite", 10000) => Some(2.0),
            ("nats", "sqlite", 50000) => Some(8.0),
            _ => None,
        };
        if let Some(limit) = time {
            out.push((format!("stored ≤ {limit} s"), all.as_secs_f64() <= limit));
        }
        // Issue #21's budget: 64 MB plus 1 KB per node (74 MB at 10,000 nodes).
        let budget = 64.0 + self.n as f64 / 1024.0;
        let rss = self.figures.iter().map(|f| f.1).fold(0.0, f64::max);
        out.push((format!("server ≤ {budget:.0} MB"), rss <= budget));
        if self.transport == "nats" {
            // Judged on the fleet at rest: what the nodes themselves cost. The figure
            // after the broadcasts adds JetStream's buffers for the results that went
            // through (tens of MB whatever the fleet), shown beside it.
            if let Some((idle, _)) = self.broker_per_node {
                out.push(("nats-server ≤ 5 KB/node idle".into(), idle <= 5.0 * 1024.0));
            }
        }
        out
    }

    fn markdown(&self) -> String {
        let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let stored = |t: &Timing| match t.stored < self.n {
            true => format!("**only {} stored** in {}", t.stored, secs(t.all)),
            false => secs(t.all),
        };
        let kb = |b: f64| format!("{:.1} KB", b / 1024.0);
        let targets: Vec<String> = self
            .targets()
            .into_iter()
            .map(|(what, met)| format!("{what}: {}", if met { "met" } else { "**missed**" }))
            .chain((self.failed > 0).then(|| {
                format!(
                    "{} answers' publishes got no stream ack in time and were made again",
                    self.failed
                )
            }))
            .collect();
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.0} MB | {} | {} | {} |\n",
            self.transport,
            self.store,
            self.n,
            chrono::Utc::now().format("%Y-%m-%d"),
            secs(self.setup),
            stored(&self.figures[0].0),
            stored(&self.figures[1].0),
            secs(self.figures[0].0.fanout),
            secs(self.figures[1].0.fanout),
            self.figures[1].1,
            match self.broker_per_node {
                Some((idle, Some(after))) => format!("{} / {}", kb(idle), kb(after)),
                Some((idle, None)) => kb(idle),
                None => "-".into(),
            },
            self.fds
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            targets.join("; "),
        )
    }

    fn print(&self, round: usize) {
        let (t, rss) = self.figures[round];
        let d = t.all;
        println!(
            "{} {} {} nodes, broadcast {} ({}): {:.2} s to all stored ({:.0} results/s), server {rss:.0} MB resident; broadcast confirmed at {:.2} s, first stored at {:.2} s, last answer at {:.2} s",
            self.transport,
            self.store,
            self.n,
            round + 1,
            if round == 0 { "created" } else { "updated" },
            d.as_secs_f64(),
            self.n as f64 / d.as_secs_f64(),
            t.fanout.as_secs_f64(),
            t.first.as_secs_f64(),
            t.answered.as_secs_f64(),
        );
    }
}

/// The table's heading; rows are keyed by their first three cells.
const TABLE_HEAD: &str = "| transport | store | nodes | measured | fleet set-up | first broadcast (created) | second broadcast (updated) | broadcast confirmed (first / second) | server resident after | broker memory per node | broker descriptors (peak) | targets |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";

/// The lines of the fleet section now in BENCHMARKS.md that start with one of
/// `starts`: the rows and broker paragraphs of what this run did not measure, so a run
/// of one transport keeps the other's figures.
fn row_key(line: &str) -> Vec<String> {
    line.split('|')
        .skip(1)
        .take(3)
        .map(|c| c.trim().to_string())
        .collect()
}

/// Writes the fleet section: this run's rows, and earlier ones it did not replace.
/// Called after every row, so a run stopped half-way keeps what it measured.
fn write_table(run: &Run) {
    let mut lines: Vec<String> = run.rows.iter().map(Row::markdown).collect();
    let measured: Vec<Vec<String>> = lines.iter().map(|l| row_key(l)).collect();
    for old in support::earlier_lines("fleet", &["| amqp |", "| nats |"]) {
        if !measured.contains(&row_key(&old)) {
            lines.push(old);
        }
    }
    let order = |l: &String| {
        let k = row_key(l);
        (k[0].clone(), k[1].clone(), k[2].parse::<u64>().unwrap_or(0))
    };
    lines.sort_by_key(order);
    let mut brokers = run.brokers.clone();
    for (start, label) in [("**AMQP**", "amqp"), ("**NATS**", "nats")] {
        if run.rows.iter().all(|r| r.transport != label) {
            let earlier = support::earlier_lines("fleet", &[start]).concat();
            if !earlier.is_empty() {
                brokers.push(earlier.trim_end().to_string());
            }
        }
    }
    brokers.sort();
    let mut md = String::from("## Fleet: broadcast to stored\n\n");
    md.push_str(&support::machine_line("fleet"));
    md.push_str(&format!(
        "Simulated nodes answer one broadcast with the facter fixture; a real `vogeler-server` stores them and confirms each. Time from the broadcast to the last `stored` confirmation; *broadcast confirmed* is when the broker confirmed the broadcast (AMQP: persisted in every node queue; NATS: stored once in the requests stream). Fleet set-up is declaring and consuming every node's requests. Server memory budget: 64 MB + 1 KB per node (issue #21). Targets: AMQP 1,000 nodes under 2 s, 10,000 under 15 s (issue #10); NATS + SQLite 10,000 nodes ≤ 2 s, 50,000 ≤ 8 s, nats-server ≤ 5 KB per node (issue #19).\n\n{}\n\n{TABLE_HEAD}",
        brokers.join("\n\n")
    ));
    for l in &lines {
        md.push_str(l);
    }
    support::write_section("fleet", &md);
}

fn run_amqp(rt: &tokio::runtime::Runtime, run: &mut Run) {
    let node = match std::env::var("VOGELER_FLEET_AMQP") {
        Ok(url) => {
            let _ = AMQP.set(url);
            None
        }
        Err(_) => {
            let open_files = support::env_number("VOGELER_FLEET_OPEN_FILES", 65536u64);
            let node = rabbit::RabbitNode::start_with(rabbit::NodeSetup {
                open_files: Some(open_files),
                ..Default::default()
            });
            // A policy on every queue, to compare what RabbitMQ offers per queue
            // (`{"queue-version":2}`, `{"queue-mode":"lazy"}`): docs/SCALING.md.
            if let Ok(policy) = std::env::var("VOGELER_FLEET_QUEUE_POLICY") {
                node.ctl_ok(&["set_policy", "--apply-to", "queues", "fleet", ".*", &policy]);
                println!("queue policy on the private node: {policy}");
            }
            let _ = AMQP.set(node.amqp());
            Some(node)
        }
    };
    let fd_limit = node.as_ref().and_then(broker_fd_limit);
    match (&node, fd_limit) {
        (Some(n), Some(l)) => println!(
            "private RabbitMQ node {} on port {}: file descriptor limit {l} (rabbitmqctl status)",
            n.name, n.port
        ),
        (Some(n), None) => println!(
            "private RabbitMQ node {} on port {}: file descriptor limit unknown",
            n.name, n.port
        ),
        (None, _) => println!("existing broker from VOGELER_FLEET_AMQP"),
    }
    let connections: usize = support::env_number("VOGELER_FLEET_CONNECTIONS", 16);
    let broker = match (&node, fd_limit) {
        (Some(_), Some(l)) => format!("a private RabbitMQ node the benchmark starts, with a file descriptor limit of {l} (`rabbitmqctl status`)"),
        (Some(_), None) => "a private RabbitMQ node the benchmark starts".to_string(),
        (None, _) => "an existing broker (`VOGELER_FLEET_AMQP`)".to_string(),
    };
    run.brokers.push(format!(
        "**AMQP**: one durable queue per node, bound like a real client's, {connections} connections in all; broker: {broker}; broker memory per node is a node queue's process (`rabbitmqctl list_queues memory`)."
    ));
    for backend in support::stores("sqlite,postgres") {
        for n in sizes("VOGELER_FLEET_AMQP_SIZES", "1000,10000") {
            let row = rt.block_on(amqp_row(node.as_ref(), &backend, n, connections));
            if let Some(p) = row.fds {
                println!(
                    "amqp {backend} {n} nodes: broker peaked at {p} open descriptors (limit {})",
                    fd_limit.map_or("unknown".into(), |l| l.to_string())
                );
            }
            run.rows.push(row);
            write_table(run);
        }
    }
    // The node stops here: the fleet's consumers ended when `cleanup` deleted their
    // queues.
    drop(node);
}

async fn amqp_row(
    node: Option<&rabbit::RabbitNode>,
    backend: &str,
    n: u64,
    connections: usize,
) -> Row {
    let id = format!("fleet{}{backend}{n}", std::process::id());
    let t = Topology {
        master_exchange: format!("{id}.master"),
        broadcast_exchange: format!("{id}.broadcast"),
        master_queue: format!("{id}.master.in"),
        dead_queue: format!("{id}.dead"),
        quorum: false,
    };
    let names: Vec<String> = (0..n).map(|i| format!("{id}-n{i:06}")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
    let setup = Instant::now();
    let fleet = start_fleet(&t, &names, connections).await;
    let setup = setup.elapsed();
    let per_queue = queue_memory_per_node(node, &format!("{id}-n"));
    let server = start_server(AMQP.get().expect("broker chosen"), Some(&t), &dsn);
    // The server declares master.in on start; give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "amqp {backend} {n} nodes: fleet of {n} queues on {connections} connections ready in {:.1} s",
        setup.as_secs_f64()
    );
    let mut row = Row {
        transport: "amqp",
        store: backend.to_string(),
        n,
        setup,
        figures: Vec::new(),
        broker_per_node: per_queue.map(|b| (b, None)),
        fds: None,
        failed: 0,
    };
    let fds = node.and_then(|n| n.beam_pid()).map(FdPeak::start);
    for round in 1..=2u64 {
        if round == 2 {
            let mut data = fleet.data.write().expect("data lock");
            *data = Arc::from(facter_text(round));
        }
        let timing = broadcast(&t, &fleet, n, round).await;
        row.figures.push((timing, rss_mb(server.0.id())));
        row.print(round as usize - 1);
    }
    row.fds = fds.as_ref().map(FdPeak::peak);
    drop(fds);
    let answered = fleet.answered.load(Ordering::Relaxed);
    assert_eq!(answered, 2 * n, "every node answered both broadcasts");
    drop(server);
    fleet.close().await;
    cleanup(&t, &names).await;
    row
}

async fn run_nats(run: &mut Run) {
    let connections: usize = support::env_number("VOGELER_FLEET_NATS_CONNECTIONS", 16);
    run.brokers.push(format!(
        "**NATS** (nats-server {}, JetStream file store): a private server the benchmark starts for each row. Each simulated node consumes exactly as `vogeler-client` does, through the transport's own `consume_node`: core subscriptions to the broadcast subject and its own (the requests stream is read only to catch up after a start or a reconnect, so no JetStream consumer per node), prefetch {NATS_PREFETCH} (the client's default concurrency); it answers with a JetStream publish to the results stream, awaits its ack, then acks the request (which moves its saved place; nothing goes to the server). Nodes share {connections} connections (a real node has its own); heartbeats and scheduled runs are not simulated. One real `vogeler-server` consumes the results through the durable `servers` consumer. Broker memory per node is the growth of nats-server's resident memory (`/proc`) from start to the idle fleet connected / after both broadcasts, divided by the nodes.",
        support::nats_server_version()
    ));
    for backend in support::stores("sqlite,postgres") {
        for n in sizes("VOGELER_FLEET_SIZES", "1000,10000,50000") {
            let row = nats_row(&backend, n, connections).await;
            run.rows.push(row);
            write_table(run);
        }
    }
}

async fn nats_row(backend: &str, n: u64, connections: usize) -> Row {
    let nats = support::nats::NatsNode::start();
    let pid = nats.pid().expect("the private nats-server runs");
    let prefix = format!("fleet{}{backend}{n}", std::process::id());
    let url = nats.base_url();
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-n{i:06}")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = support::proc_status_kib(pid, "VmRSS:");
    let setup = Instant::now();
    let fleet = start_nats_fleet(&url, &prefix, &names, connections).await;
    let setup = setup.elapsed();
    // Let the fleet settle, then measure it idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = support::proc_status_kib(pid, "VmRSS:");
    let fds_idle = support::open_fds(pid);
    let ticks = support::cpu_ticks(&pid.to_string());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (support::cpu_ticks(&pid.to_string()) - ticks) as f64 / 10.0;
    println!(
        "nats {backend} {n} nodes: fleet of {n} nodes ({} subscriptions) on {connections} connections ready in {:.1} s; nats-server {:.1} MB resident ({:.2} KB per node), {fds_idle} descriptors, {idle_cpu:.0}% of a core idle",
        2 * n,
        setup.as_secs_f64(),
        rss1 as f64 / 1024.0,
        (rss1.saturating_sub(rss0)) as f64 / n as f64,
    );
    let server = start_server(&format!("{url}/{prefix}"), None, &dsn);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fds = FdPeak::start(pid);
    let mut row = Row {
        transport: "nats",
        store: backend.to_string(),
        n,
        setup,
        figures: Vec::new(),
        broker_per_node: None,
        fds: None,
        failed: 0,
    };
    for round in 1..=2u64 {
        if round == 2 {
            let mut data = fleet.data.write().expect("data lock");
            *data = Arc::from(facter_text(round));
        }
        // Where the time goes: each process's CPU over the broadcast.
        let who = [
            pid.to_string(),
            server.0.id().to_string(),
            "self".to_string(),
        ];
        let before: Vec<u64> = who.iter().map(|p| support::cpu_ticks(p)).collect();
        let timing = broadcast_nats(&url, &prefix, &fleet, n, round).await;
        let used: Vec<f64> = who
            .iter()
            .zip(&before)
            .map(|(p, b)| (support::cpu_ticks(p) - b) as f64 / 100.0)
            .collect();
        row.figures.push((timing, rss_mb(server.0.id())));
        row.print(round as usize - 1);
        println!(
            "    CPU over it: nats-server {:.1} s, vogeler-server {:.1} s, simulated nodes and runner {:.1} s",
            used[0], used[1], used[2]
        );
    }
    let rss2 = support::proc_status_kib(pid, "VmRSS:");
    let hwm = support::proc_status_kib(pid, "VmHWM:");
    let per_node = |kib: u64| kib.saturating_sub(rss0) as f64 * 1024.0 / n as f64;
    row.broker_per_node = Some((per_node(rss1), Some(per_node(rss2))));
    row.fds = Some(fds.peak().max(fds_idle));
    drop(fds);
    println!(
        "nats {backend} {n} nodes: nats-server {:.1} MB resident after the broadcasts (peak {:.1} MB): {:.2} KB per node idle, {:.2} KB after; descriptors peaked at {}",
        rss2 as f64 / 1024.0,
        hwm as f64 / 1024.0,
        per_node(rss1) / 1024.0,
        per_node(rss2) / 1024.0,
        row.fds.unwrap_or(0),
    );
    // Every result was stored (the runner counted n `stored` each time); an answer
    // whose stream ack did not come in time is counted, not fatal.
    row.failed = fleet.failed.load(Ordering::Relaxed);
    if row.failed > 0 {
        println!(
            "nats {backend} {n} nodes: {} answers' publishes failed and were made again ({}), {} confirmed",
            row.failed,
            fleet.first_error.get().map_or("", String::as_str),
            fleet.answered.load(Ordering::Relaxed)
        );
    }
    drop(server);
    fleet.close().await;
    drop(nats);
    row
}
