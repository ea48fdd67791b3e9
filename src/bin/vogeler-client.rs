//! `vogeler-client`: the agent on every host (see `vogeler::client`).

use std::path::PathBuf;

/// The packaged agent is static for musl, whose allocator is slow with lapin's I/O thread
/// beside the runtime: mimalloc took a fifth off its CPU per result (issue #21). glibc
/// builds keep the system allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use vogeler::cli::CommonArgs;
use vogeler::settings::{self, Program};
use vogeler::shutdown::Shutdown;

/// Run authorized plugins when asked over RabbitMQ and publish their results.
#[derive(Debug, Parser)]
#[command(name = "vogeler-client", version, about)]
struct Cli {
    #[arg(
        short = 'p',
        long = "plugin-path",
        global = true,
        value_name = "DIR",
        help = "Plugin directory (*.cfg files) [default: [global] plugin_path, else /etc/vogeler/plugins]"
    )]
    plugins: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Answer requests until stopped.
    Run {
        /// Exit after answering the first request.
        #[arg(long)]
        oneshot: bool,
        /// Also run command lines that are not plugins (dangerous; loudly logged).
        #[arg(long)]
        allow_unsafe: bool,

        #[arg(
            long,
            env = "VOGELER_NODE_NAME",
            value_name = "NAME",
            help = "This node's name [default: [client] node_name, else the host name]"
        )]
        node_name: Option<String>,

        #[arg(
            long,
            env = "VOGELER_SIGNING_KEY",
            value_name = "FILE",
            help = "Sign results with this private key (vogeler-admin keygen) [default: [client] signing_key]"
        )]
        signing_key: Option<PathBuf>,

        #[arg(
            long,
            env = "VOGELER_INTERVAL",
            value_name = "SECONDS",
            help = "Run every plugin on this schedule and push the results; a plugin's own `interval` overrides it; 0 = off [default: [client] interval, else 0]"
        )]
        interval: Option<u64>,

        #[arg(
            long,
            env = "VOGELER_HEARTBEAT_INTERVAL",
            value_name = "SECONDS",
            help = "Send a heartbeat (moves last_seen) this often; 0 = off [default: [client] heartbeat_interval, else 60]"
        )]
        heartbeat_interval: Option<u64>,

        #[arg(
            long,
            env = "VOGELER_STATE_DIR",
            value_name = "DIR",
            help = "Where the client remembers the signed requests it ran until their ttl passes, so a restart refuses a replay [default: [client] state_dir, else /var/lib/vogeler-client]"
        )]
        state_dir: Option<PathBuf>,
    },
    /// Print the registered plugins and exit.
    List,
}

fn main() {
    let cli: Cli = vogeler::cli::parse_args(vogeler::cli::CLIENT_UNUSED);
    vogeler::cli::run_main("vogeler-client", false, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let mut extra = settings::Extra {
        plugin_path: cli.plugins.clone(),
        ..Default::default()
    };
    if let Command::Run {
        node_name,
        signing_key,
        interval,
        heartbeat_interval,
        state_dir,
        ..
    } = &cli.command
    {
        extra.node_name = node_name.clone();
        extra.signing_key = signing_key.clone();
        extra.interval = *interval;
        extra.heartbeat_interval = *heartbeat_interval;
        extra.state_dir = state_dir.clone();
    }
    let s = settings::load(Program::Client, &cli.common, extra)?;
    settings::init_logging(&s)?;
    match cli.command {
        Command::List => {
            let opts = settings::client_options(&s, false, false)?;
            let registry = vogeler::client::load_registry(&opts)?;
            vogeler::out!("{}", vogeler::client::render_plugins(&registry))?;
            Ok(0)
        }
        Command::Run {
            oneshot,
            allow_unsafe,
            ..
        } => {
            let opts = settings::client_options(&s, oneshot, allow_unsafe)?;
            vogeler::client::run(opts, Shutdown::on_signals()).await?;
            Ok(0)
        }
    }
}
