//! `vogeler-admin` node queries, reports, history and migration against every
//! backend on real servers, filled with the fixture data (facter, ohai, dpkg-query).
//!
//! Each test makes its own store (SQLite file, PostgreSQL database, CouchDB database
//! on a private pouchdb-server) and runs the real binary against it.

mod common;

use std::process::Output;

use chrono::{Duration, Utc};
use common::fleet::{fill, plugin, t};
use serde_json::{json, Value};
use vogeler_store::DynStore;

/// A store to fill and the DSN the binary reaches it with.
struct Target {
    dsn: String,
    store: DynStore,
    _dir: tempfile::TempDir,
}

async fn target(backend: &str) -> Target {
    let dir = tempfile::tempdir().expect("tempdir");
    let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
    let store = vogeler_store::testing::open(&dsn).await;
    Target {
        dsn,
        store,
        _dir: dir,
    }
}

fn admin(dsn: &str, args: &[&str]) -> Output {
    let out = std::process::Command::new(common::bin("admin"))
        .args(["-c", "/dev/null", "--dbhost", dsn])
        .args(args)
        .env_remove("VOGELER_DBHOST")
        .env_remove("VOGELER_CONFIG")
        .env("COLUMNS", "200")
        .output()
        .expect("run vogeler-admin");
    out
}

fn ok(dsn: &str, args: &[&str]) -> String {
    let out = admin(dsn, args);
    assert!(
        out.status.success(),
        "vogeler-admin {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json_of(dsn: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let text = ok(dsn, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
}

fn fails(dsn: &str, args: &[&str], needle: &str) {
    let out = admin(dsn, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        err.contains(needle),
        "{args:?}: wanted {needle:?} in:\n{err}"
    );
}

async fn reports(backend: &str) {
    let target = target(backend).await;
    fill(&target.store).await;
    let dsn = target.dsn.as_str();

    // Nodes by a fact's value, most common first.
    let facts = json_of(dsn, &["report", "facts", "facter.os.family"]);
    assert_eq!(facts[0]["value"], "Debian");
    assert_eq!(facts[0]["count"], 4);
    assert_eq!(facts[1]["nodes"], json!(["fx-web05", "fx-web06"]));
    let table = ok(dsn, &["report", "facts", "facter.os.family"]);
    assert!(table.starts_with("VALUE"), "{table}");
    assert!(
        table.contains("6 node(s) have facter.os.family; 2 distinct value(s)"),
        "{table}"
    );

    // Filters and name globs.
    let nodes = json_of(
        dsn,
        &[
            "report",
            "nodes",
            "-W",
            "facter.os.family=Debian",
            "-W",
            "facter.kernelrelease~^6\\.",
        ],
    );
    let names: Vec<&str> = nodes
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(names, ["fx-web02", "fx-web04"]);
    let nodes = json_of(dsn, &["report", "nodes", "-n", "fx-web0[1-2],fx-web06"]);
    assert_eq!(nodes.as_array().expect("rows").len(), 3);

    // A package and its versions.
    let pkg = json_of(dsn, &["report", "package", "openssl"]);
    let rows = pkg.as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{pkg}");
    assert_eq!(rows[0]["node"], "fx-web01");
    assert_eq!(rows[0]["version"], "3.0.99-1");
    assert_eq!(rows[0]["plugin"], "dpkg");
    let csv = ok(dsn, &["report", "package", "openssl", "--format", "csv"]);
    assert!(
        csv.starts_with("node,version,plugin\nfx-web01,3.0.99-1,dpkg\n"),
        "{csv}"
    );

    // Stale nodes: none seen within the future; all of them "not seen since tomorrow".
    let tomorrow = (Utc::now() + Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(
        json_of(dsn, &["report", "stale", "--since", &tomorrow])
            .as_array()
            .expect("rows")
            .len(),
        6
    );
    assert!(json_of(dsn, &["report", "stale", "--since", "1h"])
        .as_array()
        .expect("rows")
        .is_empty());

    // Last errors.
    let errors = json_of(dsn, &["report", "errors"]);
    assert_eq!(
        errors,
        json!([{"node": "fx-web06", "plugin": "facter", "message": "facter: exit status 1", "at": errors[0]["at"]}])
    );

    // Changes since 5 days ago: the upgrade, as one changed leaf.
    let changes = json_of(dsn, &["report", "changes", "--since", "5d"]);
    let upgrade: Vec<&Value> = changes
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["key"] == "dpkg")
        .collect();
    assert_eq!(upgrade.len(), 1, "{changes}");
    assert_eq!(upgrade[0]["path"], "openssl");
    assert_eq!(upgrade[0]["new"], "3.0.99-1");
    assert_eq!(upgrade[0]["node"], "fx-web01");

    // History questions: when a version appeared and went, the record as it was.
    let spans = json_of(dsn, &["history", "fx-web01", "dpkg.openssl"]);
    assert_eq!(spans.as_array().expect("spans").len(), 2, "{spans}");
    assert_eq!(spans[1]["value"], "3.0.99-1");
    assert_eq!(spans[1]["until"], "(now)");
    let before = ok(dsn, &["node", "fx-web01", "dpkg.openssl", "--at", "5d"]);
    assert_ne!(before.trim(), "\"3.0.99-1\"");
    let now = ok(dsn, &["node", "fx-web01", "dpkg.openssl"]);
    assert_eq!(now.trim(), "\"3.0.99-1\"");
    let list = ok(dsn, &["node"]);
    assert!(list.contains("6 node(s)"), "{list}");

    // The inventory: one row per node, one column per path; -W narrows the rows.
    let inv = json_of(
        dsn,
        &[
            "report",
            "inventory",
            "--columns",
            "facter.os.family,dpkg.openssl",
        ],
    );
    let rows = inv.as_array().expect("rows");
    assert_eq!(rows.len(), 6, "{inv}");
    assert_eq!(rows[0]["node"], "fx-web01");
    assert_eq!(rows[0]["facter.os.family"], "Debian");
    assert_eq!(rows[0]["dpkg.openssl"], "3.0.99-1");
    assert_eq!(rows[5]["facter.os.family"], "RedHat");
    assert!(rows[5]["dpkg.openssl"].is_null(), "{inv}");
    let debian = json_of(
        dsn,
        &[
            "report",
            "inventory",
            "--columns",
            "facter.kernelrelease",
            "-W",
            "facter.os.family=Debian",
        ],
    );
    assert_eq!(debian.as_array().expect("rows").len(), 4, "{debian}");
    let csv = ok(
        dsn,
        &[
            "report",
            "inventory",
            "--columns",
            "facter.os.family",
            "--format",
            "csv",
        ],
    );
    assert!(
        csv.starts_with("node,facter.os.family\nfx-web01,Debian\n"),
        "{csv}"
    );

    // One screen per node, from whichever plugin has each line.
    let summary = ok(dsn, &["node", "fx-web01", "--summary"]);
    for want in [
        "Debian GNU/Linux 12 (bookworm)",
        "5.10.0-26-amd64",
        "192.0.2.2",
        "packages (dpkg)",
        "plugins",
    ] {
        assert!(
            summary.contains(want),
            "{backend}: {want} missing from:\n{summary}"
        );
    }
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("last error") && l.ends_with(" none")),
        "{summary}"
    );
    let summary = ok(dsn, &["node", "fx-web06", "--summary"]);
    assert!(summary.contains("facter: exit status 1"), "{summary}");
    assert!(!summary.contains("packages"), "{summary}");
    let out = admin(dsn, &["node", "fx-nobody", "--summary"]);
    assert_eq!(out.status.code(), Some(3));

    // Exports: an Ansible inventory (groups from a fact, host variables) and the
    // Prometheus service discovery targets, over the same selection.
    let inventory: Value = serde_json::from_str(&ok(
        dsn,
        &[
            "export",
            "ansible",
            "--group-by",
            "facter.os.family",
            "--hostvars",
            "facter.kernelrelease",
        ],
    ))
    .expect("ansible JSON");
    assert_eq!(
        inventory["facter_os_family_Debian"]["hosts"],
        json!(["fx-web01", "fx-web02", "fx-web03", "fx-web04"])
    );
    assert_eq!(
        inventory["facter_os_family_RedHat"]["hosts"],
        json!(["fx-web05", "fx-web06"])
    );
    assert_eq!(inventory["all"]["hosts"].as_array().map(Vec::len), Some(6));
    let web02 = &inventory["_meta"]["hostvars"]["fx-web02"];
    assert_eq!(web02["facter_kernelrelease"], "6.1.0-13-amd64");
    assert_eq!(web02["ansible_host"], "192.0.2.2");
    let sd: Value = serde_json::from_str(&ok(
        dsn,
        &[
            "export",
            "prometheus",
            "-n",
            "fx-web0[12]",
            "--label",
            "facter.os.family",
        ],
    ))
    .expect("SD JSON");
    assert_eq!(sd.as_array().map(Vec::len), Some(2), "{sd}");
    assert_eq!(sd[1]["targets"], json!(["192.0.2.2:9100"]));
    assert_eq!(sd[1]["labels"]["__meta_vogeler_node"], "fx-web02");
    let out = admin(dsn, &["export", "ansible", "--group-by", "a..b"]);
    assert_eq!(out.status.code(), Some(2));

    // Filter expressions: and, or, not, parentheses, exists; an error names its column.
    let picked = json_of(
        dsn,
        &[
            "report",
            "nodes",
            "-W",
            "(facter.os.family = RedHat or facter.kernelrelease ~ ^6\\.) and not exists dpkg",
        ],
    );
    let picked: Vec<&str> = picked
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(picked, ["fx-web05", "fx-web06"], "{backend}");
    fails(
        dsn,
        &[
            "report",
            "nodes",
            "-W",
            "facter.os.family = Debian and (exists dpkg",
        ],
        "`(` at column 31 is not closed",
    );

    // Names only, one a line.
    let names = ok(dsn, &["node", "--names"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["fx-web01", "fx-web02", "fx-web03", "fx-web04", "fx-web05", "fx-web06"]
    );

    // Two nodes compared: what differs, with both values; the same node differs in nothing.
    let diff = json_of(dsn, &["diff", "fx-web01", "fx-web05", "facter"]);
    let family = diff
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["path"] == "facter.os.family")
        .unwrap_or_else(|| panic!("{backend}: no os.family row: {diff}"));
    assert_eq!(family["change"], "changed");
    assert_eq!(family["fx-web01"], "Debian");
    assert_eq!(family["fx-web05"], "RedHat");
    let packages = json_of(dsn, &["diff", "fx-web01", "fx-web05", "dpkg"]);
    assert_eq!(packages[0]["path"], "dpkg", "{packages}");
    assert_eq!(packages[0]["change"], "removed", "{packages}");
    assert_eq!(
        json_of(dsn, &["diff", "fx-web02", "fx-web04", "dpkg"]),
        json!([])
    );
    let same = ok(dsn, &["diff", "fx-web03", "fx-web03"]);
    assert!(same.contains("have the same values"), "{same}");
    let out = admin(dsn, &["diff", "fx-web01", "fx-nobody"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(dsn, &["report", "inventory", "--columns", "facter..os"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad input: clear messages, non-zero exits.
    fails(dsn, &["node", "fx-nobody"], "no node named \"fx-nobody\"");
    fails(
        dsn,
        &["node", "fx-web01", "facter.nope"],
        "has no key \"facter.nope\"",
    );
    fails(
        dsn,
        &["node", "fx-web01", "--at", "20d"],
        "did not exist yet",
    );
    fails(dsn, &["report", "facts", "facter..os"], "bad key path");
    fails(
        dsn,
        &["report", "nodes", "-W", "facter.os.family"],
        "no operator",
    );
    fails(
        dsn,
        &["report", "stale", "--since", "last tuesday"],
        "bad time",
    );
    fails(dsn, &["history", "fx-nobody"], "no node named");

    // Queue status lists every node of this backend's registry; none has a queue here.
    let status: Value = serde_json::from_str(&ok(
        dsn,
        &["queue", "--status", "--no-management", "--json"],
    ))
    .expect("queue --status --json");
    assert_eq!(status["source"], "passive_declare", "{status}");
    let rows = status["queues"].as_array().expect("queue rows");
    for i in 1..=6 {
        let node = format!("fx-web0{i}");
        let row = rows
            .iter()
            .find(|r| r["queue"] == node.as_str())
            .unwrap_or_else(|| panic!("{backend}: {node} not listed: {status}"));
        assert_eq!(row["role"], "node", "{row}");
        assert_eq!(row["flag"], "MISSING", "{row}");
    }

    // Retention.
    let pruned = ok(dsn, &["prune", "--before", "5d"]);
    assert!(pruned.starts_with("deleted "), "{pruned}");
    assert!(json_of(dsn, &["report", "changes", "--since", "30d"])
        .as_array()
        .expect("rows")
        .iter()
        .all(|r| r["key"] == "dpkg" || r["key"] == "last_error"));

    // A host that is gone: deleted with its history, after --yes.
    let out = admin(dsn, &["node", "fx-web06", "--delete"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ok(dsn, &["node", "fx-web06", "--delete", "--yes"]).contains("deleted fx-web06"));
    assert_eq!(admin(dsn, &["node", "fx-web06"]).status.code(), Some(3));
    assert_eq!(admin(dsn, &["history", "fx-web06"]).status.code(), Some(3));
    assert_eq!(ok(dsn, &["node", "--names"]).lines().count(), 5);
    let out = admin(dsn, &["node", "fx-web06", "--delete", "--yes"]);
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_sqlite() {
    reports("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_postgres() {
    reports("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_couch() {
    reports("couch").await;
}

/// sqlite → postgres → couch → sqlite: every record and its history arrive, a second
/// run copies nothing, and the destination answers the same reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_between_every_backend() {
    let source = target("sqlite").await;
    fill(&source.store).await;
    let want = json_of(&source.dsn, &["report", "facts", "facter.kernelrelease"]);
    let want_history = source
        .store
        .history("fx-web01", None)
        .await
        .expect("history")
        .rows;
    let mut from = source.dsn.clone();
    let mut keep = vec![source];
    for backend in ["postgres", "couch", "sqlite"] {
        let to = target(backend).await;
        let out = ok(&from, &["migrate", "--to", &to.dsn]);
        assert!(
            out.contains("migrated 6 node(s) (6 copied, 0 already there)"),
            "{backend}: {out}"
        );
        let again = ok(&from, &["migrate", "--to", &to.dsn]);
        assert!(
            again.contains("(0 copied, 6 already there)"),
            "{backend}: {again}"
        );
        assert_eq!(
            json_of(&to.dsn, &["report", "facts", "facter.kernelrelease"]),
            want,
            "{backend}"
        );
        let got = to
            .store
            .history("fx-web01", None)
            .await
            .expect("history")
            .rows;
        assert_eq!(got.len(), want_history.len(), "{backend}");
        for (g, w) in got.iter().zip(&want_history) {
            assert_eq!((&g.key, g.at), (&w.key, w.at), "{backend}");
            let same = match (&g.new, &w.new) {
                (Some(a), Some(b)) => vogeler_store::query::same_value(a, b),
                (a, b) => a == b,
            };
            assert!(same, "{backend}: history of {} at {} differs", g.key, g.at);
        }
        from = to.dsn.clone();
        keep.push(to);
    }
    fails(&from, &["migrate", "--to", "mongo://nowhere"], "mongo");
}

/// `[server] history_days`: the server prunes older history when it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_prunes_history_past_retention() {
    let d = common::Deployment::new(&[]);
    let dsn = d.sqlite_dsn();
    {
        let store = d.open_store().await;
        for (days, v) in [(30, 1), (20, 2), (0, 3)] {
            store
                .apply(vec![plugin("fx-old", t(days), "k", json!(v))].into())
                .await
                .expect("apply");
        }
    }
    d.write_conf("[server]\nhistory_days = 7\n");
    let _server = d.server(&[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rows = json_of(&dsn, &["history", "fx-old"]);
        let n = rows.as_array().map(Vec::len).unwrap_or(0);
        if n == 1 {
            assert_eq!(rows[0]["new"], 3);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "history not pruned: {rows}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(ok(&dsn, &["node", "fx-old", "k"]).trim(), "3");
}

/// `queue --status` reads every queue in one management API call when the plugin is on
/// (a private node with rabbitmq_management), with unacked counts and memory, and
/// falls back to passive declares when told to or when the API does not answer.
#[test]
fn queue_status_reads_the_management_api() {
    let node = common::RabbitNode::start_with(common::NodeSetup {
        management: true,
        ..Default::default()
    });
    let port = node.management_port.expect("management port");
    let d =
        common::Deployment::new(&[("hello.cfg", common::plugin("hello", "echo hi", "output").1)])
            .with_broker(&node.amqp());
    d.write_conf(&format!("management_url = http://127.0.0.1:{port}/\n"));
    let _server = d.server(&[]);
    let n = d.node("mgmt");
    let _client = d.client(&n, &[]);
    let out = d.runner(&["-x", "hello", "-n", &n, "--wait", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    // A node in the registry whose client never started: no queue.
    let ghost = d.node("ghost");
    common::rt().block_on(async {
        d.open_store()
            .await
            .apply(vec![plugin(&ghost, t(0), "k", json!(1))].into())
            .await
            .expect("apply");
    });

    // The management API lists queues with a delay of a few seconds (stats interval).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let out = d.admin(&["queue", "--status", "--json"]);
        assert!(out.status.success(), "{}", common::text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let listed = v["queues"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["queue"] == n.as_str() && r["consumers"] == 1)
        });
        if listed || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(status["source"], "management_api", "{status}");
    let rows = status["queues"].as_array().expect("rows");
    let row = |q: &str| {
        rows.iter()
            .find(|r| r["queue"] == q)
            .unwrap_or_else(|| panic!("{q} not listed: {status}"))
            .clone()
    };
    let master = row(&format!("{}.master.in", d.id));
    assert_eq!(master["consumers"], 1, "{master}");
    assert!(master["unacked"].is_u64(), "{master}");
    assert!(master["memory"].as_u64().is_some_and(|m| m > 0), "{master}");
    let client = row(&n);
    assert_eq!(client["consumers"], 1, "{client}");
    assert_eq!(client["flag"], "", "{client}");
    assert_eq!(row(&ghost)["flag"], "MISSING", "{status}");

    // The table shows the extra columns and says where the figures came from.
    let out = d.admin(&["queue", "--status"]);
    let table = common::text(&out);
    assert!(
        table.contains("UNACKED") && table.contains("MEMORY"),
        "{table}"
    );
    assert!(table.contains("management API"), "{table}");

    // Told not to, or pointed at nothing: passive declares, same queues.
    let out = d.admin(&["queue", "--status", "--no-management", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["source"], "passive_declare", "{v}");
    let dead_port = common::free_port();
    let out = d.admin(&[
        "queue",
        "--status",
        "--json",
        "--management",
        &format!("http://127.0.0.1:{dead_port}"),
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["source"], "passive_declare", "{v}");
    let client = v["queues"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["queue"] == n.as_str()).cloned())
        .expect("node row");
    assert_eq!(client["consumers"], 1, "{client}");
}

/// `report changes --follow`: the changes so far, then each change once as it is
/// stored (one JSON object a line), until SIGTERM ends it with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_prints_new_changes_as_they_are_stored() {
    use std::io::BufRead as _;
    let target = target("sqlite").await;
    fill(&target.store).await;
    let mut child = std::process::Command::new(common::bin("admin"))
        .args(["-c", "/dev/null", "--dbhost", &target.dsn])
        .args([
            "report", "changes", "--since", "5d", "--follow", "--format", "json",
        ])
        .args(["-n", "fx-web0[12]"])
        .env_remove("VOGELER_DBHOST")
        .env_remove("VOGELER_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start vogeler-admin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a line within 20 s");
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    // The one change in the window so far: fx-web01's openssl upgrade.
    let first = next();
    assert_eq!(first["node"], "fx-web01", "{first}");
    assert_eq!(first["new"], "3.0.99-1", "{first}");

    let mut newer = common::fleet::fixtures().2;
    newer["openssl"] = json!("3.1.0-1");
    target
        .store
        .apply(
            vec![
                plugin("fx-web02", Utc::now(), "dpkg", newer.clone()),
                // Not selected by -n: never printed.
                plugin("fx-web05", Utc::now(), "dpkg", newer),
            ]
            .into(),
        )
        .await
        .expect("a later change");
    let later = next();
    assert_eq!(later["node"], "fx-web02", "{later}");
    assert_eq!(later["path"], "openssl", "{later}");
    assert_eq!(later["new"], "3.1.0-1", "{later}");
    assert!(later["old"].is_string(), "{later}");
    // Shown once: nothing else arrives while the same rows are asked for again.
    assert!(rx.recv_timeout(std::time::Duration::from_secs(3)).is_err());

    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// `export ansible` is what Ansible takes: Debian's `ansible-inventory` reads it as a
/// script inventory and lists the same groups, hosts and host variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_inventory_reads_the_export() {
    use std::os::unix::fs::PermissionsExt as _;
    let target = target("sqlite").await;
    fill(&target.store).await;
    let export = ok(
        &target.dsn,
        &[
            "export",
            "ansible",
            "--group-by",
            "facter.os.family",
            "--hostvars",
            "facter.kernelrelease",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // A script inventory: Ansible runs it with --list (and reads _meta, so no --host);
    // the export takes Ansible's own arguments, so the script only adds the options.
    let script = dir.path().join("vogeler-inventory");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} -c /dev/null --dbhost '{}' export ansible --group-by facter.os.family --hostvars facter.kernelrelease \"$@\"\n",
            common::bin("admin").display(),
            target.dsn
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new("ansible-inventory")
        .args(["-i", script.to_str().expect("utf-8"), "--list"])
        .env("ANSIBLE_LOCAL_TEMP", dir.path().join("tmp"))
        .env("HOME", dir.path())
        .output()
        .expect("ansible-inventory (Debian package ansible-core; scripts/services.sh ensure installs it)");
    assert!(
        out.status.success(),
        "ansible-inventory refused the export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("ansible-inventory JSON");
    assert_eq!(
        listed["facter_os_family_Debian"]["hosts"],
        json!(["fx-web01", "fx-web02", "fx-web03", "fx-web04"]),
        "{listed}"
    );
    assert_eq!(
        listed["facter_os_family_RedHat"]["hosts"],
        json!(["fx-web05", "fx-web06"])
    );
    let vars = &listed["_meta"]["hostvars"]["fx-web02"];
    assert_eq!(vars["facter_kernelrelease"], "6.1.0-13-amd64", "{listed}");
    assert_eq!(vars["ansible_host"], "192.0.2.2", "{listed}");
    // The same listing as the export printed, and one host's variables with --host.
    assert_eq!(
        listed["_meta"]["hostvars"],
        serde_json::from_str::<Value>(&export).expect("export JSON")["_meta"]["hostvars"]
    );
    let one: Value = serde_json::from_str(&ok(
        &target.dsn,
        &[
            "export",
            "ansible",
            "--hostvars",
            "facter.kernelrelease",
            "--host",
            "fx-web02",
        ],
    ))
    .expect("host JSON");
    assert_eq!(one["facter_kernelrelease"], "6.1.0-13-amd64", "{one}");
    let none: Value =
        serde_json::from_str(&ok(&target.dsn, &["export", "ansible", "--host", "nosuch"]))
            .expect("host JSON");
    assert_eq!(none, json!({}));
}
