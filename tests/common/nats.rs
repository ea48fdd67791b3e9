//! A private nats-server per test (or a three-node JetStream cluster), for faults the
//! shared NATS must never see; shaped like `rabbit.rs`'s `RabbitNode` / `RabbitCluster`.
//!
//! [`NatsNode::start`] runs `nats-server` (`VOGELER_NATS_SERVER`, default
//! `/usr/sbin/nats-server`) with JetStream on free loopback ports (client, HTTP
//! monitoring, and for a cluster member its route port), its config file, JetStream
//! file store and log all under a temp dir. [`NatsNode::restart`] stops it with SIGTERM
//! (a clean shutdown) and starts it again on the same store, so streams, consumers and
//! stored messages survive; [`NatsNode::kill`] is SIGKILL. Dropping a node kills it, so
//! no nats-server outlives its test. A node is ready when its monitoring port's
//! `/healthz` says `ok`: JetStream is up and, in a cluster, has a meta leader.
//!
//! Timing on this machine: a start takes well under a second; a cluster of three has a
//! meta leader 2 to 5 s after the last member started.
//!
//! A cluster runs `VOGELER_NATS_CLUSTER_SERVER` where set: `scripts/services.sh env`
//! names a current upstream release there, because Debian 12's 2.9.10 was seen to accept
//! a raise of a live stream's replicas and leave it on one copy (1 run in 3 under load).
//!
//! The benchmarks run their private servers with it too (`benches/support`);
//! `VOGELER_NATS_SERVER_ARGS` adds flags for a look inside (`--profile 6061`, Go's pprof).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before the test fails (a cluster elects its meta leader
/// within seconds; minutes mean something is wrong).
const START_LIMIT: Duration = Duration::from_secs(60);

/// One private nats-server with JetStream.
pub struct NatsNode {
    dir: tempfile::TempDir,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// HTTP monitoring port on 127.0.0.1 (`/healthz`, `/jsz`).
    pub monitor_port: u16,
    /// `server_name`, unique per node (a JetStream cluster needs them distinct).
    pub name: String,
    child: Option<Child>,
    /// The nats-server binary this node runs.
    bin: String,
    /// How long each start took to be ready, first start first.
    pub starts: Vec<Duration>,
}

/// The nats-server binary the tests run.
fn binary() -> String {
    std::env::var("VOGELER_NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".into())
}

/// The nats-server binary a cluster's members run (see the module's notes).
fn cluster_binary() -> String {
    std::env::var("VOGELER_NATS_CLUSTER_SERVER")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(binary)
}

impl NatsNode {
    /// Starts a single node with JetStream and waits until it is ready.
    pub fn start() -> NatsNode {
        Self::start_with("")
    }

    /// [`NatsNode::start`] with `extra` lines in its config (an `authorization` block).
    pub fn start_with(extra: &str) -> NatsNode {
        let mut node = Self::prepare(extra);
        node.spawn();
        node.wait_ready();
        node
    }

    /// A node's directory, ports and config (plus `extra` lines), not started.
    fn prepare(extra: &str) -> NatsNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, monitor_port) = (super::free_port(), super::free_port());
        // Unique among the servers on this machine: the client port is.
        let name = format!("vn{port}");
        let conf = format!(
            "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n}}\n{extra}",
            dir.path().join("js").display()
        );
        std::fs::write(dir.path().join("nats.conf"), conf).expect("write nats.conf");
        NatsNode {
            dir,
            port,
            monitor_port,
            name,
            child: None,
            bin: binary(),
            starts: Vec::new(),
        }
    }

    /// `nats://127.0.0.1:PORT/PREFIX`, as `--qhost` or `[amqp] dsn` take it.
    pub fn url(&self, prefix: &str) -> String {
        format!("{}/{prefix}", self.base_url())
    }

    /// `nats://127.0.0.1:PORT`, with no prefix.
    pub fn base_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (for `/proc`), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (a clean shutdown: JetStream flushes its store), then a start on the same
    /// store; returns once it is ready again.
    pub fn restart(&mut self) {
        self.signal("TERM");
        self.reap(Duration::from_secs(30));
        self.spawn();
        self.wait_ready();
    }

    /// SIGKILL: the member is gone at once, as a crashed host.
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.reap(Duration::from_secs(10));
    }

    /// Starts a stopped node again on its store and waits until it is ready.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Everything the node logged (all its starts).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// The monitoring endpoint `path` (`/jsz?consumers=true`, say) as JSON.
    pub fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status();
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("nats log file");
        let err = log.try_clone().expect("nats log file");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .args(
                std::env::var("VOGELER_NATS_SERVER_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install it with `scripts/services.sh ensure`): {e}",
                    self.bin
                )
            });
        self.child = Some(child);
    }

    /// Waits until `/healthz` says ok (JetStream up, meta leader known in a cluster).
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let ok = self
                .monitor("/healthz")
                .is_some_and(|h| h["status"] == "ok");
            if ok {
                self.starts.push(started.elapsed());
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "nats-server {} exited ({status}); log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "nats-server {} on 127.0.0.1:{} not ready within {START_LIMIT:?}; last /healthz {:?}; log:\n{}",
                self.name,
                self.port,
                self.monitor("/healthz"),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the process to exit; kills it if it takes longer than `limit`.
    fn reap(&mut self, limit: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The node's directory (its config, store and log).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Private nodes routed into one JetStream cluster (every member routes to every
/// other). Dropping it kills every member.
pub struct NatsCluster {
    /// The members.
    pub nodes: Vec<NatsNode>,
    /// How long the cluster took to be ready: every member healthy.
    pub formed_in: Duration,
}

impl NatsCluster {
    /// Starts `n` (at least 3 for replicated streams to survive a member) nodes in one
    /// cluster; returns once every member's `/healthz` is ok.
    pub fn start(n: usize) -> NatsCluster {
        let started = Instant::now();
        let route_ports: Vec<u16> = (0..n).map(|_| super::free_port()).collect();
        let cluster = format!("vc{}", route_ports[0]);
        let mut nodes: Vec<NatsNode> = (0..n)
            .map(|i| {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("    \"nats-route://127.0.0.1:{p}\""))
                    .collect();
                let mut node = NatsNode::prepare(&format!(
                    "cluster {{\n  name: {cluster}\n  listen: \"127.0.0.1:{}\"\n  routes: [\n{}\n  ]\n}}\n",
                    route_ports[i],
                    routes.join("\n")
                ));
                node.bin = cluster_binary();
                node
            })
            .collect();
        for node in nodes.iter_mut() {
            node.spawn();
        }
        for node in nodes.iter_mut() {
            node.wait_ready();
        }
        NatsCluster {
            nodes,
            formed_in: started.elapsed(),
        }
    }

    /// `nats://127.0.0.1:P1,127.0.0.1:P2,…/PREFIX`: every member, as `--qhost` takes them.
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("nats://{}/{prefix}", hosts.join(","))
    }

    /// `/jsz?streams=true&consumers=true` of member `via`: where each stream and
    /// consumer lives, and its replicas as that member sees them.
    pub fn jsz(&self, via: usize) -> serde_json::Value {
        self.nodes[via]
            .monitor("/jsz?accounts=true&streams=true&consumers=true&config=true")
            .unwrap_or_else(|| panic!("/jsz of member {via} did not answer"))
    }
}
