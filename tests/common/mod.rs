//! Test harness: one private deployment per test on the shared RabbitMQ.
//!
//! Each [`Deployment`] has its own exchange, queue and node names (prefixed with a
//! random id), its own temp directory with a `vogeler.conf`, an SQLite file and a
//! plugin directory, and starts the real binaries. Processes die with the guard.
#![allow(dead_code, missing_docs)]

mod bus;
pub mod fleet;
pub mod ingest;
pub mod nats;
pub mod pg;
mod ports;
mod rabbit;
pub mod web;
pub use ports::{alive, free_port, rand_u32};
pub use rabbit::rt;
#[allow(unused_imports)] // used by the tests that need a private broker only
pub use rabbit::{NodeSetup, RabbitCluster, RabbitNode};

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The vhost the tests use on the shared RabbitMQ (`VOGELER_TEST_VHOST`, default
/// `vogeler-test`): `scripts/test.sh` deletes and recreates it before each run, so the
/// durable queues tests leave behind never pile up on the broker.
pub fn vhost() -> String {
    std::env::var("VOGELER_TEST_VHOST")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "vogeler-test".into())
}

/// The shared broker's URI in the test vhost.
pub fn amqp() -> String {
    format!("amqp://guest:guest@127.0.0.1:5672/{}", vhost())
}

/// A finished program's exit status, stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails (never skips) when RabbitMQ is not reachable, naming it.
pub fn require_rabbitmq() {
    let addr = std::env::var("VOGELER_TEST_AMQP_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into());
    if std::net::TcpStream::connect_timeout(
        &addr.parse().expect("socket address"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "RabbitMQ is not reachable at {addr}: start it with `scripts/services.sh ensure-rabbitmq`"
        );
    }
    if std::env::var_os("VOGELER_TEST_AMQP_ADDR").is_none() {
        // On a thread of its own: async tests call this from inside their runtime.
        let login = std::thread::spawn(|| rt().block_on(broker().connect()).map(drop))
            .join()
            .expect("vhost check thread");
        if let Err(e) = login {
            panic!(
                "RabbitMQ at {addr} refuses the test vhost {:?} ({e}): create it with `scripts/services.sh ensure-rabbitmq`",
                vhost()
            );
        }
    }
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "server" => PathBuf::from(env!("CARGO_BIN_EXE_vogeler-server")),
        "client" => PathBuf::from(env!("CARGO_BIN_EXE_vogeler-client")),
        "runner" => PathBuf::from(env!("CARGO_BIN_EXE_vogeler-runner")),
        "admin" => PathBuf::from(env!("CARGO_BIN_EXE_vogeler-admin")),
        other => panic!("no binary {other}"),
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("fixtures").join(rel)
}

/// A running program, killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not stop within 20 s of SIGTERM; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub conf: PathBuf,
    pub plugins: PathBuf,
    pub db: PathBuf,
    /// Broker URI in `vogeler.conf` (the shared broker unless [`Deployment::with_broker`]).
    pub amqp: String,
    /// `[persistence] backend` and its DSN (SQLite in `db` unless [`Deployment::with_store`]).
    pub store: (String, String),
}

impl Deployment {
    /// A fresh deployment with the given plugin files (name, contents).
    pub fn new(plugins: &[(&str, String)]) -> Deployment {
        require_rabbitmq();
        let dir = tempfile::tempdir().expect("tempdir");
        let id = format!("vt{:08x}", rand_u32());
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        for (name, body) in plugins {
            std::fs::write(plugin_dir.join(name), body).expect("plugin file");
        }
        let db = dir.path().join("vogeler.db");
        let conf = dir.path().join("vogeler.conf");
        let d = Deployment {
            id,
            conf,
            plugins: plugin_dir,
            db,
            dir,
            amqp: amqp(),
            store: ("sqlite".into(), "sqlite:vogeler.db".into()),
        };
        d.write_conf("");
        d
    }

    /// Uses another broker (a [`RabbitNode`]) instead of the shared one.
    pub fn with_broker(mut self, amqp: &str) -> Deployment {
        self.amqp = amqp.to_string();
        self.write_conf("");
        self
    }

    /// Uses another store: `backend` as in `[persistence]`, `dsn` for its section.
    pub fn with_store(mut self, backend: &str, dsn: &str) -> Deployment {
        self.store = (backend.to_string(), dsn.to_string());
        self.write_conf("");
        self
    }

    /// Rewrites vogeler.conf with this deployment's names plus `extra` lines.
    pub fn write_conf(&self, extra: &str) {
        let id = &self.id;
        let (backend, store_dsn) = &self.store;
        let amqp = &self.amqp;
        let text = format!(
            "[global]\nplugin_path = plugins\nlog_level = INFO\n\n[persistence]\nbackend = {backend}\n\n\
             [{backend}]\ndsn = {store_dsn}\n\n[amqp]\ndsn = {amqp}\n\
             master_exchange = '{id}.master'\nbroadcast_exchange = '{id}.broadcast'\n\
             master_queue = {id}.master.in\ndead_letter_queue = {id}.dead\n{extra}\n"
        );
        std::fs::write(&self.conf, text).expect("write conf");
    }

    /// The DSN of this deployment's SQLite store.
    pub fn sqlite_dsn(&self) -> String {
        format!("sqlite://{}", self.db.display())
    }

    /// This deployment's SQLite store, opened in the test process (to fill or read it).
    pub async fn open_store(&self) -> vogeler_store::DynStore {
        vogeler_store::testing::open(&self.sqlite_dsn()).await
    }

    /// A node name unique to this deployment.
    pub fn node(&self, short: &str) -> String {
        format!("{}-{short}", self.id)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts `program` with this deployment's config and waits for nothing (a daemon
    /// that is not expected to get ready); its output goes to `<tag>.log`.
    pub fn spawn(&self, program: &str, args: &[&str], tag: &str) -> Proc {
        self.spawn_env(program, args, tag, &[])
    }

    fn spawn_env(&self, program: &str, args: &[&str], tag: &str, env: &[(&str, &str)]) -> Proc {
        let log = self.path(&format!("{tag}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin(program))
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .env_remove("VOGELER_QHOST")
            .env_remove("VOGELER_DBHOST")
            .env_remove("VOGELER_CONFIG")
            // The client's replay memory stays inside the deployment.
            .env("VOGELER_STATE_DIR", self.path("state"))
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Proc {
            child,
            name: tag.to_string(),
            log,
        }
    }

    /// Starts a server and waits until it has declared its queue.
    pub fn server(&self, args: &[&str]) -> Proc {
        self.server_env(args, &[])
    }

    /// [`Deployment::server`] logging at DEBUG each result it stores (`stored node=…`)
    /// and each discovery it answers (`answered a discovery request`), for tests that
    /// count which of several servers did what.
    pub fn verbose_server(&self) -> Proc {
        self.server_env(&[], &[("RUST_LOG", "info,vogeler::server=debug")])
    }

    /// [`Deployment::server`] with extra environment variables (test-only hooks).
    pub fn server_env(&self, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let p = self.spawn_env("server", args, &format!("server-{}", rand_u32()), env);
        if self.is_nats() {
            self.wait_for_log("waiting for results", &p);
        } else {
            self.wait_for_queue(&format!("{}.master.in", self.id), &p);
        }
        p
    }

    /// A client for node `node` (full name) running `run` with extra args.
    pub fn client(&self, node: &str, args: &[&str]) -> Proc {
        let mut all = vec!["run", "--node-name", node];
        all.extend_from_slice(args);
        let p = self.spawn("client", &all, &format!("client-{node}"));
        if self.is_nats() {
            self.wait_for_log("waiting for requests", &p);
        } else {
            self.wait_for_queue(node, &p);
        }
        p
    }

    /// Waits until a queue exists (its program has declared it).
    pub fn wait_for_queue(&self, node: &str, p: &Proc) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = self.admin(&["queue", "--exists", node]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("queue {node} never appeared; log:\n{}", p.log_text());
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(bin(program))
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .env_remove("VOGELER_QHOST")
            .env_remove("VOGELER_DBHOST")
            .env_remove("VOGELER_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    pub fn runner(&self, args: &[&str]) -> Output {
        self.run("runner", args)
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        self.run("admin", args)
    }

    /// The stored document of `node`, via `vogeler-admin node NAME`.
    pub fn document(&self, node: &str) -> Option<Value> {
        self.read_document(node).ok()
    }

    /// The node's document, or why `vogeler-admin node` could not show it.
    pub fn read_document(&self, node: &str) -> Result<Value, String> {
        let out = self.admin(&["node", node]);
        if !out.status.success() {
            return Err(text(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))
    }

    /// Waits until the node's `last_error` names request `id` and says it was refused
    /// for `want` (the client answers every refused request with such an error).
    #[allow(dead_code)]
    pub fn wait_refusal(&self, node: &str, id: &str, want: &str) -> Value {
        let doc = self.wait_document(node, 20, |doc| {
            doc["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(id))
        });
        let message = doc["last_error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("refused") && message.contains(want),
            "request {id}: expected a refusal with {want:?}, got {message:?}"
        );
        doc
    }

    /// Polls `check` on the node's document until it holds or `secs` pass.
    pub fn wait_document(&self, node: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let last = self.read_document(node);
            if let Ok(doc) = &last {
                if check(doc) {
                    return last.unwrap_or_default();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "document of {node} did not reach the expected state within {secs} s; last: {last:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `vogeler-admin keygen --out DIR --name NAME` (DIR inside the deployment);
    /// returns the private key file.
    pub fn keygen(&self, dir: &str, name: &str) -> PathBuf {
        let out = self.admin(&[
            "keygen",
            "--out",
            &self.path(dir).display().to_string(),
            "--name",
            name,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("key id:"),
            "{}",
            text(&out)
        );
        self.path(&format!("{dir}/{name}.key"))
    }

    /// A transport broker handle for this deployment's broker.
    pub fn broker(&self) -> vogeler_transport::Broker {
        broker_at(&self.amqp)
    }

    /// The topology this deployment's programs use.
    pub fn topology(&self) -> vogeler_transport::Topology {
        vogeler_transport::Topology {
            master_exchange: format!("{}.master", self.id),
            broadcast_exchange: format!("{}.broadcast", self.id),
            master_queue: format!("{}.master.in", self.id),
            dead_queue: format!("{}.dead", self.id),
            quorum: false,
        }
    }
}

/// A confirmed publish of raw bytes, as any other AMQP program (a 2010 one) would send them.
pub fn publish_raw(exchange: &str, routing_key: &str, bodies: &[Vec<u8>]) {
    publish_raw_at(&broker(), exchange, routing_key, bodies)
}

/// [`publish_raw`] to any broker.
pub fn publish_raw_at(
    broker: &vogeler_transport::Broker,
    exchange: &str,
    routing_key: &str,
    bodies: &[Vec<u8>],
) {
    rt().block_on(async {
        let session = broker.connect().await.expect("connect to RabbitMQ");
        let mut pending = Vec::new();
        for b in bodies {
            pending.push(
                session
                    .publish(
                        exchange,
                        routing_key,
                        vogeler_transport::Outgoing::new(b.clone()),
                    )
                    .await
                    .expect("publish"),
            );
        }
        for p in pending {
            p.confirmed().await.expect("confirm");
        }
        session.close().await;
    })
}

/// A confirmed publish with headers (what a runner, or an attacker, sends).
pub fn publish_with_headers(
    exchange: &str,
    routing_key: &str,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
) {
    rt().block_on(async {
        let session = broker().connect().await.expect("connect to RabbitMQ");
        session
            .publish_confirmed(
                exchange,
                routing_key,
                vogeler_transport::Outgoing {
                    body,
                    headers,
                    ..Default::default()
                },
            )
            .await
            .expect("publish");
        session.close().await;
    })
}

/// Every message in a queue (consumed and acked), with its headers.
pub fn drain_queue(queue: &str, quiet: Duration) -> Vec<vogeler_transport::Inbound> {
    drain_queue_at(&broker(), queue, quiet)
}

/// [`drain_queue`] on any broker.
pub fn drain_queue_at(
    broker: &vogeler_transport::Broker,
    queue: &str,
    quiet: Duration,
) -> Vec<vogeler_transport::Inbound> {
    rt().block_on(async {
        let session = broker.connect().await.expect("connect to RabbitMQ");
        let mut consumer = session.consume(queue, 1000, "").await.expect("consume");
        let mut out = Vec::new();
        while let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, consumer.next()).await {
            session.ack(d.tag, false).await.expect("ack");
            out.push(d);
        }
        session.close().await;
        out
    })
}

pub fn broker() -> vogeler_transport::Broker {
    broker_at(&amqp())
}

/// A transport broker handle for `amqp` (a URI ending in `/` means the default vhost).
pub fn broker_at(amqp: &str) -> vogeler_transport::Broker {
    let uri = match amqp.strip_suffix('/') {
        Some(_) => format!("{amqp}%2f"),
        None => amqp.to_string(),
    };
    vogeler_transport::Broker::new(vec![uri], vec![amqp.into()], "vogeler-test")
}

/// A plugin file whose command prints a fixture file, as `facter -y` would.
pub fn cat_plugin(name: &str, fixture_rel: &str, format: &str) -> (String, String) {
    (
        format!("{name}.cfg"),
        format!(
            "[{name}]\nname = {name}\ndescription = prints {fixture_rel}\ncommand = cat {}\nresult_format = {format}\ncommand_alias = get_{name}\n",
            fixture(fixture_rel).display()
        ),
    )
}

/// A plugin file with an arbitrary command line.
pub fn plugin(name: &str, command: &str, format: &str) -> (String, String) {
    (
        format!("{name}.cfg"),
        format!(
            "[{name}]\nname = {name}\ndescription = test plugin\ncommand = {command}\nresult_format = {format}\n"
        ),
    )
}

/// The broker a deployment's programs talk to: tests that cross it take one as a
/// parameter and run once per broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The shared RabbitMQ (the test vhost).
    Rabbit,
    /// The shared NATS with JetStream (`VOGELER_TEST_NATS`), under this deployment's prefix.
    Nats,
}

/// How long a NATS test deployment's servers may hold a result unacked.
pub const NATS_TEST_ACK_WAIT: Duration = Duration::from_secs(3);

/// The shared NATS server the tests use (`VOGELER_TEST_NATS`, default 127.0.0.1:4222).
pub fn nats_base() -> String {
    std::env::var("VOGELER_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

impl Deployment {
    /// A fresh deployment whose programs use `bus`.
    pub fn on(bus: Bus, plugins: &[(&str, String)]) -> Deployment {
        let d = Deployment::new(plugins);
        match bus {
            Bus::Rabbit => d,
            Bus::Nats => {
                let url = format!("{}/{}", nats_base(), d.id);
                let d = d.with_broker(&url);
                // A killed server's results go to another within seconds, not 30.
                d.write_conf(&format!(
                    "[nats]\nack_wait = {}\n",
                    NATS_TEST_ACK_WAIT.as_secs()
                ));
                d
            }
        }
    }

    /// This deployment's NATS server(s) as the client library takes them, without the
    /// prefix: the shared one unless [`Deployment::with_broker`] named private ones.
    pub fn nats_servers(&self) -> String {
        let (scheme, rest) = self.amqp.split_once("://").unwrap_or(("nats", &self.amqp));
        let hosts = rest.split('/').next().unwrap_or_default();
        hosts
            .split(',')
            .map(|h| format!("{scheme}://{h}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether this deployment runs on NATS.
    pub fn is_nats(&self) -> bool {
        self.amqp.starts_with("nats://") || self.amqp.starts_with("tls://")
    }

    /// This deployment's broker as the programs see it (the transport seam).
    pub fn connector(&self) -> vogeler_transport::Connector {
        if self.is_nats() {
            vogeler_transport::Connector::Nats {
                url: self.nats_servers(),
                label: self.amqp.clone(),
                opts: vogeler_transport::NatsOptions {
                    prefix: self.id.clone(),
                    // The durable consumers are made by whoever declares first: the
                    // same take-over time as the programs' `[nats] ack_wait` above.
                    ack_wait: NATS_TEST_ACK_WAIT,
                    ..Default::default()
                },
            }
        } else {
            vogeler_transport::Connector::Amqp {
                broker: self.broker(),
                topology: self.topology(),
            }
        }
    }

    /// Publishes messages to the servers' results (confirmed), as a client would.
    pub fn publish_results(&self, msgs: Vec<vogeler_transport::Outgoing>) {
        let c = self.connector();
        rt().block_on(async {
            let t = c.connect().await.expect("connect to the test broker");
            t.declare().await.expect("declare");
            for m in msgs {
                t.publish_result(m).await.expect("publish a result");
            }
            t.close().await;
        });
    }

    /// Waits until `p` logged `line` (a NATS program is ready: it has no queue to see).
    fn wait_for_log(&self, line: &str, p: &Proc) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if p.log_text().contains(line) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} never logged {line:?}; log:\n{}", p.name, p.log_text());
    }
}

impl Drop for Deployment {
    /// A NATS deployment's streams go with it (a vhost is reset once per run instead).
    fn drop(&mut self) {
        if !self.is_nats() {
            return;
        }
        let prefix = self.id.clone();
        let servers = self.nats_servers();
        let _ = std::thread::spawn(move || {
            rt().block_on(async {
                let opts = vogeler_transport::NatsOptions {
                    prefix,
                    ..Default::default()
                };
                if let Ok(t) = vogeler_transport::NatsTransport::connect(&servers, opts).await {
                    let _ = t.delete_streams().await;
                }
            })
        })
        .join();
    }
}
