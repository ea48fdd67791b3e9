//! Query benchmark: reports (`vogeler-admin report`) and the web UI's node list and
//! search over a fleet of stored nodes, each holding the three fixtures (facter,
//! ohai, dpkg-query), per store backend.
//!
//! `cargo bench --bench queries` (env `VOGELER_BENCH_NODES`, default 10000, 100000
//! for issue #20's figures; `VOGELER_BENCH_STORES`, default `sqlite,postgres`;
//! `VOGELER_BENCH_PLUGINS`, default `facter,ohai,dpkg`, the fixtures each node holds;
//! `VOGELER_BENCH_KEEP_SQLITE` / `VOGELER_BENCH_KEEP_POSTGRES`, a store DSN to fill and
//! keep, or to reuse when it already holds the nodes: a 100,000-node fill with dpkg
//! takes half an hour here, the queries a minute) prints
//! the figures and writes its section of BENCHMARKS.md. Targets: each report under
//! 500 ms; each web page's p95 of 200 requests under 100 ms: the node list (a middle
//! page by name; the first and the last page sorted by last seen; the last page
//! sorted by a column), a fact page and search.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use vogeler::report;
use vogeler_store::{Change, DynStore, KeyPath, Observation, Query};

fn fixtures() -> (Value, Value, Value) {
    let facter: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../fixtures/facter-y.yaml")).expect("facter");
    let facter = serde_json::to_value(facter).expect("facter json");
    let ohai: Value = serde_json::from_str(include_str!("../fixtures/ohai.json")).expect("ohai");
    let dpkg: serde_json::Map<String, Value> = include_str!("../fixtures/dpkg-query.txt")
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(p, v)| (p.to_string(), json!(v.trim())))
        .collect();
    (facter, ohai, Value::Object(dpkg))
}

/// Stores `n` nodes through `Store::apply` in batches, as the server would, each with
/// the fixtures of `plugins`.
async fn fill(store: &DynStore, n: usize, plugins: &[String]) -> Duration {
    let (facter, ohai, dpkg) = fixtures();
    let families = ["Debian", "RedHat", "Suse"];
    let kernels = [
        "6.1.0-13-amd64",
        "5.10.0-26-amd64",
        "6.8.0-40-generic",
        "4.18.0-513.el8",
    ];
    let started = Instant::now();
    let at = Utc::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut batch = Vec::new();
        for &i in chunk {
            let node = format!("node{i:06}");
            let mut f = facter.clone();
            f["os"]["family"] = json!(families[i % families.len()]);
            f["kernelrelease"] = json!(kernels[i % kernels.len()]);
            let mut d = dpkg.clone();
            d["openssl"] = json!(format!("3.0.{}-1", i % 20));
            for (name, value) in [("facter", f), ("ohai", ohai.clone()), ("dpkg", d)] {
                if !plugins.iter().any(|p| p == name) {
                    continue;
                }
                batch.push(Observation {
                    node: node.clone(),
                    at,
                    change: Change::Plugin {
                        name: name.into(),
                        value: value.into(),
                        history: true,
                    },
                });
            }
            if i % 97 == 0 {
                batch.push(Observation {
                    node,
                    at,
                    change: Change::Error {
                        plugin: Some("ohai".into()),
                        message: "ohai: timed out".into(),
                        raw: None,
                    },
                });
            }
        }
        store.apply(batch.into()).await.expect("fill");
    }
    started.elapsed()
}

/// What autovacuum does after a load, done now: the visibility map that lets the
/// package report's index-only scan skip the table, and the planner's statistics. A
/// server with autovacuum off (this machine's CI configuration turns it off) otherwise
/// measures a freshly loaded table: the package report took 2.7 s instead of tens of ms.
async fn settle_postgres(dsn: &str) {
    let started = Instant::now();
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {dsn}: {e}"));
    tokio::spawn(conn);
    client
        .batch_execute("VACUUM (ANALYZE)")
        .await
        .unwrap_or_else(|e| panic!("VACUUM (ANALYZE) on {dsn}: {e}"));
    println!(
        "postgres: VACUUM (ANALYZE) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median of `runs` timings of `f`.
async fn median<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(f().await);
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// p50 and p95 of 200 GETs of `url`, or the first status that was not a success
/// (a page past the server's query time limit answers 503): the other figures are
/// still measured and written. The first (cold) and slowest times are printed.
async fn p95(client: &reqwest::Client, url: &str) -> Result<(Duration, Duration), String> {
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r = client.get(url).send().await.expect("get");
        if !r.status().is_success() {
            return Err(format!(
                "{} after {:.1} s",
                r.status(),
                t.elapsed().as_secs_f64()
            ));
        }
        std::hint::black_box(r.bytes().await.expect("body"));
        times.push(t.elapsed());
    }
    let first = times[0];
    times.sort();
    println!(
        "  {url}: first {:.1} ms, slowest {:.1} ms",
        ms(first),
        ms(times[199])
    );
    Ok((times[100], times[189]))
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = support::env_number("VOGELER_BENCH_NODES", 10_000);
    // Which fixtures each node holds: ohai is 108 KB a node (11 GB at 100,000 nodes),
    // so a machine short of disk can leave it out; the section's title says which.
    let plugins: Vec<String> = std::env::var("VOGELER_BENCH_PLUGINS")
        .unwrap_or_else(|_| "facter,ohai,dpkg".into())
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| ["facter", "ohai", "dpkg"].contains(&p.as_str()))
        .collect();
    let mut md = format!(
        "## Queries over {n} stored nodes ({} each)\n\n",
        plugins.join(" + ")
    );
    md.push_str(&support::machine_line("queries"));
    md.push_str("| store | fill (results/s) | facts os.family | package openssl | stale 1h | errors | changes (1,000) |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    let mut web_md = String::from("Web pages through the HTTP server, p50 / p95 of 200 requests (100 rows a page; `last` is the deepest page):\n\n| store | node list page 42 | first page by last seen | last page by last seen | last page by OS column | fact page os.family | search |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    let last_page = n.div_ceil(100).max(1);
    for backend in support::stores("sqlite,postgres") {
        let backend = backend.as_str();
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = std::env::var(format!("VOGELER_BENCH_KEEP_{}", backend.to_uppercase())).ok();
        let dsn = match &kept {
            Some(dsn) => dsn.clone(),
            None => vogeler_store::testing::fresh_dsn(backend, dir.path()).await,
        };
        let store = vogeler_store::testing::open(&dsn).await;
        let held = store.nodes().await.expect("nodes").len();
        let fill_rate = if kept.is_some() && held == n {
            println!("{backend}: reusing the {n} nodes stored at {dsn}");
            None
        } else {
            assert_eq!(
                held, 0,
                "{dsn} holds {held} nodes, not {n}: give an empty store"
            );
            let fill_time = fill(&store, n, &plugins).await;
            let rate = (plugins.len() * n) as f64 / fill_time.as_secs_f64();
            println!(
                "{backend}: filled {n} nodes in {:.1} s ({rate:.0} results/s)",
                fill_time.as_secs_f64()
            );
            Some(rate)
        };
        let fill_rate = fill_rate.map_or("reused".to_string(), |r| format!("{r:.0}"));
        if backend == "postgres" {
            settle_postgres(&dsn).await;
        }

        let all = Query::default();
        let family = KeyPath::parse("facter.os.family").expect("path");
        let facts = median(5, || async {
            report::facts(&store, &family, &all)
                .await
                .expect("facts")
                .rows
                .len()
        })
        .await;
        let package = median(5, || async {
            report::package(&store, "openssl", &all)
                .await
                .expect("package")
                .rows
                .len()
        })
        .await;
        let hour_ago = Utc::now() - chrono::Duration::hours(1);
        let stale = median(5, || async {
            report::stale(&store, hour_ago, &all, Utc::now())
                .await
                .expect("stale")
                .rows
                .len()
        })
        .await;
        let errors = median(5, || async {
            report::errors(&store, &all)
                .await
                .expect("errors")
                .rows
                .len()
        })
        .await;
        let day_ago = Utc::now() - chrono::Duration::days(1);
        let changes = median(3, || async {
            report::changes(&store, day_ago, 1000, &all)
                .await
                .expect("changes")
                .rows
                .len()
        })
        .await;

        let listener = vogeler::web::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (trigger, shutdown) = vogeler::shutdown::channel();
        let state = vogeler::web::WebState {
            store: store.clone(),
            stats: Arc::new(vogeler::server::Stats::default()),
            queues: None,
            token: None,
            query_timeout: std::time::Duration::from_secs(10),
            cache: None,
        };
        let web = tokio::spawn(vogeler::web::serve(listener, state, shutdown));
        let client = reqwest::Client::new();
        let pages = [
            format!("{base}/nodes?page={}", 42.min(last_page)),
            format!("{base}/nodes?sort=last_seen&order=desc"),
            format!("{base}/nodes?sort=last_seen&order=desc&page={last_page}"),
            format!("{base}/nodes?sort=facter.os.family&page={last_page}"),
            format!("{base}/facts/facter.os.family"),
            format!("{base}/search?q=facter.os.family%20%3D%20Debian&page=3"),
        ];
        let mut web_line = format!("| {backend} |");
        for url in &pages {
            match p95(&client, url).await {
                Ok((p50, p95)) => {
                    println!(
                        "{backend}: GET {} p50 {:.1} ms, p95 {:.1} ms",
                        url.trim_start_matches(&base),
                        ms(p50),
                        ms(p95)
                    );
                    web_line.push_str(&format!(" {:.0} / {:.0} ms |", ms(p50), ms(p95)));
                }
                Err(e) => {
                    println!(
                        "{backend}: GET {} failed: {e}",
                        url.trim_start_matches(&base)
                    );
                    web_line.push_str(&format!(" {e} |"));
                }
            }
        }
        web_line.push('\n');
        trigger.trigger();
        let _ = web.await;

        let line =
            format!(
            "| {backend} | {fill_rate} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |\n",
            ms(facts), ms(package), ms(stale), ms(errors), ms(changes)
        );
        print!("{line}{web_line}");
        md.push_str(&line);
        web_md.push_str(&web_line);
    }
    md.push('\n');
    md.push_str(&web_md);
    md.push_str("\nTargets: each report under 500 ms; each page's p95 under 100 ms. Reports run `vogeler::report` on a fresh store handle (no cache); the web figures go through the HTTP server, whose reads pass a cache (`src/web/cache.rs`) that hands its lists out shared and keeps each sort order; the server's next commit makes the next request re-read, and an entry 5 s old is re-read in the background while it is still served (no ingest runs during this benchmark; the first request of each page, printed by the bench, is the cold read).\n");
    support::write_section("queries", &md);
}
