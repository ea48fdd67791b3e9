//! Fleet simulator: N simulated nodes, each with its own name and durable queue bound
//! like a real client's, multiplexed as consumers over a few AMQP connections (one
//! connection per node would not scale: the broker allows 2,047 channels per
//! connection). Each node answers a request with the real facter fixture. A real
//! `vogeler-server` process stores the results; the benchmark broadcasts one request
//! and measures the time until the server has confirmed all N documents stored (its
//! `stored` replies, as `vogeler-runner --wait` counts them).
//!
//! The broker is a private RabbitMQ node the benchmark starts (`tests/common/rabbit.rs`)
//! with a raised open-file limit: every classic queue that receives a persistent
//! message opens index files, and at the usual 1,024 descriptors 10,000 node queues
//! make RabbitMQ's file handle cache thrash (BENCHMARKS.md). So the benchmark never
//! loads the shared broker either.
//!
//! `cargo bench --bench fleet`. Environment: `VOGELER_FLEET_SIZES` (default
//! `1000,10000`); `VOGELER_BENCH_STORES` (default `sqlite,postgres`);
//! `VOGELER_FLEET_CONNECTIONS` (default 16); `VOGELER_FLEET_OPEN_FILES`, the private
//! node's `ulimit -n` (default 65536, capped at the hard limit); `VOGELER_FLEET_AMQP`,
//! an existing broker to use instead (`amqp://user:password@host:port/`, default
//! vhost); `VOGELER_FLEET_TRANSIENT` set: broadcast a transient request (delivery mode
//! 1, not what `vogeler-runner` sends) to see what persistence costs. It prints the figures and writes its section of BENCHMARKS.md: per store
//! and size, the first broadcast (every document created) and a second one (every
//! document updated), the server's resident memory after each, and the broker's
//! open-file limit and peak descriptors in use.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use vogeler_protocol::{Message, Request};
use vogeler_transport::{Broker, Delivered, Outgoing, Session, Topology, BROADCAST_KEY};

mod support;

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
    let fleet = Fleet {
        sessions,
        answered: Arc::new(AtomicU64::new(0)),
        last_answer: Arc::new(AtomicU64::new(0)),
        epoch: Instant::now(),
        data: Arc::new(std::sync::RwLock::new(Arc::from(facter_text(0)))),
    };
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
                        let Ok(vogeler_protocol::Decoded::Message(Message::Request(r))) =
                            vogeler_protocol::decode(&d.body)
                        else {
                            let _ = session.ack(d.tag, false).await;
                            continue;
                        };
                        let text = data.read().map(|g| g.clone()).expect("data lock");
                        let body = answer(&name, &r, &text);
                        let confirmed =
                            match session.publish(&master, "", Outgoing::new(body)).await {
                                Ok(p) => p.confirmed().await.is_ok(),
                                Err(_) => false,
                            };
                        if confirmed {
                            answered.fetch_add(1, Ordering::Relaxed);
                            let at = epoch.elapsed().as_micros() as u64;
                            last_answer.fetch_max(at, Ordering::Relaxed);
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

/// The server under test: the real binary, on this run's names and store.
fn start_server(t: &Topology, dsn: &str) -> Server {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vogeler-server"))
        .args(["-c", "/dev/null"])
        .env("VOGELER_QHOST", AMQP.get().expect("broker chosen"))
        .env("VOGELER_DBHOST", dsn)
        .env("VOGELER_MASTER_EXCHANGE", &t.master_exchange)
        .env("VOGELER_BROADCAST_EXCHANGE", &t.broadcast_exchange)
        .env("VOGELER_MASTER_QUEUE", &t.master_queue)
        .env("VOGELER_DEAD_QUEUE", &t.dead_queue)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start vogeler-server");
    Server(child)
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
                if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    p.fetch_max(rd.count() as u64, Ordering::Relaxed);
                }
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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
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
}

/// Broadcasts one request and waits for `n` `stored` confirmations.
async fn broadcast(t: &Topology, fleet: &Fleet, n: u64, round: u64) -> Timing {
    let session = broker("vogeler-fleet-runner")
        .connect()
        .await
        .expect("connect");
    let reply = session.declare_reply_queue().await.expect("reply queue");
    let mut replies = session.consume(&reply, 2000, "").await.expect("consume");
    let request = Request {
        id: format!("fleet-{round}-{}", std::process::id()),
        command: "facter".into(),
        targets: vec!["all".into()],
        sender: "fleet-bench".into(),
        sent_at: chrono::Utc::now(),
        ttl: 600,
        reply_to: Some(reply.clone()),
        unsafe_command: false,
        want_value: false,
    };
    let body = vogeler_protocol::encode(&Message::Request(request));
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
    // Answers are counted when their confirm arrives, which may be after the server
    // stored them; wait for the count (bounded) before reading the time of the last.
    let wait_until = Instant::now() + Duration::from_secs(60);
    while fleet.answered.load(Ordering::Relaxed) < round * n && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = Duration::from_micros(fleet.last_answer.load(Ordering::Relaxed));
    Timing {
        fanout,
        first: first.unwrap_or(all),
        answered: (fleet.epoch + last).saturating_duration_since(started),
        all,
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
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(run(node.as_ref(), fd_limit));
    // Sessions close before the node stops.
    drop(rt);
    drop(node);
}

/// One row of the table: store, size, (timing, server resident MB) per broadcast,
/// broker memory per node queue, broker peak descriptors.
type Row = (String, u64, Vec<(Timing, f64)>, Option<f64>, Option<u64>);

async fn run(node: Option<&rabbit::RabbitNode>, fd_limit: Option<u64>) {
    let sizes: Vec<u64> = std::env::var("VOGELER_FLEET_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let connections: usize = support::env_number("VOGELER_FLEET_CONNECTIONS", 16);
    let mut rows: Vec<Row> = Vec::new();
    for backend in support::stores("sqlite,postgres") {
        let backend = backend.as_str();
        for &n in &sizes {
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
            let per_queue = queue_memory_per_node(node, &format!("{id}-n"));
            let server = start_server(&t, &dsn);
            // The server declares master.in on start; give it a moment.
            tokio::time::sleep(Duration::from_secs(2)).await;
            println!(
                "{backend} {n} nodes: fleet of {n} queues on {connections} connections ready in {:.1} s",
                setup.elapsed().as_secs_f64()
            );
            let mut figures = Vec::new();
            let fds = node.and_then(|n| n.beam_pid()).map(FdPeak::start);
            for round in 1..=2u64 {
                if round == 2 {
                    let mut data = fleet.data.write().expect("data lock");
                    *data = Arc::from(facter_text(round));
                }
                let timing = broadcast(&t, &fleet, n, round).await;
                let rss = rss_mb(server.0.id());
                let d = timing.all;
                println!(
                    "{backend} {n} nodes, broadcast {round} ({}): {:.2} s to all stored ({:.0} results/s), server {rss:.0} MB resident; fan-out confirmed at {:.2} s, first stored at {:.2} s, last answer at {:.2} s",
                    if round == 1 { "created" } else { "updated" },
                    d.as_secs_f64(),
                    n as f64 / d.as_secs_f64(),
                    timing.fanout.as_secs_f64(),
                    timing.first.as_secs_f64(),
                    timing.answered.as_secs_f64(),
                );
                figures.push((timing, rss));
            }
            let fd_peak = fds.as_ref().map(FdPeak::peak);
            drop(fds);
            if let Some(p) = fd_peak {
                println!(
                    "{backend} {n} nodes: broker peaked at {p} open descriptors (limit {})",
                    fd_limit.map_or("unknown".into(), |l| l.to_string())
                );
            }
            let answered = fleet.answered.load(Ordering::Relaxed);
            assert_eq!(answered, 2 * n, "every node answered both broadcasts");
            if let Some(b) = per_queue {
                println!(
                    "{n} node queues: {:.1} KB of broker memory each (queue processes)",
                    b / 1024.0
                );
            }
            rows.push((backend.to_string(), n, figures, per_queue, fd_peak));
            drop(server);
            drop(fleet);
            cleanup(&t, &names).await;
        }
    }

    let mut md = String::from("## Fleet: broadcast to stored\n\n");
    md.push_str(&support::machine_line("fleet"));
    let broker = match (node, fd_limit) {
        (Some(_), Some(l)) => format!("a private RabbitMQ node the benchmark starts, with a file descriptor limit of {l} (`rabbitmqctl status`)"),
        (Some(_), None) => "a private RabbitMQ node the benchmark starts".to_string(),
        (None, _) => "an existing broker (`VOGELER_FLEET_AMQP`)".to_string(),
    };
    md.push_str(&format!(
        "Simulated nodes (one durable queue each, {connections} AMQP connections in all) answer one broadcast with the facter fixture; a real `vogeler-server` stores them and confirms each. Broker: {broker}. Time from the broadcast to the last `stored` confirmation; fan-out is when the broker confirmed the broadcast, persisted in every node queue. Targets: 1,000 nodes under 2 s, 10,000 under 15 s; server resident memory under 64 MB + 0.1 MB per node.\n\n| store | nodes | first broadcast (created) | second broadcast (updated) | of which broker fan-out (first / second) | server resident after | memory budget | broker memory per node queue | broker descriptors in use (peak) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    ));
    for (backend, n, f, q, fds) in &rows {
        md.push_str(&format!(
            "| {backend} | {n} | {:.2} s | {:.2} s | {:.2} s / {:.2} s | {:.0} MB | {:.0} MB | {} | {} |\n",
            f[0].0.all.as_secs_f64(),
            f[1].0.all.as_secs_f64(),
            f[0].0.fanout.as_secs_f64(),
            f[1].0.fanout.as_secs_f64(),
            f[1].1,
            64.0 + 0.1 * *n as f64,
            q.map(|b| format!("{:.1} KB", b / 1024.0))
                .unwrap_or_else(|| "-".into()),
            fds.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
        ));
    }
    support::write_section("fleet", &md);
}
