//! The Debian packages: built by `scripts/package.sh`, unpacked into a scratch root with
//! `dpkg-deb -x`, then checked as an operator would meet them: files and modes, conffiles,
//! maintainer scripts, systemd units (`systemd-analyze verify`), and the installed binaries
//! reading the installed config file. Needs `scripts/package.sh` run first (scripts/test.sh
//! does), cargo-deb and systemd-analyze (`scripts/services.sh ensure-packaging`) and
//! RabbitMQ; fails naming what is missing.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// The target directory the test binaries were built in (the packages go to `<it>/debian`).
fn target_dir() -> PathBuf {
    // <target>/debug/vogeler-server
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_vogeler-server"));
    exe.parent()
        .and_then(Path::parent)
        .expect("binary inside <target>/<profile>/")
        .to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn require_tool(tool: &str, why: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed ({why}): run `scripts/services.sh ensure-packaging`"
    );
}

/// Packages the binaries `scripts/package.sh` built and returns (client .deb, server .deb).
fn build_packages() -> (PathBuf, PathBuf) {
    require_tool("cargo-deb", "it builds the .deb files");
    require_tool("dpkg-deb", "it unpacks them");
    let target = target_dir();
    // Packages what `scripts/package.sh` built (scripts/test.sh runs it before the tests),
    // refusing binaries older than the sources. Building from here would not work: `cargo
    // test` holds the target directory's lock while tests run.
    let out = run(
        Command::new(repo().join("scripts/package.sh"))
            .arg("--no-build")
            .current_dir(repo())
            .env("CARGO_TARGET_DIR", &target),
        "scripts/package.sh --no-build",
    );
    assert!(
        out.status.success(),
        "scripts/package.sh failed:\n{}",
        text(&out)
    );
    let version = env!("CARGO_PKG_VERSION");
    let deb = |name: &str| {
        let p = target
            .join("debian")
            .join(format!("{name}_{version}-1_amd64.deb"));
        assert!(
            p.is_file(),
            "{} was not built:\n{}",
            p.display(),
            text(&out)
        );
        p
    };
    (deb("vogeler-client"), deb("vogeler-server"))
}

/// One package unpacked: its files under `root`, its control files under `control`.
struct Unpacked {
    root: PathBuf,
    control: PathBuf,
}

fn unpack(deb: &Path, root: &Path, control: &Path) -> Unpacked {
    for (flag, dir) in [("-x", root), ("-e", control)] {
        let out = run(
            Command::new("dpkg-deb").arg(flag).arg(deb).arg(dir),
            "dpkg-deb",
        );
        assert!(
            out.status.success(),
            "dpkg-deb {flag} {}:\n{}",
            deb.display(),
            text(&out)
        );
    }
    Unpacked {
        root: root.to_path_buf(),
        control: control.to_path_buf(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{} missing from the package: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The control file's fields (continuation lines folded into their field).
fn control_fields(control: &Path) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last = String::new();
    for line in read(&control.join("control")).lines() {
        if line.starts_with(' ') {
            if let Some(v) = fields.get_mut(&last) {
                *v = format!("{v}\n{line}");
            }
        } else if let Some((k, v)) = line.split_once(':') {
            last = k.to_string();
            fields.insert(last.clone(), v.trim().to_string());
        }
    }
    fields
}

/// A unit file's `[Service]`-style settings, as (section, key) → values in order.
fn unit_settings(unit: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line without '=': {line:?}"));
        out.entry((section.clone(), k.trim().to_string()))
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn setting(u: &BTreeMap<(String, String), Vec<String>>, section: &str, key: &str) -> String {
    u.get(&(section.to_string(), key.to_string()))
        .and_then(|v| v.last().cloned())
        .unwrap_or_else(|| panic!("unit has no [{section}] {key}="))
}

/// Whether an ELF file asks for a dynamic loader (has a PT_INTERP program header).
fn has_interpreter(bin: &Path) -> bool {
    let b = std::fs::read(bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    assert!(
        b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2,
        "{} is not a 64-bit ELF file",
        bin.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) == 3 // PT_INTERP
    })
}

/// `systemd-analyze verify` on a packaged unit. systemd checks that ExecStart names an
/// executable; the packaged binaries are not in the build machine's /usr/bin, so a copy of
/// the unit points at them in the scratch root (only that prefix changes). `--root` is no
/// help: the scratch root lacks the targets and /bin/kill the unit refers to.
fn systemd_verify(root: &Path, unit: &str, scratch: &Path) {
    require_tool("systemd-analyze", "it verifies the unit files");
    let text_in = read(&root.join("usr/lib/systemd/system").join(unit));
    let relocated = text_in.replace(
        "/usr/bin/vogeler-",
        &format!("{}/usr/bin/vogeler-", root.display()),
    );
    let dir = scratch.join("verify");
    std::fs::create_dir_all(&dir).expect("verify dir");
    let copy = dir.join(unit);
    std::fs::write(&copy, relocated).expect("write unit copy");
    let out = run(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        "systemd-analyze verify",
    );
    let all = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify {unit}:\n{all}"
    );
    // verify exits 0 on some problems (an unknown key or a bad value is "ignoring"): refuse
    // any diagnostic at all.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify {unit} complained:\n{all}"
    );
}

#[test]
fn packages_install_files_conffiles_user_and_units_that_verify() {
    let (client_deb, server_deb) = build_packages();
    let tmp = tempfile::tempdir().expect("temp dir");
    // One scratch root for both packages, as on a server host (server depends on client).
    let root = tmp.path().join("root");
    let client = unpack(&client_deb, &root, &tmp.path().join("client-control"));
    let server = unpack(&server_deb, &root, &tmp.path().join("server-control"));
    let r = |p: &str| client.root.join(p);

    // Binaries: present and executable; the client is static (runs on other distributions).
    for bin in [
        "vogeler-client",
        "vogeler-server",
        "vogeler-runner",
        "vogeler-admin",
    ] {
        assert_eq!(mode(&r(&format!("usr/bin/{bin}"))), 0o755, "{bin} mode");
    }
    assert!(
        !has_interpreter(&r("usr/bin/vogeler-client")),
        "vogeler-client must be statically linked (no ELF interpreter)"
    );

    // The config file and plugins, as conffiles of the client package.
    assert_eq!(mode(&r("etc/vogeler/vogeler.conf")), 0o644);
    assert_eq!(mode(&r("etc/vogeler/plugins")) & 0o777, 0o755);
    let conffiles = read(&client.control.join("conffiles"));
    assert!(
        conffiles.lines().any(|l| l == "/etc/vogeler/vogeler.conf"),
        "vogeler.conf is not a conffile:\n{conffiles}"
    );
    for plugin in ["facter", "ohai", "ps", "rpm", "dpkg", "os_release"] {
        let rel = format!("etc/vogeler/plugins/{plugin}.cfg");
        assert_eq!(mode(&r(&rel)), 0o644, "{rel} mode");
        assert!(
            conffiles.lines().any(|l| l == format!("/{rel}")),
            "{rel} is not a conffile:\n{conffiles}"
        );
    }
    assert!(
        r("usr/share/vogeler/_design/system_records/views/all/map.js").is_file(),
        "CouchDB design docs at the config file's design_docs_path"
    );

    // Control fields: the server depends on the client (which owns vogeler.conf) and adduser.
    let cf = control_fields(&client.control);
    let sf = control_fields(&server.control);
    assert_eq!(
        cf.get("Package").map(String::as_str),
        Some("vogeler-client")
    );
    assert_eq!(
        sf.get("Package").map(String::as_str),
        Some("vogeler-server")
    );
    let depends = sf.get("Depends").cloned().unwrap_or_default();
    for dep in ["adduser", "vogeler-client", "libc6"] {
        assert!(
            depends.contains(dep),
            "vogeler-server Depends lacks {dep}: {depends}"
        );
    }
    assert!(
        !cf.get("Depends").is_some_and(|d| d.contains("libc6")),
        "the static client must not depend on libc6: {cf:?}"
    );

    // Maintainer scripts: valid sh; the server's creates the system user before enabling
    // the unit; both enable their unit and neither starts it.
    for (pkg, dir) in [("client", &client.control), ("server", &server.control)] {
        for script in ["postinst", "prerm", "postrm"] {
            let p = dir.join(script);
            if !p.exists() {
                continue;
            }
            assert_eq!(mode(&p), 0o755, "{pkg} {script} mode");
            let out = run(Command::new("sh").arg("-n").arg(&p), "sh -n");
            assert!(
                out.status.success(),
                "{pkg} {script} is not valid sh:\n{}",
                text(&out)
            );
        }
        let postinst = read(&dir.join("postinst"));
        let unit = format!("vogeler-{pkg}.service");
        assert!(
            postinst.contains(&format!("deb-systemd-helper enable {unit}")),
            "{pkg} postinst does not enable {unit}:\n{postinst}"
        );
        // An upgrade try-restarts a running unit; nothing starts a stopped one.
        for start in ["deb-systemd-invoke start", "deb-systemd-invoke restart"] {
            assert!(
                !postinst.contains(start),
                "{pkg} postinst starts {unit}; it must wait for configuration:\n{postinst}"
            );
        }
    }
    let postinst = read(&server.control.join("postinst"));
    let adduser = postinst
        .find("adduser --system")
        .unwrap_or_else(|| panic!("server postinst does not create a system user:\n{postinst}"));
    assert!(
        postinst[adduser..].contains("vogeler") && postinst.contains("getent passwd vogeler"),
        "server postinst creates the vogeler user once:\n{postinst}"
    );
    assert!(
        adduser < postinst.find("deb-systemd-helper").unwrap_or(usize::MAX),
        "the user exists before the unit is enabled"
    );

    // Units: paths, users, restart and hardening; then systemd's own verification.
    let unit_dir = "usr/lib/systemd/system";
    let su = unit_settings(&read(&r(&format!("{unit_dir}/vogeler-server.service"))));
    assert_eq!(
        setting(&su, "Service", "ExecStart"),
        "/usr/bin/vogeler-server -c /etc/vogeler/vogeler.conf"
    );
    for (key, want) in [
        ("User", "vogeler"),
        ("StateDirectory", "vogeler"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(setting(&su, "Service", key), want, "vogeler-server {key}");
    }
    assert_eq!(setting(&su, "Install", "WantedBy"), "multi-user.target");
    let cu = unit_settings(&read(&r(&format!("{unit_dir}/vogeler-client.service"))));
    assert_eq!(
        setting(&cu, "Service", "ExecStart"),
        "/usr/bin/vogeler-client -c /etc/vogeler/vogeler.conf run"
    );
    for (key, want) in [
        ("User", "root"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        // Plugins read the system: /etc and /usr stay readable, only writes are refused.
        ("ProtectSystem", "full"),
        ("ProtectHome", "read-only"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(setting(&cu, "Service", key), want, "vogeler-client {key}");
    }
    assert_eq!(setting(&cu, "Install", "WantedBy"), "multi-user.target");
    for unit in ["vogeler-server.service", "vogeler-client.service"] {
        assert_eq!(
            mode(&r(&format!("{unit_dir}/{unit}"))),
            0o644,
            "{unit} mode"
        );
        systemd_verify(&root, unit, tmp.path());
    }
}

#[test]
fn installed_binaries_read_the_installed_config_and_set_up_broker_and_store() {
    require_rabbitmq();
    let (client_deb, server_deb) = build_packages();
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    unpack(&client_deb, &root, &tmp.path().join("client-control"));
    unpack(&server_deb, &root, &tmp.path().join("server-control"));
    let conf = root.join("etc/vogeler/vogeler.conf");
    let plugins = root.join("etc/vogeler/plugins");
    let bin = |b: &str| root.join("usr/bin").join(b);
    let clean = |c: &mut Command| {
        for v in [
            "VOGELER_CONFIG",
            "VOGELER_QHOST",
            "VOGELER_DBHOST",
            "VOGELER_NODE_NAME",
        ] {
            c.env_remove(v);
        }
    };

    // The static client parses the shipped config and every shipped plugin.
    let mut c = Command::new(bin("vogeler-client"));
    c.arg("-c").arg(&conf).arg("-p").arg(&plugins).arg("list");
    clean(&mut c);
    let out = run(&mut c, "installed vogeler-client list");
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for plugin in ["facter", "ohai", "ps", "rpm", "dpkg", "os_release"] {
        assert!(
            listed.contains(plugin),
            "{plugin} not listed:\n{}",
            text(&out)
        );
    }

    // `vogeler-admin setup` from the package, with the shipped config file; exchange and
    // queue names of this test's own so the shared broker's defaults stay untouched.
    let id = format!("pkgtest{}", std::process::id());
    let db = tmp.path().join("vogeler.db");
    let mut c = Command::new(bin("vogeler-admin"));
    c.arg("-c")
        .arg(&conf)
        .args(["--qhost", &common::amqp()])
        .args(["--master-exchange", &format!("{id}.master")])
        .args(["--broadcast-exchange", &format!("{id}.broadcast")])
        .args(["--master-queue", &format!("{id}.master.in")])
        .args(["--dead-queue", &format!("{id}.dead")])
        .arg("--dbhost")
        .arg(format!("sqlite://{}", db.display()))
        .args(["setup", "--messaging", "--persistence"]);
    clean(&mut c);
    let out = run(&mut c, "installed vogeler-admin setup");
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("rabbitmqctl add_vhost {}", common::vhost())),
        "{t}"
    );
    assert!(t.contains("store sqlite ready"), "{t}");
    assert!(db.is_file(), "setup --persistence created {}", db.display());

    let mut c = Command::new(bin("vogeler-admin"));
    c.arg("-c")
        .arg(&conf)
        .args(["--qhost", &common::amqp()])
        .args(["queue", "--exists", &format!("{id}.master.in")]);
    clean(&mut c);
    let out = run(&mut c, "installed vogeler-admin queue --exists");
    assert!(
        out.status.success(),
        "setup declared the master queue: {}",
        text(&out)
    );
}
