//! A private RabbitMQ node per test, for faults the shared broker must never see.
//!
//! [`RabbitNode::start`] runs `rabbitmq-server` as its own Erlang node
//! (`vt<hex>@localhost`) on two free loopback ports (AMQP and distribution), with
//! every file under a temp dir: its own config file (the system one binds 5672), an
//! empty plugin list unless [`NodeSetup`] asks for some (management on a free port),
//! its own mnesia and log directories, and optionally a raised open-file limit
//! ([`NodeSetup::open_files`]; the fleet benchmark includes this file for that).
//! [`RabbitNode::ctl`] runs `rabbitmqctl` against the node.
//! [`RabbitNode::restart`] stops it with SIGTERM (a clean broker shutdown) and starts
//! it again on the same mnesia directory, so durable queues and persistent messages
//! survive; [`RabbitNode::crash`] does the same with SIGKILL. Dropping the node kills
//! it, so no `beam.smp` outlives its test. [`RabbitNode::ctl`] runs `rabbitmqctl` against
//! it, and [`RabbitCluster::start`] joins several nodes (one shared Erlang cookie) into a
//! cluster.
//!
//! Timing on this machine (2 cores shared with builds): a first start takes 6 to 15 s,
//! a restart on an existing mnesia directory about 6 s, a SIGTERM stop about 1.5 s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The start script that runs the node in the foreground (the `/usr/sbin` wrapper
/// switches to the `rabbitmq` user and logs under /var/log, which a test must not).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// The CLI, run directly: the `/usr/sbin` wrapper switches to the `rabbitmq` user,
/// whose HOME holds the shared broker's cookie, not a private node's.
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// How long one `rabbitmqctl` call may take (about 0.7 s each when idle; `start_app`
/// after `join_cluster` boots the broker application again, several seconds).
const CTL_LIMIT: Duration = Duration::from_secs(60);

/// How long a start may take before the test fails (first starts take up to ~15 s
/// on a loaded machine).
const START_LIMIT: Duration = Duration::from_secs(90);

pub struct RabbitNode {
    dir: tempfile::TempDir,
    /// Erlang node name, `vt<hex>@localhost`.
    pub name: String,
    /// AMQP port on 127.0.0.1.
    pub port: u16,
    dist_port: u16,
    /// [`NodeSetup::open_files`], applied at every start.
    open_files: Option<u64>,
    /// The start script (the Erlang VM is its child).
    child: Option<Child>,
    /// How long each start took, first start first.
    pub starts: Vec<Duration>,
    /// The management plugin's HTTP port on 127.0.0.1, when [`NodeSetup::management`] asked.
    pub management_port: Option<u16>,
}

/// What a private node runs beyond AMQP: plugins and extra `rabbitmq.conf` lines
/// (a TLS listener, say). The default is a bare node.
#[derive(Debug, Clone, Default)]
pub struct NodeSetup {
    /// Enable `rabbitmq_management` on a free loopback port.
    pub management: bool,
    /// More plugins to enable.
    pub plugins: Vec<String>,
    /// Lines appended to the node's `rabbitmq.conf`.
    pub conf: Vec<String>,
    /// The Erlang cookie (written to the node's HOME before it starts): cluster
    /// members, and the `rabbitmqctl` that talks to them, must share one.
    pub cookie: Option<String>,
    /// The node's open-file limit (`ulimit -n`), or the hard limit when it cannot be
    /// raised that far; `None` inherits ours. Every classic queue holding persistent
    /// messages wants file handles, so a node with thousands of queues needs more than
    /// the usual 1,024.
    pub open_files: Option<u64>,
}

impl RabbitNode {
    /// Starts a fresh bare node and waits until it accepts AMQP connections.
    pub fn start() -> RabbitNode {
        Self::start_with(NodeSetup::default())
    }

    /// Starts a fresh node with `setup`'s plugins and configuration.
    pub fn start_with(setup: NodeSetup) -> RabbitNode {
        if !Path::new(SERVER).exists() {
            panic!("RabbitMQ is not installed ({SERVER} missing): run `scripts/services.sh ensure-rabbitmq`");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["mnesia", "log", "home"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("node dir");
        }
        let (port, dist_port) = (super::free_port(), super::free_port());
        let mut plugins = setup.plugins.clone();
        // Listeners come from RABBITMQ_NODE_PORT; this file only replaces /etc/rabbitmq's,
        // which binds the shared broker's port.
        let mut conf = vec!["log.file.level = info".to_string()];
        let mut management_port = None;
        if setup.management {
            plugins.push("rabbitmq_management".into());
            let http = super::free_port();
            conf.push(format!("management.tcp.port = {http}"));
            conf.push("management.tcp.ip = 127.0.0.1".into());
            management_port = Some(http);
        }
        conf.extend(setup.conf.iter().cloned());
        std::fs::write(
            dir.path().join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .expect("plugins file");
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(dir.path().join("rabbitmq.conf"), conf.join("\n") + "\n")
            .expect("config file");
        if let Some(cookie) = &setup.cookie {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join("home/.erlang.cookie");
            std::fs::write(&path, cookie).expect("cookie file");
            // Erlang refuses a cookie file others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
                .expect("cookie file mode");
        }
        let mut node = RabbitNode {
            name: format!("vt{:08x}@localhost", super::rand_u32()),
            port,
            dist_port,
            open_files: setup.open_files,
            dir,
            child: None,
            starts: Vec::new(),
            management_port,
        };
        node.spawn();
        node
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/` (guest may log in over loopback).
    pub fn amqp(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/", self.port)
    }

    /// A transport broker handle for this node.
    pub fn broker(&self) -> vogeler_transport::Broker {
        super::broker_at(&self.amqp())
    }

    /// Clean broker restart: SIGTERM, wait for the VM to exit, start again on the
    /// same mnesia directory, wait for AMQP.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Broker crash: SIGKILL the Erlang VM, then start again on the same mnesia directory.
    pub fn crash(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL the Erlang VM and leave it down (no clean shutdown: sockets reset, a
    /// cluster's other members see the node vanish); [`RabbitNode::start_again`] brings it back.
    pub fn kill(&mut self) {
        if let Some(pid) = self.beam_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        self.reap(Duration::from_secs(20));
    }

    /// Starts a stopped node again on its mnesia directory (a cluster member rejoins
    /// its cluster) and waits for AMQP.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "node {} is still running", self.name);
        self.spawn();
    }

    /// Runs `rabbitmqctl -n NODE ARGS` against this node with its cookie; fails the
    /// test if it does not finish within [`CTL_LIMIT`].
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let out_path = self.path(&format!("ctl-{:08x}.out", super::rand_u32()));
        let err_path = out_path.with_extension("err");
        let out = std::fs::File::create(&out_path).expect("ctl output file");
        let err = std::fs::File::create(&err_path).expect("ctl output file");
        let mut child = Command::new(CTL)
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.path("home"))
            .env("RABBITMQ_CONF_ENV_FILE", self.path("rabbitmq-env.conf"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CTL}: {e}"));
        let deadline = Instant::now() + CTL_LIMIT;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rabbitmqctl -n {} {args:?} did not finish within {} s",
                    self.name,
                    CTL_LIMIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = std::process::Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        output
    }

    /// [`RabbitNode::ctl`] that must succeed; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed ({:?}): {}{}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the node cleanly (SIGTERM to the start script, which stops the VM).
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        self.reap(Duration::from_secs(30));
    }

    /// The node's log files, for failure messages.
    pub fn log_text(&self) -> String {
        let mut out = String::new();
        for f in ["startup.log", &format!("log/{}.log", self.name)] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {f} (last lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The node's own directory (certificates or other files a test puts beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The Erlang VM's pid: from the pid file, else the process whose command line names the node.
    pub fn beam_pid(&self) -> Option<u32> {
        if let Some(pid) = std::fs::read_to_string(self.path("node.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Some(pid);
        }
        let rd = std::fs::read_dir("/proc").ok()?;
        rd.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            (cmd.contains("beam") && cmd.contains(&self.name)).then_some(pid)
        })
    }

    fn spawn(&mut self) {
        let started = Instant::now();
        let _ = std::fs::remove_file(self.path("node.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("startup.log"))
            .expect("startup log");
        let err = log.try_clone().expect("startup log");
        let p = |rel: &str| self.path(rel);
        let mut command = match self.open_files {
            // `exec` keeps the script's pid, so stopping and reaping work as without it.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!(
                        "ulimit -n {n} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\""
                    ),
                    SERVER,
                ]);
                c
            }
            None => Command::new(SERVER),
        };
        let child = command
            .current_dir(self.dir.path())
            .env("HOME", p("home"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", p("mnesia"))
            .env("RABBITMQ_LOG_BASE", p("log"))
            .env("RABBITMQ_PID_FILE", p("node.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", p("feature_flags"))
            .env("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", p("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Same process group as the test: when nextest signals a timed-out test's
            // group, the start script's TERM trap stops the node too.
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SERVER}: {e}"));
        self.child = Some(child);
        self.wait_amqp(started);
        self.starts.push(started.elapsed());
    }

    /// Waits until an AMQP session opens (the listener starts last in the boot).
    fn wait_amqp(&mut self, started: Instant) {
        let broker = self.broker();
        let rt = rt();
        loop {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                if let Ok(s) = rt.block_on(broker.connect()) {
                    rt.block_on(s.close());
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "private RabbitMQ node {} exited during start ({status}):\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if started.elapsed() > START_LIMIT {
                panic!(
                    "private RabbitMQ node {} did not accept AMQP on port {} within {} s:\n{}",
                    self.name,
                    self.port,
                    START_LIMIT.as_secs(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the start script to exit; kills it and the VM if that takes longer
    /// than `limit`.
    fn reap(&mut self, limit: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                self.kill_all(child.id());
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The VM can outlive its start script by a moment.
        if let Some(pid) = self.beam_pid() {
            let deadline = Instant::now() + limit;
            while super::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if super::alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }

    fn kill_all(&self, script: u32) {
        let _ = Command::new("kill")
            .args(["-KILL", &script.to_string()])
            .status();
        if let Some(pid) = self.beam_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // A clean stop is fast (~1.5 s); a stuck one is killed after 10 s.
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        self.reap(Duration::from_secs(10));
    }
}

/// Private nodes joined into one RabbitMQ cluster: the same Erlang cookie, nodes 2..n
/// joined to node 1 (`stop_app`, `join_cluster`, `start_app`). Dropping it stops every
/// member.
///
/// Timing on this machine: three nodes boot side by side in 15 to 30 s, each join
/// takes 3 to 6 s more.
pub struct RabbitCluster {
    /// The members, node 1 (the one the others joined) first.
    pub nodes: Vec<RabbitNode>,
    /// How long the cluster took to form: boots and joins.
    pub formed_in: Duration,
}

/// How long the members may take to report each other running after the last join.
const FORM_LIMIT: Duration = Duration::from_secs(60);

impl RabbitCluster {
    /// Starts `n` (at least 2) bare nodes and joins them; returns once node 1's
    /// `cluster_status` lists all `n` running.
    pub fn start(n: usize) -> RabbitCluster {
        assert!(n >= 2, "a cluster needs at least two nodes");
        let started = Instant::now();
        let cookie: String = (0..4)
            .map(|_| format!("{:08X}", super::rand_u32()))
            .collect();
        // Boot side by side: a boot is mostly waiting on disk and Erlang's start-up.
        let boots: Vec<_> = (0..n)
            .map(|_| {
                let cookie = cookie.clone();
                std::thread::spawn(move || {
                    RabbitNode::start_with(NodeSetup {
                        cookie: Some(cookie),
                        ..Default::default()
                    })
                })
            })
            .collect();
        // Every thread is joined before any failure is reported, so the nodes that did
        // start are dropped (stopped) rather than left running.
        let results: Vec<_> = boots.into_iter().map(|b| b.join()).collect();
        let failed = results.iter().filter(|r| r.is_err()).count();
        let nodes: Vec<RabbitNode> = results.into_iter().filter_map(Result::ok).collect();
        if failed > 0 {
            drop(nodes);
            panic!("{failed} of {n} cluster nodes did not start (see the panic above)");
        }
        let cluster = RabbitCluster {
            nodes,
            formed_in: Duration::ZERO,
        };
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            node.ctl_ok(&["stop_app"]);
            node.ctl_ok(&["join_cluster", &first]);
            node.ctl_ok(&["start_app"]);
        }
        let deadline = Instant::now() + FORM_LIMIT;
        loop {
            let running = cluster.running_nodes(0);
            if running.len() == n {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster of {n} did not form within {} s of the last join; running: {running:?}\n{}",
                    FORM_LIMIT.as_secs(),
                    cluster.nodes[0].log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        RabbitCluster {
            formed_in: started.elapsed(),
            ..cluster
        }
    }

    /// Every member's AMQP URI, comma-separated, node 1 first: a `--qhost` value.
    pub fn qhost(&self) -> String {
        self.qhost_from(0)
    }

    /// [`RabbitCluster::qhost`] starting at member `first` (then the others in turn), so a
    /// program connects to that member while it answers.
    pub fn qhost_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        (0..n)
            .map(|i| self.nodes[(first + i) % n].amqp())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The members running, as member `via` sees them (`cluster_status`); empty if it
    /// does not answer.
    pub fn running_nodes(&self, via: usize) -> Vec<String> {
        let out = self.nodes[via].ctl(&["-q", "cluster_status", "--formatter", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                v["running_nodes"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Every queue of the default vhost as member `via` lists it: name, type, leader and
    /// members (the last two for quorum queues).
    pub fn queues(&self, via: usize) -> Vec<serde_json::Value> {
        self.list_queues(via, false)
    }

    /// The names of the queues that live on member `at` (a classic queue's home, a quorum
    /// queue's leader).
    pub fn local_queues(&self, at: usize) -> Vec<String> {
        self.list_queues(at, true)
            .iter()
            .filter_map(|q| q["name"].as_str().map(str::to_string))
            .collect()
    }

    fn list_queues(&self, via: usize, local: bool) -> Vec<serde_json::Value> {
        let mut args = vec!["-q", "list_queues"];
        if local {
            args.push("--local");
        }
        args.extend(["name", "type", "leader", "members", "--formatter", "json"]);
        let text = self.nodes[via].ctl_ok(&args);
        serde_json::from_str::<Vec<serde_json::Value>>(&text)
            .unwrap_or_else(|e| panic!("list_queues output is not JSON ({e}): {text}"))
    }

    /// One queue's entry in [`RabbitCluster::queues`]; fails the test if it is missing.
    pub fn queue(&self, via: usize, name: &str) -> serde_json::Value {
        let all = self.queues(via);
        all.iter()
            .find(|q| q["name"] == name)
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "queue {name} not listed by {}: {all:?}",
                    self.nodes[via].name
                )
            })
    }
}

/// A current-thread runtime, for blocking on a future outside async code.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
