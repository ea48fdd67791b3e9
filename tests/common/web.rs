//! A server with `--http` on a free loopback port over a store filled with the
//! fixture fleet, for the web API and browser tests.

use std::time::{Duration, Instant};

/// A deployment whose server serves HTTP on a free loopback port.
pub struct Web {
    /// The deployment (names, store file).
    pub d: super::Deployment,
    /// The server process, killed on drop.
    pub server: super::Proc,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

/// Fills the deployment's SQLite store with the fixture fleet (plus `extra`), then
/// starts the server with `--http` and `args`.
pub async fn start(args: &[&str], extra: Vec<vogeler_store::Observation>) -> Web {
    start_with_ledger(args, extra, &[], &[]).await
}

/// [`start`], with requests and answers recorded in the request ledger too.
pub async fn start_with_ledger(
    args: &[&str],
    extra: Vec<vogeler_store::Observation>,
    requests: &[vogeler_store::LedgerRequest],
    answers: &[vogeler_store::LedgerAnswer],
) -> Web {
    let d = super::Deployment::new(&[]);
    {
        let store = d.open_store().await;
        super::fleet::fill(&store).await;
        if !extra.is_empty() {
            store.apply(extra.into()).await.expect("extra");
        }
        if !requests.is_empty() || !answers.is_empty() {
            store
                .record_ledger(requests, answers)
                .await
                .expect("ledger");
        }
    }
    let port = super::free_port();
    let addr = port.to_string();
    let mut all = vec!["--http", addr.as_str()];
    all.extend_from_slice(args);
    let server = d.server(&all);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "web UI never listened; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Web {
        d,
        server,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// GETs `url`: its status and body (an unreachable server fails the test, naming the URL).
#[allow(dead_code)]
pub async fn get_text(url: &str) -> (reqwest::StatusCode, String) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}
