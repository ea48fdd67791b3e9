//! What the benchmarks share: the machine line and writing their own section of
//! BENCHMARKS.md without touching the others'.
#![allow(dead_code)]

/// A private nats-server per run (so a benchmark never loads the shared one and its
/// memory is the run's own): the tests' own helper.
#[path = "../../tests/common/nats.rs"]
pub mod nats;

#[path = "../../tests/common/ports.rs"]
pub mod ports;
/// For the NATS helper above (`super::free_port`).
use ports::free_port;

/// `nats-server --version`, as the machine line gives versions.
pub fn nats_server_version() -> String {
    let bin =
        std::env::var("VOGELER_NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let v = version(&bin, &["--version"]);
    v.strip_prefix("nats-server: ").unwrap_or(&v).to_string()
}

/// The first line of a command's output, or "unknown".
pub fn version(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// "Measured with `cargo bench --bench NAME` on DATE (N cores ...). Versions."
pub fn machine_line(bench: &str) -> String {
    format!(
        "Measured with `cargo bench --bench {bench}` on {} ({} cores; broker, stores, server and load generator all on it). RabbitMQ {}, {}, {}.\n\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        version("rabbitmqctl", &["version"]),
        version("psql", &["--version"]),
        version("rustc", &["--version"]),
    )
}

/// Lines of BENCHMARKS.md's section `name` starting with one of `starts`, as an earlier
/// run wrote them: a run that measured less keeps the rest.
pub fn earlier_lines(name: &str, starts: &[&str]) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = match (
        text.find(&format!("<!-- begin {name} -->")),
        text.find(&format!("<!-- end {name} -->")),
    ) {
        (Some(a), Some(b)) if b > a => &text[a..b],
        _ => "",
    };
    section
        .lines()
        .filter(|l| starts.iter().any(|s| l.starts_with(s)))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Replaces (or appends) the section between `<!-- begin NAME -->` and
/// `<!-- end NAME -->` in BENCHMARKS.md.
pub fn write_section(name: &str, body: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (begin, end) = (
        format!("<!-- begin {name} -->"),
        format!("<!-- end {name} -->"),
    );
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let out = match (existing.find(&begin), existing.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{section}{}", &existing[..a], &existing[b + end.len()..])
        }
        _ => format!("{}\n\n{section}\n", existing.trim_end()),
    };
    std::fs::write(&path, out).expect("write BENCHMARKS.md");
    println!("wrote {}", path.display());
}

/// CPU clock ticks (user + system, 1/100 s) a process used so far; `pid` is a number
/// or `self`.
pub fn cpu_ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .map(|s| {
            let f: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            [11, 12]
                .iter()
                .filter_map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok()))
                .sum()
        })
        .unwrap_or(0)
}

/// A number from the environment variable `name`, or `default` when unset or not a number.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The store backends to measure: `VOGELER_BENCH_STORES` (comma-separated) or `default`.
pub fn stores(default: &str) -> Vec<String> {
    std::env::var("VOGELER_BENCH_STORES")
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A `/proc/PID/status` figure in KiB (`VmRSS:`, `VmHWM:`), 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// How many descriptors process `pid` has open now (`/proc/PID/fd`), 0 when unreadable.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}
