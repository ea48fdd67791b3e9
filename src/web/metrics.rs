//! `GET /metrics`: Prometheus text format.
//!
//! Counters come from the server's [`Stats`](crate::server::Stats); queue depths
//! from a passive declare on the broker (skipped, with the reason in a comment
//! line, when the broker does not answer within two seconds); last-seen ages from
//! the store's node list.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::WebState;
use vogeler_transport::QueueKind;

/// Upper bounds (seconds) of the last-seen age histogram.
const AGE_BOUNDS: &[f64] = &[300.0, 3600.0, 21_600.0, 86_400.0, 604_800.0];

/// Renders every metric.
pub async fn metrics(State(state): State<WebState>) -> Response {
    let mut out = String::new();
    let s = &state.stats;
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        &mut out,
        "vogeler_results_stored_total",
        "Results and heartbeats committed to the store.",
        s.stored.load(Relaxed),
    );
    counter(
        &mut out,
        "vogeler_dead_lettered_total",
        "Messages republished to the dead-letter queue.",
        s.dead_lettered.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP vogeler_dead_lettered_by_reason_total Messages dead-lettered, by reason code (docs/PROTOCOL.md).\n# TYPE vogeler_dead_lettered_by_reason_total counter"
    );
    for (reason, n) in s.dead_reasons() {
        let _ = writeln!(
            out,
            "vogeler_dead_lettered_by_reason_total{{reason=\"{}\"}} {n}",
            label(&reason)
        );
    }
    counter(
        &mut out,
        "vogeler_store_commits_total",
        "Store transactions committed.",
        s.commits.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP vogeler_store_commit_seconds_total Time spent in store commits.\n# TYPE vogeler_store_commit_seconds_total counter\nvogeler_store_commit_seconds_total {}",
        s.store_micros.load(Relaxed) as f64 / 1e6
    );

    if let Some((broker, topology)) = &state.queues {
        let depths = tokio::time::timeout(Duration::from_secs(2), async {
            let session = broker.connect().await?;
            let mut rows = Vec::new();
            for (role, q, kind) in [
                ("master", &topology.master_queue, QueueKind::Results),
                ("dead", &topology.dead_queue, QueueKind::Dead),
            ] {
                if let Some(st) = session.queue_status(kind).await? {
                    rows.push((role, q.clone(), st.messages, st.consumers));
                }
            }
            session.close().await;
            Ok::<_, vogeler_transport::TransportError>(rows)
        })
        .await;
        match depths {
            Ok(Ok(rows)) => {
                let _ = writeln!(out, "# HELP vogeler_queue_messages Messages ready in a queue.\n# TYPE vogeler_queue_messages gauge");
                for (role, q, m, _) in &rows {
                    let _ = writeln!(
                        out,
                        "vogeler_queue_messages{{role=\"{role}\",queue=\"{}\"}} {m}",
                        label(q)
                    );
                }
                let _ = writeln!(out, "# HELP vogeler_queue_consumers Consumers of a queue.\n# TYPE vogeler_queue_consumers gauge");
                for (role, q, _, c) in &rows {
                    let _ = writeln!(
                        out,
                        "vogeler_queue_consumers{{role=\"{role}\",queue=\"{}\"}} {c}",
                        label(q)
                    );
                }
            }
            Ok(Err(e)) => {
                let _ = writeln!(
                    out,
                    "# queue depths unavailable: {}",
                    one_line(&e.to_string())
                );
            }
            Err(_) => {
                let _ = writeln!(
                    out,
                    "# queue depths unavailable: the broker did not answer within 2 s"
                );
            }
        }
    }

    match state.store.nodes_shared().await {
        Ok(all) => {
            let now = Utc::now();
            // The active fleet, as every other view counts it: deactivated nodes
            // (kept for their history) are counted apart.
            let nodes: Vec<&vogeler_store::NodeSummary> =
                all.iter().filter(|n| n.deactivated_at.is_none()).collect();
            let _ = writeln!(
                out,
                "# HELP vogeler_nodes Active nodes stored (deactivated ones left out).\n# TYPE vogeler_nodes gauge\nvogeler_nodes {}\n# HELP vogeler_nodes_deactivated Deactivated nodes kept for their history.\n# TYPE vogeler_nodes_deactivated gauge\nvogeler_nodes_deactivated {}",
                nodes.len(),
                all.len() - nodes.len()
            );
            let _ = writeln!(out, "# HELP vogeler_node_last_seen_age_seconds Age of each node's last message.\n# TYPE vogeler_node_last_seen_age_seconds histogram");
            let ages: Vec<f64> = nodes
                .iter()
                .map(|n| (now - n.last_seen).num_milliseconds().max(0) as f64 / 1000.0)
                .collect();
            for b in AGE_BOUNDS {
                let _ = writeln!(
                    out,
                    "vogeler_node_last_seen_age_seconds_bucket{{le=\"{b}\"}} {}",
                    ages.iter().filter(|a| **a <= *b).count()
                );
            }
            let _ = writeln!(
                out,
                "vogeler_node_last_seen_age_seconds_bucket{{le=\"+Inf\"}} {}",
                ages.len()
            );
            let _ = writeln!(
                out,
                "vogeler_node_last_seen_age_seconds_sum {}",
                ages.iter().sum::<f64>()
            );
            let _ = writeln!(
                out,
                "vogeler_node_last_seen_age_seconds_count {}",
                ages.len()
            );
            let _ = writeln!(out, "# HELP vogeler_store_up Whether the store answered this scrape.\n# TYPE vogeler_store_up gauge\nvogeler_store_up 1");
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "# store unavailable: {}\n# TYPE vogeler_store_up gauge\nvogeler_store_up 0",
                one_line(&e.to_string())
            );
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
