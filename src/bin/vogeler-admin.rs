//! `vogeler-admin`: set-up, node queries and queue status (see `vogeler::admin`).

use clap::{Parser, Subcommand};
use vogeler::admin;
use vogeler::cli::CommonArgs;
use vogeler::settings::{self, Program};

/// Set up broker and store, query stored nodes, check queues.
#[derive(Debug, Parser)]
#[command(name = "vogeler-admin", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// All nodes; one node's document; or one key of it (a dotted path: facter.os.family).
    Node {
        /// Node name.
        name: Option<String>,
        /// Key or dotted path into the document.
        key: Option<String>,
    },
    /// Queue depths and consumers.
    Queue {
        /// Depth and consumers of master.in, the dead-letter queue and every known node queue.
        #[arg(long)]
        status: bool,
        /// Exit 0 if this queue exists, 1 if not (scripts wait on a client with it).
        #[arg(long, value_name = "QUEUE", conflicts_with = "status")]
        exists: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dead-lettered messages with their reasons; --requeue sends them back after a fix.
    Dead {
        /// Republish each message to where it was first sent, and remove it from the queue.
        #[arg(long)]
        requeue: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prepare the broker (--messaging) or the store (--persistence).
    Setup {
        /// Print the rabbitmqctl lines for the vhost and permissions, then declare the topology.
        #[arg(long)]
        messaging: bool,
        /// Also run the rabbitmqctl lines (as root on the broker host).
        #[arg(long, requires = "messaging")]
        apply: bool,
        /// Create the store's database, tables and indexes.
        #[arg(long)]
        persistence: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    vogeler::cli::run_main("vogeler-admin", false, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let s = settings::load(Program::Admin, &cli.common, settings::Extra::default())?;
    settings::init_logging(&s)?;
    match cli.command {
        Command::Node { name, key } => {
            let store = settings::open_store(&s).await?;
            let out = match name {
                None => admin::list_nodes(&store).await?,
                Some(n) => admin::show_node(&store, &n, key.as_deref()).await?,
            };
            print!("{out}");
            Ok(0)
        }
        Command::Queue {
            status,
            exists,
            json,
        } => {
            let broker = settings::broker(&s, "vogeler-admin");
            let session = broker.connect().await?;
            if let Some(q) = exists {
                let found = session.queue_status(&q).await?.is_some();
                session.close().await;
                println!("{q}: {}", if found { "exists" } else { "missing" });
                return Ok(if found { 0 } else { 1 });
            }
            if !status {
                anyhow::bail!(
                    "say what to show: `vogeler-admin queue --status` or `--exists QUEUE`"
                );
            }
            let nodes: Vec<String> = match settings::open_store(&s).await {
                Ok(store) => store.nodes().await?.into_iter().map(|n| n.name).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "store unavailable; node queues not listed");
                    Vec::new()
                }
            };
            let rows = admin::queue_status(&session, &settings::topology(&s), &nodes).await?;
            session.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", admin::render_queue_rows(&rows));
            }
            Ok(0)
        }
        Command::Dead { requeue, json } => {
            let session = settings::broker(&s, "vogeler-admin").connect().await?;
            let rows = admin::dead_letters(&session, &settings::topology(&s), requeue).await?;
            session.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", admin::render_dead_letters(&rows, requeue));
            }
            Ok(0)
        }
        Command::Setup {
            messaging,
            apply,
            persistence,
        } => {
            if !messaging && !persistence {
                anyhow::bail!("say what to set up: --messaging, --persistence, or both");
            }
            if messaging {
                settings::setup_messaging(&s, apply).await?;
            }
            if persistence {
                let store = settings::open_store(&s).await?;
                store.health().await?;
                println!(
                    "store {} ready ({})",
                    store.backend(),
                    settings::store_label(&s)
                );
            }
            Ok(0)
        }
    }
}
