//! `vogeler-admin`: set-up, node queries and queue status (see `vogeler::admin`).

use chrono::Utc;
use clap::{Parser, Subcommand};
use vogeler::cli::{exit, usage, CommonArgs};
use vogeler::settings::{self, Program};
use vogeler::{admin, report};
use vogeler::{out, outln};
use vogeler_store::{KeyPath, Query};

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
enum Report {
    /// The node list (with -W/-n: the nodes they select).
    Nodes,
    /// Nodes grouped by a fact's value: each value, its count and its nodes.
    Facts {
        /// A dotted path: facter.os.family.
        path: String,
    },
    /// Which nodes have a package, and which version.
    Package {
        /// Package name as the package plugin reports it (openssl).
        name: String,
    },
    /// Nodes not seen since a time.
    Stale {
        /// An age (2h, 7d), a date or RFC 3339.
        #[arg(long, value_name = "WHEN", default_value = "1d")]
        since: String,
    },
    /// Nodes whose last result was an error.
    Errors,
    /// One row per node, one column per path: --columns facter.os.family,dpkg.openssl.
    Inventory {
        /// Dotted paths, comma-separated or repeated: each is a column.
        #[arg(long, value_name = "PATH", value_delimiter = ',', required = true)]
        columns: Vec<String>,
    },
    /// What changed across the fleet since a time, one row per changed value.
    Changes {
        /// An age (2h, 7d), a date or RFC 3339.
        #[arg(long, value_name = "WHEN", default_value = "1d")]
        since: String,
        /// At most this many changed keys.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// Keep printing changes as they are stored, like `tail -f` (Ctrl-C ends it):
        /// one line a change (JSON: one object a line; CSV: rows without a header).
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Export {
    /// An Ansible dynamic inventory (the JSON a `--list` script prints): groups from
    /// fact values, host variables from paths, `ansible_host` from the node's address.
    Ansible {
        /// Group hosts by the value at these paths (facter.os.family → facter_os_family_Debian).
        #[arg(long, value_name = "PATH", value_delimiter = ',')]
        group_by: Vec<String>,
        /// Host variables: the value at these paths (facter.kernelrelease → facter_kernelrelease).
        #[arg(long, value_name = "PATH", value_delimiter = ',')]
        hostvars: Vec<String>,
        /// The whole inventory (the default): what Ansible passes a script inventory,
        /// so a two-line script can `exec vogeler-admin … export ansible "$@"`.
        #[arg(long, conflicts_with = "host")]
        list: bool,
        /// One host's variables only (`{}` for a host not selected), as Ansible asks
        /// a script inventory without `_meta`.
        #[arg(long, value_name = "NODE")]
        host: Option<String>,
    },
    /// Prometheus HTTP service discovery targets (`ADDRESS:PORT` per node, as
    /// `GET /api/v1/sd/prometheus` serves them).
    Prometheus {
        /// The exporter's port on every node.
        #[arg(long, default_value_t = 9100)]
        port: u16,
        /// Label each target with the value at these paths (`__meta_vogeler_<path>`).
        #[arg(long = "label", value_name = "PATH", value_delimiter = ',')]
        labels: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// All nodes; one node's document; or one key of it (a dotted path: facter.os.family).
    Node {
        /// Node name.
        name: Option<String>,
        /// Key or dotted path into the document.
        key: Option<String>,
        /// The document as it was then (RFC 3339, a date, or an age such as 2h, 7d).
        #[arg(long, value_name = "WHEN", requires = "name")]
        at: Option<String>,
        /// Clear the node's last error (it stays in history); a good result of the
        /// failed plugin clears it too.
        #[arg(long, requires = "name", conflicts_with_all = ["key", "at"])]
        clear_error: bool,
        /// One screen about the node: OS, kernel, addresses, CPU, memory, uptime, last
        /// seen, packages, the last error.
        #[arg(long, requires = "name", conflicts_with_all = ["key", "clear_error"])]
        summary: bool,
        /// Delete the node's record and its history for good (a host that is gone; its
        /// next result starts a new record). Needs --yes.
        #[arg(long, requires = "name", conflicts_with_all = ["key", "at", "clear_error", "summary"])]
        delete: bool,
        /// Confirms --delete.
        #[arg(long, requires = "delete")]
        yes: bool,
        /// Deactivate the node: out of `-n all` expectations, reports, exports and the
        /// web lists, its record and history kept; its next result reactivates it.
        #[arg(long, requires = "name", conflicts_with_all = ["key", "at", "clear_error", "summary", "delete"])]
        deactivate: bool,
        /// Only the node names, one a line (for scripts and shell loops).
        #[arg(long, conflicts_with_all = ["name", "key", "at"])]
        names: bool,
        /// With --names: deactivated nodes too.
        #[arg(long, requires = "names")]
        all: bool,
    },
    /// Export the selected nodes to Ansible or Prometheus (JSON on standard output).
    Export {
        #[command(subcommand)]
        to: Export,
        /// Only nodes where this holds (repeatable, AND), as for `report`.
        #[arg(short = 'W', long = "where", value_name = "FILTER", global = true)]
        filters: Vec<String>,
        /// Only nodes whose name matches (globs, repeatable or comma-separated).
        #[arg(short = 'n', long = "nodes", value_name = "GLOB", global = true)]
        nodes: Vec<String>,
    },
    /// What differs between two nodes: each path added, removed or changed, with both
    /// values (plugin keys only; a PATH narrows it: facter.os, dpkg).
    Diff {
        /// The first node (its values are the "before" side).
        a: String,
        /// The second node.
        b: String,
        /// A dotted path to compare below.
        path: Option<String>,
        /// Output: an aligned table, or JSON / CSV for scripts.
        #[arg(long, value_enum, default_value = "table")]
        format: report::Format,
    },
    /// Fleet reports: nodes by a fact, packages, stale nodes, errors, changes.
    Report {
        #[command(subcommand)]
        report: Report,
        /// Output: an aligned table, or JSON / CSV for scripts.
        #[arg(long, value_enum, default_value = "table", global = true)]
        format: report::Format,
        /// Only nodes where this holds (repeatable, AND): facter.os.family=Debian,
        /// facter.kernelrelease~^6\., facter.processorcount>=4, dpkg.openssl?
        #[arg(short = 'W', long = "where", value_name = "FILTER", global = true)]
        filters: Vec<String>,
        /// Only nodes whose name matches (globs, repeatable or comma-separated).
        #[arg(short = 'n', long = "nodes", value_name = "GLOB", global = true)]
        nodes: Vec<String>,
    },
    /// A node's history: every change, or the values one path took and when.
    History {
        /// Node name.
        node: String,
        /// A dotted path (dpkg.openssl, facter.kernelrelease): its values over time.
        path: Option<String>,
        /// Output: an aligned table, or JSON / CSV for scripts.
        #[arg(long, value_enum, default_value = "table")]
        format: report::Format,
    },
    /// The request ledger: recent requests and what became of them, or one request's
    /// nodes (stored, error, pending, missing after its ttl, unexpected).
    Requests {
        /// A request id (as the runner printed it).
        id: Option<String>,
        /// At most this many requests, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Output: an aligned table, or JSON / CSV for scripts.
        #[arg(long, value_enum, default_value = "table")]
        format: report::Format,
    },
    /// Finds stored rows that do not read back (every backend) and lists them (node,
    /// key, why); exits 1 while any remain unquarantined.
    Check {
        /// Move them aside (a quarantine table, kept for inspection) so views are clean.
        #[arg(long)]
        quarantine: bool,
    },
    /// Deletes history recorded before a time (retention), and/or deactivates nodes
    /// not seen for a while (both may be given; each prints what it did).
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["before", "inactive_for"])))]
    Prune {
        /// Keep history from this time on (an age such as 90d, a date, or RFC 3339).
        #[arg(long, value_name = "WHEN")]
        before: Option<String>,
        /// Deactivate the nodes not seen for this long (an age such as 30d, or a date):
        /// their records and history are kept, their next result reactivates them.
        #[arg(long, value_name = "AGE")]
        inactive_for: Option<String>,
    },
    /// Copies every record and its history to another store (resumable; counts verified).
    Migrate {
        /// Source store DSN (default: the configured --dbhost).
        #[arg(
            long,
            value_name = "DSN",
            env = "VOGELER_MIGRATE_FROM",
            hide_env_values = true
        )]
        from: Option<String>,
        /// Destination store DSN.
        #[arg(
            long,
            value_name = "DSN",
            env = "VOGELER_MIGRATE_TO",
            hide_env_values = true
        )]
        to: String,
    },
    /// Queue depths and consumers.
    Queue {
        /// Depth and consumers of master.in, the dead-letter queue and every known node queue.
        #[arg(long)]
        status: bool,
        /// Exit 0 if this queue exists, 3 if not (scripts wait on a client with it).
        #[arg(long, value_name = "QUEUE", conflicts_with = "status")]
        exists: Option<String>,
        /// RabbitMQ management API base URL for --status (one call for every queue, with
        /// unacked counts and memory); default `[amqp] management_url`, else
        /// `http://<first broker host>:15672`. Logs in as the AMQP user.
        #[arg(long, value_name = "URL", env = "VOGELER_MANAGEMENT_URL")]
        management: Option<String>,
        /// Use passive declares over AMQP only, even when the management API answers.
        #[arg(long, conflicts_with = "management")]
        no_management: bool,
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
    /// Make an Ed25519 key pair for signing: OUT/NAME.key (private, 0600) and OUT/NAME.pub.
    ///
    /// A runner signs requests with its `.key` (`[runner] signing_key`); clients trust its
    /// `.pub` (`[client] trusted_keys`). A client signs results with its own `.key`
    /// (`[client] signing_key`); the server verifies them with `OUT/NODE.pub`
    /// (`[server] node_keys`).
    Keygen {
        /// Directory to write the two files to (created if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: std::path::PathBuf,
        /// Key name: the file names, and the node name for a client's key.
        #[arg(long, value_name = "NAME")]
        name: String,
    },
    /// Prepare the broker (--messaging) or the store (--persistence).
    Setup {
        /// Print the rabbitmqctl lines for the vhost and permissions, then declare the topology.
        #[arg(long)]
        messaging: bool,
        /// Also run the rabbitmqctl lines (as root on the broker host).
        #[arg(long, requires = "messaging")]
        apply: bool,
        /// Most requests a node queue holds (the length policy; the oldest are dropped first).
        #[arg(long, value_name = "N", default_value_t = admin::DEFAULT_NODE_QUEUE_MAX_LENGTH)]
        node_queue_max_length: u64,
        /// Create the store's database, tables and indexes.
        #[arg(long)]
        persistence: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    vogeler::cli::run_main("vogeler-admin", false, run(cli))
}

/// A query under the configured time limit (`[server] query_timeout_ms`): past it the
/// command ends with one line naming the limit.
async fn within<T>(
    s: &vogeler_config::Settings,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    vogeler_store::within(s.query_timeout, "the query", fut).await
}

/// Prints a report; JSON and CSV keep their shape for scripts, so the notice about
/// skipped unreadable rows goes to stderr for them (the table form prints it itself).
/// `report changes --follow`: prints the changes so far one line each, then asks for
/// changes since the newest one shown every second and prints each new row once,
/// until Ctrl-C or SIGTERM (exit 0).
async fn follow_changes(
    s: &vogeler_config::Settings,
    store: &vogeler_store::DynStore,
    q: &Query,
    format: report::Format,
    since: chrono::DateTime<Utc>,
    shown: &report::Table,
) -> anyhow::Result<()> {
    let mut follow = report::Follow::new(since);
    if format == report::Format::Table {
        outln!("{}", shown.columns.join("  ").to_uppercase())?;
    }
    for line in follow.new_lines(shown, format)? {
        outln!("{line}")?;
    }
    let mut shutdown = vogeler::shutdown::Shutdown::on_signals();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.wait() => return Ok(()),
        }
        let table = within(s, report::changes(store, follow.since(), 10_000, q)).await?;
        for line in follow.new_lines(&table, format)? {
            outln!("{line}")?;
        }
    }
}

fn print_table(table: &report::Table, format: report::Format) -> anyhow::Result<()> {
    out!("{}", table.render(format, report::terminal_width())?)?;
    if format != report::Format::Table {
        if let Some(notice) = table.notice() {
            eprintln!("{notice}");
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Keygen { out, name } = &cli.command {
        // Needs no configuration, broker or store.
        let (secret, public, key) = vogeler_signing::keygen(out, name)?;
        outln!("private key: {} (keep it secret)", secret.display())?;
        outln!("public key:  {}", public.display())?;
        outln!("key id:      {}", key.id())?;
        return Ok(0);
    }
    let s = settings::load(Program::Admin, &cli.common, settings::Extra::default())?;
    settings::init_logging(&s)?;
    match cli.command {
        Command::Node {
            name: Some(name),
            clear_error: true,
            ..
        } => {
            let store = settings::open_existing_store(&s).await?;
            if store.clear_error(&name).await? {
                outln!("cleared the last error of {name}")?;
            } else if store.node(&name).await?.is_none() {
                return Err(vogeler::cli::no_such_node(&name));
            } else {
                outln!("{name} has no last error")?;
            }
            Ok(0)
        }
        Command::Node {
            name: Some(name),
            delete: true,
            yes,
            ..
        } => {
            if !yes {
                return Err(usage(format!(
                    "--delete removes {name}'s record and all its history for good; run it again with --yes"
                )));
            }
            let store = settings::open_existing_store(&s).await?;
            if !store.delete_node(&name).await? {
                return Err(vogeler::cli::no_such_node(&name));
            }
            outln!("deleted {name} and its history")?;
            Ok(0)
        }
        Command::Node {
            name: Some(name),
            deactivate: true,
            ..
        } => {
            let store = settings::open_existing_store(&s).await?;
            if !store.deactivate_node(&name, Utc::now()).await? {
                return Err(vogeler::cli::no_such_node(&name));
            }
            outln!("deactivated {name} (its record and history are kept; its next result reactivates it)")?;
            Ok(0)
        }
        Command::Node {
            names: true, all, ..
        } => {
            let store = settings::open_existing_store(&s).await?;
            let nodes = within(&s, async { Ok(store.nodes().await?) }).await?;
            for n in nodes.iter().filter(|n| all || n.deactivated_at.is_none()) {
                outln!("{}", n.name)?;
            }
            Ok(0)
        }
        Command::Node {
            name: Some(name),
            summary: true,
            at,
            ..
        } => {
            let at = at
                .map(|w| report::parse_when(&w, Utc::now()).map_err(usage))
                .transpose()?;
            let store = settings::open_existing_store(&s).await?;
            let out = within(&s, admin::show_summary(&store, &name, at)).await?;
            out!("{out}")?;
            Ok(0)
        }
        Command::Export { to, filters, nodes } => {
            let q = report::query(&filters, &nodes).map_err(usage)?;
            let paths = |list: &[String]| {
                list.iter()
                    .map(|p| KeyPath::parse(p.trim()).map_err(usage))
                    .collect::<anyhow::Result<Vec<_>>>()
            };
            // Every path is checked before the store is opened (exit 2, not 1).
            let (first, second) = match &to {
                Export::Ansible {
                    group_by, hostvars, ..
                } => (paths(group_by)?, paths(hostvars)?),
                Export::Prometheus { labels, .. } => (paths(labels)?, Vec::new()),
            };
            let store = settings::open_existing_store(&s).await?;
            let doc = match to {
                Export::Ansible { host, .. } => {
                    let doc =
                        within(&s, vogeler::export::ansible(&store, &q, &first, &second)).await?;
                    match host {
                        Some(h) => doc["_meta"]["hostvars"]
                            .get(&h)
                            .cloned()
                            .unwrap_or_else(|| serde_json::json!({})),
                        None => doc,
                    }
                }
                Export::Prometheus { port, .. } => {
                    within(&s, vogeler::export::prometheus(&store, &q, port, &first)).await?
                }
            };
            outln!("{}", serde_json::to_string_pretty(&doc)?)?;
            Ok(0)
        }
        Command::Diff { a, b, path, format } => {
            let path = path
                .map(|p| KeyPath::parse(&p).map_err(usage))
                .transpose()?;
            let store = settings::open_existing_store(&s).await?;
            let table = within(&s, report::diff_nodes(&store, &a, &b, path.as_ref())).await?;
            print_table(&table, format)?;
            Ok(0)
        }
        Command::Node { name, key, at, .. } => {
            let at = at
                .map(|w| report::parse_when(&w, Utc::now()).map_err(usage))
                .transpose()?;
            if let Some(k) = &key {
                KeyPath::parse(k).map_err(usage)?;
            }
            let store = settings::open_existing_store(&s).await?;
            let out = within(&s, async {
                Ok(match name {
                    None => report::nodes(&store, &Query::default())
                        .await?
                        .render(report::Format::Table, report::terminal_width())?,
                    Some(n) => admin::show_node(&store, &n, key.as_deref(), at).await?,
                })
            })
            .await?;
            out!("{out}")?;
            Ok(0)
        }
        Command::Report {
            report: which,
            format,
            filters,
            nodes,
        } => {
            let follow = matches!(which, Report::Changes { follow: true, .. });
            let q = report::query(&filters, &nodes).map_err(usage)?;
            let now = Utc::now();
            let when = |w: &str| report::parse_when(w, now).map_err(usage);
            // Every argument is checked before the store is opened (exit 2, not 1).
            let path = match &which {
                Report::Facts { path } => Some(KeyPath::parse(path).map_err(usage)?),
                _ => None,
            };
            let since = match &which {
                Report::Stale { since } | Report::Changes { since, .. } => Some(when(since)?),
                _ => None,
            };
            let columns = match &which {
                Report::Inventory { columns } => columns
                    .iter()
                    .map(|c| KeyPath::parse(c.trim()).map_err(usage))
                    .collect::<anyhow::Result<Vec<_>>>()?,
                _ => Vec::new(),
            };
            let store = settings::open_existing_store(&s).await?;
            let table = within(&s, async {
                Ok(match (which, path, since) {
                    (Report::Nodes, ..) => report::nodes(&store, &q).await?,
                    (Report::Facts { .. }, Some(path), _) => {
                        report::facts(&store, &path, &q).await?
                    }
                    (Report::Package { name }, ..) => report::package(&store, &name, &q).await?,
                    (Report::Stale { .. }, _, Some(since)) => {
                        report::stale(&store, since, &q, now).await?
                    }
                    (Report::Errors, ..) => report::errors(&store, &q).await?,
                    (Report::Inventory { .. }, ..) => {
                        report::inventory(&store, &columns, &q).await?
                    }
                    (Report::Changes { limit, .. }, _, Some(since)) => {
                        report::changes(&store, since, limit, &q).await?
                    }
                    _ => anyhow::bail!("internal: report arguments not checked"),
                })
            })
            .await?;
            match (since, follow) {
                (Some(since), true) => {
                    follow_changes(&s, &store, &q, format, since, &table).await?
                }
                _ => print_table(&table, format)?,
            }
            Ok(0)
        }
        Command::History { node, path, format } => {
            let path = path
                .as_deref()
                .map(KeyPath::parse)
                .transpose()
                .map_err(usage)?;
            let store = settings::open_existing_store(&s).await?;
            let table = within(&s, report::history(&store, &node, path.as_ref())).await?;
            print_table(&table, format)?;
            Ok(0)
        }
        Command::Check { quarantine } => {
            let store = settings::open_existing_store(&s).await?;
            let (out, code) = admin::check(&store, quarantine).await?;
            out!("{out}")?;
            Ok(code)
        }
        Command::Requests { id, limit, format } => {
            let store = settings::open_existing_store(&s).await?;
            let now = Utc::now();
            let table = within(&s, async {
                match id {
                    Some(id) => report::request(&store, &id, now).await,
                    None => report::requests(&store, limit, now).await,
                }
            })
            .await?;
            print_table(&table, format)?;
            Ok(0)
        }
        Command::Prune {
            before,
            inactive_for,
        } => {
            let now = Utc::now();
            let before = before
                .map(|w| report::parse_when(&w, now).map_err(usage))
                .transpose()?;
            let unseen_since = inactive_for
                .map(|w| report::parse_when(&w, now).map_err(usage))
                .transpose()?;
            let store = settings::open_existing_store(&s).await?;
            if let Some(since) = unseen_since {
                let n = store.deactivate_inactive(since, now).await?;
                outln!(
                    "deactivated {n} node{} not seen since {}",
                    if n == 1 { "" } else { "s" },
                    vogeler_store::rfc3339(since)
                )?;
            }
            if let Some(before) = before {
                let n = store.prune_history(before).await?;
                outln!(
                    "deleted {n} history entr{} recorded before {}",
                    if n == 1 { "y" } else { "ies" },
                    vogeler_store::rfc3339(before)
                )?;
            }
            Ok(0)
        }
        Command::Migrate { from, to } => {
            let from_store = match from {
                Some(dsn) => settings::open_dsn(&dsn).await?,
                None => settings::open_existing_store(&s).await?,
            };
            let to_store = settings::open_dsn(&to).await?;
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let summary = vogeler::migrate::migrate(&from_store, &to_store, progress).await?;
            outln!(
                "migrated {} node(s) ({} copied, {} already there) and {} history entries; counts verified",
                summary.nodes, summary.copied, summary.skipped, summary.history
            )?;
            if let Some(notice) = vogeler_store::skipped_notice(summary.unreadable) {
                outln!("{notice}: not copied")?;
            }
            Ok(0)
        }
        Command::Queue {
            status,
            exists,
            management,
            no_management,
            json,
        } => {
            let connector = settings::connector(&s, "vogeler-admin", false);
            let Some((broker, _)) = connector.amqp() else {
                if exists.is_some() {
                    return Err(usage(
                        "queue --exists names a RabbitMQ queue; a NATS deployment has streams (see `queue --status`)",
                    ));
                }
                if !status {
                    return Err(usage("say what to show: `vogeler-admin queue --status`"));
                }
                let session = connector.connect_interactive().await?;
                let (rows, source) = admin::stream_status(&session).await?;
                session.close().await;
                return print_queue_rows(&rows, &source, json);
            };
            let session = broker.connect_interactive().await?;
            if let Some(q) = exists {
                let found = session.queue_status(&q).await?.is_some();
                session.close().await;
                outln!("{q}: {}", if found { "exists" } else { "missing" })?;
                return Ok(if found { exit::OK } else { exit::INCOMPLETE });
            }
            if !status {
                return Err(usage(
                    "say what to show: `vogeler-admin queue --status` or `--exists QUEUE`",
                ));
            }
            let nodes: Vec<String> = match settings::open_existing_store(&s).await {
                Ok(store) => store.nodes().await?.into_iter().map(|n| n.name).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "store unavailable; node queues not listed");
                    Vec::new()
                }
            };
            let api = if no_management {
                None
            } else {
                Some(settings::management(&s, management)?)
            };
            let vhost = s.qhost.first().map(|d| d.vhost.clone()).unwrap_or_default();
            let (rows, source) = admin::queue_status(
                &session,
                &settings::topology(&s),
                &nodes,
                api.as_ref().map(|m| (m, vhost.as_str())),
            )
            .await?;
            session.close().await;
            print_queue_rows(&rows, &source, json)
        }
        Command::Dead { requeue, json } => {
            let session = settings::connector(&s, "vogeler-admin", false)
                .connect_interactive()
                .await?;
            let rows = admin::dead_letters(&session, requeue).await?;
            session.close().await;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                out!("{}", admin::render_dead_letters(&rows, requeue))?;
            }
            Ok(0)
        }
        Command::Keygen { .. } => Ok(0),
        Command::Setup {
            messaging,
            apply,
            node_queue_max_length,
            persistence,
        } => {
            if !messaging && !persistence {
                return Err(usage(
                    "say what to set up: --messaging, --persistence, or both",
                ));
            }
            if messaging {
                settings::setup_messaging(&s, apply, node_queue_max_length).await?;
            }
            if persistence {
                let (store, created) = settings::create_store(&s).await?;
                store.health().await?;
                outln!(
                    "store {} ready ({}){}",
                    store.backend(),
                    settings::store_label(&s),
                    if created { ", database created" } else { "" }
                )?;
            }
            Ok(0)
        }
    }
}

/// Prints `queue --status` rows as a table or JSON.
fn print_queue_rows(
    rows: &[admin::QueueRow],
    source: &admin::FigureSource,
    json: bool,
) -> anyhow::Result<i32> {
    if json {
        let out = serde_json::json!({ "source": source, "queues": rows });
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        out!("{}", admin::render_queue_rows(rows, source))?;
    }
    Ok(0)
}
