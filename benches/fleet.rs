//! Fleet simulator: N simulated nodes, each with its own name and durable queue bound
//! like a real client's, multiplexed as consumers over a few AMQP connections (the
//! broker allows ~1,000 open files and 2,047 channels per connection, so one
//! connection per node would not scale). Each node answers a request with the real
//! facter fixture. A real `vogeler-server` process stores the results; the benchmark
//! broadcasts one request and measures the time until the server has confirmed all N
//! documents stored (its `stored` replies, as `vogeler-runner --wait` counts them).
//!
//! `cargo bench --bench fleet` (env `VOGELER_FLEET_SIZES`, default `1000`: 10,000 is
//! an open problem on one shared broker, see BENCHMARKS.md;
//! `VOGELER_BENCH_STORES`, default `sqlite,postgres`; `VOGELER_FLEET_CONNECTIONS`,
//! default 4) prints the figures and writes its section of BENCHMARKS.md: per store
//! and size, the first broadcast (every document created) and a second one (every
//! document updated), and the server's resident memory after each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use vogeler_protocol::{Message, Request};
use vogeler_transport::{Broker, Outgoing, Session, Topology, BROADCAST_KEY};

mod support;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn broker(name: &str) -> Broker {
    Broker::new(
        vec![AMQP.into()],
        vec!["amqp://guest:****@127.0.0.1:5672/".into()],
        name,
    )
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
    answered: Arc<AtomicU64>,
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
            .expect("RabbitMQ at 127.0.0.1:5672");
        s.declare_exchanges(t).await.expect("declare exchanges");
        sessions.push(Arc::new(s));
    }
    let fleet = Fleet {
        sessions,
        answered: Arc::new(AtomicU64::new(0)),
        data: Arc::new(std::sync::RwLock::new(Arc::from(facter_text(0)))),
    };
    // Queues are declared and consumed concurrently (pipelined on each channel).
    stream::iter(names.iter().enumerate())
        .for_each_concurrent(256, |(i, name)| {
            let session = fleet.sessions[i % fleet.sessions.len()].clone();
            let (answered, data) = (fleet.answered.clone(), fleet.data.clone());
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
                        if confirmed && session.ack(d.tag, false).await.is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        })
        .await;
    fleet
}

/// The server under test: the real binary, on this run's names and store.
fn start_server(t: &Topology, dsn: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_vogeler-server"))
        .args(["-c", "/dev/null"])
        .env("VOGELER_QHOST", "amqp://guest:guest@127.0.0.1:5672/")
        .env("VOGELER_DBHOST", dsn)
        .env("VOGELER_MASTER_EXCHANGE", &t.master_exchange)
        .env("VOGELER_BROADCAST_EXCHANGE", &t.broadcast_exchange)
        .env("VOGELER_MASTER_QUEUE", &t.master_queue)
        .env("VOGELER_DEAD_QUEUE", &t.dead_queue)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start vogeler-server")
}

/// Bytes the broker's queue processes of this fleet use (`rabbitmqctl list_queues
/// name memory`), divided by their number: the per-node cost of a node queue.
fn queue_memory_per_node(prefix: &str) -> Option<f64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "--no-table-headers", "name", "memory"])
        .output()
        .ok()?;
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

/// Broadcasts one request and waits for `n` `stored` confirmations; the elapsed time.
async fn broadcast(t: &Topology, n: u64, round: u64) -> Duration {
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
    };
    let body = vogeler_protocol::encode(&Message::Request(request));
    let started = Instant::now();
    session
        .publish_confirmed(&t.broadcast_exchange, BROADCAST_KEY, Outgoing::new(body))
        .await
        .expect("broadcast");
    let mut stored = 0u64;
    let deadline = started + Duration::from_secs(600);
    while stored < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, replies.next()).await {
            Ok(Some(Ok(d))) => {
                stored += 1;
                if stored % 500 == 0 || stored == n {
                    let _ = session.ack(d.tag, true).await;
                }
            }
            _ => panic!("only {stored} of {n} stored within 600 s"),
        }
    }
    let elapsed = started.elapsed();
    session.close().await;
    elapsed
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

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u64> = std::env::var("VOGELER_FLEET_SIZES")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let connections: usize = support::env_number("VOGELER_FLEET_CONNECTIONS", 4);
    let mut rows = Vec::new();
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
            let per_queue = queue_memory_per_node(&format!("{id}-n"));
            let mut server = start_server(&t, &dsn);
            // The server declares master.in on start; give it a moment.
            tokio::time::sleep(Duration::from_secs(2)).await;
            println!(
                "{backend} {n} nodes: fleet of {n} queues on {connections} connections ready in {:.1} s",
                setup.elapsed().as_secs_f64()
            );
            let mut figures = Vec::new();
            for round in 1..=2u64 {
                if round == 2 {
                    let mut data = fleet.data.write().expect("data lock");
                    *data = Arc::from(facter_text(round));
                }
                let d = broadcast(&t, n, round).await;
                let rss = rss_mb(server.id());
                println!(
                    "{backend} {n} nodes, broadcast {round} ({}): {:.2} s to all stored ({:.0} results/s), server {rss:.0} MB resident",
                    if round == 1 { "created" } else { "updated" },
                    d.as_secs_f64(),
                    n as f64 / d.as_secs_f64()
                );
                figures.push((d, rss));
            }
            let answered = fleet.answered.load(Ordering::Relaxed);
            assert_eq!(answered, 2 * n, "every node answered both broadcasts");
            if let Some(b) = per_queue {
                println!(
                    "{n} node queues: {:.1} KB of broker memory each (queue processes)",
                    b / 1024.0
                );
            }
            rows.push((backend.to_string(), n, figures, per_queue));
            let _ = server.kill();
            let _ = server.wait();
            drop(fleet);
            cleanup(&t, &names).await;
        }
    }

    let mut md = String::from("## Fleet: broadcast to stored\n\n");
    md.push_str(&support::machine_line("fleet"));
    md.push_str(&format!(
        "Simulated nodes (one durable queue each, {connections} AMQP connections in all) answer one broadcast with the facter fixture; a real `vogeler-server` stores them and confirms each. Time from the broadcast to the last `stored` confirmation. Targets: 1,000 nodes under 2 s, 10,000 under 15 s; server resident memory under 64 MB + 0.1 MB per node.\n\n| store | nodes | first broadcast (created) | second broadcast (updated) | server resident after | memory budget | broker memory per node queue |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    ));
    for (backend, n, f, q) in &rows {
        md.push_str(&format!(
            "| {backend} | {n} | {:.2} s | {:.2} s | {:.0} MB | {:.0} MB | {} |\n",
            f[0].0.as_secs_f64(),
            f[1].0.as_secs_f64(),
            f[1].1,
            64.0 + 0.1 * *n as f64,
            q.map(|b| format!("{:.1} KB", b / 1024.0))
                .unwrap_or_else(|| "-".into())
        ));
    }
    support::write_section("fleet", &md);
}
