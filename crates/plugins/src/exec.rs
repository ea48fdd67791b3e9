//! Running a plugin's command: never through a shell, with a clean environment, a time
//! limit and an output cap, and turning what it printed into a result or an error result.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::format::{Format, FormatError};
use crate::plugin::Plugin;

/// The only PATH a plugin sees (and the one its command is looked up in).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a plugin may run unless its `.cfg` says `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much stdout a plugin may print before it is killed (ohai prints ~108 KB).
pub const DEFAULT_OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// How much stderr is kept (the rest is read and dropped so the child never blocks).
pub const STDERR_CAP: usize = 64 * 1024;

/// The user plugins run as (`[client] plugin_user`), looked up once at start so a typo
/// fails the start rather than every run. The command gets that user's uid and primary
/// gid, no supplementary groups (the standard library drops them when it sets the uid),
/// and `HOME`/`USER`/`LOGNAME` of that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: PathBuf,
}

/// Why `plugin_user` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunAsError {
    /// No such user in the password database.
    #[error("no user named {0:?} on this host (check /etc/passwd or your directory service)")]
    Unknown(String),
    /// The lookup itself failed.
    #[error("cannot look up user {name:?}: {message}")]
    Lookup {
        /// The user.
        name: String,
        /// The OS error.
        message: String,
    },
    /// Only root can switch users.
    #[error("running plugins as {name:?} needs the client to run as root (it runs as uid {euid}); remove plugin_user or start the client as root")]
    NotRoot {
        /// The user asked for.
        name: String,
        /// The client's effective uid.
        euid: u32,
    },
}

impl RunAs {
    /// Looks `name` up; refused when the client is not root (unless it already is that user).
    pub fn lookup(name: &str) -> Result<RunAs, RunAsError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| RunAsError::Lookup {
                name: name.to_string(),
                message: e.to_string(),
            })?
            .ok_or_else(|| RunAsError::Unknown(name.to_string()))?;
        let euid = nix::unistd::geteuid();
        if !euid.is_root() && euid != user.uid {
            return Err(RunAsError::NotRoot {
                name: name.to_string(),
                euid: euid.as_raw(),
            });
        }
        Ok(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }
}

/// Limits and environment for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLimits {
    /// Kill the command (and its process group) after this long.
    pub timeout: Duration,
    /// Kill the command once stdout exceeds this many bytes.
    pub output_cap: usize,
    /// The command's whole environment; nothing is inherited from the client.
    pub env: Vec<(String, String)>,
    /// Run as this user instead of the client's.
    pub run_as: Option<RunAs>,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            timeout: DEFAULT_TIMEOUT,
            output_cap: DEFAULT_OUTPUT_CAP,
            env: vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            run_as: None,
        }
    }
}

impl ExecLimits {
    /// The PATH commands are looked up in: the `PATH` of [`ExecLimits::env`], or [`DEFAULT_PATH`].
    pub fn path(&self) -> &str {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str())
    }
}

/// What happened when a command ran. Nothing here is interpreted yet; see [`run_plugin`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Execution {
    /// Everything read from stdout (up to the cap), as bytes: invalid UTF-8 is an error for
    /// the caller to report, never silently replaced.
    pub stdout: Vec<u8>,
    /// stderr, up to [`STDERR_CAP`], decoded lossily (it is only shown to people).
    pub stderr: String,
    /// The exit code, if the command exited (not killed by a signal).
    pub exit_status: Option<i32>,
    /// The signal that killed the command, if any.
    pub signal: Option<i32>,
    /// Wall time from spawn to exit (or to the kill).
    pub duration: Duration,
    /// The command ran past its time limit and was killed.
    pub timed_out: bool,
    /// stdout passed the output cap; the command was killed and `stdout` is incomplete.
    pub truncated: bool,
    /// The command could not be started (or its output read), and why.
    pub spawn_error: Option<String>,
}

impl Execution {
    /// Whether the command started, finished in time, within the cap, with status 0.
    pub fn success(&self) -> bool {
        self.spawn_error.is_none()
            && !self.timed_out
            && !self.truncated
            && self.exit_status == Some(0)
    }

    /// stdout as text, or where its first invalid UTF-8 byte is.
    pub fn stdout_text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.stdout)
    }
}

/// Find `program` as `execvp` would in `path`: a name with a `/` is used as is; otherwise the
/// first executable regular file in the `:`-separated directories.
pub fn resolve_command(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
}

/// Read into `buf` until EOF or `cap` bytes; returns whether more was offered than fits.
/// With `drain`, keeps reading (and dropping) past the cap so the writer never blocks.
///
/// Reads straight into `buf`, which grows with the output: a scratch buffer the size
/// of a pipe (64 KB, zeroed, for each stream of each run) was, with musl's allocator,
/// mapped and unmapped on every request the client answered (issue #21).
async fn read_capped<R: AsyncRead + Unpin>(
    reader: &mut R,
    cap: usize,
    buf: &mut Vec<u8>,
    drain: bool,
) -> std::io::Result<bool> {
    let mut over = false;
    loop {
        let room = cap.saturating_sub(buf.len());
        if room > 0 {
            buf.reserve(room.min(8 * 1024));
            if (&mut *reader).take(room as u64).read_buf(buf).await? == 0 {
                return Ok(over);
            }
            continue;
        }
        // At the cap: anything more is over it.
        let mut past = [0u8; 4096];
        if reader.read(&mut past).await? == 0 {
            return Ok(over);
        }
        over = true;
        if !drain {
            return Ok(true);
        }
    }
}

/// How long the pipes are still read after the command exited (what it wrote just
/// before exiting is in the pipe buffer; a child that left the process group and keeps
/// them open is not waited for).
pub const EXIT_DRAIN: Duration = Duration::from_millis(100);

/// SIGKILL the command's whole process group (it leads its own, see `process_group(0)`):
/// on timeout, over the output cap, and after the command exited, so nothing it started
/// in the background outlives it. The group id is the leader's pid, which the kernel does
/// not reuse while any member of the group lives.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Run `argv` directly (no shell) in a clean environment within `limits`, reading stdout and
/// stderr concurrently. Never fails: everything that went wrong is in the [`Execution`].
pub async fn execute(argv: &[String], limits: &ExecLimits) -> Execution {
    let start = Instant::now();
    let mut exec = Execution::default();
    let Some((program, args)) = argv.split_first() else {
        exec.spawn_error = Some("empty command".into());
        return exec;
    };
    let Some(resolved) = resolve_command(program, limits.path()) else {
        exec.spawn_error = Some(format!(
            "command not found: `{program}` is not in PATH ({})",
            limits.path()
        ));
        return exec;
    };
    let mut command = tokio::process::Command::new(&resolved);
    command
        .arg0(program)
        .args(args)
        .env_clear()
        .envs(limits.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &limits.run_as {
        // Supplementary groups are cleared by the standard library when it sets the uid.
        command
            .uid(user.uid)
            .gid(user.gid)
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            // The client's working directory may be closed to that user.
            .current_dir("/");
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            exec.spawn_error = Some(format!("cannot start `{}`: {e}", resolved.display()));
            exec.duration = start.elapsed();
            return exec;
        }
    };
    let pid = child.id();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pid);
        exec.spawn_error = Some("stdout/stderr pipes missing".into());
        return exec;
    };
    let mut out_buf = Vec::new();
    let mut err_buf = Vec::new();
    let cap = limits.output_cap;
    let deadline = tokio::time::Instant::now() + limits.timeout;
    // Read both pipes while waiting for the command itself. Once it has exited, what it
    // started is killed with its process group and the pipes get a short drain: a
    // child that escaped the group (setsid) and still holds them cannot hold the answer.
    let (reads, status) = {
        let out = async {
            let over = read_capped(&mut stdout, cap, &mut out_buf, false).await;
            if matches!(over, Ok(true)) {
                kill_group(pid);
            }
            over
        };
        let err = read_capped(&mut stderr, STDERR_CAP, &mut err_buf, true);
        let reading = async { tokio::join!(out, err) };
        tokio::pin!(reading);
        let mut reads = None;
        let exited = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                both = &mut reading => {
                    reads = Some(both);
                    child.wait().await
                }
                status = child.wait() => status,
            }
        })
        .await;
        match exited {
            Ok(status) => {
                kill_group(pid);
                if reads.is_none() {
                    reads = tokio::time::timeout(EXIT_DRAIN, &mut reading).await.ok();
                }
                (Some(reads), status)
            }
            Err(_) => {
                exec.timed_out = true;
                kill_group(pid);
                let _ = child.start_kill();
                (None, child.wait().await)
            }
        }
    };
    if let Some(reads) = reads {
        match reads {
            Some((out, err)) => {
                match out {
                    Ok(over) => exec.truncated = over,
                    Err(e) => exec.spawn_error = Some(format!("cannot read stdout: {e}")),
                }
                if let Ok(true) = err {
                    err_buf.extend_from_slice("\n[stderr truncated]".as_bytes());
                }
            }
            None => {
                // Something outside the process group still holds the pipes: keep
                // what arrived, say so beside the plugin's own stderr.
                err_buf.extend_from_slice(
                    "\n[output pipes still held open after the command exited; stopped reading]"
                        .as_bytes(),
                );
            }
        }
    }
    exec.duration = start.elapsed();
    match status {
        Ok(status) => {
            exec.exit_status = status.code();
            exec.signal = status.signal();
        }
        Err(e) if exec.spawn_error.is_none() => {
            exec.spawn_error = Some(format!("cannot wait for the command: {e}"))
        }
        Err(_) => {}
    }
    exec.stdout = out_buf;
    exec.stderr = String::from_utf8_lossy(&err_buf).into_owned();
    exec
}

/// Why a plugin run produced an error result instead of a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    /// The plugin's command is not installed (2010: not authorized).
    #[error("plugin `{plugin}`: command not found: `{program}` is not in PATH ({path})")]
    CommandNotFound {
        /// The plugin.
        plugin: String,
        /// Its command's program.
        program: String,
        /// The PATH searched.
        path: String,
    },
    /// The command could not be started or read.
    #[error("plugin `{plugin}`: {message}")]
    Spawn {
        /// The plugin.
        plugin: String,
        /// The OS-level reason.
        message: String,
    },
    /// The command ran past its time limit and was killed.
    #[error("plugin `{plugin}` did not finish within {}s and was killed; set e.g. `timeout = 300` in its .cfg if it needs longer", timeout.as_secs_f64())]
    TimedOut {
        /// The plugin.
        plugin: String,
        /// The limit it passed.
        timeout: Duration,
    },
    /// stdout passed the output cap and the command was killed.
    #[error("plugin `{plugin}` printed more than {cap} bytes (the output cap) and was killed")]
    Truncated {
        /// The plugin.
        plugin: String,
        /// The cap in bytes.
        cap: usize,
    },
    /// The command exited with a non-zero status.
    #[error("plugin `{plugin}` exited with status {code}: {stderr_line}")]
    Failed {
        /// The plugin.
        plugin: String,
        /// The exit status.
        code: i32,
        /// The first non-empty line of stderr (or "no error output").
        stderr_line: String,
    },
    /// The command was killed by a signal it did not get from us.
    #[error("plugin `{plugin}` was killed by signal {}", signal.map_or("?".to_string(), |s| s.to_string()))]
    Killed {
        /// The plugin.
        plugin: String,
        /// The signal number, if known.
        signal: Option<i32>,
    },
    /// stdout is not UTF-8.
    #[error("plugin `{plugin}` printed invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// The plugin.
        plugin: String,
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// stdout does not match the plugin's `result_format`.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// The outcome of running one plugin: the value, or an error result with the raw output kept.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutcome {
    /// The plugin's name (the record key the result goes under).
    pub plugin: String,
    /// Its `result_format`.
    pub format: Format,
    /// The converted value, or why there is none.
    pub result: Result<Value, RunError>,
    /// stdout as printed (lossily decoded only when the result is [`RunError::InvalidUtf8`]).
    pub raw: String,
    /// stderr, capped.
    pub stderr: String,
    /// The exit code, if the command exited.
    pub exit_status: Option<i32>,
    /// How long it ran.
    pub duration: Duration,
    /// The plugin's `history` option, passed on in its result (false: volatile).
    pub history: bool,
}

/// Run `plugin` within `limits` (its own `timeout` wins) and convert its output.
/// A non-zero exit, a timeout, the cap, invalid UTF-8 or output that does not match the
/// format all give an error result; the raw output is kept beside it.
pub async fn run_plugin(plugin: &Plugin, limits: &ExecLimits) -> PluginOutcome {
    let mut limits = limits.clone();
    if let Some(timeout) = plugin.timeout {
        limits.timeout = timeout;
    }
    let name = plugin.name.clone();
    let mut outcome = PluginOutcome {
        plugin: name.clone(),
        format: plugin.format,
        result: Ok(Value::Null),
        raw: String::new(),
        stderr: String::new(),
        exit_status: None,
        duration: Duration::ZERO,
        history: plugin.history,
    };
    let program = plugin.command.first().map_or("", String::as_str);
    if resolve_command(program, limits.path()).is_none() {
        outcome.result = Err(RunError::CommandNotFound {
            plugin: name,
            program: program.to_string(),
            path: limits.path().to_string(),
        });
        return outcome;
    }
    let exec = execute(&plugin.command, &limits).await;
    outcome.raw = String::from_utf8_lossy(&exec.stdout).into_owned();
    outcome.exit_status = exec.exit_status;
    outcome.duration = exec.duration;
    outcome.result = interpret(plugin, &limits, &exec);
    outcome.stderr = exec.stderr;
    outcome
}

/// The converted output of a run that exited non-zero, when there is any and it parses.
fn partial_output(plugin: &Plugin, exec: &Execution) -> Option<Value> {
    let text = exec.stdout_text().ok()?;
    if text.trim().is_empty() {
        return None;
    }
    plugin.format.convert(text).ok()
}

fn interpret(plugin: &Plugin, limits: &ExecLimits, exec: &Execution) -> Result<Value, RunError> {
    let plugin_name = || plugin.name.clone();
    if let Some(message) = &exec.spawn_error {
        return Err(RunError::Spawn {
            plugin: plugin_name(),
            message: message.clone(),
        });
    }
    if exec.timed_out {
        return Err(RunError::TimedOut {
            plugin: plugin_name(),
            timeout: limits.timeout,
        });
    }
    if exec.truncated {
        return Err(RunError::Truncated {
            plugin: plugin_name(),
            cap: limits.output_cap,
        });
    }
    match exec.exit_status {
        Some(0) => {}
        Some(code) => {
            // A command that exits non-zero but printed output its format accepts (facter
            // does when one fact fails) produced real data: keep it, with its exit status.
            if let Some(value) = partial_output(plugin, exec) {
                return Ok(value);
            }
            let stderr_line = exec
                .stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no error output")
                .to_string();
            return Err(RunError::Failed {
                plugin: plugin_name(),
                code,
                stderr_line,
            });
        }
        None => {
            return Err(RunError::Killed {
                plugin: plugin_name(),
                signal: exec.signal,
            })
        }
    }
    let text = exec.stdout_text().map_err(|e| RunError::InvalidUtf8 {
        plugin: plugin_name(),
        offset: e.valid_up_to(),
    })?;
    plugin
        .format
        .convert(text)
        .map_err(|e| RunError::Format(e.for_plugin(&plugin.name)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn plugin(command: &[&str], format: Format) -> Plugin {
        Plugin {
            name: "t".into(),
            description: String::new(),
            command: argv(command),
            command_line: command.join(" "),
            format,
            alias: None,
            interval: None,
            timeout: None,
            history: true,
            source: PathBuf::from("t.cfg"),
            line: 1,
            available: true,
            unavailable_reason: None,
        }
    }

    fn fixture(name: &str) -> String {
        format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[tokio::test]
    async fn echo_runs_without_shell() {
        let exec = execute(&argv(&["echo", "$HOME", "a;b"]), &ExecLimits::default()).await;
        assert!(exec.success(), "{exec:?}");
        assert_eq!(exec.stdout_text().unwrap(), "$HOME a;b\n");
    }

    #[tokio::test]
    async fn environment_is_clean() {
        let exec = execute(&argv(&["env"]), &ExecLimits::default()).await;
        let mut lines: Vec<_> = exec
            .stdout_text()
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            ["LANG=C.UTF-8".to_string(), format!("PATH={DEFAULT_PATH}")]
        );
    }

    #[tokio::test]
    async fn non_zero_exit_is_an_error_result() {
        let p = plugin(&["ls", "/nonexistent-vogeler"], Format::Output);
        let outcome = run_plugin(&p, &ExecLimits::default()).await;
        assert_eq!(outcome.exit_status, Some(2));
        let err = outcome.result.unwrap_err();
        assert!(matches!(err, RunError::Failed { code: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("nonexistent-vogeler"), "{err}");
    }

    #[tokio::test]
    async fn plugin_user_runs_the_command_as_that_user() {
        // These tests run as root (the client's production case); as another user the
        // lookup must refuse, which is checked below either way.
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("lookup")
            .expect("the nobody user exists");
        if !nix::unistd::geteuid().is_root() {
            let e = RunAs::lookup("nobody").unwrap_err();
            assert!(matches!(e, RunAsError::NotRoot { .. }), "{e}");
            return;
        }
        let limits = ExecLimits {
            run_as: Some(RunAs::lookup("nobody").expect("nobody")),
            ..ExecLimits::default()
        };
        let outcome = run_plugin(&plugin(&["id", "-u"], Format::Output), &limits).await;
        assert_eq!(
            outcome.result.expect("id -u"),
            serde_json::json!([nobody.uid.as_raw().to_string()])
        );
        // No supplementary groups are kept from root: only the user's primary group.
        let exec = execute(&argv(&["id", "-G"]), &limits).await;
        assert_eq!(
            String::from_utf8_lossy(&exec.stdout).trim(),
            nobody.gid.as_raw().to_string()
        );
        let exec = execute(&argv(&["sh", "-c", "echo $USER $HOME"]), &limits).await;
        assert_eq!(
            String::from_utf8_lossy(&exec.stdout).trim(),
            format!("nobody {}", nobody.dir.display())
        );
    }

    #[test]
    fn an_unknown_plugin_user_is_a_clear_error() {
        let e = RunAs::lookup("no-such-user-vogeler").unwrap_err();
        assert_eq!(e, RunAsError::Unknown("no-such-user-vogeler".into()));
        assert!(e.to_string().contains("no-such-user-vogeler"), "{e}");
    }

    #[tokio::test]
    async fn timeout_kills() {
        let limits = ExecLimits {
            timeout: Duration::from_secs(1),
            ..ExecLimits::default()
        };
        let exec = execute(&argv(&["sleep", "5"]), &limits).await;
        assert!(exec.timed_out);
        assert!(!exec.success());
        assert_eq!(exec.exit_status, None);
        let outcome = run_plugin(&plugin(&["sleep", "5"], Format::Output), &limits).await;
        assert!(matches!(outcome.result, Err(RunError::TimedOut { .. })));
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        // The grandchild keeps stdout open after its parent is gone; killing only the child
        // would leave it running (and holding the pipe).
        let limits = ExecLimits {
            timeout: Duration::from_millis(300),
            ..ExecLimits::default()
        };
        let started = std::time::Instant::now();
        let exec = execute(&argv(&["sh", "-c", "sleep 30 & exec sleep 30"]), &limits).await;
        assert!(exec.timed_out);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Whether `pid` is gone (or a zombie nobody reaped yet: it runs nothing).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn a_background_child_dies_with_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 300 >/dev/null 2>&1 & echo $! > {}; echo ok",
            pidfile.display()
        );
        let exec = execute(&argv(&["sh", "-c", &script]), &ExecLimits::default()).await;
        assert!(exec.success(), "{exec:?}");
        assert_eq!(exec.stdout_text().unwrap(), "ok\n");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL is delivered at once; allow the kernel a generous moment to reap.
        let mut polls = 0;
        while !gone(pid) && polls < 50 {
            std::thread::sleep(Duration::from_millis(100));
            polls += 1;
        }
        assert!(
            gone(pid),
            "the background `sleep 300` (pid {pid}) outlived its plugin"
        );
    }

    #[tokio::test]
    async fn a_child_holding_stdout_does_not_hold_the_answer() {
        // The child inherits stdout and would keep it open for 300 s; the answer comes
        // once the plugin itself exited, far inside its 10 s timeout.
        let limits = ExecLimits {
            timeout: Duration::from_secs(10),
            ..ExecLimits::default()
        };
        let started = std::time::Instant::now();
        let exec = execute(&argv(&["sh", "-c", "sleep 300 & echo ok"]), &limits).await;
        let took = started.elapsed();
        assert!(!exec.timed_out, "{exec:?}");
        assert!(exec.success(), "{exec:?}");
        assert_eq!(exec.stdout_text().unwrap(), "ok\n");
        assert!(took < limits.timeout / 2, "answered after {took:?}");
    }

    #[tokio::test]
    async fn output_written_just_before_exit_is_kept() {
        let outcome = run_plugin(
            &plugin(&["cat", &fixture("ohai.json")], Format::Json),
            &ExecLimits::default(),
        )
        .await;
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
        assert_eq!(
            outcome.raw.len(),
            std::fs::metadata(fixture("ohai.json")).unwrap().len() as usize
        );
    }

    #[tokio::test]
    async fn plugin_timeout_wins() {
        let mut p = plugin(&["sleep", "5"], Format::Output);
        p.timeout = Some(Duration::from_millis(200));
        let outcome = run_plugin(&p, &ExecLimits::default()).await;
        assert!(
            matches!(outcome.result, Err(RunError::TimedOut { .. })),
            "{:?}",
            outcome.result
        );
    }

    #[tokio::test]
    async fn output_cap_kills_and_truncates() {
        let limits = ExecLimits {
            output_cap: 1000,
            ..ExecLimits::default()
        };
        let exec = execute(&argv(&["head", "-c", "1000000", "/dev/zero"]), &limits).await;
        assert!(exec.truncated);
        assert_eq!(exec.stdout.len(), 1000);
        let outcome = run_plugin(
            &plugin(&["head", "-c", "1000000", "/dev/zero"], Format::Raw),
            &limits,
        )
        .await;
        assert!(matches!(
            outcome.result,
            Err(RunError::Truncated { cap: 1000, .. })
        ));
    }

    #[tokio::test]
    async fn large_output_and_stderr_do_not_deadlock() {
        let outcome = run_plugin(
            &plugin(&["cat", &fixture("ohai.json")], Format::Json),
            &ExecLimits::default(),
        )
        .await;
        let value = outcome.result.unwrap();
        assert!(value.as_object().unwrap().len() > 10);
        // Lots of stderr and stdout at once.
        let exec = execute(
            &argv(&[
                "cat",
                &fixture("ohai.json"),
                "/nonexistent-1",
                &fixture("ohai.json"),
                "/nonexistent-2",
            ]),
            &ExecLimits::default(),
        )
        .await;
        assert_eq!(exec.exit_status, Some(1));
        assert_eq!(
            exec.stdout.len(),
            2 * std::fs::metadata(fixture("ohai.json")).unwrap().len() as usize
        );
        assert!(exec.stderr.contains("nonexistent-2"));
    }

    #[tokio::test]
    async fn command_not_found() {
        let exec = execute(&argv(&["no-such-command-vogeler"]), &ExecLimits::default()).await;
        assert!(exec.spawn_error.unwrap().contains("command not found"));
        let outcome = run_plugin(
            &plugin(&["no-such-command-vogeler"], Format::Output),
            &ExecLimits::default(),
        )
        .await;
        let err = outcome.result.unwrap_err();
        assert!(matches!(err, RunError::CommandNotFound { .. }));
        assert!(err.to_string().contains("command not found"));
        let exec = execute(&[], &ExecLimits::default()).await;
        assert!(exec.spawn_error.is_some());
    }

    #[tokio::test]
    async fn bad_output_keeps_raw() {
        let outcome = run_plugin(
            &plugin(&["echo", "{not json"], Format::Json),
            &ExecLimits::default(),
        )
        .await;
        let err = outcome.result.unwrap_err();
        assert!(matches!(err, RunError::Format(_)));
        assert!(
            err.to_string()
                .starts_with("plugin `t`: output is not valid `json` at line 1"),
            "{err}"
        );
        assert_eq!(outcome.raw, "{not json\n");
    }

    #[tokio::test]
    async fn invalid_utf8_is_an_error() {
        let outcome = run_plugin(
            &plugin(&["printf", "ok\\377"], Format::String),
            &ExecLimits::default(),
        )
        .await;
        assert!(
            matches!(outcome.result, Err(RunError::InvalidUtf8 { offset: 2, .. })),
            "{:?}",
            outcome.result
        );
    }

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve_command("sh", DEFAULT_PATH).is_some());
        assert!(resolve_command("/bin/sh", "").is_some());
        assert!(resolve_command("no-such-command-vogeler", DEFAULT_PATH).is_none());
        assert!(resolve_command("/etc/passwd", DEFAULT_PATH).is_none());
        assert!(resolve_command("", DEFAULT_PATH).is_none());
    }
}
