//! `vogeler-server`: stores every node's results (see `vogeler::server`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use vogeler::cli::CommonArgs;
use vogeler::settings::{self, Program};
use vogeler::shutdown::Shutdown;

/// Consume plugin results from RabbitMQ and keep one document per node.
#[derive(Debug, Parser)]
#[command(name = "vogeler-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[arg(
        short = 'l',
        long = "load-design-docs",
        value_name = "DIR",
        help = "Load the CouchDB design docs under DIR (DIR/<ddoc>/views/<view>/map.js), print them and exit"
    )]
    load: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    vogeler::cli::run_main("vogeler-server", true, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let s = settings::load(Program::Server, &cli.common, settings::Extra::default())?;
    settings::init_logging(&s)?;
    if let Some(dir) = cli.load {
        let loaded = settings::load_design_docs(&s, &dir).await?;
        println!("Loading design docs from {}", dir.display());
        for line in loaded {
            println!("  {line}");
        }
        println!("Design docs loaded");
        return Ok(0);
    }
    let store = settings::open_store(&s)
        .await
        .context("cannot open the store")?;
    let opts = settings::server_options(&s);
    let stats = Arc::new(vogeler::server::Stats::default());
    vogeler::server::run(opts, store, stats, Shutdown::on_signals()).await?;
    Ok(0)
}
