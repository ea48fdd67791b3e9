//! The programs' flags, config files and error messages, run as real binaries.
//! None of these needs a broker.

mod common;

use std::process::Command;

use common::*;

fn run(program: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(program))
        .args(args)
        .env_remove("VOGELER_CONFIG")
        .env_remove("VOGELER_QHOST")
        .env_remove("VOGELER_DBHOST")
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_lists_shipped_plugins_with_flags_before_or_after_the_subcommand() {
    let dir = repo().join("etc/plugins");
    let dir = dir.to_str().expect("utf-8");
    for args in [vec!["-p", dir, "list"], vec!["list", "-p", dir]] {
        let (code, out, err) = run("client", &args);
        assert_eq!(code, 0, "{out}{err}");
        for name in ["facter", "ohai", "ps", "rpm", "dpkg", "os_release"] {
            assert!(out.contains(name), "{name} missing from:\n{out}");
        }
        assert!(out.contains("get_facts"), "aliases listed:\n{out}");
    }
}

#[test]
fn client_lists_the_2010_plugins_from_the_2010_config_layout() {
    // The 2010 installer put plugins and config side by side; plugin_path here is relative.
    let tmp = tempfile::tempdir().expect("tempdir");
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    for f in ["facter.cfg", "ohai.cfg", "ps.cfg", "rpms.cfg"] {
        std::fs::copy(
            fixture(&format!("vogeler-2010/plugins/{f}")),
            plugins.join(f),
        )
        .expect("copy");
    }
    std::fs::copy(
        fixture("vogeler-2010/plugins-broken.cfg"),
        plugins.join("zz-broken.cfg"),
    )
    .expect("copy");
    let conf = std::fs::read_to_string(fixture("vogeler-2010/vogeler.conf"))
        .expect("2010 conf")
        .replace(
            "plugin_path = /tmp/vogeler/plugins",
            "plugin_path = plugins",
        );
    let conf_path = tmp.path().join("vogeler.conf");
    std::fs::write(&conf_path, conf).expect("write conf");
    let (code, out, err) = run(
        "client",
        &["-c", conf_path.to_str().expect("utf-8"), "list"],
    );
    assert_eq!(code, 0, "{out}{err}");
    for name in ["facter", "ohai", "ps", "rpm", "get_procs"] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    // The broken file is reported with its file name and skipped.
    assert!(
        format!("{out}{err}").contains("zz-broken.cfg"),
        "broken plugin not reported:\n{out}{err}"
    );
}

#[test]
fn the_2010_config_file_loads_unchanged() {
    let conf = fixture("vogeler-2010/vogeler.conf");
    // `list` needs the plugin directory the 2010 file names; a missing one is a clear error.
    let (code, out, err) = run("client", &["-c", conf.to_str().expect("utf-8"), "list"]);
    if code != 0 {
        assert!(
            err.contains("/tmp/vogeler/plugins"),
            "error should name the directory: {err}"
        );
    } else {
        assert!(out.contains("PLUGIN") || !out.is_empty());
    }
}

#[test]
fn bad_input_gets_a_clear_error_naming_the_place() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("bad.conf");
    std::fs::write(&conf, "[global]\nlog_level = LOUD\n").expect("write");
    let (code, _, err) = run(
        "runner",
        &["-c", conf.to_str().expect("utf-8"), "-x", "facter"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("LOUD"), "names the bad value: {err}");

    let (code, _, err) = run(
        "runner",
        &["-c", "/nonexistent/vogeler.conf", "-x", "facter"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("/nonexistent/vogeler.conf"),
        "names the file: {err}"
    );

    let (code, _, err) = run("admin", &["--dbhost", "mongo://x", "node"]);
    assert_ne!(code, 0);
    assert!(err.contains("mongo"), "names the scheme: {err}");
    assert!(
        err.contains("sqlite") && err.contains("postgres") && err.contains("couch"),
        "shows examples: {err}"
    );

    // Usage errors exit 2.
    let (code, _, _) = run("runner", &["--no-such-flag"]);
    assert_eq!(code, 2);
}

#[test]
fn passwords_never_appear_in_errors() {
    let (code, out, err) = run(
        "runner",
        &[
            "--qhost",
            "amqp://guest:s3cret@127.0.0.1:1/",
            "-x",
            "facter",
        ],
    );
    assert_ne!(code, 0, "nothing listens on port 1");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    assert!(
        err.contains("process list") || err.contains("command line"),
        "warns about the flag: {err}"
    );
}

#[test]
fn file_log_handler_writes_where_the_config_says() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = tmp.path().join("vogeler.conf");
    std::fs::write(
        &conf,
        "[global]\nlog_handler = file_handler\nlog_level = DEBUG\n\n[file_handler]\nfilename = 'runner.log'\n",
    )
    .expect("write");
    let (code, _, err) = run(
        "runner",
        &[
            "-c",
            conf.to_str().expect("utf-8"),
            "--qhost",
            "127.0.0.1:1",
            "--connect-timeout",
            "2s",
            "-x",
            "facter",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("127.0.0.1:1"),
        "the final error still reaches stderr: {err}"
    );
    let log = std::fs::read_to_string(tmp.path().join("runner.log")).expect("log file written");
    // Retries are logged at DEBUG only: an interactive command reports one line.
    assert!(log.contains("broker unavailable"), "{log}");
}

#[test]
fn design_docs_need_a_couchdb_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", tmp.path().join("v.db").display());
    let ddocs = repo().join("etc/_design");
    let (code, _, err) = run(
        "server",
        &["--dbhost", &db, "-l", ddocs.to_str().expect("utf-8")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("not CouchDB") && err.contains("couch://"),
        "{err}"
    );
}

fn secret_file(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.display().to_string()
}

#[test]
fn secrets_come_from_files_named_by_flags_or_the_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let qhost = secret_file(
        tmp.path(),
        "qhost",
        "amqp://guest:s3cret@127.0.0.1:1/\n",
        0o600,
    );

    // --qhost-file: the URI (and its password) never touch the command line; nothing
    // listens on port 1, so the error shows the address read from the file, masked.
    let (code, out, err) = run("admin", &["--qhost-file", &qhost, "queue", "--exists", "x"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    assert!(
        !err.contains("process list"),
        "no password on the command line: {err}"
    );
    assert!(
        !err.contains("chmod 600"),
        "a 0600 file is not warned about: {err}"
    );

    // VOGELER_QHOST_FILE does the same; a file others may read is warned about, by name.
    let readable = secret_file(
        tmp.path(),
        "readable",
        "amqp://guest:s3cret@127.0.0.1:1/\n",
        0o644,
    );
    let o = Command::new(bin("admin"))
        .args(["queue", "--exists", "x"])
        .env_remove("VOGELER_CONFIG")
        .env_remove("VOGELER_QHOST")
        .env_remove("VOGELER_DBHOST")
        .env("VOGELER_QHOST_FILE", &readable)
        .output()
        .expect("run admin");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("s3cret"),
        "{err}"
    );
    assert!(
        err.contains(&readable) && err.contains("chmod 600"),
        "{err}"
    );

    // An unreadable file is an error naming the option and the file.
    let (code, _, err) = run(
        "runner",
        &["--qhost-file", "/nonexistent/qhost", "-x", "facter"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--qhost-file") && err.contains("/nonexistent/qhost"),
        "{err}"
    );
    let (code, _, err) = run("server", &["--http-token-file", "/nonexistent/token"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--http-token-file") && err.contains("/nonexistent/token"),
        "{err}"
    );

    // --dbhost-file: a bad DSN read from the file is named by the option and file, masked.
    let db = secret_file(tmp.path(), "db", "mongo://u:pw@h/x\n", 0o600);
    let (code, _, err) = run("admin", &["--dbhost-file", &db, "node", "web01"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("--dbhost-file") && err.contains(&db) && err.contains("mongo"),
        "{err}"
    );
    assert!(!err.contains("pw@"), "{err}");

    // A value and a file for the same setting: refused, naming both.
    let (code, _, err) = run(
        "admin",
        &[
            "--qhost",
            "127.0.0.1:1",
            "--qhost-file",
            &qhost,
            "queue",
            "--exists",
            "x",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--qhost-file") && err.contains("use one"),
        "{err}"
    );

    // The same from the config file: `[amqp] dsn_file`, relative to the file.
    let conf = tmp.path().join("vogeler.conf");
    std::fs::write(&conf, "[amqp]\ndsn_file = qhost\n").expect("conf");
    let (code, _, err) = run(
        "admin",
        &[
            "-c",
            conf.to_str().expect("utf-8"),
            "queue",
            "--exists",
            "x",
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("s3cret"),
        "{err}"
    );
}

/// The long flags a help text lists under its own "Options:" (not the shared
/// "Connection" group), without `--help` and `--version`.
fn own_flags(help: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            in_options = line == "Options:";
            continue;
        }
        if !in_options {
            continue;
        }
        let item = line.trim_start();
        let item = item.split_once(", ").map_or(item, |(_, rest)| rest);
        if let Some(flag) = item.strip_prefix("--") {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() && name != "help" && name != "version" {
                flags.push(format!("--{name}"));
            }
        }
    }
    flags
}

/// The subcommand names a help text lists under "Commands:", without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description is indented further than the names.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every help text of a program: its own and each subcommand's, recursively.
fn helps(program: &str, path: &[String]) -> Vec<String> {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let (code, help, err) = run(program, &args);
    assert_eq!(code, 0, "{program} {args:?}: {err}");
    let mut all = vec![help.clone()];
    for sub in subcommands(&help) {
        let mut deeper = path.to_vec();
        deeper.push(sub);
        all.extend(helps(program, &deeper));
    }
    all
}

#[test]
fn the_readme_programs_table_matches_every_programs_help() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| *l != "## The programs")
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    let mut seen = Vec::new();
    for row in table {
        let cells: Vec<&str> = row.split(" | ").collect();
        let program = cells[0].trim_start_matches("| `").trim_end_matches('`');
        let short = program.trim_start_matches("vogeler-");
        assert!(
            !seen.contains(&short),
            "{program} is listed twice in the README"
        );
        seen.push(short);
        let documented = cells.last().expect("flags cell");
        let texts = helps(short, &[]);
        for flag in texts.iter().flat_map(|h| own_flags(h)) {
            assert!(
                documented.contains(&format!("`{flag}"))
                    || documented.contains(&format!(" {flag}"))
                    || documented.contains(&format!("/{flag}"))
                    || documented.contains(&format!("[{flag}")),
                "{program}'s {flag} is missing from the README's programs table"
            );
        }
        let all_help = texts.join("\n");
        for word in documented.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            if word.starts_with("--") {
                assert!(
                    all_help.contains(&format!("{word} "))
                        || all_help.contains(&format!("{word}\n")),
                    "the README lists {word} for {program}, which its --help does not know"
                );
            }
        }
    }
    assert_eq!(seen, ["server", "client", "runner", "admin"]);
}
