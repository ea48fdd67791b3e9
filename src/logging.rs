//! Where log lines go: standard error, a file, or syslog (`[global] log_handler`, as in 2010).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use vogeler_config::{LogHandler, Settings};

/// Installs the global subscriber for `program` at the configured level (`RUST_LOG` wins).
pub fn init(s: &Settings, program: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(format!(
            "{level},lapin={lapin},lapin::returned_messages=error,amq_protocol=warn,async_nats={lapin},tokio_postgres=warn,reqwest=warn,hyper=warn",
            level = s.log_level.filter(),
            // lapin and async-nats log every failed connection attempt at ERROR (a
            // refused login too); the programs report those themselves in one line, so
            // only DEBUG shows the libraries' own.
            lapin = if matches!(s.log_level, vogeler_config::LogLevel::Debug) { "warn" } else { "off" },
        )),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match &s.log_handler {
        LogHandler::Stream => {
            // Colour only for a person at a terminal: pipes, journald and files get plain text.
            let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let _ = builder
                .with_ansi(colour)
                .with_writer(std::io::stderr)
                .try_init();
        }
        LogHandler::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            let _ = builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init();
        }
        LogHandler::Syslog { facility, address } => {
            let writer = Syslog::connect(address, facility, program)?;
            let _ = builder
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_writer(writer)
                .try_init();
        }
    }
    for w in s.warnings() {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// RFC 3164 datagrams to a local syslog socket, one per event.
#[derive(Clone)]
struct Syslog {
    socket: Arc<UnixDatagram>,
    facility: u8,
    tag: String,
}

impl Syslog {
    fn connect(address: &str, facility: &str, tag: &str) -> anyhow::Result<Syslog> {
        let facility = facility_code(facility)
            .ok_or_else(|| anyhow::anyhow!("[syslog_handler] log_facility {facility:?} is not a syslog facility (user, daemon, local0 … local7)"))?;
        let socket = UnixDatagram::unbound()?;
        socket
            .connect(address)
            .map_err(|e| anyhow::anyhow!("cannot reach syslog at {address}: {e}"))?;
        Ok(Syslog {
            socket: Arc::new(socket),
            facility,
            tag: tag.to_string(),
        })
    }
}

fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        n => {
            let i: u8 = n.strip_prefix("local")?.parse().ok()?;
            if i > 7 {
                return None;
            }
            16 + i
        }
    })
}

fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One event's line, sent when the formatter drops it.
struct SyslogLine {
    syslog: Syslog,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let line = format!(
            "<{}>{}[{}]: {}",
            self.syslog.facility * 8 + self.severity,
            self.syslog.tag,
            std::process::id(),
            text.trim_end()
        );
        // Logging must never take the program down; a full or gone socket drops the line.
        let _ = self.syslog.socket.send(line.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            syslog: self.clone(),
            severity: 6,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        SyslogLine {
            syslog: self.clone(),
            severity: severity(meta.level()),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities() {
        assert_eq!(facility_code("local7"), Some(23));
        assert_eq!(facility_code("daemon"), Some(3));
        assert_eq!(facility_code("local8"), None);
        assert_eq!(facility_code("nope"), None);
    }

    #[test]
    fn lines_reach_a_syslog_socket_with_priority() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        let syslog = Syslog::connect(path.to_str().expect("utf-8"), "local7", "vogeler-test")
            .expect("connect");
        {
            let mut w = syslog.make_writer();
            w.severity = severity(&Level::WARN);
            w.write_all(b"broker unavailable; retrying\n")
                .expect("write");
        }
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).expect("recv");
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("<188>vogeler-test["), "{got}");
        assert!(got.ends_with("]: broker unavailable; retrying"), "{got}");
    }
}
