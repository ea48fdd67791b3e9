//! Configuration: `vogeler.conf`, DSNs, and one validated [`Settings`] per program.
//!
//! Precedence is flag > environment > config file > default. The binaries read flags
//! and environment with clap and hand them over as [`Overrides`]; this crate adds the
//! file and the defaults, validates everything, and names the file and line of any bad
//! value. The 2010 `vogeler.conf` loads as is (quoted values, relative paths, "NYI" keys).

pub mod dsn;
pub mod ini;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dsn::{mask_secrets, postgres_tls, AmqpDsn, DsnError, NatsDsn, PgSslMode, PgTls, StoreDsn};

/// Where `vogeler.conf` is looked for when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vogeler/vogeler.conf";
/// The default plugin directory.
pub const DEFAULT_PLUGIN_PATH: &str = "/etc/vogeler/plugins";
/// The default broker: local RabbitMQ, default vhost.
pub const DEFAULT_QHOST: &str = "amqp://guest:guest@127.0.0.1:5672/";

/// Why configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line the INI reader cannot parse.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value that does not validate.
    #[error("{place}: {message}")]
    Value {
        /// `file:line [section] key`, or the flag / environment variable.
        place: String,
        /// What is wrong, with the allowed values.
        message: String,
    },
    /// A file holding a secret (`*_file` settings) or a TLS file could not be read.
    #[error("{place}: cannot read {}: {source}", path.display())]
    File {
        /// The setting that names the file.
        place: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bad DSN.
    #[error("{place}: {source}")]
    Dsn {
        /// Where it came from.
        place: String,
        /// The DSN error (password masked).
        source: DsnError,
    },
}

/// A parsed config file that remembers where each value came from.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    sections: Vec<ini::Section>,
}

impl ConfigFile {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses text as if read from `path` (relative paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let sections = ini::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e.line,
            message: e.message,
        })?;
        Ok(ConfigFile {
            path: path.to_path_buf(),
            sections,
        })
    }

    /// `-c FILE` must exist; without it the default path is read when present.
    pub fn discover(explicit: Option<&Path>) -> Result<Option<ConfigFile>, ConfigError> {
        match explicit {
            Some(p) => Self::load(p).map(Some),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    Self::load(p).map(Some)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory relative paths are resolved against.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from("."))
    }

    fn entry(&self, section: &str, key: &str) -> Option<&ini::Entry> {
        self.sections
            .iter()
            .rev()
            .filter(|s| s.name == section)
            .find_map(|s| s.get(key))
    }

    /// A value, unquoted and trimmed; empty values count as absent.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.entry(section, key)
            .map(|e| e.value.trim())
            .filter(|v| !v.is_empty())
    }

    /// A path value, resolved against the file's directory when relative.
    pub fn path_value(&self, section: &str, key: &str) -> Option<PathBuf> {
        self.get(section, key).map(|v| {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                p
            } else {
                self.dir().join(p)
            }
        })
    }

    /// `file:line [section] key` for error messages.
    pub fn place(&self, section: &str, key: &str) -> String {
        match self.entry(section, key) {
            Some(e) => format!("{}:{} [{section}] {key}", self.path.display(), e.line),
            None => format!("{} [{section}] {key}", self.path.display()),
        }
    }
}

/// Log levels the 2010 flags accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Progress.
    Info,
    /// Problems only (the default).
    Warn,
    /// Failures.
    Error,
    /// Failures (CRITICAL is ERROR here).
    Critical,
}

impl LogLevel {
    /// DEBUG, INFO, WARN/WARNING, ERROR, CRITICAL, any case.
    pub fn parse(s: &str) -> Result<LogLevel, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "DEBUG" => Ok(LogLevel::Debug),
            "INFO" => Ok(LogLevel::Info),
            "WARN" | "WARNING" => Ok(LogLevel::Warn),
            "ERROR" => Ok(LogLevel::Error),
            "CRITICAL" => Ok(LogLevel::Critical),
            _ => Err(format!(
                "log level {s:?} is not one of DEBUG, INFO, WARN, ERROR, CRITICAL"
            )),
        }
    }

    /// The tracing filter directive.
    pub fn filter(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
        }
    }
}

/// Where log lines go (`[global] log_handler`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogHandler {
    /// Standard error (the default).
    Stream,
    /// A file (`[file_handler] filename`).
    File(PathBuf),
    /// Syslog (`[syslog_handler] log_facility`, `address`).
    Syslog {
        /// Facility, e.g. `local7`.
        facility: String,
        /// Socket path, e.g. `/dev/log`.
        address: String,
    },
}

/// Which program is being configured: picks the `[server]`/`[client]`/`[runner]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// vogeler-server.
    Server,
    /// vogeler-client.
    Client,
    /// vogeler-runner.
    Runner,
    /// vogeler-admin.
    Admin,
}

impl Program {
    fn section(&self) -> &'static str {
        match self {
            Program::Server => "server",
            Program::Client => "client",
            Program::Runner => "runner",
            Program::Admin => "admin",
        }
    }
}

/// Message shapes the programs emit (`[amqp] wire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// Versioned JSON.
    #[default]
    V1,
    /// The 2010 Python shapes.
    Legacy,
}

/// A password or token: kept out of every `Debug` and log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that checks or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Certificates for `amqps://` (`[amqp] ca_file`, `cert_file`, `key_file`): a private CA
/// to trust, and the client certificate a broker with `fail_if_no_peer_cert` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificate(s) the broker's certificate must chain to (added to the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), sent when the broker asks for one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Values from flags or the environment; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--qhost` / `VOGELER_QHOST`.
    pub qhost: Option<String>,
    /// `--qhost-file` / `VOGELER_QHOST_FILE`: the broker URI(s) read from a file.
    pub qhost_file: Option<PathBuf>,
    /// `--dbhost` / `VOGELER_DBHOST`.
    pub dbhost: Option<String>,
    /// `--dbhost-file` / `VOGELER_DBHOST_FILE`: the store DSN read from a file.
    pub dbhost_file: Option<PathBuf>,
    /// `--amqp-ca-file` / `VOGELER_AMQP_CA_FILE`.
    pub amqp_ca_file: Option<PathBuf>,
    /// `--amqp-cert-file` / `VOGELER_AMQP_CERT_FILE`.
    pub amqp_cert_file: Option<PathBuf>,
    /// `--amqp-key-file` / `VOGELER_AMQP_KEY_FILE`.
    pub amqp_key_file: Option<PathBuf>,
    /// Server `--http-token` / `VOGELER_HTTP_TOKEN`.
    pub http_token: Option<String>,
    /// Server `--http-token-file` / `VOGELER_HTTP_TOKEN_FILE`.
    pub http_token_file: Option<PathBuf>,
    /// `--loglevel`.
    pub log_level: Option<String>,
    /// Client `-p`.
    pub plugin_path: Option<PathBuf>,
    /// Client `--node-name` / `VOGELER_NODE_NAME`.
    pub node_name: Option<String>,
    /// `--master-exchange`.
    pub master_exchange: Option<String>,
    /// `--broadcast-exchange`.
    pub broadcast_exchange: Option<String>,
    /// `--master-queue`.
    pub master_queue: Option<String>,
    /// `--dead-queue`.
    pub dead_letter_queue: Option<String>,
    /// `--wire`.
    pub wire: Option<String>,
    /// Client `--interval` / `VOGELER_INTERVAL`: seconds between scheduled inventory runs.
    pub interval: Option<u64>,
    /// Client `--heartbeat-interval` / `VOGELER_HEARTBEAT_INTERVAL`: seconds between heartbeats.
    pub heartbeat_interval: Option<u64>,
    /// `--connect-timeout`: how long an interactive command tries to reach the broker.
    pub connect_timeout: Option<Duration>,
    /// A password was seen in a DSN given as a command-line flag.
    pub password_on_command_line: bool,
    /// `--signing-key` / `VOGELER_SIGNING_KEY`: the private key the runner signs
    /// requests (or the client signs results) with.
    pub signing_key: Option<PathBuf>,
    /// Client `--state-dir` / `VOGELER_STATE_DIR`: where the client keeps its replay memory.
    pub state_dir: Option<PathBuf>,
}

/// The most copies of a stream JetStream keeps (`[nats] replicas`): its own limit.
pub const MAX_NATS_REPLICAS: u64 = 5;

/// Everything a program runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The program configured.
    pub program: Program,
    /// The config file read, if any.
    pub config_path: Option<PathBuf>,
    /// RabbitMQ broker(s); empty when [`Settings::nats`] is set.
    pub qhost: Vec<AmqpDsn>,
    /// The NATS server(s), when `--qhost` is a `nats://` or `tls://` URL.
    pub nats: Option<NatsDsn>,
    /// `[nats] creds_file` / `VOGELER_NATS_CREDS`: a `.creds` file for NATS.
    pub nats_creds: Option<PathBuf>,
    /// `[nats] nkey_file` / `VOGELER_NATS_NKEY`: a file holding an nkey seed for NATS.
    pub nats_nkey: Option<PathBuf>,
    /// `[nats] ack_wait` (seconds, default 30): how long a server may hold a result
    /// unacked before JetStream gives it to another server (the crash take-over time).
    pub nats_ack_wait: Duration,
    /// `[nats] replicas` (1 to 5, default 1): copies a JetStream cluster keeps of every
    /// stream and durable consumer, so losing a member loses no result.
    pub nats_replicas: u8,
    /// Certificates for `amqps://` brokers.
    pub amqp_tls: TlsFiles,
    /// The web UI's token (server), if one is required.
    pub http_token: Option<Secret>,
    /// The user plugins run as (`[client] plugin_user`); `None` runs them as the client.
    pub plugin_user: Option<String>,
    /// Store.
    pub dbhost: StoreDsn,
    /// Log level.
    pub log_level: LogLevel,
    /// Log destination.
    pub log_handler: LogHandler,
    /// Plugin directory.
    pub plugin_path: PathBuf,
    /// CouchDB design docs directory (`[couch] design_docs_path`).
    pub design_docs_path: Option<PathBuf>,
    /// Direct exchange for results.
    pub master_exchange: String,
    /// Topic exchange for requests.
    pub broadcast_exchange: String,
    /// The servers' queue.
    pub master_queue: String,
    /// Dead-letter queue.
    pub dead_letter_queue: String,
    /// Declare master.in and the dead-letter queue as quorum queues (`[amqp] queue_type`).
    pub quorum: bool,
    /// RabbitMQ management API base URL (`[amqp] management_url`); `None`: next to the broker.
    pub management_url: Option<String>,
    /// Message shapes to emit.
    pub wire: Wire,
    /// This node's name (client).
    pub node_name: String,
    /// Plugin timeout.
    pub plugin_timeout: Duration,
    /// Plugin output cap, bytes.
    pub output_cap: usize,
    /// Largest message the server accepts, bytes.
    pub max_message_bytes: usize,
    /// Plugins a client runs at once.
    pub concurrency: usize,
    /// Results per store transaction.
    pub batch_size: usize,
    /// Unacked deliveries the server may hold.
    pub prefetch: u16,
    /// Days of change history the server keeps (`[server] history_days`); 0 keeps all.
    pub history_days: u64,
    /// Time limit of one web, admin or discovery query (`[server] query_timeout_ms`,
    /// default 10 s): past it the query ends with a clear error, never a stall.
    pub query_timeout: Duration,
    /// Private key to sign with (`[runner] signing_key` for requests, `[client]
    /// signing_key` for results); `None` sends unsigned.
    pub signing_key: Option<PathBuf>,
    /// Public keys (`.pub` files or directories of them) whose signed requests a client
    /// accepts (`[client] trusted_keys`, comma-separated).
    pub trusted_keys: Vec<PathBuf>,
    /// Client refuses unsigned (and 2010-format) requests (`[client] require_signed`).
    pub require_signed: bool,
    /// Directory of `<node>.pub` files the server verifies results with (`[server] node_keys`).
    pub node_keys: Option<PathBuf>,
    /// Server dead-letters results it cannot verify (`[server] require_verified`).
    pub require_verified: bool,
    /// Seconds between a client's scheduled runs of every plugin (`[client] interval`;
    /// a plugin's own `interval` overrides it); 0 schedules nothing.
    pub interval: u64,
    /// Seconds between a client's heartbeats (`[client] heartbeat_interval`); 0 sends none.
    pub heartbeat_interval: u64,
    /// How long an interactive command (runner, admin, `client list`) keeps trying to
    /// reach the broker before it gives up with one line (`[global] connect_timeout`,
    /// seconds, default 10); daemons retry for ever.
    pub connect_timeout: Duration,
    /// Where the client keeps the signed request ids it has seen, so a restart does not
    /// run a replay (`[client] state_dir`, default [`default_state_dir`]).
    pub state_dir: PathBuf,
    /// How far ahead of the server's clock a result's `collected_at` may be before it is
    /// clamped to the arrival time (`[server] max_clock_skew`, seconds, default 300).
    pub max_clock_skew: Duration,
    warnings: Vec<String>,
}

impl Settings {
    /// Warnings to log at start-up (passwords on the command line, readable secrets).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Merges overrides, file and defaults, validating every value.
    pub fn resolve(
        program: Program,
        o: Overrides,
        file: Option<ConfigFile>,
    ) -> Result<Settings, ConfigError> {
        let f = file.as_ref();
        let get = |section: &str, key: &str| f.and_then(|f| f.get(section, key));
        let place = |section: &str, key: &str| match f {
            Some(f) => f.place(section, key),
            None => format!("[{section}] {key}"),
        };
        let base_dir = f.map(|f| f.dir()).unwrap_or_else(|| PathBuf::from("."));
        let mut warnings = Vec::new();

        // A secret-bearing value comes from a flag (or its environment variable), else a
        // file a flag names, else the config file's key, else the file its `*_file` key names.
        let path_of = |section: &str, key: &str| f.and_then(|f| f.path_value(section, key));
        let from_sources = |flag: (&Option<String>, &str),
                            flag_file: (&Option<PathBuf>, &str),
                            section: &str,
                            key: &str,
                            warnings: &mut Vec<String>|
         -> Result<Option<(String, String)>, ConfigError> {
            let file_key = format!("{key}_file");
            if flag.0.is_some() && flag_file.0.is_some() {
                return Err(ConfigError::Value {
                    place: format!("{} and {}", flag.1, flag_file.1),
                    message: "both are given: use one".into(),
                });
            }
            if let Some(v) = flag.0 {
                return Ok(Some((v.clone(), flag.1.to_string())));
            }
            if let Some(p) = flag_file.0 {
                let place = format!("{} ({})", flag_file.1, p.display());
                return Ok(Some((read_secret(p, flag_file.1, warnings)?, place)));
            }
            match (get(section, key), path_of(section, &file_key)) {
                (Some(_), Some(_)) => Err(ConfigError::Value {
                    place: format!("{} and {file_key}", place(section, key)),
                    message: "both are given: use one".into(),
                }),
                (Some(v), None) => Ok(Some((v.to_string(), place(section, key)))),
                (None, Some(p)) => {
                    let file_place = place(section, &file_key);
                    let v = read_secret(&p, &file_place, warnings)?;
                    Ok(Some((v, format!("{file_place} ({})", p.display()))))
                }
                (None, None) => Ok(None),
            }
        };

        // Broker.
        let (qhost_text, qhost_place) = from_sources(
            (&o.qhost, "--qhost / VOGELER_QHOST"),
            (&o.qhost_file, "--qhost-file / VOGELER_QHOST_FILE"),
            "amqp",
            "dsn",
            &mut warnings,
        )?
        .unwrap_or_else(|| (DEFAULT_QHOST.to_string(), "default broker".to_string()));
        let (qhost, nats) = if NatsDsn::is_nats(&qhost_text) {
            let nats = NatsDsn::parse(&qhost_text).map_err(|source| ConfigError::Dsn {
                place: qhost_place,
                source,
            })?;
            (Vec::new(), Some(nats))
        } else {
            let qhost = AmqpDsn::parse_list(&qhost_text).map_err(|source| ConfigError::Dsn {
                place: qhost_place,
                source,
            })?;
            (qhost, None)
        };

        // Store: the flag, else `[persistence] backend` picks its section's dsn.
        let dbhost_flag = if o.dbhost.is_some() && o.dbhost_file.is_some() {
            return Err(ConfigError::Value {
                place: "--dbhost / VOGELER_DBHOST and --dbhost-file / VOGELER_DBHOST_FILE".into(),
                message: "both are given: use one".into(),
            });
        } else if let Some(d) = &o.dbhost {
            Some((d.clone(), "--dbhost / VOGELER_DBHOST".to_string()))
        } else if let Some(p) = &o.dbhost_file {
            let flag = "--dbhost-file / VOGELER_DBHOST_FILE";
            Some((
                read_secret(p, flag, &mut warnings)?,
                format!("{flag} ({})", p.display()),
            ))
        } else {
            None
        };
        let mut dbhost = match dbhost_flag {
            Some((d, dsn_place)) => {
                StoreDsn::parse(&d, &std::env::current_dir().unwrap_or(base_dir.clone())).map_err(
                    |source| ConfigError::Dsn {
                        place: dsn_place,
                        source,
                    },
                )?
            }
            None => {
                let backend = get("persistence", "backend").unwrap_or("sqlite");
                let section = match backend {
                    "sqlite" | "couch" | "postgres" => backend,
                    "couchdb" => "couch",
                    "postgresql" => "postgres",
                    other => {
                        return Err(ConfigError::Value {
                            place: place("persistence", "backend"),
                            message: format!(
                                "unknown backend {other:?}: use sqlite, couch or postgres"
                            ),
                        })
                    }
                };
                match from_sources((&None, ""), (&None, ""), section, "dsn", &mut warnings)? {
                    Some((d, dsn_place)) => {
                        StoreDsn::parse(&d, &base_dir).map_err(|source| ConfigError::Dsn {
                            place: dsn_place,
                            source,
                        })?
                    }
                    None if section == "sqlite" => StoreDsn::Sqlite {
                        path: default_sqlite_path(),
                    },
                    None => {
                        return Err(ConfigError::Value {
                            place: place(section, "dsn"),
                            message: format!(
                                "[persistence] backend = {backend} needs a dsn in [{section}]"
                            ),
                        })
                    }
                }
            }
        };

        if let StoreDsn::Couch { ca_file, .. } = &mut dbhost {
            if ca_file.is_none() {
                *ca_file = path_of("couch", "ca_file");
            }
        }

        // AMQP TLS files: flags over the file; each must be readable now, not at the
        // first reconnect.
        let amqp_tls = TlsFiles {
            ca_file: o
                .amqp_ca_file
                .clone()
                .or_else(|| path_of("amqp", "ca_file")),
            cert_file: o
                .amqp_cert_file
                .clone()
                .or_else(|| path_of("amqp", "cert_file")),
            key_file: o
                .amqp_key_file
                .clone()
                .or_else(|| path_of("amqp", "key_file")),
        };
        let tls_place = |flag: &Option<PathBuf>, flag_name: &str, key: &str| {
            if flag.is_some() {
                flag_name.to_string()
            } else {
                place("amqp", key)
            }
        };
        for (file, flag, flag_name, key) in [
            (
                &amqp_tls.ca_file,
                &o.amqp_ca_file,
                "--amqp-ca-file / VOGELER_AMQP_CA_FILE",
                "ca_file",
            ),
            (
                &amqp_tls.cert_file,
                &o.amqp_cert_file,
                "--amqp-cert-file / VOGELER_AMQP_CERT_FILE",
                "cert_file",
            ),
            (
                &amqp_tls.key_file,
                &o.amqp_key_file,
                "--amqp-key-file / VOGELER_AMQP_KEY_FILE",
                "key_file",
            ),
        ] {
            if let Some(path) = file {
                std::fs::File::open(path).map_err(|source| ConfigError::File {
                    place: tls_place(flag, flag_name, key),
                    path: path.clone(),
                    source,
                })?;
            }
        }
        if amqp_tls.cert_file.is_some() != amqp_tls.key_file.is_some() {
            return Err(ConfigError::Value {
                place: if amqp_tls.cert_file.is_some() {
                    tls_place(
                        &o.amqp_cert_file,
                        "--amqp-cert-file / VOGELER_AMQP_CERT_FILE",
                        "cert_file",
                    )
                } else {
                    tls_place(
                        &o.amqp_key_file,
                        "--amqp-key-file / VOGELER_AMQP_KEY_FILE",
                        "key_file",
                    )
                },
                message: "a client certificate needs both cert_file and key_file".into(),
            });
        }
        if let Some(key) = &amqp_tls.key_file {
            if readable_by_others(key) {
                warnings.push(format!(
                    "the AMQP client key {} is readable by other users; chmod 600 it",
                    key.display()
                ));
            }
        }
        if amqp_tls.is_set() && !qhost.iter().any(|q| q.tls) && nats.is_none() {
            warnings.push(
                "AMQP TLS files are set but no broker URI is amqps://: they are not used".into(),
            );
        }

        let http_token = from_sources(
            (&o.http_token, "--http-token / VOGELER_HTTP_TOKEN"),
            (
                &o.http_token_file,
                "--http-token-file / VOGELER_HTTP_TOKEN_FILE",
            ),
            "server",
            "http_token",
            &mut warnings,
        )?
        .map(|(t, token_place)| {
            // An empty token must not quietly turn authentication off.
            if t.trim().is_empty() {
                Err(ConfigError::Value {
                    place: token_place,
                    message: "the web UI token is empty; give a token, or leave the setting out to run without one".into(),
                })
            } else {
                Ok(Secret::new(t))
            }
        })
        .transpose()?;
        // `get` reads a blank value as unset; for the token that would turn
        // authentication off without a word, so a blank key is refused too.
        if http_token.is_none() && o.http_token.is_none() && o.http_token_file.is_none() {
            for key in ["http_token", "http_token_file"] {
                if f.and_then(|f| f.entry("server", key)).is_some() {
                    return Err(ConfigError::Value {
                        place: place("server", key),
                        message: "the web UI token is empty; give a token, or remove the line to run without one".into(),
                    });
                }
            }
        }
        let plugin_user = get("client", "plugin_user").map(str::to_string);

        let log_level = match (
            &o.log_level,
            get(program.section(), "log_level"),
            get("global", "log_level"),
        ) {
            (Some(l), _, _) => LogLevel::parse(l).map_err(|message| ConfigError::Value {
                place: "--loglevel".into(),
                message,
            })?,
            (None, Some(l), _) => LogLevel::parse(l).map_err(|message| ConfigError::Value {
                place: place(program.section(), "log_level"),
                message,
            })?,
            (None, None, Some(l)) => LogLevel::parse(l).map_err(|message| ConfigError::Value {
                place: place("global", "log_level"),
                message,
            })?,
            (None, None, None) => LogLevel::Warn,
        };

        let log_handler = match get("global", "log_handler") {
            None | Some("stream_handler") | Some("stream") => LogHandler::Stream,
            Some("file_handler") | Some("file") => LogHandler::File(
                f.and_then(|f| f.path_value("file_handler", "filename"))
                    .unwrap_or_else(|| PathBuf::from("/var/log/vogeler.log")),
            ),
            Some("syslog_handler") | Some("syslog") => LogHandler::Syslog {
                facility: get("syslog_handler", "log_facility").unwrap_or("local7").into(),
                address: get("syslog_handler", "address").unwrap_or("/dev/log").into(),
            },
            Some(other) => {
                return Err(ConfigError::Value {
                    place: place("global", "log_handler"),
                    message: format!(
                        "unknown log handler {other:?}: use stream_handler, file_handler or syslog_handler"
                    ),
                })
            }
        };

        let plugin_path = o
            .plugin_path
            .clone()
            .or_else(|| f.and_then(|f| f.path_value("global", "plugin_path")))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGIN_PATH));

        let name = |flag: &Option<String>, key: &str, default: &str| -> String {
            flag.clone()
                .or_else(|| get("amqp", key).map(str::to_string))
                .unwrap_or_else(|| default.to_string())
        };
        let wire = match o.wire.as_deref().or_else(|| get("amqp", "wire")) {
            None | Some("v1") => Wire::V1,
            Some("legacy") => Wire::Legacy,
            Some(other) => {
                return Err(ConfigError::Value {
                    place: if o.wire.is_some() {
                        "--wire".into()
                    } else {
                        place("amqp", "wire")
                    },
                    message: format!("wire {other:?} is not v1 or legacy"),
                })
            }
        };
        let quorum = match get("amqp", "queue_type") {
            None | Some("classic") => false,
            Some("quorum") => true,
            Some(other) => {
                return Err(ConfigError::Value {
                    place: place("amqp", "queue_type"),
                    message: format!("queue_type {other:?} is not classic or quorum"),
                })
            }
        };
        let node_name = o
            .node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| get("client", "node_name").map(str::to_string))
            .unwrap_or_else(host_name);
        // The same rule the server applies to every message (vogeler_protocol::limits).
        if let Err(r) = vogeler_protocol::limits::check_node_name("node name", &node_name) {
            return Err(ConfigError::Value {
                place: "node name".into(),
                message: format!(
                    "{:?} cannot be a node name: {} (e.g. web01.example.com)",
                    vogeler_protocol::limits::bounded(&node_name, 80),
                    r.message
                ),
            });
        }

        let number = |section: &str, key: &str, default: u64| -> Result<u64, ConfigError> {
            match get(section, key) {
                None => Ok(default),
                Some(v) => v.parse::<u64>().map_err(|_| ConfigError::Value {
                    place: place(section, key),
                    message: format!("{v:?} is not a whole number"),
                }),
            }
        };
        let plugin_timeout = Duration::from_secs(number("client", "timeout", 60)?.max(1));
        let output_cap = number("client", "output_cap", 16 * 1024 * 1024)? as usize;
        let max_message_bytes = number(
            "server",
            "max_message_bytes",
            vogeler_protocol::limits::MAX_MESSAGE_BYTES as u64,
        )? as usize;
        if max_message_bytes > vogeler_protocol::limits::MAX_MESSAGE_BYTES {
            return Err(ConfigError::Value {
                place: place("server", "max_message_bytes"),
                message: format!(
                    "{max_message_bytes} exceeds the protocol's limit of {} bytes (docs/PROTOCOL.md, \"Limits and reason codes\")",
                    vogeler_protocol::limits::MAX_MESSAGE_BYTES
                ),
            });
        }
        let concurrency = number("client", "concurrency", 4)?.max(1) as usize;
        let batch_size = number("server", "batch_size", 500)?.max(1) as usize;
        let prefetch =
            u16::try_from(number("server", "prefetch", 2000)?.clamp(1, 65535)).unwrap_or(u16::MAX);
        let history_days = number("server", "history_days", 0)?;
        let query_timeout =
            Duration::from_millis(number("server", "query_timeout_ms", 10_000)?.max(1));
        let interval = match o.interval {
            Some(n) => n,
            None => number("client", "interval", 0)?,
        };
        let heartbeat_interval = match o.heartbeat_interval {
            Some(n) => n,
            None => number("client", "heartbeat_interval", 60)?,
        };
        let max_clock_skew = Duration::from_secs(number("server", "max_clock_skew", 300)?);
        let nats_ack_wait = Duration::from_secs(number("nats", "ack_wait", 30)?.max(1));
        let nats_replicas = match number("nats", "replicas", 1)? {
            n @ 1..=MAX_NATS_REPLICAS => n as u8,
            n => {
                return Err(ConfigError::Value {
                    place: place("nats", "replicas"),
                    message: format!(
                        "{n} replicas: JetStream keeps 1 to {MAX_NATS_REPLICAS} copies of a stream (3 for a three-node cluster)"
                    ),
                })
            }
        };
        let connect_timeout = match o.connect_timeout {
            Some(d) => d,
            None => Duration::from_secs(number("global", "connect_timeout", 10)?.max(1)),
        };
        let state_dir = o
            .state_dir
            .clone()
            .or_else(|| f.and_then(|f| f.path_value("client", "state_dir")))
            .unwrap_or_else(default_state_dir);

        // Signing (docs/PROTOCOL.md "Signing").
        let boolean = |section: &str, key: &str| -> Result<bool, ConfigError> {
            match get(section, key).map(str::to_ascii_lowercase).as_deref() {
                None | Some("false" | "no" | "off" | "0") => Ok(false),
                Some("true" | "yes" | "on" | "1") => Ok(true),
                Some(v) => Err(ConfigError::Value {
                    place: place(section, key),
                    message: format!("{v:?} is not true or false"),
                }),
            }
        };
        let signing_key = match program {
            Program::Runner | Program::Client => o
                .signing_key
                .clone()
                .or_else(|| f.and_then(|f| f.path_value(program.section(), "signing_key"))),
            Program::Server | Program::Admin => None,
        };
        let trusted_keys: Vec<PathBuf> = get("client", "trusted_keys")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let p = PathBuf::from(p);
                        if p.is_absolute() {
                            p
                        } else {
                            base_dir.join(p)
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let require_signed = boolean("client", "require_signed")?;
        if require_signed && trusted_keys.is_empty() && program == Program::Client {
            return Err(ConfigError::Value {
                place: place("client", "require_signed"),
                message:
                    "require_signed = true needs [client] trusted_keys (the runners' .pub files)"
                        .into(),
            });
        }
        let node_keys = f.and_then(|f| f.path_value("server", "node_keys"));
        let require_verified = boolean("server", "require_verified")?;
        if require_verified && node_keys.is_none() && program == Program::Server {
            return Err(ConfigError::Value {
                place: place("server", "require_verified"),
                message: "require_verified = true needs [server] node_keys (a directory of <node>.pub files)"
                    .into(),
            });
        }

        if o.password_on_command_line {
            warnings.push(
                "a password was given on the command line, where any user can read it in the process list; \
                 use the environment (VOGELER_QHOST, VOGELER_DBHOST, VOGELER_HTTP_TOKEN), a file \
                 (--qhost-file, --dbhost-file, --http-token-file) or the config file instead"
                    .to_string(),
            );
        }
        if let Some(f) = f {
            // Only what the file itself gave counts: a password from a flag or the
            // environment is not the file's to protect.
            let qhost_from_file = o.qhost.is_none() && o.qhost_file.is_none();
            let dbhost_from_file = o.dbhost.is_none() && o.dbhost_file.is_none();
            let has_secret = (qhost_from_file
                && (qhost
                    .iter()
                    .any(|q| !q.password.is_empty() && q.password != "guest")
                    || nats.as_ref().is_some_and(|n| n.password.is_some())))
                || (dbhost_from_file
                    && (matches!(
                        &dbhost,
                        StoreDsn::Couch {
                            password: Some(_),
                            ..
                        }
                    ) || matches!(&dbhost, StoreDsn::Postgres { url } if url.contains('@') && url.split('@').next().is_some_and(|a| a.matches(':').count() > 1))))
                || get("server", "http_token").is_some();
            if has_secret && readable_by_others(f.path()) {
                warnings.push(format!(
                    "config file {} holds a password and is readable by other users; chmod 600 it",
                    f.path().display()
                ));
            }
        }

        Ok(Settings {
            program,
            config_path: f.map(|f| f.path().to_path_buf()),
            qhost,
            nats_creds: std::env::var_os("VOGELER_NATS_CREDS")
                .map(PathBuf::from)
                .or_else(|| path_of("nats", "creds_file")),
            nats_nkey: std::env::var_os("VOGELER_NATS_NKEY")
                .map(PathBuf::from)
                .or_else(|| path_of("nats", "nkey_file")),
            nats,
            nats_ack_wait,
            nats_replicas,
            amqp_tls,
            http_token,
            plugin_user,
            dbhost,
            log_level,
            log_handler,
            plugin_path,
            design_docs_path: f.and_then(|f| f.path_value("couch", "design_docs_path")),
            master_exchange: name(&o.master_exchange, "master_exchange", "vogeler.master.in"),
            broadcast_exchange: name(
                &o.broadcast_exchange,
                "broadcast_exchange",
                "vogeler.broadcast.in",
            ),
            master_queue: name(&o.master_queue, "master_queue", "master.in"),
            dead_letter_queue: name(&o.dead_letter_queue, "dead_letter_queue", "vogeler.dead"),
            quorum,
            management_url: get("amqp", "management_url").map(String::from),
            wire,
            node_name,
            plugin_timeout,
            output_cap,
            max_message_bytes,
            concurrency,
            batch_size,
            prefetch,
            history_days,
            query_timeout,
            signing_key,
            trusted_keys,
            require_signed,
            node_keys,
            require_verified,
            interval,
            heartbeat_interval,
            connect_timeout,
            state_dir,
            max_clock_skew,
            warnings,
        })
    }
}

/// Reads a secret from a file: the whole content less trailing newlines. Warns when
/// other users may read it.
fn read_secret(
    path: &Path,
    place: &str,
    warnings: &mut Vec<String>,
) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        place: place.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if readable_by_others(path) {
        warnings.push(format!(
            "{} ({place}) holds a secret and is readable by other users; chmod 600 it",
            path.display()
        ));
    }
    let value = text.trim_end_matches(['\n', '\r']);
    if value.trim().is_empty() {
        return Err(ConfigError::Value {
            place: format!("{place} ({})", path.display()),
            message: "the file is empty".into(),
        });
    }
    Ok(value.to_string())
}

fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o044 != 0)
        .unwrap_or(false)
}

/// The embedded store's default file: `/var/lib/vogeler/vogeler.db` for root (or when
/// that directory is writable), else `$XDG_DATA_HOME/vogeler/vogeler.db`
/// (`~/.local/share/vogeler/vogeler.db`).
pub fn default_sqlite_path() -> PathBuf {
    let system = Path::new("/var/lib/vogeler");
    let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::env::var("HOME").map(|h| h == "/root").unwrap_or(false);
    let writable = system
        .metadata()
        .map(|m| !m.permissions().readonly())
        .unwrap_or(false);
    if is_root || writable {
        return system.join("vogeler.db");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("vogeler").join("vogeler.db")
}

/// The client's default state directory: `/var/lib/vogeler-client` for root (or when
/// `/var/lib` is writable), else `$XDG_STATE_HOME/vogeler-client`
/// (`~/.local/state/vogeler-client`).
pub fn default_state_dir() -> PathBuf {
    let is_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::env::var("HOME").map(|h| h == "/root").unwrap_or(false);
    let writable = Path::new("/var/lib")
        .metadata()
        .map(|m| !m.permissions().readonly())
        .unwrap_or(false);
    if is_root || writable {
        return PathBuf::from("/var/lib/vogeler-client");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("vogeler-client")
}

/// This machine's host name: the default node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_2010() -> ConfigFile {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/vogeler-2010/vogeler.conf"
        ));
        ConfigFile::load(path).expect("2010 file loads")
    }

    #[test]
    fn the_2010_file_loads_as_is() {
        let f = conf_2010();
        assert_eq!(f.get("amqp", "master_exchange"), Some("vogeler.master.in"));
        assert_eq!(f.get("server", "log_level"), Some("DEBUG"));
        let s = Settings::resolve(Program::Server, Overrides::default(), Some(f.clone()))
            .expect("resolve");
        assert_eq!(s.master_exchange, "vogeler.master.in");
        assert_eq!(s.broadcast_exchange, "vogeler.broadcast.in");
        assert_eq!(
            s.log_level,
            LogLevel::Debug,
            "[server] log_level overrides [global]"
        );
        assert_eq!(s.qhost[0].vhost, "vogeler");
        assert_eq!(s.plugin_path, PathBuf::from("/tmp/vogeler/plugins"));
        match &s.dbhost {
            StoreDsn::Couch { db, base_url, .. } => {
                assert_eq!(
                    (db.as_str(), base_url.as_str()),
                    ("system_records", "http://127.0.0.1:5984")
                )
            }
            other => panic!("backend couch picks [couch] dsn, got {other:?}"),
        }
        let ddocs = s.design_docs_path.expect("design docs path");
        assert!(
            ddocs.is_absolute() || ddocs.starts_with(f.dir()),
            "{ddocs:?}"
        );
        assert!(ddocs.ends_with("etc/vogeler/_design"));
        assert_eq!(
            s.log_handler,
            LogHandler::Stream,
            "handlers are commented out in 2010"
        );
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let f = ConfigFile::parse(
            Path::new("/etc/x/vogeler.conf"),
            "[amqp]\ndsn = amqp://a:b@filehost/v\n[sqlite]\ndsn = sqlite:rel.db\n[global]\nlog_level = ERROR\n",
        )
        .expect("parse");
        let s = Settings::resolve(Program::Client, Overrides::default(), Some(f.clone()))
            .expect("file");
        assert_eq!(s.qhost[0].host, "filehost");
        assert_eq!(
            s.dbhost,
            StoreDsn::Sqlite {
                path: PathBuf::from("/etc/x/rel.db")
            }
        );
        assert_eq!(s.log_level, LogLevel::Error);
        let o = Overrides {
            qhost: Some("flaghost".into()),
            log_level: Some("info".into()),
            node_name: Some("n1".into()),
            ..Default::default()
        };
        let s = Settings::resolve(Program::Client, o, Some(f)).expect("flags");
        assert_eq!(s.qhost[0].host, "flaghost");
        assert_eq!(s.log_level, LogLevel::Info);
        assert_eq!(s.node_name, "n1");
        let s = Settings::resolve(Program::Runner, Overrides::default(), None).expect("defaults");
        assert_eq!(
            s.qhost[0].to_string(),
            "amqp://guest:****@127.0.0.1:5672/%2F"
        );
        assert_eq!(s.master_queue, "master.in");
        assert_eq!(s.log_level, LogLevel::Warn);
        assert!(matches!(s.dbhost, StoreDsn::Sqlite { .. }));
    }

    #[test]
    fn bad_values_name_the_place() {
        let bad = [
            (
                "[global]\nlog_level = LOUD\n",
                "vogeler.conf:2 [global] log_level",
                "LOUD",
            ),
            (
                "[persistence]\nbackend = mongo\n",
                "vogeler.conf:2 [persistence] backend",
                "mongo",
            ),
            (
                "[sqlite]\ndsn = mysql://x\n",
                "vogeler.conf:2 [sqlite] dsn",
                "mysql",
            ),
            (
                "[client]\ntimeout = soon\n",
                "vogeler.conf:2 [client] timeout",
                "soon",
            ),
            ("[amqp]\nwire = v9\n", "vogeler.conf:2 [amqp] wire", "v9"),
            (
                "[persistence]\nbackend = couch\n",
                "[couch] dsn",
                "needs a dsn",
            ),
        ];
        for (text, place, value) in bad {
            let f = ConfigFile::parse(Path::new("/etc/vogeler/vogeler.conf"), text).expect("parse");
            let e = Settings::resolve(Program::Server, Overrides::default(), Some(f))
                .expect_err(text)
                .to_string();
            assert!(e.contains(place) && e.contains(value), "{text:?} gave {e}");
        }
        let e = ConfigFile::parse(Path::new("/x/v.conf"), "no section here\n").expect_err("syntax");
        assert!(e.to_string().starts_with("/x/v.conf:1"), "{e}");
        let e = ConfigFile::discover(Some(Path::new("/nonexistent/v.conf"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/v.conf"), "{e}");
    }

    #[test]
    fn signing_settings() {
        let f = ConfigFile::parse(
            Path::new("/etc/vogeler/vogeler.conf"),
            "[runner]\nsigning_key = keys/runner.key\n[client]\nsigning_key = /k/node.key\n\
             trusted_keys = keys, /other/ops.pub\nrequire_signed = yes\n\
             [server]\nnode_keys = nodes\nrequire_verified = true\n",
        )
        .expect("parse");
        let s = Settings::resolve(Program::Runner, Overrides::default(), Some(f.clone()))
            .expect("runner");
        assert_eq!(
            s.signing_key,
            Some(PathBuf::from("/etc/vogeler/keys/runner.key"))
        );
        let o = Overrides {
            signing_key: Some("/flag.key".into()),
            ..Default::default()
        };
        let s = Settings::resolve(Program::Runner, o, Some(f.clone())).expect("flag");
        assert_eq!(s.signing_key, Some(PathBuf::from("/flag.key")));
        let s = Settings::resolve(Program::Client, Overrides::default(), Some(f.clone()))
            .expect("client");
        assert_eq!(s.signing_key, Some(PathBuf::from("/k/node.key")));
        assert_eq!(
            s.trusted_keys,
            vec![
                PathBuf::from("/etc/vogeler/keys"),
                PathBuf::from("/other/ops.pub")
            ]
        );
        assert!(s.require_signed);
        let s = Settings::resolve(Program::Server, Overrides::default(), Some(f)).expect("server");
        assert_eq!(s.node_keys, Some(PathBuf::from("/etc/vogeler/nodes")));
        assert!(s.require_verified);
        assert_eq!(s.signing_key, None);
        let s = Settings::resolve(Program::Client, Overrides::default(), None).expect("none");
        assert!(!s.require_signed && s.trusted_keys.is_empty() && s.signing_key.is_none());

        for (text, place) in [
            (
                "[client]\nrequire_signed = maybe\n",
                "vogeler.conf:2 [client] require_signed",
            ),
            (
                "[client]\nrequire_signed = true\n",
                "vogeler.conf:2 [client] require_signed",
            ),
            (
                "[server]\nrequire_verified = true\n",
                "vogeler.conf:2 [server] require_verified",
            ),
        ] {
            let f = ConfigFile::parse(Path::new("/etc/vogeler/vogeler.conf"), text).expect("parse");
            let program = if text.contains("server") {
                Program::Server
            } else {
                Program::Client
            };
            let e = Settings::resolve(program, Overrides::default(), Some(f))
                .expect_err(text)
                .to_string();
            assert!(e.contains(place), "{text:?} gave {e}");
        }
    }

    #[test]
    fn password_on_command_line_is_warned_about() {
        let o = Overrides {
            qhost: Some("amqp://u:secret@h/".into()),
            password_on_command_line: true,
            ..Default::default()
        };
        let s = Settings::resolve(Program::Runner, o, None).expect("resolve");
        assert!(s.warnings().iter().any(|w| w.contains("process list")));
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn an_empty_web_token_from_any_source_is_refused() {
        let conf = Path::new("/etc/vogeler/vogeler.conf");
        for (text, flag, place) in [
            (
                "[server]\nhttp_token =\n",
                None,
                "vogeler.conf:2 [server] http_token",
            ),
            ("", Some(""), "--http-token / VOGELER_HTTP_TOKEN"),
            ("", Some("  "), "--http-token / VOGELER_HTTP_TOKEN"),
        ] {
            let f = ConfigFile::parse(conf, text).expect("parse");
            let o = Overrides {
                http_token: flag.map(str::to_string),
                ..Default::default()
            };
            let e = Settings::resolve(Program::Server, o, Some(f))
                .expect_err(text)
                .to_string();
            assert!(
                e.contains(place) && e.contains("empty"),
                "{text:?} {flag:?}: {e}"
            );
        }
        let f = ConfigFile::parse(conf, "[server]\nhttp_token = t\n").expect("parse");
        let s = Settings::resolve(Program::Server, Overrides::default(), Some(f)).expect("ok");
        assert_eq!(s.http_token.as_ref().map(Secret::expose), Some("t"));
    }

    #[test]
    fn clock_skew_and_state_dir() {
        let conf = Path::new("/etc/vogeler/vogeler.conf");
        let s = Settings::resolve(Program::Server, Overrides::default(), None).expect("defaults");
        assert_eq!(s.max_clock_skew, Duration::from_secs(300));
        let f = ConfigFile::parse(
            conf,
            "[server]\nmax_clock_skew = 60\n[client]\nstate_dir = state\n",
        )
        .expect("parse");
        let s = Settings::resolve(Program::Client, Overrides::default(), Some(f.clone()))
            .expect("resolve");
        assert_eq!(s.max_clock_skew, Duration::from_secs(60));
        assert_eq!(s.state_dir, PathBuf::from("/etc/vogeler/state"));
        let o = Overrides {
            state_dir: Some(PathBuf::from("/run/x")),
            ..Default::default()
        };
        let s = Settings::resolve(Program::Client, o, Some(f)).expect("resolve");
        assert_eq!(s.state_dir, PathBuf::from("/run/x"));
        let f = ConfigFile::parse(conf, "[server]\nmax_clock_skew = soon\n").expect("parse");
        let e = Settings::resolve(Program::Server, Overrides::default(), Some(f))
            .expect_err("bad skew")
            .to_string();
        assert!(e.contains("[server] max_clock_skew"), "{e}");
    }

    fn write_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn secrets_come_from_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write_mode(&dir.join("qhost"), "amqp://u:fromfile@fhost/v\n", 0o600);
        write_mode(&dir.join("db"), "postgres://u:pgpw@h/db\r\n", 0o644);
        write_mode(&dir.join("token"), "t0ken\n", 0o600);
        let conf = dir.join("vogeler.conf");
        let f = ConfigFile::parse(
            &conf,
            "[amqp]\ndsn_file = qhost\n[persistence]\nbackend = postgres\n[postgres]\ndsn_file = db\n[server]\nhttp_token_file = token\n",
        )
        .expect("parse");
        let s = Settings::resolve(Program::Server, Overrides::default(), Some(f.clone()))
            .expect("resolve");
        assert_eq!(
            (s.qhost[0].host.as_str(), s.qhost[0].password.as_str()),
            ("fhost", "fromfile")
        );
        assert_eq!(
            s.dbhost,
            StoreDsn::Postgres {
                url: "postgres://u:pgpw@h/db".into()
            }
        );
        assert_eq!(s.http_token.as_ref().map(Secret::expose), Some("t0ken"));
        assert!(!format!("{s:?}").contains("t0ken") && !format!("{s:?}").contains("fromfile"));
        // The DSN file is world-readable: warned, naming it; the 0600 ones are not.
        let w = s.warnings().join("\n");
        assert!(
            w.contains(&dir.join("db").display().to_string()) && w.contains("chmod 600"),
            "{w}"
        );
        assert!(!w.contains("qhost"), "{w}");

        // Flags (or their environment variables) naming files beat the config file.
        write_mode(&dir.join("q2"), "amqp://u:p@flaghost/\n", 0o600);
        let o = Overrides {
            qhost_file: Some(dir.join("q2")),
            ..Default::default()
        };
        let s = Settings::resolve(Program::Server, o, Some(f.clone())).expect("flag file");
        assert_eq!(s.qhost[0].host, "flaghost");

        // A value and a file for the same setting is an error naming both.
        let o = Overrides {
            qhost: Some("h".into()),
            qhost_file: Some(dir.join("q2")),
            ..Default::default()
        };
        let e = Settings::resolve(Program::Server, o, None)
            .expect_err("both")
            .to_string();
        assert!(e.contains("--qhost ") && e.contains("--qhost-file"), "{e}");
        let both = ConfigFile::parse(&conf, "[amqp]\ndsn = h\ndsn_file = qhost\n").expect("parse");
        let e = Settings::resolve(Program::Server, Overrides::default(), Some(both))
            .expect_err("both in file")
            .to_string();
        assert!(e.contains("[amqp] dsn") && e.contains("dsn_file"), "{e}");

        // An unreadable file is an error naming the setting and the file.
        let missing =
            ConfigFile::parse(&conf, "[server]\nhttp_token_file = nope\n").expect("parse");
        let e = Settings::resolve(Program::Server, Overrides::default(), Some(missing))
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("[server] http_token_file") && e.contains("nope"),
            "{e}"
        );
        write_mode(&dir.join("empty"), "\n", 0o600);
        let o = Overrides {
            dbhost_file: Some(dir.join("empty")),
            ..Default::default()
        };
        let e = Settings::resolve(Program::Server, o, None)
            .expect_err("empty")
            .to_string();
        assert!(e.contains("--dbhost-file") && e.contains("empty"), "{e}");
    }

    #[test]
    fn amqp_tls_files_are_checked_at_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write_mode(&dir.join("ca.pem"), "x", 0o644);
        write_mode(&dir.join("client.pem"), "x", 0o644);
        write_mode(&dir.join("client.key"), "x", 0o644);
        let conf = dir.join("vogeler.conf");
        let f = ConfigFile::parse(
            &conf,
            "[amqp]\ndsn = amqps://h/\nca_file = ca.pem\ncert_file = client.pem\nkey_file = client.key\n[client]\nplugin_user = nobody\n",
        )
        .expect("parse");
        let s = Settings::resolve(Program::Client, Overrides::default(), Some(f)).expect("tls");
        assert_eq!(s.amqp_tls.ca_file, Some(dir.join("ca.pem")));
        assert_eq!(s.amqp_tls.key_file, Some(dir.join("client.key")));
        assert_eq!(s.plugin_user.as_deref(), Some("nobody"));
        assert!(
            s.warnings().iter().any(|w| w.contains("client.key")),
            "{:?}",
            s.warnings()
        );

        let f = ConfigFile::parse(&conf, "[amqp]\ndsn = amqps://h/\nca_file = nope.pem\n")
            .expect("parse");
        let e = Settings::resolve(Program::Client, Overrides::default(), Some(f))
            .expect_err("missing ca")
            .to_string();
        assert!(
            e.contains("[amqp] ca_file") && e.contains("nope.pem"),
            "{e}"
        );
        let o = Overrides {
            amqp_cert_file: Some(dir.join("client.pem")),
            ..Default::default()
        };
        let e = Settings::resolve(Program::Client, o, None)
            .expect_err("no key")
            .to_string();
        assert!(
            e.contains("--amqp-cert-file") && e.contains("key_file"),
            "{e}"
        );
    }

    #[test]
    fn log_levels() {
        for (s, l) in [
            ("DEBUG", "debug"),
            ("info", "info"),
            ("WARN", "warn"),
            ("warning", "warn"),
            ("ERROR", "error"),
            ("CRITICAL", "error"),
        ] {
            assert_eq!(LogLevel::parse(s).expect(s).filter(), l);
        }
        assert!(LogLevel::parse("LOUD")
            .expect_err("bad")
            .contains("DEBUG, INFO, WARN, ERROR, CRITICAL"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_shipped_example_loads_with_the_defaults_it_documents() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../etc/vogeler.conf"
        ));
        let f = ConfigFile::load(path).expect("example loads");
        let s =
            Settings::resolve(Program::Server, Overrides::default(), Some(f)).expect("resolves");
        assert_eq!(
            s.dbhost,
            StoreDsn::Sqlite {
                path: PathBuf::from("/var/lib/vogeler/vogeler.db")
            }
        );
        assert_eq!(s.master_queue, "master.in");
        assert_eq!(s.dead_letter_queue, "vogeler.dead");
        assert_eq!(
            (s.batch_size, s.prefetch, s.max_message_bytes),
            (500, 2000, 32 * 1024 * 1024)
        );
        assert_eq!(s.plugin_timeout, Duration::from_secs(60));
        assert_eq!(s.output_cap, 16 * 1024 * 1024);
        assert_eq!(s.plugin_path, PathBuf::from(DEFAULT_PLUGIN_PATH));
        assert_eq!(s.log_level, LogLevel::Warn);
        assert_eq!(s.wire, Wire::V1);
        assert_eq!((s.interval, s.heartbeat_interval), (0, 60));
        assert_eq!(
            (s.nats_ack_wait, s.nats_replicas),
            (Duration::from_secs(30), 1)
        );
    }

    #[test]
    fn nats_replicas_are_read_and_bounded_with_their_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.conf");
        let resolve = |text: &str| {
            std::fs::write(&path, text).expect("write");
            let f = ConfigFile::load(&path).expect("load");
            Settings::resolve(Program::Server, Overrides::default(), Some(f))
        };
        assert_eq!(resolve("[global]\n").expect("default").nats_replicas, 1);
        for n in 1..=5u8 {
            let s = resolve(&format!("[nats]\nreplicas = {n}\n")).expect("in range");
            assert_eq!(s.nats_replicas, n);
        }
        for (bad, says) in [
            ("0", "0 replicas"),
            ("6", "6 replicas"),
            ("three", "not a whole number"),
            ("-1", "not a whole number"),
        ] {
            let err = resolve(&format!("[nats]\nack_wait = 5\nreplicas = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains(&format!("{}:3 [nats] replicas", path.display()))
                    && err.contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn schedule_settings_flag_over_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.conf");
        std::fs::write(&path, "[client]\ninterval = 3600\nheartbeat_interval = x\n")
            .expect("write");
        let f = ConfigFile::load(&path).expect("load");
        let err = Settings::resolve(Program::Client, Overrides::default(), Some(f.clone()))
            .expect_err("bad heartbeat_interval");
        assert!(err.to_string().contains("heartbeat_interval"), "{err}");
        let o = Overrides {
            heartbeat_interval: Some(5),
            ..Default::default()
        };
        let s = Settings::resolve(Program::Client, o, Some(f)).expect("resolve");
        assert_eq!((s.interval, s.heartbeat_interval), (3600, 5));
    }

    #[test]
    fn a_readable_config_file_is_warned_about_only_for_its_own_passwords() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("vogeler.conf");
        let write = |text: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::write(&conf, text).expect("write");
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        };
        write("[global]\nlog_level = INFO\n");
        let f = ConfigFile::load(&conf).expect("load");
        // The password is on the command line (warned about as such), not in the file.
        let o = Overrides {
            dbhost: Some("postgres://u:secret@h/db".into()),
            ..Default::default()
        };
        let s = Settings::resolve(Program::Admin, o, Some(f.clone())).expect("resolve");
        assert!(
            !s.warnings().iter().any(|w| w.contains("config file")),
            "{:?}",
            s.warnings()
        );
        write("[persistence]\nbackend = postgres\n[postgres]\ndsn = postgres://u:secret@h/db\n");
        let f = ConfigFile::load(&conf).expect("load");
        let s = Settings::resolve(Program::Admin, Overrides::default(), Some(f)).expect("resolve");
        assert!(
            s.warnings()
                .iter()
                .any(|w| w.contains("config file") && w.contains("chmod 600")),
            "{:?}",
            s.warnings()
        );
    }
}
