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

pub use dsn::{mask_secrets, AmqpDsn, DsnError, StoreDsn};

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

/// Values from flags or the environment; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--qhost` / `VOGELER_QHOST`.
    pub qhost: Option<String>,
    /// `--dbhost` / `VOGELER_DBHOST`.
    pub dbhost: Option<String>,
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
    /// A password was seen in a DSN given as a command-line flag.
    pub password_on_command_line: bool,
}

/// Everything a program runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The program configured.
    pub program: Program,
    /// The config file read, if any.
    pub config_path: Option<PathBuf>,
    /// Broker(s).
    pub qhost: Vec<AmqpDsn>,
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
    /// Seconds between a client's scheduled runs of every plugin (`[client] interval`;
    /// a plugin's own `interval` overrides it); 0 schedules nothing.
    pub interval: u64,
    /// Seconds between a client's heartbeats (`[client] heartbeat_interval`); 0 sends none.
    pub heartbeat_interval: u64,
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

        // Broker.
        let (qhost_text, qhost_place) = match (&o.qhost, get("amqp", "dsn")) {
            (Some(q), _) => (q.clone(), "--qhost / VOGELER_QHOST".to_string()),
            (None, Some(q)) => (q.to_string(), place("amqp", "dsn")),
            (None, None) => (DEFAULT_QHOST.to_string(), "default broker".to_string()),
        };
        let qhost = AmqpDsn::parse_list(&qhost_text).map_err(|source| ConfigError::Dsn {
            place: qhost_place,
            source,
        })?;

        // Store: the flag, else `[persistence] backend` picks its section's dsn.
        let dbhost = match &o.dbhost {
            Some(d) => StoreDsn::parse(d, &std::env::current_dir().unwrap_or(base_dir.clone()))
                .map_err(|source| ConfigError::Dsn {
                    place: "--dbhost / VOGELER_DBHOST".into(),
                    source,
                })?,
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
                match get(section, "dsn") {
                    Some(d) => {
                        StoreDsn::parse(d, &base_dir).map_err(|source| ConfigError::Dsn {
                            place: place(section, "dsn"),
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
        let node_name = o
            .node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| get("client", "node_name").map(str::to_string))
            .unwrap_or_else(host_name);
        if node_name.contains(['*', '#']) || node_name.trim().is_empty() {
            return Err(ConfigError::Value {
                place: "node name".into(),
                message: format!("{node_name:?} cannot be a node name: it must be non-empty and contain no * or #"),
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
        let max_message_bytes = number("server", "max_message_bytes", 32 * 1024 * 1024)? as usize;
        let concurrency = number("client", "concurrency", 4)?.max(1) as usize;
        let batch_size = number("server", "batch_size", 500)?.max(1) as usize;
        let prefetch =
            u16::try_from(number("server", "prefetch", 2000)?.clamp(1, 65535)).unwrap_or(u16::MAX);
        let history_days = number("server", "history_days", 0)?;
        let interval = match o.interval {
            Some(n) => n,
            None => number("client", "interval", 0)?,
        };
        let heartbeat_interval = match o.heartbeat_interval {
            Some(n) => n,
            None => number("client", "heartbeat_interval", 60)?,
        };

        if o.password_on_command_line {
            warnings.push(
                "a password was given on the command line, where any user can read it in the process list; \
                 use VOGELER_QHOST / VOGELER_DBHOST or the config file instead"
                    .to_string(),
            );
        }
        if let Some(f) = f {
            let has_secret = qhost
                .iter()
                .any(|q| !q.password.is_empty() && q.password != "guest")
                || matches!(
                    &dbhost,
                    StoreDsn::Couch {
                        password: Some(_),
                        ..
                    }
                )
                || matches!(&dbhost, StoreDsn::Postgres { url } if url.contains('@') && url.split('@').next().is_some_and(|a| a.matches(':').count() > 1));
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
            wire,
            node_name,
            plugin_timeout,
            output_cap,
            max_message_bytes,
            concurrency,
            batch_size,
            prefetch,
            history_days,
            interval,
            heartbeat_interval,
            warnings,
        })
    }
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
}
