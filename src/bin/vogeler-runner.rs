//! `vogeler-runner`: sends a command to all nodes or some (see `vogeler::runner`).

use std::time::Duration;

use clap::Parser;
use vogeler::cli::{parse_duration, CommonArgs};
use vogeler::runner::{OutputPath, Shown};
use vogeler::settings::{self, Program};

/// Send a plugin command to every node or to named nodes; optionally wait for the stored results.
///
/// With --wait the runner knows whom to expect: `-n all` asks the servers' registry
/// (nodes seen within --seen-within, default 1h), globs and -W ask for the matching
/// nodes; without a server it falls back to --ping. It waits until every expected node
/// answered, or --timeout, and names the silent ones; answers from nodes not expected
/// (new ones) are listed as unexpected and count as success.
///
/// With --output (which implies --wait) each node's stored value, or the value at a
/// dotted path in it, is printed as `NODE: VALUE` as the answers arrive, before the
/// summary: `-x facter --output operatingsystem`.
///
/// Exit status: 0 all stored without error, 1 some error results, 2 usage,
/// 3 some expected nodes were silent or unroutable, no node matched, or nobody answered.
#[derive(Debug, Parser)]
#[command(name = "vogeler-runner", version, about)]
struct Cli {
    /// Plugin name or alias to run (for example facter or get_facts).
    #[arg(short = 'x', long = "execute", value_name = "COMMAND")]
    command: String,

    /// Target: `all`, or node names (repeat the flag or separate with commas). Globs
    /// (`web*`) are expanded against the servers' registry of stored nodes.
    #[arg(
        short = 'n',
        long = "node",
        value_name = "NODE",
        value_delimiter = ',',
        default_value = "all"
    )]
    nodes: Vec<String>,

    /// Wait until the server stored each expected node's result (or --timeout), then
    /// print a summary: stored, stale, errors, silent, unroutable, unexpected. Implied
    /// by --output.
    #[arg(long)]
    wait: bool,

    /// How long to wait with --wait (10s, 2m, 500ms); the wait ends early once every
    /// expected node answered.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,

    /// Seconds after which clients must not run the request any more.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    ttl: u64,

    /// Print the summary as JSON (with --output: each node's value under "output").
    #[arg(long)]
    json: bool,

    /// Print each node's stored value as `NODE: VALUE` as the answers arrive (like
    /// `mco rpc`), then the summary. PATH is a dotted path in the plugin's value
    /// (operatingsystem, os.family, disks.0: a number indexes an array); without PATH,
    /// the whole value. A string prints bare, anything else as compact JSON; a missing
    /// path prints `(no PATH in the value)`, an error result `error: MESSAGE`. Values
    /// over 64 KiB are not sent back (the line says so). Implies --wait; the exit status
    /// is that of --wait (a missing path is not a failure).
    #[arg(
        long,
        value_name = "PATH",
        num_args = 0..=1,
        default_missing_value = "",
        value_parser = parse_output_path
    )]
    output: Option<OutputPath>,

    /// COMMAND is a command line, not a plugin (clients must run with --allow-unsafe).
    #[arg(long = "unsafe")]
    unsafe_command: bool,

    /// Only nodes whose stored facts match (repeatable, AND): facter.os.family=Debian,
    /// 'facter.kernelrelease~^6\.', dpkg.openssl?. The servers answer from the store.
    #[arg(short = 'W', long = "where", value_name = "FILTER")]
    filters: Vec<String>,

    /// Only nodes seen within this long are expected (10m, 1h). Default: every stored
    /// node with -W or globs; 1h for `-n all --wait` (clients heartbeat every 60 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    seen_within: Option<Duration>,

    #[arg(
        long,
        env = "VOGELER_SIGNING_KEY",
        value_name = "FILE",
        help = "Sign the request with this private key (vogeler-admin keygen); clients with trusted keys verify it [default: [runner] signing_key]"
    )]
    signing_key: Option<std::path::PathBuf>,

    /// How long to wait for a server to answer discovery (with --ping: the most time
    /// spent collecting pongs); no answer in time: one line, then --ping discovery.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    discovery_timeout: Duration,

    /// Discover by broadcasting a ping to the clients and sending to those that answer
    /// (-n globs filter them); needs no server. Filters (-W) need the store: not with --ping.
    #[arg(long, conflicts_with_all = ["filters", "seen_within"])]
    ping: bool,

    /// With --ping: stop collecting answers once none came for this long.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    ping_quiet: Duration,

    #[command(flatten)]
    common: CommonArgs,
}

/// `--output`'s PATH (empty: the whole value), refused as a usage error when malformed.
fn parse_output_path(s: &str) -> Result<OutputPath, String> {
    OutputPath::parse(s)
}

fn main() {
    let cli: Cli = vogeler::cli::parse_args(vogeler::cli::RUNNER_UNUSED);
    vogeler::cli::run_main("vogeler-runner", false, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let extra = settings::Extra {
        signing_key: cli.signing_key.clone(),
        ..Default::default()
    };
    let s = settings::load(Program::Runner, &cli.common, extra)?;
    settings::init_logging(&s)?;
    let nodes: Vec<String> = cli
        .nodes
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let wire = settings::wire(&s);
    if cli.output.is_some() && wire != vogeler::client::Wire::V1 {
        return Err(vogeler::cli::usage(
            "--output needs the v1 wire: a 2010-format request gets no stored confirmation to carry the value ([amqp] wire = legacy)",
        ));
    }
    // --output implies --wait: the values come back in the stored confirmations.
    let wait = cli.wait || cli.output.is_some();
    let opts = vogeler::runner::RunnerOptions {
        broker: settings::connector(&s, "vogeler-runner", false),
        topology: settings::topology(&s),
        command: cli.command,
        targets: nodes,
        wait,
        timeout: cli.timeout,
        ttl: cli.ttl,
        unsafe_command: cli.unsafe_command,
        wire,
        filters: cli.filters,
        seen_within: cli.seen_within,
        discovery_timeout: cli.discovery_timeout,
        signing_key: settings::signing_key(&s)?,
        ping: cli.ping,
        ping_quiet: cli.ping_quiet,
        output: cli.output.clone(),
    };
    let lines = !cli.json;
    let path = cli.output.clone().unwrap_or_default();
    let summary = vogeler::runner::run_with(&opts, |node: &str, shown: &Shown| {
        if lines {
            vogeler::outln!("{}", shown.line(node, &path))?;
        }
        Ok(())
    })
    .await?;
    if cli.json {
        vogeler::outln!("{}", serde_json::to_string_pretty(&summary.to_json())?)?;
    } else if wait {
        vogeler::out!("{}", summary.render())?;
    } else {
        vogeler::out!("{}", summary.render_sent())?;
    }
    Ok(summary.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
