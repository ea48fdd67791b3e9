//! Command-line flags shared by the four programs, and the error exit every `main` uses.
//!
//! Every flag is global (accepted before or after a subcommand), every secret-bearing
//! flag also reads an environment variable, and flags override the config file.

use std::path::PathBuf;

use clap::Args;

/// Flags every program accepts (the 2010 programs' `-c`, `--qhost`, `--dbhost`, `--loglevel`).
#[derive(Debug, Clone, Args, Default)]
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

    /// Broker URI(s), comma-separated for a cluster: amqp://user:pass@host:5672/vhost, or a bare host.
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

    /// Emit the 2010 message shapes (`v1` or `legacy`) to talk to 2010 programs.
    #[arg(long, global = true, env = "VOGELER_WIRE", value_name = "WIRE")]
    pub wire: Option<String>,
}

/// Prints the whole error chain and exits with `code`: the one place programs fail.
pub fn fail(program: &str, err: &anyhow::Error, code: i32) -> ! {
    eprintln!(
        "{program}: error: {}",
        vogeler_config::mask_secrets(&format!("{err:#}"))
    );
    std::process::exit(code)
}

/// Runs a program's async `main` to completion and exits with its status; an error
/// prints its whole chain (passwords masked) and exits 1. The server uses a
/// multi-threaded runtime; the others one thread, which keeps an agent small.
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
        Err(e) => fail(program, &e.into(), 1),
    };
    match runtime.block_on(main) {
        Ok(code) => std::process::exit(code),
        Err(e) => fail(program, &e, 1),
    }
}
