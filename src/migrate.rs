//! `vogeler-admin migrate`: copies every record and its history from one store to
//! another, resumably, and verifies the counts at the end.
//!
//! Node by node: a node the destination already holds with the same record and the
//! same number of history entries is skipped, so an interrupted migration resumes
//! where it stopped. Each node is written with `Store::import`, which replaces what
//! the destination had for it, so a half-copied node is simply copied again.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vogeler_store::{query, DynStore};

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Nodes in the source.
    pub nodes: usize,
    /// Nodes written to the destination.
    pub copied: usize,
    /// Nodes the destination already held identically (a resumed run).
    pub skipped: usize,
    /// History entries in the source (all copied or already there).
    pub history: usize,
    /// Stored rows of the source that did not read back, left behind (run
    /// `vogeler-admin check` on the source to see them).
    pub unreadable: usize,
}

/// Copies `from` into `to`; `progress` draws a bar on stderr.
pub async fn migrate(from: &DynStore, to: &DynStore, progress: bool) -> anyhow::Result<Summary> {
    let names: Vec<String> = from
        .nodes()
        .await
        .context("listing the source's nodes")?
        .into_iter()
        .map(|n| n.name)
        .collect();
    let bar = ProgressBar::with_draw_target(
        Some(names.len() as u64),
        if progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} nodes  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = Summary {
        nodes: names.len(),
        ..Summary::default()
    };
    // Each node read from the source, with the history entries it had: what to verify.
    let mut read: Vec<(&String, usize)> = Vec::with_capacity(names.len());
    for name in &names {
        bar.set_message(name.clone());
        // A node deleted from the source meanwhile is not an error.
        let Some(record) = from
            .node(name)
            .await
            .with_context(|| format!("reading {name}"))?
        else {
            bar.inc(1);
            continue;
        };
        let history = from
            .history(name, None)
            .await
            .with_context(|| format!("reading the history of {name}"))?;
        summary.unreadable += record.unreadable.len() + history.skipped.len();
        let history = history.rows;
        summary.history += history.len();
        read.push((name, history.len()));
        let there = to
            .node(name)
            .await
            .with_context(|| format!("checking {name} in the destination"))?;
        let same = match there {
            Some(t) => {
                t.keys.len() == record.keys.len()
                    && t.keys
                        .iter()
                        .all(|(k, v)| record.keys.get(k).is_some_and(|w| query::same_value(v, w)))
                    && t.updated_at == record.updated_at
                    && t.last_error == record.last_error
                    && to.history(name, None).await?.rows.len() == history.len()
            }
            None => false,
        };
        if same {
            summary.skipped += 1;
        } else {
            to.import(&record, &history)
                .await
                .with_context(|| format!("writing {name} to the destination"))?;
            summary.copied += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    verify(to, &read).await?;
    Ok(summary)
}

/// Every node read from the source is in the destination, with at least the history
/// entries it had there.
async fn verify(to: &DynStore, read: &[(&String, usize)]) -> anyhow::Result<()> {
    let there: std::collections::HashSet<String> =
        to.nodes().await?.into_iter().map(|n| n.name).collect();
    let missing: Vec<&String> = read
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !there.contains(*n))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "verification failed: {} node(s) missing from the destination (first: {})",
            missing.len(),
            missing[0]
        );
    }
    for (name, a) in read {
        let b = to.history(name, None).await?.rows.len();
        if b < *a {
            anyhow::bail!("verification failed: {name} has {a} history entries in the source, {b} in the destination");
        }
    }
    Ok(())
}
