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
    #[arg(
        short = 'l',
        long = "load-design-docs",
        value_name = "DIR",
        help = "Load the CouchDB design docs under DIR (DIR/<ddoc>/views/<view>/map.js), print them and exit"
    )]
    load: Option<PathBuf>,

    /// Also serve the read-only web UI, JSON API and /metrics on ADDR (a bare port
    /// binds 127.0.0.1; 0.0.0.0:PORT listens everywhere). Off unless given.
    #[arg(long, value_name = "ADDR", env = "VOGELER_HTTP")]
    http: Option<String>,

    /// Require this token for the web UI (Authorization: Bearer TOKEN, or basic auth
    /// with it as the password).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "VOGELER_HTTP_TOKEN",
        hide_env_values = true
    )]
    http_token: Option<String>,

    /// A file holding the web UI's token (instead of --http-token: keeps it out of the
    /// process list and the environment).
    #[arg(long, value_name = "FILE", env = "VOGELER_HTTP_TOKEN_FILE")]
    http_token_file: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,
}

fn main() {
    let cli: Cli = vogeler::cli::parse_args(vogeler::cli::SERVER_UNUSED);
    vogeler::cli::run_main("vogeler-server", true, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let extra = settings::Extra {
        http_token: cli.http_token.clone(),
        http_token_file: cli.http_token_file.clone(),
        ..Default::default()
    };
    let s = settings::load(Program::Server, &cli.common, extra)?;
    settings::init_logging(&s)?;
    if let Some(dir) = cli.load {
        let loaded = settings::load_design_docs(&s, &dir).await?;
        vogeler::outln!("Loading design docs from {}", dir.display())?;
        for line in loaded {
            vogeler::outln!("  {line}")?;
        }
        vogeler::outln!("Design docs loaded")?;
        return Ok(0);
    }
    let opts = settings::server_options(&s)?;
    let mut shutdown = Shutdown::on_signals();
    let Some(store) = settings::open_store_retrying(&s, &mut shutdown).await? else {
        return Ok(0);
    };
    let stats = Arc::new(vogeler::server::Stats::default());
    let web = match cli.http {
        None => None,
        Some(addr) => {
            let addr = vogeler::web::parse_addr(&addr)?;
            let state = vogeler::web::WebState {
                store: store.clone(),
                stats: stats.clone(),
                queues: Some((
                    settings::connector(&s, "vogeler-server-web", false),
                    settings::topology(&s),
                )),
                token: s.http_token.as_ref().map(|t| t.expose().to_string()),
                query_timeout: s.query_timeout,
                cache: None,
            };
            // Bind before consuming so a taken port fails the start, not later.
            let listener = vogeler::web::bind(addr).await?;
            Some(tokio::spawn(vogeler::web::serve(
                listener,
                state,
                shutdown.clone(),
            )))
        }
    };
    vogeler::server::run(opts, store, stats, shutdown).await?;
    if let Some(web) = web {
        web.await.context("web server task")??;
    }
    Ok(0)
}
