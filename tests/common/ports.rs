//! Loopback ports and unique names for the servers tests and benchmarks start (shared by
//! both: the benchmarks include this file by path).

/// A loopback port for a server a test starts, that no other test process holds. A port
/// the kernel calls free (`bind` to port 0) may be handed to another test process before
/// the server it was picked for binds it, and a private RabbitMQ node takes seconds to
/// boot: a node once failed to bind its port, and its test talked to another test's node
/// on it. So ports come from below the kernel's ephemeral range (no outgoing connection
/// takes one meanwhile) and each is reserved by a file in a directory every test process
/// shares, naming the process; a reservation whose process is gone is skipped, and
/// cleared after an hour.
pub fn free_port() -> u16 {
    use std::io::Write;
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static PRUNED: std::sync::Once = std::sync::Once::new();
    let dir = std::env::temp_dir().join("vogeler-test-ports");
    std::fs::create_dir_all(&dir).expect("the test port reservation directory");
    let held = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(alive)
    };
    PRUNED.call_once(|| {
        let old = |p: &std::path::Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600))
        };
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if old(&path) && !held(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    });
    for _ in 0..SPAN {
        let port = (LOW + rand_u32() % SPAN) as u16;
        let path = dir.join(port.to_string());
        let Ok(mut file) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        else {
            continue;
        };
        let _ = write!(file, "{}", std::process::id());
        // Reserved; also free now (a program outside the tests may hold it: the
        // reservation stays, so no one tries it again for an hour).
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}

/// A random number for unique names (nodes, queues, files, ports): different in every
/// call and every process.
pub fn rand_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
