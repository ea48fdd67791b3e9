//! Real servers for the tests of every crate: a private pouchdb-server per test
//! process, a fresh PostgreSQL database per call. Enabled with the `conformance` feature.
//!
//! They fail (never skip) when the server cannot be had, naming it and the command
//! that provides it.
#![allow(clippy::panic, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A name no other test process or call uses: `prefix` + 16 hex digits.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    format!("{prefix}{:016x}", h.finish())
}

/// The server's base URL; started once, watched by a shell that kills it when this
/// test process exits.
pub fn pouchdb() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let bin = std::env::var("VOGELER_POUCHDB_BIN").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/vogeler/pouchdb-server-4.2.0/node_modules/.bin/pouchdb-server")
        });
        if !bin.exists() {
            panic!(
                "pouchdb-server (the CouchDB-API test server) is not installed at {}: run `scripts/services.sh ensure-pouchdb`",
                bin.display()
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(format!("vogeler-pouchdb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pouchdb dir");
        let script = format!(
            "cd '{dir}' && '{bin}' --in-memory --no-stdout-logs --host 127.0.0.1 --port {port} --dir '{dir}' --config '{dir}/config.json' >'{dir}/out.log' 2>&1 & child=$!; \
             while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $child; rm -rf '{dir}'",
            bin = bin.display(),
            dir = dir.display(),
            parent = std::process::id()
        );
        // The watchdog shell outlives this call on purpose; it reaps the server itself.
        #[allow(clippy::zombie_processes)]
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pouchdb-server");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("out.log")).unwrap_or_default();
                panic!(
                    "pouchdb-server ({}) did not start on {url} within 60 s; reinstall it with \
                     `scripts/services.sh ensure-pouchdb`. Its output:\n{log}",
                    bin.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        url
    })
}

/// The PostgreSQL server tests use (`VOGELER_TEST_POSTGRES`, a URL ending in a database
/// the role may connect to and create databases from).
pub fn postgres_admin_url() -> String {
    std::env::var("VOGELER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://vogeler:vogeler@127.0.0.1:5432/postgres".into())
}

/// `vogeler_t_<unix seconds>_`: how every test database's name begins, so
/// `scripts/services.sh ensure` can tell by the name when a killed run left it behind.
pub fn test_database_prefix() -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("vogeler_t_{stamp}_")
}

/// Creates `vogeler_t_<unix seconds>_<random>` and returns its URL; fails naming the
/// server if unreachable. Tests and benchmarks leave these behind (a store handle may
/// outlive the test); `scripts/services.sh ensure` drops the ones six hours old, by the
/// stamp.
pub async fn fresh_postgres() -> String {
    let url = postgres_admin_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {url}: {e}; start it with `scripts/services.sh ensure-postgres`")
        });
    tokio::spawn(conn);
    let name = unique(&test_database_prefix());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {url}: {e}"));
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("VOGELER_TEST_POSTGRES must end in /database: {url}"),
    }
}

/// A DSN for a fresh, empty store of `backend` (`sqlite` under `dir`, `postgres` a new
/// database, `couch` a new database on the private pouchdb-server).
pub async fn fresh_dsn(backend: &str, dir: &std::path::Path) -> String {
    match backend {
        "sqlite" => format!("sqlite://{}", dir.join("vogeler.db").display()),
        "postgres" => fresh_postgres().await,
        "couch" => format!(
            "{}/{}",
            pouchdb().replace("http://", "couch://"),
            unique("vt_")
        ),
        other => panic!("no store backend {other} (sqlite, postgres, couch)"),
    }
}

/// Opens the store a DSN names (SQLite paths absolute); fails naming the DSN.
pub async fn open(dsn: &str) -> crate::DynStore {
    let parsed = vogeler_config::StoreDsn::parse(dsn, std::path::Path::new("/"))
        .unwrap_or_else(|e| panic!("bad store DSN {dsn}: {e}"));
    crate::open(&parsed)
        .await
        .unwrap_or_else(|e| panic!("cannot open the store at {dsn}: {e}"))
}
