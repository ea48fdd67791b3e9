//! A private `nats-server` with JetStream for one benchmark run: a free loopback port,
//! its file store in a temp dir, stopped when dropped (also when the benchmark panics),
//! so a benchmark never loads the shared server on 4222 and its memory is the run's own.

use std::time::{Duration, Instant};

/// The binary: `VOGELER_NATS_SERVER` (scripts/services.sh env), else the Debian path.
fn binary() -> String {
    std::env::var("VOGELER_NATS_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/usr/sbin/nats-server".into())
}

/// A running private server.
pub struct NatsServer {
    child: std::process::Child,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Where JetStream keeps its streams; removed on drop.
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one and waits until it accepts connections (panics naming the binary if it
    /// does not within 30 s).
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().expect("tempdir for the JetStream store");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let bin = binary();
        let child = std::process::Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            // Extra flags for a look inside, e.g. `--profile 6061` (Go's pprof).
            .args(
                std::env::var("VOGELER_NATS_SERVER_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin}: {e} (scripts/services.sh ensure-nats installs it)")
            });
        let server = NatsServer {
            child,
            port,
            _store: store,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{bin} did not accept connections on 127.0.0.1:{port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `nats-server --version`.
    pub fn version() -> String {
        let v = super::version(&binary(), &["--version"]);
        v.strip_prefix("nats-server: ").unwrap_or(&v).to_string()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
