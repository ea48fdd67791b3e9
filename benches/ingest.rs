//! Ingest benchmark: the raw broker ceiling (publish with confirms, consume with acks,
//! best prefetch and ack batching from a sweep) next to `vogeler-server`'s ingest of
//! facter-sized results into each store, in one run, on the shared RabbitMQ.
//!
//! `cargo bench --bench ingest` (env `VOGELER_BENCH_N`, default 20000 results;
//! `VOGELER_BENCH_STORES=sqlite,postgres,couch`; `VOGELER_BENCH_CLIENT_REQUESTS`,
//! default 1000; `VOGELER_BENCH_PARTS`, default `ingest,client`;
//! `VOGELER_BENCH_CLIENT_TRANSPORTS`, default `amqp,nats`; `VOGELER_BENCH_CLIENT_BIN`, the
//! client binary to measure, default the bench build's: the packaged one is
//! `target/x86_64-unknown-linux-musl/client/vogeler-client` after `scripts/package.sh`) prints the figures and writes
//! its sections of BENCHMARKS.md (`ingest`, `client`). The CouchDB figure is measured on
//! pouchdb-server. A real `vogeler-client` is measured last on each transport (RabbitMQ:
//! the shared broker; NATS: a private nats-server): idle, then answering requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use vogeler::server::{self, ServerOptions, Stats};
use vogeler_protocol::{Message, Request};
use vogeler_store::DynStore;
use vogeler_transport::{
    AmqpTransport, Audience, Broker, NatsOptions, NatsTransport, Outgoing, QueueKind, Topology,
    Transport,
};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn broker() -> Broker {
    Broker::new(
        vec![AMQP.into()],
        vec!["amqp://guest:****@127.0.0.1:5672/".into()],
        "vogeler-bench",
    )
}

fn facter_json() -> serde_json::Value {
    let yaml = include_str!("../fixtures/facter-y.yaml");
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("facter fixture parses");
    serde_json::to_value(v).expect("facter as json")
}

fn result_body(node: &str, facter: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "v": 1, "kind": "result", "node": node, "plugin": "facter", "format": "yaml",
        "data": facter, "duration_ms": 400,
        "collected_at": chrono::Utc::now().to_rfc3339(),
    }))
    .expect("encode")
}

/// Publishes `bodies` to `exchange` with pipelined confirms (windows of 1,000).
async fn publish_all(exchange: &str, key: &str, bodies: &[Vec<u8>]) -> Duration {
    let session = broker()
        .connect()
        .await
        .expect("RabbitMQ at 127.0.0.1:5672");
    let t = Instant::now();
    for chunk in bodies.chunks(1000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for b in chunk {
            pending.push(
                session
                    .publish(exchange, key, Outgoing::new(b.clone()))
                    .await
                    .expect("publish"),
            );
        }
        for p in pending {
            p.confirmed().await.expect("confirm");
        }
    }
    let d = t.elapsed();
    session.close().await;
    d
}

/// Consume-and-ack loop: the ceiling the server is measured against.
async fn raw_consume(queue: &str, n: usize, prefetch: u16, ack_every: usize) -> Duration {
    let session = broker().connect().await.expect("connect");
    let mut consumer = session.consume(queue, prefetch, "").await.expect("consume");
    let t = Instant::now();
    let mut got = 0usize;
    while got < n {
        let d = consumer
            .next()
            .await
            .expect("consumer open")
            .expect("delivery");
        got += 1;
        if got % ack_every == 0 || got == n {
            session.ack(d.tag, true).await.expect("ack");
        }
    }
    let d = t.elapsed();
    session.close().await;
    d
}

fn topology(id: &str) -> Topology {
    Topology {
        master_exchange: format!("{id}.master"),
        broadcast_exchange: format!("{id}.broadcast"),
        master_queue: format!("{id}.master.in"),
        dead_queue: format!("{id}.dead"),
        quorum: false,
    }
}

async fn declare(t: &Topology) {
    let s = broker().connect().await.expect("connect");
    s.declare_server(t).await.expect("declare");
    s.close().await;
}

async fn cleanup(t: &Topology) {
    let s = broker().connect().await.expect("connect");
    let _ = s.delete_queue(&t.master_queue).await;
    let _ = s.delete_queue(&t.dead_queue).await;
    // The exchanges too: a run leaves nothing behind on the shared broker.
    let _ = s.delete_exchange(&t.master_exchange).await;
    let _ = s.delete_exchange(&t.broadcast_exchange).await;
    s.close().await;
}

async fn ingest(store: DynStore, bodies: &[Vec<u8>], id: &str) -> (Duration, u64, f64) {
    ingest_with(vec![store], bodies, id).await
}

/// Ingest with one server per store handle, all consuming the same master.in side by
/// side (as several `vogeler-server` processes would).
async fn ingest_with(stores: Vec<DynStore>, bodies: &[Vec<u8>], id: &str) -> (Duration, u64, f64) {
    let t = topology(id);
    declare(&t).await;
    publish_all(&t.master_exchange, "", bodies).await;
    let stats: Vec<Arc<Stats>> = stores.iter().map(|_| Arc::new(Stats::default())).collect();
    let (trigger, shutdown) = vogeler::shutdown::channel();
    let started = Instant::now();
    let tasks: Vec<_> = stores
        .into_iter()
        .zip(&stats)
        .map(|(store, st)| {
            let connector = vogeler_transport::Connector::Amqp {
                broker: broker(),
                topology: t.clone(),
            };
            let opts = ServerOptions::new(connector, t.clone());
            tokio::spawn(server::run(opts, store, st.clone(), shutdown.clone()))
        })
        .collect();
    let n = bodies.len() as u64;
    let sum = |f: fn(&Stats) -> u64| stats.iter().map(|s| f(s)).sum::<u64>();
    while sum(|s| s.stored.load(Ordering::Relaxed))
        + sum(|s| s.dead_lettered.load(Ordering::Relaxed))
        < n
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    trigger.trigger();
    for task in tasks {
        let _ = task.await;
    }
    cleanup(&t).await;
    let store_share = sum(|s| s.store_micros.load(Ordering::Relaxed)) as f64
        / 1e6
        / elapsed.as_secs_f64()
        / stats.len() as f64;
    (
        elapsed,
        sum(|s| s.dead_lettered.load(Ordering::Relaxed)),
        store_share,
    )
}

/// What a real `vogeler-client` costs: resident memory and CPU idle, then under load.
struct ClientFigures {
    idle_kib: u64,
    /// CPU clock ticks over five idle seconds.
    idle_ticks: u64,
    /// Requests answered in the load phase.
    requests: u64,
    /// Peak resident memory (VmHWM) after the load.
    peak_kib: u64,
    /// The client's own CPU (not its plugin processes') per answered request.
    cpu_us_per_result: f64,
}

/// Where a measured client's broker is: the shared RabbitMQ on the bench's own names, or
/// a private nats-server (so its figures are the client's alone) on its own prefix.
enum ClientBus {
    Amqp(Topology),
    Nats(support::nats::NatsNode, String),
}

impl ClientBus {
    /// The client's `VOGELER_*` environment for this broker.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            ClientBus::Amqp(t) => vec![
                ("VOGELER_QHOST", "amqp://guest:guest@127.0.0.1:5672/".into()),
                ("VOGELER_MASTER_EXCHANGE", t.master_exchange.clone()),
                ("VOGELER_BROADCAST_EXCHANGE", t.broadcast_exchange.clone()),
            ],
            ClientBus::Nats(server, prefix) => {
                vec![("VOGELER_QHOST", server.url(prefix))]
            }
        }
    }

    /// A sender on this broker, the results queue (or stream) declared.
    async fn sender(&self) -> Arc<dyn Transport> {
        let t: Arc<dyn Transport> = match self {
            ClientBus::Amqp(t) => Arc::new(AmqpTransport::new(
                broker().connect().await.expect("connect"),
                t.clone(),
            )),
            ClientBus::Nats(server, prefix) => Arc::new(
                NatsTransport::connect(
                    &server.base_url(),
                    NatsOptions {
                        prefix: prefix.clone(),
                        ..Default::default()
                    },
                )
                .await
                .expect("connect to the private nats-server"),
            ),
        };
        t.declare().await.expect("declare");
        t
    }
}

/// Starts a client with the shipped plugins, measures it idle for five seconds, then
/// sends it `requests` requests for the `os_release` plugin (a `cat`, so the figure
/// is the client's own work: receive, run, convert, publish with confirms) and waits
/// for every result to reach the results queue.
async fn client_figures(id: &str, requests: u64, bus: &ClientBus) -> ClientFigures {
    let sender = bus.sender().await;
    let node = format!("{id}-client");
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/plugins");
    let state = tempfile::tempdir().expect("tempdir");
    // The packaged agent is built with its own profile (scripts/package.sh); measure that
    // binary by naming it.
    let bin = std::env::var_os("VOGELER_BENCH_CLIENT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_vogeler-client").into());
    let mut child = std::process::Command::new(&bin)
        .args([
            "-p",
            plugins.to_str().expect("utf-8 path"),
            "run",
            "--node-name",
            &node,
        ])
        .envs(bus.env())
        .env("VOGELER_STATE_DIR", state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start vogeler-client");
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Ok(Some(status)) = child.try_wait() {
        panic!("vogeler-client exited at start ({status})");
    }
    let pid = child.id();
    let ticks = || support::cpu_ticks(&pid.to_string());
    let before = ticks();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_ticks = ticks() - before;
    let idle_kib = support::proc_status_kib(pid, "VmRSS:");

    let before = ticks();
    for i in 0..requests {
        let request = Request {
            id: format!("{id}-load-{i}"),
            command: "os_release".into(),
            targets: vec![node.clone()],
            sender: "ingest-bench".into(),
            sent_at: chrono::Utc::now(),
            ttl: 600,
            reply_to: None,
            unsafe_command: false,
            want_value: false,
        };
        let body = vogeler_protocol::encode(&Message::Request(request));
        sender
            .publish_request(Audience::Node(&node), Outgoing::new(body))
            .await
            .expect("publish request");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answered = 0;
    while answered < requests && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        answered = sender
            .queue_status(QueueKind::Results)
            .await
            .ok()
            .flatten()
            .map(|q| u64::from(q.messages))
            .unwrap_or(0);
    }
    let used = ticks() - before;
    let peak_kib = support::proc_status_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    sender.close().await;
    if let ClientBus::Amqp(t) = bus {
        let s = broker().connect().await.expect("connect");
        let _ = s.delete_queue(&node).await;
        s.close().await;
        cleanup(t).await;
    }
    ClientFigures {
        idle_kib,
        idle_ticks,
        requests: answered,
        peak_kib,
        cpu_us_per_result: used as f64 * 10_000.0 / answered.max(1) as f64,
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let parts = std::env::var("VOGELER_BENCH_PARTS").unwrap_or_else(|_| "ingest,client".into());
    let id = format!("bench{}", std::process::id());
    if parts.split(',').any(|p| p.trim() == "ingest") {
        ingest_part(&id).await;
    }
    if parts.split(',').any(|p| p.trim() == "client") {
        client_part(&id).await;
    }
}

/// The broker ceiling and the server's ingest into each store: the `ingest` section.
async fn ingest_part(id: &str) {
    let n: usize = support::env_number("VOGELER_BENCH_N", 20_000);
    let stores = support::stores("sqlite,postgres,couch");
    let facter = facter_json();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| result_body(&format!("node{i:06}"), &facter))
        .collect();
    let size = bodies[0].len();
    println!("{n} facter-sized results ({size} bytes each)");

    // Raw ceiling: sweep prefetch and ack batching, keep the best.
    let mut best = (0.0f64, 0u16, 0usize);
    let mut sweep = Vec::new();
    let sweep_points: &[(u16, usize)] = if std::env::var("VOGELER_BENCH_QUICK").is_ok() {
        &[(2000, 1000)]
    } else {
        &[(100, 50), (500, 250), (1000, 500), (2000, 1000)]
    };
    for &(prefetch, ack_every) in sweep_points {
        let t = topology(&format!("{id}.raw{prefetch}"));
        declare(&t).await;
        publish_all(&t.master_exchange, "", &bodies).await;
        let d = raw_consume(&t.master_queue, n, prefetch, ack_every).await;
        cleanup(&t).await;
        let r = rate(n, d);
        println!("raw consume+ack  prefetch {prefetch:5}  ack every {ack_every:5}: {r:9.0} msg/s");
        sweep.push((prefetch, ack_every, r));
        if r > best.0 {
            best = (r, prefetch, ack_every);
        }
    }
    let publish_rate = {
        let t = topology(&format!("{id}.pub"));
        declare(&t).await;
        let d = publish_all(&t.master_exchange, "", &bodies).await;
        cleanup(&t).await;
        rate(n, d)
    };
    println!("raw publish with confirms: {publish_rate:.0} msg/s");

    let mut rows = Vec::new();
    for backend in stores.iter().map(String::as_str) {
        let dir = tempfile::tempdir().expect("tempdir");
        // CouchDB here is an in-memory pouchdb-server: labelled so in the table.
        let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
        let store = vogeler_store::testing::open(&dsn).await;
        let (d, dead, store_share) = ingest(store, &bodies, &format!("{id}.{backend}")).await;
        let r = rate(n, d);
        println!(
            "server ingest into {backend}: {r:9.0} results/s ({:.0}% of the raw ceiling), {dead} dead-lettered, store calls {:.0}% of the wall time (summed: PostgreSQL and CouchDB hold two batches at once)",
            100.0 * r / best.0,
            100.0 * store_share
        );
        rows.push((backend.to_string(), r));
    }

    // Several servers side by side on one PostgreSQL database (SQLite has one writer).
    let mut scaling = Vec::new();
    if stores.iter().any(|b| b == "postgres") {
        for servers in [1usize, 2, 3] {
            let dir = tempfile::tempdir().expect("tempdir");
            let dsn = vogeler_store::testing::fresh_dsn("postgres", dir.path()).await;
            let mut handles = Vec::new();
            for _ in 0..servers {
                handles.push(vogeler_store::testing::open(&dsn).await);
            }
            let (d, _, _) = ingest_with(handles, &bodies, &format!("{id}.pg{servers}")).await;
            let r = rate(n, d);
            println!("{servers} server(s) side by side into postgres: {r:9.0} results/s");
            scaling.push((servers, r));
        }
    }

    let mut md = String::from("## Ingest\n\n");
    md.push_str(&support::machine_line("ingest"));
    md.push_str(&format!(
        "### Ingest ({n} facter-sized results, {size} bytes each)\n\n| what | rate | share of raw ceiling |\n| --- | --- | --- |\n"
    ));
    md.push_str(&format!(
        "| raw consume + ack (best: prefetch {}, ack every {}) | {:.0} msg/s | 100% |\n",
        best.1, best.2, best.0
    ));
    let into = |b: &str| {
        format!(
            "| vogeler-server into {}",
            if b == "couch" {
                "couch (pouchdb-server 4.2.0, in memory)"
            } else {
                b
            }
        )
    };
    for (b, r) in &rows {
        md.push_str(&format!(
            "{} | {r:.0} results/s | {:.0}% |\n",
            into(b),
            100.0 * r / best.0
        ));
    }
    // Stores this run did not measure keep their row, marked: its share is of its own
    // run's ceiling.
    for b in ["sqlite", "postgres", "couch"] {
        if !stores.iter().any(|s| s == b) {
            let what = into(b);
            for old in support::earlier_lines("ingest", &[&what]) {
                md.push_str(&match old.strip_prefix(&format!("{what} |")) {
                    Some(rest) => format!("{what} (earlier run) |{rest}"),
                    None => old,
                });
            }
        }
    }
    md.push_str(&format!(
        "| raw publish with confirms (pipelined, windows of 1,000) | {publish_rate:.0} msg/s | |\n\nSweep of the raw consumer:\n\n| prefetch | ack every | msg/s |\n| --- | --- | --- |\n"
    ));
    for (p, a, r) in sweep {
        md.push_str(&format!("| {p} | {a} | {r:.0} |\n"));
    }
    let earlier_scaling = if scaling.is_empty() {
        support::earlier_lines("ingest", &["| 1 |", "| 2 |", "| 3 |"])
    } else {
        Vec::new()
    };
    if !earlier_scaling.is_empty() {
        md.push_str("\n### Several servers side by side (PostgreSQL, one database, one master.in; an earlier run)\n\n| servers | results/s | vs one server |\n| --- | --- | --- |\n");
        md.push_str(&earlier_scaling.concat());
    }
    if !scaling.is_empty() {
        md.push_str("\n### Several servers side by side (PostgreSQL, one database, one master.in)\n\n| servers | results/s | vs one server |\n| --- | --- | --- |\n");
        let one = scaling[0].1;
        for (k, r) in &scaling {
            md.push_str(&format!("| {k} | {r:.0} | {:.2}x |\n", r / one));
        }
    }
    support::write_section("ingest", &md);
}

/// A real client on each transport: the `client` section.
async fn client_part(id: &str) {
    let requests = support::env_number("VOGELER_BENCH_CLIENT_REQUESTS", 1000);
    let mut clients = Vec::new();
    for bus in std::env::var("VOGELER_BENCH_CLIENT_TRANSPORTS")
        .unwrap_or_else(|_| "amqp,nats".into())
        .split(',')
        .map(str::trim)
    {
        let (label, bus) = match bus {
            "amqp" => {
                let t = topology(&format!("{id}.client"));
                declare(&t).await;
                ("RabbitMQ", ClientBus::Amqp(t))
            }
            "nats" => (
                "NATS",
                ClientBus::Nats(support::nats::NatsNode::start(), format!("{id}client")),
            ),
            other => panic!("VOGELER_BENCH_CLIENT_TRANSPORTS: unknown transport {other:?}"),
        };
        let c = client_figures(id, requests, &bus).await;
        println!(
            "client on {label} idle: {} KiB resident, {} CPU ticks in 5 s; {} requests: peak {} KiB resident, {:.0} µs CPU per result",
            c.idle_kib, c.idle_ticks, c.requests, c.peak_kib, c.cpu_us_per_result
        );
        clients.push((label, c));
    }

    let mut md = String::from("## Client\n\n");
    md.push_str(&support::machine_line("ingest"));
    md.push_str(&format!(
        "A real `vogeler-client` with the shipped plugins, idle, then answering {requests} requests for `os_release` (a `cat`: the figure is the client's own work, not a plugin's). RabbitMQ: the shared broker; NATS: a private nats-server ({}). Binary: {}.\n\n| what | {} | target |\n| --- |{} --- |\n",
        support::nats_server_version(),
        match std::env::var("VOGELER_BENCH_CLIENT_BIN") {
            Ok(b) => format!("`{b}` (`VOGELER_BENCH_CLIENT_BIN`)"),
            Err(_) => "the bench build's (no LTO, not the packaged agent's profile)".into(),
        },
        clients.iter().map(|(l, _)| *l).collect::<Vec<_>>().join(" | "),
        " --- |".repeat(clients.len()),
    ));
    let line = |what: &str, f: &dyn Fn(&ClientFigures) -> String, target: &str| {
        let cells: Vec<String> = clients.iter().map(|(_, c)| f(c)).collect();
        format!("| {what} | {} | {target} |\n", cells.join(" | "))
    };
    let mb = |kib: u64| format!("{:.1} MB", kib as f64 / 1024.0);
    md.push_str(&line(
        "idle resident memory",
        &|c| mb(c.idle_kib),
        "under 10 MB; NATS ≤ 6.5 MB",
    ));
    md.push_str(&line(
        "idle CPU over 5 s",
        &|c| format!("{} clock ticks", c.idle_ticks),
        "none",
    ));
    md.push_str(&line(
        "results in the queue after the load",
        &|c| c.requests.to_string(),
        "",
    ));
    md.push_str(&line(
        "peak resident memory under load",
        &|c| mb(c.peak_kib),
        "",
    ));
    md.push_str(&line(
        "client CPU per result",
        &|c| format!("{:.0} µs", c.cpu_us_per_result),
        "",
    ));
    support::write_section("client", &md);
}
