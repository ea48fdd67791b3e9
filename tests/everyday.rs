//! The everyday path tells the truth (issue 18): `last_error` cleared by a good result
//! and by `--clear-error`; read-only commands never create a store; `setup
//! --persistence` creates the PostgreSQL database; one comparison rule for `-W`;
//! a closed pipe ends quietly; the `changes` footer; request id prefixes. Store tests
//! run on SQLite and PostgreSQL alike, the broadcast ledger on RabbitMQ and NATS alike.

mod common;

use std::io::Read as _;
use std::process::{Command, Output, Stdio};

use common::fleet::{fill, plugin, t};
use serde_json::{json, Value};
use vogeler_store::{DynStore, LedgerRequest};

/// A filled store and the DSN the binary reaches it with.
struct Target {
    dsn: String,
    store: DynStore,
    _dir: tempfile::TempDir,
}

async fn filled(backend: &str) -> Target {
    let dir = tempfile::tempdir().expect("tempdir");
    let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
    let store = vogeler_store::testing::open(&dsn).await;
    fill(&store).await;
    Target {
        dsn,
        store,
        _dir: dir,
    }
}

fn admin_cmd(dsn: &str, args: &[&str]) -> Command {
    let mut c = Command::new(common::bin("admin"));
    c.args(["-c", "/dev/null", "--dbhost", dsn])
        .args(args)
        .env_remove("VOGELER_DBHOST")
        .env_remove("VOGELER_CONFIG")
        .env("COLUMNS", "200");
    c
}

fn admin(dsn: &str, args: &[&str]) -> Output {
    admin_cmd(dsn, args).output().expect("run vogeler-admin")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(dsn: &str, args: &[&str]) -> String {
    let out = admin(dsn, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "vogeler-admin {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The node names a `report nodes` with these filters prints.
fn selected(dsn: &str, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["report", "nodes", "--format", "json"];
    for f in filters {
        args.extend(["-W", f]);
    }
    let rows: Value = serde_json::from_str(&ok(dsn, &args)).expect("json");
    rows.as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["node"].as_str().map(str::to_string))
        .collect()
}

/// The error line of a failed run: exactly one line on stderr (no log noise asked for).
fn one_line_error(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("vogeler-admin: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line wanted:\n{err}");
    lines[0].to_string()
}

async fn last_error_is_cleared(backend: &str) {
    let target = filled(backend).await;
    let dsn = target.dsn.as_str();
    let error = |dsn: &str, node: &str| -> Value {
        serde_json::from_str(&ok(dsn, &["node", node, "last_error"])).expect("json")
    };
    // fx-web06's facter failed; a good facter result clears it.
    assert_eq!(error(dsn, "fx-web06")["plugin"], "facter");
    target
        .store
        .apply(vec![plugin("fx-web06", t(0), "facter", json!({"ok": true}))].into())
        .await
        .expect("good result");
    assert_eq!(error(dsn, "fx-web06"), Value::Null);
    let history = ok(
        dsn,
        &[
            "history",
            "fx-web06",
            "last_error.message",
            "--format",
            "json",
        ],
    );
    assert!(history.contains("facter: exit status 1"), "{history}");

    // By hand: --clear-error.
    target
        .store
        .apply(
            vec![vogeler_store::Observation {
                node: "fx-web05".into(),
                at: t(0),
                change: vogeler_store::Change::Error {
                    plugin: Some("ohai".into()),
                    message: "ohai: timed out".into(),
                    raw: None,
                },
            }]
            .into(),
        )
        .await
        .expect("error result");
    assert_eq!(error(dsn, "fx-web05")["message"], "ohai: timed out");
    let out = ok(dsn, &["node", "fx-web05", "--clear-error"]);
    assert!(out.contains("cleared"), "{out}");
    assert_eq!(error(dsn, "fx-web05"), Value::Null);
    let out = ok(dsn, &["node", "fx-web05", "--clear-error"]);
    assert!(out.contains("no last error"), "{out}");
    let out = admin(dsn, &["node", "fx-nobody", "--clear-error"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(one_line_error(&out).contains("fx-nobody"));
}

#[tokio::test]
async fn last_error_is_cleared_on_sqlite() {
    last_error_is_cleared("sqlite").await;
}

#[tokio::test]
async fn last_error_is_cleared_on_postgres() {
    last_error_is_cleared("postgres").await;
}

async fn one_comparison_rule(backend: &str) {
    let target = filled(backend).await;
    let dsn = target.dsn.as_str();
    target
        .store
        .apply(
            vec![
                plugin("fx-old", t(0), "dpkg", json!({"openssl": "3.0.7"})),
                plugin(
                    "fx-old",
                    t(0),
                    "facter",
                    json!({"a": "b", "processorcount": 16}),
                ),
            ]
            .into(),
        )
        .await
        .expect("fx-old");
    // Debian version order: 3.0.7 < 3.0.19-1~deb12u2 < 3.0.20 < 3.0.99-1.
    assert_eq!(
        selected(dsn, &["dpkg.openssl<3.0.20"]),
        ["fx-old", "fx-web02", "fx-web03", "fx-web04"]
    );
    assert_eq!(selected(dsn, &["dpkg.openssl>=3.0.20"]), ["fx-web01"]);
    // Numbers numerically; `=`, `==` and spaces around the operator are the same.
    assert_eq!(selected(dsn, &["facter.processorcount>=10"]), ["fx-old"]);
    for spelling in ["facter.a=b", "facter.a = b", "facter.a==b", "facter.a == b"] {
        assert_eq!(selected(dsn, &[spelling]), ["fx-old"], "{spelling}");
    }
    // A filter or number that does not parse is exit 2 naming it, not an empty match.
    for bad in ["facter.processorcount>=4 cores", "facter.a", "dpkg..x=1"] {
        let out = admin(dsn, &["report", "nodes", "-W", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            one_line_error(&out).contains(bad),
            "{bad}: {}",
            stderr(&out)
        );
    }
    let out = admin(dsn, &["report", "stale", "--since", "yesterdayish"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[tokio::test]
async fn one_comparison_rule_on_sqlite() {
    one_comparison_rule("sqlite").await;
}

#[tokio::test]
async fn one_comparison_rule_on_postgres() {
    one_comparison_rule("postgres").await;
}

async fn changes_footer_and_request_prefixes(backend: &str) {
    let target = filled(backend).await;
    let dsn = target.dsn.as_str();
    // fx-web01's openssl upgrade is the one change in 5 days; -n keeps or drops it.
    let table = ok(
        dsn,
        &["report", "changes", "--since", "5d", "-n", "fx-web01"],
    );
    assert!(
        table.contains("1 changed value(s) in 1 changed key(s)"),
        "{table}"
    );
    let table = ok(
        dsn,
        &["report", "changes", "--since", "5d", "-n", "fx-web02"],
    );
    assert!(
        table.contains("0 changed value(s) in 0 changed key(s)"),
        "{table}"
    );

    let request = |id: &str| LedgerRequest {
        id: id.into(),
        command: "facter".into(),
        sender: "test".into(),
        sent_at: t(0),
        ttl: 60,
        expected: vec!["fx-web01".into()],
    };
    target
        .store
        .record_ledger(
            &[
                request("5f0c1111-aaaa"),
                request("5f0c2222-bbbb"),
                request("9e1d3333-cccc"),
            ],
            &[],
        )
        .await
        .expect("ledger");
    let out = ok(dsn, &["requests", "9e1d"]);
    assert!(out.contains("request 9e1d3333-cccc"), "{out}");
    let out = ok(dsn, &["requests", "5f0c1"]);
    assert!(out.contains("request 5f0c1111-aaaa"), "{out}");
    let out = admin(dsn, &["requests", "5f0c"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = one_line_error(&out);
    assert!(
        line.contains("ambiguous")
            && line.contains("5f0c1111-aaaa")
            && line.contains("5f0c2222-bbbb"),
        "{line}"
    );
    let out = admin(dsn, &["requests", "0000"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[tokio::test]
async fn changes_footer_and_request_prefixes_on_sqlite() {
    changes_footer_and_request_prefixes("sqlite").await;
}

#[tokio::test]
async fn changes_footer_and_request_prefixes_on_postgres() {
    changes_footer_and_request_prefixes("postgres").await;
}

#[test]
fn read_only_commands_never_create_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("typo.db");
    let dsn = format!("sqlite://{}", db.display());
    for args in [
        &["node"][..],
        &["node", "x"],
        &["report", "nodes"],
        &["history", "x"],
        &["requests"],
    ] {
        let out = admin(&dsn, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let line = one_line_error(&out);
        assert!(
            line.contains(&dsn) && line.contains("vogeler-admin setup --persistence"),
            "{line}"
        );
        assert!(
            std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
            "{args:?} left a file behind"
        );
    }
    // A mistyped PostgreSQL database: the DSN named, its password masked.
    let base = vogeler_store::testing::postgres_admin_url();
    let (head, _) = base.rsplit_once('/').expect("url with a database");
    let dsn = format!("{head}/vogeler_typo_{}", std::process::id());
    let out = admin(&dsn, &["report", "nodes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let line = one_line_error(&out);
    assert!(line.contains("does not exist"), "{line}");
    assert!(line.contains("vogeler-admin setup --persistence"), "{line}");
    assert!(line.contains(":****@"), "{line}");
}

#[tokio::test]
async fn setup_persistence_creates_the_postgres_database() {
    let base = vogeler_store::testing::postgres_admin_url();
    let (head, _) = base.rsplit_once('/').expect("url with a database");
    let name = vogeler_store::testing::unique("vogeler_setup_");
    let dsn = format!("{head}/{name}");
    let out = ok(&dsn, &["setup", "--persistence"]);
    assert!(out.contains("database created"), "{out}");
    // Now it exists and reads as an empty store; a second setup creates nothing.
    let out = ok(&dsn, &["report", "nodes"]);
    assert!(out.contains("0 node(s)"), "{out}");
    let out = ok(&dsn, &["setup", "--persistence"]);
    assert!(!out.contains("database created"), "{out}");
    // Clean up: drop the database made here.
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("postgres");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .expect("drop database");
}

#[tokio::test]
async fn a_closed_pipe_ends_quietly() {
    let target = filled("sqlite").await;
    // A whole node document with ohai is larger than a pipe's buffer.
    let mut child = admin_cmd(&target.dsn, &["node", "fx-web01"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut head = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut head)
        .expect("first bytes");
    // The read end is closed here (dropped), as `| head -c 16` does.
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "a closed pipe must end quietly");
}

/// A broadcast's ledger expects the registry's nodes even when their results reach
/// the server in later batches than the announcement (a plugin that takes 2 s).
fn a_broadcast_ledger_expects_nodes_answering_in_later_batches(bus: common::Bus) {
    use common::Deployment;
    let d = Deployment::on(
        bus,
        &[(
            "slow.cfg",
            common::plugin("slow", "sh -c 'sleep 2; echo slow'", "output").1,
        )],
    );
    let (a, b) = (d.node("a"), d.node("b"));
    let _server = d.server(&[]);
    let _clients = [d.client(&a, &[]), d.client(&b, &[])];
    let out = d.runner(&["-x", "slow", "-n", "all"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = d.admin(&["requests", "--format", "json"]);
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(row) = rows.as_array().and_then(|r| r.first()) {
            if row["stored"] == 2 {
                assert_eq!(row["expected"], 2, "{row}");
                assert_eq!(row["state"], "complete", "{row}");
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broadcast's answers never reached the ledger: {}{}",
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn a_broadcast_ledger_expects_nodes_answering_in_later_batches_on_rabbitmq() {
    a_broadcast_ledger_expects_nodes_answering_in_later_batches(common::Bus::Rabbit);
}

#[test]
fn a_broadcast_ledger_expects_nodes_answering_in_later_batches_on_nats() {
    a_broadcast_ledger_expects_nodes_answering_in_later_batches(common::Bus::Nats);
}
