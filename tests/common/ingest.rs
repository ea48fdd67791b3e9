//! Ingest under faults, shared by `faults.rs` (RabbitMQ) and `nats_faults.rs`: results
//! published as a fleet would ([`Flow`]: chunks, confirmed, republished after a broker
//! failure), and the checks that every confirmed result was stored, exactly once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vogeler_store::Store;
use vogeler_transport::{Broker, Delivered, Outgoing, Session};

use super::{rt, Deployment, Proc};

pub fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// A v1 result for `node`, as a client publishes it.
pub fn result_body(node: &str, plugin: &str, value: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"kind":"result","node":"{node}","plugin":"{plugin}","format":"output","data":["{value}"],"duration_ms":1,"collected_at":"2026-01-01T00:00:00Z"}}"#
    )
    .into_bytes()
}

/// Node names stored whose name starts with `prefix`, via `vogeler-admin node`.
pub fn stored_nodes(d: &Deployment, prefix: &str) -> BTreeSet<String> {
    let out = d.admin(&["node"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Polls until `want` nodes with `prefix` are stored; returns how many there are then.
pub fn wait_stored(d: &Deployment, prefix: &str, want: usize, secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n = stored_nodes(d, prefix).len();
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stops `flow` and waits until every result it had confirmed is stored; returns
/// their node names. `context` words the failure (when, and the logs).
pub fn all_confirmed_stored(
    d: &Deployment,
    flow: Flow,
    prefix: &str,
    context: impl Fn() -> String,
) -> Vec<String> {
    let (n, failures) = flow.finish();
    eprintln!("{n} results confirmed, {failures} publisher session failures");
    let stored = wait_stored(d, prefix, n, 90);
    assert_eq!(stored, n, "every confirmed result stored {}", context());
    (0..n).map(|i| format!("{prefix}{i:06}")).collect()
}

/// Starts publishing `hello` results for nodes `{prefix}NNNNNN` through `broker` and
/// waits until they flow: 2000 confirmed and the server storing them. Returns the flow
/// and how many nodes were stored by then.
pub fn flowing_results(d: &Deployment, via: Via, prefix: &str) -> (Flow, usize) {
    let flow = Flow::start(
        via,
        {
            let prefix = prefix.to_string();
            move |i| result_body(&format!("{prefix}{i:06}"), "hello", "hi")
        },
        100,
        Duration::from_millis(10),
    );
    flow.wait_confirmed(2000, 60);
    let stored = wait_stored(d, prefix, 1, 30);
    assert!(stored > 0, "the server stored nothing while results flowed");
    (flow, stored)
}

/// Results published from a thread as a fleet of clients would: in chunks with a pause
/// between them, each chunk confirmed before the next; a chunk that fails (the broker
/// went away) is published again on a new session until it is confirmed. The flow runs
/// until [`Flow::finish`], which stops it after a confirmed chunk, so exactly the
/// first [`Flow::confirmed`] bodies were published (and no later one, even partly).
pub struct Flow {
    /// Bodies confirmed so far.
    confirmed: Arc<AtomicUsize>,
    /// Session failures so far (each one a reconnect).
    failures: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// `Err` when a chunk could not be confirmed within two minutes.
    handle: JoinHandle<Result<(), String>>,
}

impl Flow {
    pub fn start(
        via: Via,
        body: impl Fn(usize) -> Vec<u8> + Send + 'static,
        chunk: usize,
        pause: Duration,
    ) -> Flow {
        let confirmed = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, failed, stopped) = (confirmed.clone(), failures.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            rt().block_on(async move {
                let mut session: Option<Publisher> = None;
                let mut i = 0;
                let mut since = Instant::now();
                loop {
                    if since.elapsed() > Duration::from_secs(120) {
                        return Err(format!(
                            "bodies {i}.. not confirmed within 120 s ({} session failures)",
                            failed.load(Ordering::SeqCst)
                        ));
                    }
                    let Some(s) = session.as_ref() else {
                        match via.connect().await {
                            Ok(s) => session = Some(s),
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                        continue;
                    };
                    let bodies: Vec<Vec<u8>> = (i..i + chunk).map(&body).collect();
                    if s.publish_chunk(&bodies).await {
                        i += chunk;
                        since = Instant::now();
                        counter.store(i, Ordering::SeqCst);
                        if stopped.load(Ordering::SeqCst) {
                            break;
                        }
                        tokio::time::sleep(pause).await;
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                        session = None;
                    }
                }
                if let Some(s) = session {
                    s.close().await;
                }
                Ok(())
            })
        });
        Flow {
            confirmed,
            failures,
            stop,
            handle,
        }
    }

    pub fn confirmed(&self) -> usize {
        self.confirmed.load(Ordering::SeqCst)
    }

    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` bodies are confirmed; fails the test if that takes
    /// longer than `secs` or the publisher gave up.
    pub fn wait_confirmed(&self, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.confirmed() < n {
            assert!(
                !self.handle.is_finished() && Instant::now() < deadline,
                "publisher stuck at {} confirmed (wanted {n}) after {secs} s",
                self.confirmed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops after the next confirmed chunk; returns how many bodies were confirmed
    /// and how many sessions failed.
    pub fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.join() {
            Ok(Ok(())) => (
                self.confirmed.load(Ordering::SeqCst),
                self.failures.load(Ordering::SeqCst),
            ),
            Ok(Err(e)) => panic!("publisher: {e}"),
            Err(_) => panic!("publisher thread panicked"),
        }
    }
}

/// Where a [`Flow`] publishes: an AMQP exchange (pipelined confirms, as a fleet of
/// clients on RabbitMQ), or any broker through the transport seam (each result confirmed,
/// as a client on NATS publishes).
pub enum Via {
    /// A RabbitMQ broker and the master exchange.
    Amqp(Broker, String),
    /// The programs' own connector (NATS: the results stream).
    Seam(vogeler_transport::Connector),
}

impl Via {
    async fn connect(&self) -> Result<Publisher, String> {
        match self {
            Via::Amqp(broker, exchange) => broker
                .connect()
                .await
                .map(|s| Publisher::Amqp(Box::new(s), exchange.clone()))
                .map_err(|e| e.to_string()),
            Via::Seam(c) => c
                .connect()
                .await
                .map(Publisher::Seam)
                .map_err(|e| e.to_string()),
        }
    }
}

/// One connection of a [`Flow`].
enum Publisher {
    Amqp(Box<Session>, String),
    Seam(std::sync::Arc<dyn vogeler_transport::Transport>),
}

impl Publisher {
    /// Publishes and confirms one chunk; `false` if anything failed (publish error,
    /// nack, no confirm within 10 s).
    async fn publish_chunk(&self, bodies: &[Vec<u8>]) -> bool {
        match self {
            Publisher::Seam(t) => {
                for b in bodies {
                    let sent = t.publish_result(Outgoing::new(b.clone()));
                    if !matches!(
                        tokio::time::timeout(Duration::from_secs(10), sent).await,
                        Ok(Ok(()))
                    ) {
                        return false;
                    }
                }
                true
            }
            Publisher::Amqp(s, exchange) => {
                let mut pending = Vec::with_capacity(bodies.len());
                for b in bodies {
                    match s.publish(exchange, "", Outgoing::new(b.clone())).await {
                        Ok(p) => pending.push(p),
                        Err(_) => return false,
                    }
                }
                let mut ok = true;
                for p in pending {
                    let confirmed = tokio::time::timeout(Duration::from_secs(10), p.confirmed());
                    ok &= matches!(confirmed.await, Ok(Ok(Delivered::Routed)));
                }
                ok
            }
        }
    }

    async fn close(self) {
        match self {
            Publisher::Amqp(s, _) => s.close().await,
            // A drain on a connection to a broker that went away can wait long: dropped.
            Publisher::Seam(t) => drop(t),
        }
    }
}

/// Every node's history (SQLite, read after the server stopped) holds exactly one entry.
pub fn assert_history_once_sqlite(d: &Deployment, nodes: &[String]) {
    rt().block_on(async {
        let store = vogeler_store::sqlite::SqliteStore::open(&d.db).expect("open SQLite store");
        assert_history_once(&store, nodes).await;
    })
}

pub async fn assert_history_once(store: &dyn Store, nodes: &[String]) {
    let mut bad = Vec::new();
    for node in nodes {
        let h = store.history(node, None).await.expect("history").rows;
        if h.len() != 1 {
            bad.push(format!("{node}: {} entries", h.len()));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} nodes do not have exactly one history entry: {:?}",
        bad.len(),
        nodes.len(),
        &bad[..bad.len().min(10)]
    );
}

pub fn assert_running(p: &mut Proc) {
    if let Ok(Some(status)) = p.child.try_wait() {
        panic!("{} exited ({status}); log:\n{}", p.name, p.log_text());
    }
}
