//! Command-line flags shared by the four programs, and the error exit every `main` uses.
//!
//! Every flag is global (accepted before or after a subcommand), every secret-bearing
//! flag also reads an environment variable, and flags override the config file.

use std::path::PathBuf;

use clap::Args;

/// Flags every program accepts (the 2010 programs' `-c`, `--qhost`, `--dbhost`, `--loglevel`).
/// `--help` lists them after the program's own, under "Connection".
#[derive(Debug, Clone, Args, Default)]
#[command(next_help_heading = "Connection")]
pub struct CommonArgs {
    /// Configuration file [default: /etc/vogeler/vogeler.conf when present].
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "VOGELER_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Broker URI(s), comma-separated for a cluster: amqp://user:pass@host:5672/vhost, a bare host, or NATS with JetStream: nats://user:pass@host:4222,host2:4222/PREFIX (tls:// for TLS; login and PREFIX optional).
    #[arg(
        long,
        global = true,
        env = "VOGELER_QHOST",
        value_name = "URI",
        hide_env_values = true
    )]
    pub qhost: Option<String>,

    /// Store DSN: sqlite:///abs/path.db, postgres://user@host/db, couch://host:5984/dbname.
    #[arg(
        long,
        global = true,
        env = "VOGELER_DBHOST",
        value_name = "DSN",
        hide_env_values = true
    )]
    pub dbhost: Option<String>,

    /// A file holding the broker URI(s) (instead of --qhost: keeps the password out of
    /// the process list and the environment).
    #[arg(long, global = true, env = "VOGELER_QHOST_FILE", value_name = "FILE")]
    pub qhost_file: Option<PathBuf>,

    /// A file holding the store DSN (instead of --dbhost).
    #[arg(long, global = true, env = "VOGELER_DBHOST_FILE", value_name = "FILE")]
    pub dbhost_file: Option<PathBuf>,

    /// PEM CA certificate(s) for amqps:// brokers signed by a private CA (default: `[amqp] ca_file`).
    #[arg(long, global = true, env = "VOGELER_AMQP_CA_FILE", value_name = "FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// PEM client certificate for amqps:// brokers that require one (default: `[amqp] cert_file`).
    #[arg(
        long,
        global = true,
        env = "VOGELER_AMQP_CERT_FILE",
        value_name = "FILE"
    )]
    pub amqp_cert_file: Option<PathBuf>,

    /// PEM private key of --amqp-cert-file (default: `[amqp] key_file`).
    #[arg(
        long,
        global = true,
        env = "VOGELER_AMQP_KEY_FILE",
        value_name = "FILE"
    )]
    pub amqp_key_file: Option<PathBuf>,

    /// Log level: DEBUG, INFO, WARN, ERROR or CRITICAL.
    #[arg(
        long = "loglevel",
        global = true,
        env = "VOGELER_LOGLEVEL",
        value_name = "LEVEL"
    )]
    pub loglevel: Option<String>,

    /// Direct exchange results go to [default: vogeler.master.in].
    #[arg(
        long,
        global = true,
        env = "VOGELER_MASTER_EXCHANGE",
        value_name = "NAME"
    )]
    pub master_exchange: Option<String>,

    /// Topic exchange requests go to [default: vogeler.broadcast.in].
    #[arg(
        long,
        global = true,
        env = "VOGELER_BROADCAST_EXCHANGE",
        value_name = "NAME"
    )]
    pub broadcast_exchange: Option<String>,

    /// The servers' result queue [default: master.in].
    #[arg(long, global = true, env = "VOGELER_MASTER_QUEUE", value_name = "NAME")]
    pub master_queue: Option<String>,

    /// Where unusable messages go [default: vogeler.dead].
    #[arg(long, global = true, env = "VOGELER_DEAD_QUEUE", value_name = "NAME")]
    pub dead_queue: Option<String>,

    /// How long an interactive command tries to reach the broker before giving up with
    /// one line (`10s`, `500ms`; default `[global] connect_timeout` or 10 s). A refused
    /// login is never retried; the server and `client run` retry for ever.
    #[arg(
        long,
        global = true,
        env = "VOGELER_CONNECT_TIMEOUT",
        value_name = "TIME",
        value_parser = parse_duration
    )]
    pub connect_timeout: Option<std::time::Duration>,

    /// Emit the 2010 message shapes (`v1` or `legacy`) to talk to 2010 programs.
    #[arg(long, global = true, env = "VOGELER_WIRE", value_name = "WIRE")]
    pub wire: Option<String>,
}

/// Parses a program's command line. `unused` names the shared flags this program
/// accepts (the 2010 command lines and config files keep working) but never reads,
/// such as the client's `--dbhost`: `--help` does not offer them.
pub fn parse_args<T: clap::Parser>(unused: &[&str]) -> T {
    let mut cmd = T::command();
    for id in unused {
        cmd = cmd.mut_arg(*id, |a| a.hide(true));
    }
    let matches = cmd.get_matches();
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The shared flags the runner accepts but does not use: it has no store.
pub const RUNNER_UNUSED: &[&str] = &["dbhost", "dbhost_file"];

/// The shared flags the client accepts but does not use: no store, and `run` retries
/// the broker for ever instead of giving up after `--connect-timeout`.
pub const CLIENT_UNUSED: &[&str] = &["dbhost", "dbhost_file", "connect_timeout"];

/// The shared flag the server accepts but does not use: it retries the broker for ever.
pub const SERVER_UNUSED: &[&str] = &["connect_timeout"];

/// `10s`, `2m`, `500ms`, `7d`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 10s, 2m, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        // The admin's ages take days (`--inactive-for 7d`); so do the runner's.
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a duration (examples: 10s, 2m, 500ms)"))
}

/// The exit codes every program keeps (the README's table): 0 ok, 1 failures, 2 usage
/// (a bad flag, filter, path, time or number), 3 incomplete (an answer is missing).
pub mod exit {
    /// Everything asked for was done.
    pub const OK: i32 = 0;
    /// Something failed (a store, a broker, a node's error).
    pub const FAILURE: i32 = 1;
    /// The command line could not be understood; nothing was done.
    pub const USAGE: i32 = 2;
    /// Done, but not everything answered (a silent node, a missing match).
    pub const INCOMPLETE: i32 = 3;
}

/// A command-line mistake (a filter, path, time or number that does not parse, an
/// ambiguous id): `run_main` exits 2 for it, as clap does for a bad flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Marks an error as the user's command-line mistake (exit 2); its text is kept.
pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(e.to_string()))
}

/// What was asked for is not there (an unknown node or request id, a missing queue):
/// `run_main` exits 3, as the runner does for a filter that matches no node.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// Marks an error as "not there" (exit 3); its text is kept.
pub fn not_found(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(NotFound(e.to_string()))
}

/// The error for a node name the store does not hold, the same in every command.
pub fn no_such_node(name: &str) -> anyhow::Error {
    not_found(format!(
        "no node named {name:?} is stored (see `vogeler-admin node` for the list)"
    ))
}

/// Standard output was closed by its reader (`vogeler-admin node | head`): the program
/// stops quietly with status 0 instead of panicking in `print!`.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
pub struct StdoutClosed;

/// Writes to standard output and flushes; a closed pipe becomes [`StdoutClosed`],
/// which `run_main` ends quietly on. Every program prints through [`out!`](crate::out).
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `print!` that returns an error instead of panicking when standard output is a
/// closed pipe (use with `?`; see [`write_stdout`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` through [`out!`](crate::out).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// An error and its causes in one line, `outer: inner`, each text once: a cause whose
/// text its outer message already holds (`cannot read X: No such file: No such file`)
/// is not repeated.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    vogeler_config::mask_secrets(&line)
}

/// The exit status an error ends a program with: 2 for a [`UsageError`], 3 for
/// [`NotFound`], else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|c| c.is::<UsageError>()) {
        exit::USAGE
    } else if err.chain().any(|c| c.is::<NotFound>()) {
        exit::INCOMPLETE
    } else {
        exit::FAILURE
    }
}

/// Prints the error once (its chain in one line, passwords masked) and exits with
/// `code`: the one place programs fail. A closed standard output ends quietly with 0.
pub fn fail(program: &str, err: &anyhow::Error, code: i32) -> ! {
    if err.chain().any(|c| c.is::<StdoutClosed>()) {
        std::process::exit(exit::OK)
    }
    eprintln!("{program}: error: {}", error_line(err));
    std::process::exit(code)
}

/// Runs a program's async `main` to completion and exits with its status; an error
/// prints its whole chain once (passwords masked) and exits 1, or 2 for a
/// [`UsageError`]. The server uses a multi-threaded runtime; the others one thread,
/// which keeps an agent small.
pub fn run_main(
    program: &str,
    multi_thread: bool,
    main: impl std::future::Future<Output = anyhow::Result<i32>>,
) -> ! {
    let runtime = if multi_thread {
        tokio::runtime::Runtime::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => fail(program, &e.into(), exit::FAILURE),
    };
    match runtime.block_on(main) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = exit_code(&e);
            fail(program, &e, code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_prints_each_text_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(inner).context("cannot read /x.conf: No such file");
        assert_eq!(error_line(&e), "cannot read /x.conf: No such file");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&e), "outer: inner");
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(exit_code(&usage("bad filter")), 2);
        assert_eq!(exit_code(&usage("bad").context("while parsing")), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("store down")), 1);
    }
}
