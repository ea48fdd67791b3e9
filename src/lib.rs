//! Vogeler programs over the workspace's library crates.
//!
//! - [`server`]: consumes results and keeps one document per node.
//! - [`client`]: the agent; runs authorized plugins when asked.
//! - [`runner`]: sends a command and collects the answers.
//! - [`admin`]: set-up, node queries, queue status.
//! - [`report`]: fleet reports as tables, JSON or CSV; [`migrate`]: store to store.
//! - [`settings`] and [`cli`]: flags, environment and `vogeler.conf` into options.
//! - [`web`]: `vogeler-server --http`: read-only web UI, JSON API, metrics.
//! - [`shutdown`]: the stop signal every loop takes.

pub mod admin;
pub mod cli;
pub mod client;
pub mod export;
pub mod logging;
pub mod migrate;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod web;
