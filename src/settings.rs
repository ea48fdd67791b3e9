//! From flags, environment and `vogeler.conf` to the options each program runs with.
//!
//! `vogeler-config` does the merging and validation; this module turns the result
//! into transport, store and program options, and sets up logging.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use vogeler_config::{ConfigFile, Overrides, Settings, StoreDsn};
use vogeler_signing::{Keyring, PublicKey, SecretKey};
use vogeler_store::DynStore;
use vogeler_transport::{Broker, Connector, Management, Topology};

use crate::cli::CommonArgs;
use crate::client::{ClientOptions, RequestPolicy, Wire};
use crate::server::ServerOptions;

pub use vogeler_config::Program;

/// Program-specific flags that feed the shared settings.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Client `-p DIR`.
    pub plugin_path: Option<PathBuf>,
    /// Client `--node-name` / `VOGELER_NODE_NAME`.
    pub node_name: Option<String>,
    /// Runner and client `--signing-key` / `VOGELER_SIGNING_KEY`.
    pub signing_key: Option<PathBuf>,
    /// Server `--http-token` / `VOGELER_HTTP_TOKEN`.
    pub http_token: Option<String>,
    /// Server `--http-token-file` / `VOGELER_HTTP_TOKEN_FILE`.
    pub http_token_file: Option<PathBuf>,
    /// Client `--interval` / `VOGELER_INTERVAL` (seconds).
    pub interval: Option<u64>,
    /// Client `--heartbeat-interval` / `VOGELER_HEARTBEAT_INTERVAL` (seconds).
    pub heartbeat_interval: Option<u64>,
    /// Client `--state-dir` / `VOGELER_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
}

/// Whether a DSN given as a flag carries a password (visible in the process list).
fn has_password(dsn: &str) -> bool {
    dsn.split(',').any(|d| {
        d.split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|auth| auth.rsplit_once('@'))
            .is_some_and(|(creds, _)| creds.contains(':'))
    })
}

/// Flags (and the environment, through clap) over the config file over defaults.
/// A config file that does not read or parse, or a value that does not, is a usage
/// error (exit 2): nothing was done, and the message names the file and line or field.
pub fn load(program: Program, common: &CommonArgs, extra: Extra) -> anyhow::Result<Settings> {
    let file = ConfigFile::discover(common.config.as_deref()).map_err(crate::cli::usage)?;
    let on_command_line =
        |flag: &str| std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let password_on_command_line = (on_command_line("--qhost")
        && common.qhost.as_deref().is_some_and(has_password))
        || (on_command_line("--dbhost") && common.dbhost.as_deref().is_some_and(has_password))
        || (on_command_line("--http-token") && extra.http_token.is_some());
    let overrides = Overrides {
        qhost: common.qhost.clone(),
        qhost_file: common.qhost_file.clone(),
        dbhost: common.dbhost.clone(),
        dbhost_file: common.dbhost_file.clone(),
        amqp_ca_file: common.amqp_ca_file.clone(),
        amqp_cert_file: common.amqp_cert_file.clone(),
        amqp_key_file: common.amqp_key_file.clone(),
        http_token: extra.http_token,
        http_token_file: extra.http_token_file,
        log_level: common.loglevel.clone(),
        plugin_path: extra.plugin_path,
        node_name: extra.node_name,
        master_exchange: common.master_exchange.clone(),
        broadcast_exchange: common.broadcast_exchange.clone(),
        master_queue: common.master_queue.clone(),
        dead_letter_queue: common.dead_queue.clone(),
        wire: common.wire.clone(),
        interval: extra.interval,
        heartbeat_interval: extra.heartbeat_interval,
        connect_timeout: common.connect_timeout,
        password_on_command_line,
        signing_key: extra.signing_key,
        state_dir: extra.state_dir,
    };
    Settings::resolve(program, overrides, file).map_err(crate::cli::usage)
}

/// Sets up logging per the settings (see [`crate::logging`]).
pub fn init_logging(s: &Settings) -> anyhow::Result<()> {
    let program = match s.program {
        Program::Server => "vogeler-server",
        Program::Client => "vogeler-client",
        Program::Runner => "vogeler-runner",
        Program::Admin => "vogeler-admin",
    };
    crate::logging::init(s, program)
}

/// The broker(s) from `--qhost` / `[amqp] dsn`.
pub fn broker(s: &Settings, connection_name: &str) -> Broker {
    Broker::new(
        s.qhost.iter().map(|d| d.to_uri()).collect(),
        s.qhost.iter().map(|d| d.to_string()).collect(),
        connection_name,
    )
    .with_tls(broker_tls(s))
    .with_connect_timeout(s.connect_timeout)
}

/// The configured broker, by the `--qhost` scheme: RabbitMQ (`amqp://`, a bare host) or
/// NATS with JetStream (`nats://`, `tls://`). `connection_name` names the connection on
/// the broker; `agent` asks for small AMQP frames (an idle client stays small).
pub fn connector(s: &Settings, connection_name: &str, agent: bool) -> Connector {
    match &s.nats {
        Some(n) => Connector::Nats {
            url: nats_url(n),
            label: n.to_string(),
            opts: vogeler_transport::NatsOptions {
                prefix: n.prefix.clone(),
                connection_name: connection_name.to_string(),
                connect_timeout: s.connect_timeout,
                ack_wait: s.nats_ack_wait,
                replicas: usize::from(s.nats_replicas),
                // The server and `setup --messaging` bring the shared streams and
                // consumers to this config; clients and runners use them as they are.
                existing: match s.program {
                    Program::Server => vogeler_transport::Existing::Update,
                    Program::Admin => vogeler_transport::Existing::Require,
                    Program::Client | Program::Runner => vogeler_transport::Existing::Keep,
                },
                tls: broker_tls(s),
                credentials: match (&s.nats_creds, &s.nats_nkey) {
                    (Some(p), _) => vogeler_transport::NatsCredentials::CredsFile(p.clone()),
                    (None, Some(p)) => vogeler_transport::NatsCredentials::NkeyFile(p.clone()),
                    (None, None) => vogeler_transport::NatsCredentials::None,
                },
                ..Default::default()
            },
        },
        None => {
            let b = broker(s, connection_name);
            Connector::Amqp {
                // Small frames keep an idle agent small (see `Broker::with_frame_max`).
                broker: if agent {
                    b.with_frame_max(16 * 1024)
                } else {
                    b
                },
                topology: topology(s),
            }
        }
    }
}

/// The NATS server list with the URL's login in the first address (the client reads it
/// from there; the password never reaches a log: see `NatsDsn`'s `Display`).
fn nats_url(n: &vogeler_config::NatsDsn) -> String {
    // RFC 3986's unreserved characters stay as they are, as in the DSN's `Display`: the
    // masked URL in errors names the user as the config wrote it (`vogeler-t`, not
    // `vogeler%2Dt`).
    const LOGIN: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let enc = |v: &str| percent_encoding::utf8_percent_encode(v, LOGIN).to_string();
    let login = match (&n.user, &n.password) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
        (Some(u), None) => format!("{}@", enc(u)),
        (None, Some(t)) => format!("{}@", enc(t)),
        (None, None) => String::new(),
    };
    let list = n.server_list();
    match list.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{login}{rest}"),
        None => list,
    }
}

/// The broker TLS files (`[amqp] ca_file`, `cert_file`, `key_file`), for either broker.
fn broker_tls(s: &Settings) -> vogeler_transport::BrokerTls {
    vogeler_transport::BrokerTls {
        ca_file: s.amqp_tls.ca_file.clone(),
        client_cert: s
            .amqp_tls
            .cert_file
            .clone()
            .zip(s.amqp_tls.key_file.clone()),
    }
}

/// The RabbitMQ management API next to the first broker: `explicit` (flag or env), else
/// `[amqp] management_url`, else `http://<host>:15672`; credentials are the AMQP user's.
pub fn management(s: &Settings, explicit: Option<String>) -> anyhow::Result<Management> {
    let first = s
        .qhost
        .first()
        .ok_or_else(|| anyhow::anyhow!("no broker address configured"))?;
    let url = explicit
        .or_else(|| s.management_url.clone())
        .unwrap_or_else(|| format!("http://{}:15672", first.host));
    Ok(Management::new(&url, &first.user, &first.password))
}

/// Exchange and queue names.
pub fn topology(s: &Settings) -> Topology {
    Topology {
        master_exchange: s.master_exchange.clone(),
        broadcast_exchange: s.broadcast_exchange.clone(),
        master_queue: s.master_queue.clone(),
        dead_queue: s.dead_letter_queue.clone(),
        quorum: s.quorum,
    }
}

/// Which message shapes to emit.
pub fn wire(s: &Settings) -> Wire {
    match s.wire {
        vogeler_config::Wire::Legacy => Wire::Legacy,
        vogeler_config::Wire::V1 => Wire::V1,
    }
}

/// The store DSN for messages, password masked.
pub fn store_label(s: &Settings) -> String {
    s.dbhost.to_string()
}

/// Opens the configured store; the error names the DSN (password masked).
pub async fn open_store(s: &Settings) -> anyhow::Result<DynStore> {
    vogeler_store::open(&s.dbhost)
        .await
        .with_context(|| format!("opening the store {}", store_label(s)))
}

/// Opens the configured store for a daemon: while the store is unavailable (down, not
/// answering) it retries with jittered backoff, one log line per attempt, until it
/// opens or `shutdown` fires (`None`); a store that cannot work (a bad DSN, a missing
/// database, a refused schema) is an error at once.
pub async fn open_store_retrying(
    s: &Settings,
    shutdown: &mut crate::shutdown::Shutdown,
) -> anyhow::Result<Option<DynStore>> {
    let mut backoff = vogeler_transport::Backoff::new(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(30),
    );
    loop {
        match vogeler_store::open(&s.dbhost).await {
            Ok(store) => return Ok(Some(store)),
            Err(e @ vogeler_store::StoreError::Unavailable { .. }) => {
                let wait = backoff.next_delay();
                tracing::warn!(store = %store_label(s), error = %e, retry_in_ms = wait.as_millis() as u64, "store unavailable; retrying (results wait in the broker)");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return Ok(None),
                }
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("opening the store {}", store_label(s)))
            }
        }
    }
}

/// Opens the configured store for a command that only reads (or prunes): a store that
/// does not exist is a one-line error naming the DSN (password masked) and
/// `vogeler-admin setup --persistence`; nothing is created or migrated.
pub async fn open_existing_store(s: &Settings) -> anyhow::Result<DynStore> {
    vogeler_store::open_existing(&s.dbhost)
        .await
        .with_context(|| format!("opening the store {}", store_label(s)))
}

/// `setup --persistence`: creates the PostgreSQL database when it does not exist and
/// the role may, then opens the store, creating or migrating its tables.
pub async fn create_store(s: &Settings) -> anyhow::Result<(DynStore, bool)> {
    let created = vogeler_store::create(&s.dbhost)
        .await
        .with_context(|| format!("creating the store {}", store_label(s)))?;
    Ok((open_store(s).await?, created))
}

/// Opens a store named on the command line (migration); relative SQLite paths are
/// taken from the working directory; the error names the DSN (password masked).
pub async fn open_dsn(dsn: &str) -> anyhow::Result<DynStore> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let parsed = StoreDsn::parse(dsn, &cwd)
        .with_context(|| format!("bad store DSN {}", vogeler_config::mask_secrets(dsn)))?;
    vogeler_store::open(&parsed)
        .await
        .with_context(|| format!("opening the store {parsed}"))
}

/// `vogeler-server -l DIR`: loads CouchDB design docs (CouchDB stores only).
pub async fn load_design_docs(s: &Settings, dir: &Path) -> anyhow::Result<Vec<String>> {
    Ok(vogeler_store::load_design_docs(&s.dbhost, dir).await?)
}

/// The private key to sign with (`[runner]`/`[client] signing_key`, `--signing-key`).
pub fn signing_key(s: &Settings) -> anyhow::Result<Option<Arc<SecretKey>>> {
    let Some(path) = &s.signing_key else {
        return Ok(None);
    };
    let key = SecretKey::load(path).context("loading the signing key")?;
    tracing::info!(key_id = %key.id(), file = %path.display(), "signing with this key");
    Ok(Some(Arc::new(key)))
}

/// The server's `[server] node_keys`: `<node>.pub` by node name.
fn node_keys(s: &Settings) -> anyhow::Result<Option<Arc<HashMap<String, PublicKey>>>> {
    let Some(dir) = &s.node_keys else {
        return Ok(None);
    };
    let keys: HashMap<String, PublicKey> = vogeler_signing::load_dir(dir)
        .context("loading [server] node_keys")?
        .into_iter()
        .collect();
    tracing::info!(nodes = keys.len(), dir = %dir.display(), "verifying results with node keys");
    Ok(Some(Arc::new(keys)))
}

/// The client's request policy: `[client] trusted_keys` and `require_signed`.
fn request_policy(s: &Settings) -> anyhow::Result<RequestPolicy> {
    let keyring = Keyring::load(&s.trusted_keys).context("loading [client] trusted_keys")?;
    if s.require_signed && keyring.is_empty() {
        anyhow::bail!(
            "[client] require_signed = true but [client] trusted_keys ({}) holds no .pub file",
            s.trusted_keys
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !keyring.is_empty() {
        tracing::info!(
            keys = keyring.len(),
            require_signed = s.require_signed,
            "checking request signatures"
        );
    }
    Ok(RequestPolicy::new(keyring, s.require_signed))
}

/// Server options from the settings.
pub fn server_options(s: &Settings) -> anyhow::Result<ServerOptions> {
    let mut o = ServerOptions::new(connector(s, "vogeler-server", false), topology(s));
    o.batch_size = s.batch_size.max(1);
    o.prefetch = s.prefetch.max(1);
    o.max_message_bytes = s.max_message_bytes;
    o.history_retention =
        (s.history_days > 0).then(|| std::time::Duration::from_secs(s.history_days * 86_400));
    o.node_keys = node_keys(s)?;
    o.require_verified = s.require_verified;
    o.max_clock_skew = s.max_clock_skew;
    o.query_timeout = s.query_timeout;
    if matches!(s.dbhost, StoreDsn::Sqlite { .. }) {
        tracing::info!("SQLite store: run one vogeler-server against it; use PostgreSQL or CouchDB for several servers side by side");
    }
    Ok(o)
}

/// Client options from the settings.
pub fn client_options(
    s: &Settings,
    oneshot: bool,
    allow_unsafe: bool,
) -> anyhow::Result<ClientOptions> {
    let compiled_path = std::env::temp_dir().join(format!(
        "vogeler-plugins-{}-{}.cfg",
        sanitize(&s.node_name),
        std::process::id()
    ));
    Ok(ClientOptions {
        broker: connector(s, "vogeler-client", true),
        topology: topology(s),
        node: s.node_name.clone(),
        plugin_dir: s.plugin_path.clone(),
        compiled_path,
        limits: vogeler_plugins::ExecLimits {
            timeout: s.plugin_timeout,
            output_cap: s.output_cap,
            run_as: match &s.plugin_user {
                Some(name) => Some(
                    vogeler_plugins::RunAs::lookup(name)
                        .with_context(|| format!("[client] plugin_user = {name}"))?,
                ),
                None => None,
            },
            ..Default::default()
        },
        allow_unsafe,
        oneshot,
        wire: wire(s),
        concurrency: s.concurrency.max(1),
        policy: request_policy(s)?,
        signing_key: signing_key(s)?,
        interval: (s.interval > 0).then(|| std::time::Duration::from_secs(s.interval)),
        heartbeat: (s.heartbeat_interval > 0)
            .then(|| std::time::Duration::from_secs(s.heartbeat_interval)),
        state_dir: s.state_dir.clone(),
        max_message_bytes: s.max_message_bytes,
    })
}

/// `vogeler-admin setup --messaging`: prints (and with `apply`, runs) the rabbitmqctl
/// lines (vhost, permissions, the node-queue length policy), then declares the topology.
pub async fn setup_messaging(s: &Settings, apply: bool, max_length: u64) -> anyhow::Result<()> {
    // NATS has no vhost or policy to set: the streams and consumers below are all.
    for dsn in &s.qhost {
        for line in crate::admin::rabbitmqctl_lines(&dsn.vhost, &dsn.user, &topology(s), max_length)
        {
            crate::outln!("rabbitmqctl {}", shell_quote(&line))?;
            if apply {
                let status = std::process::Command::new("rabbitmqctl")
                    .args(&line)
                    .status()
                    .context("running rabbitmqctl (is this the broker host, and are you root?)")?;
                if !status.success() {
                    anyhow::bail!("rabbitmqctl {} failed with {status}", line.join(" "));
                }
            }
        }
    }
    crate::out!(
        "{}",
        crate::admin::declare_topology(&connector(s, "vogeler-admin", false), &topology(s)).await?
    )
}

fn shell_quote(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_detection() {
        assert!(has_password("amqp://guest:secret@host/vh"));
        assert!(has_password("amqp://a@h,amqp://u:p@h2"));
        assert!(!has_password("amqp://guest@host/vh"));
        assert!(!has_password("10.10.10.2"));
        assert!(!has_password("sqlite:///var/lib/v.db"));
    }

    #[test]
    fn a_nats_login_keeps_unreserved_characters_and_encodes_the_rest() {
        let dsn = vogeler_config::NatsDsn::parse(
            "nats://vogeler-t.x_y~:p%40ss%3Aw%2Frd-1@h1:4223,h2/pre",
        )
        .expect("parse");
        let url = nats_url(&dsn);
        assert_eq!(
            url,
            "nats://vogeler-t.x_y~:p%40ss%3Aw%2Frd-1@h1:4223,nats://h2:4222"
        );
        // What errors show: the user as written, the password masked.
        assert_eq!(
            vogeler_transport::nats::mask_url(&url),
            "nats://vogeler-t.x_y~:****@h1:4223,nats://h2:4222"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote(&["set_permissions".into(), ".*".into()]),
            "set_permissions '.*'"
        );
    }
}
