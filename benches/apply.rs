//! Store-only benchmark: `Store::apply` of facter-sized results in server-sized
//! batches, with no broker, per backend: the ceiling the server's ingest can reach
//! on each store, and where its time goes.
//!
//! `cargo bench --bench apply` (env `VOGELER_BENCH_N`, default 20000;
//! `VOGELER_BENCH_STORES`, default sqlite) prints results/s for first sight (new
//! nodes), changed values and unchanged values, wall time and CPU time.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vogeler_store::{Change, Data, Observation};

mod support;

fn facter() -> Value {
    let yaml = include_str!("../fixtures/facter-y.yaml");
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("facter fixture parses");
    serde_json::to_value(v).expect("facter as json")
}

/// CPU time (user + system) of this process so far.
fn cpu() -> Duration {
    Duration::from_millis(support::cpu_ticks("self") * 10)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = support::env_number("VOGELER_BENCH_N", 20_000);
    let base = facter();
    for backend in support::stores("sqlite") {
        let backend = backend.as_str();
        let dir = tempfile::tempdir().expect("tempdir");
        let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
        let store = vogeler_store::testing::open(&dsn).await;
        for (round, label) in [(0, "first sight"), (1, "changed"), (1, "unchanged")] {
            let at = chrono::Utc::now();
            let obs: Vec<Observation> = (0..n)
                .map(|i| {
                    let mut v = base.clone();
                    v["uptime_seconds"] = json!(round);
                    Observation {
                        node: format!("node{i:06}"),
                        at,
                        change: Change::Plugin {
                            name: "facter".into(),
                            // As the server hands results over: JSON text.
                            value: Data::Text(
                                serde_json::value::RawValue::from_string(v.to_string())
                                    .expect("valid JSON"),
                            ),
                            history: true,
                        },
                    }
                })
                .collect();
            let batches: Vec<vogeler_store::Batch> =
                obs.chunks(500).map(|c| c.to_vec().into()).collect();
            drop(obs);
            let (t, c) = (Instant::now(), cpu());
            for batch in &batches {
                store.apply(batch.clone()).await.expect("apply");
            }
            let (wall, used) = (t.elapsed(), cpu() - c);
            println!(
                "{backend:8} {label:12} {:9.0} results/s  ({:.1} µs wall, {:.1} µs CPU per result)",
                n as f64 / wall.as_secs_f64(),
                wall.as_secs_f64() * 1e6 / n as f64,
                used.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
