//! Node lifecycle (issue 20): `node NAME --deactivate` takes a node out of the fleet
//! (node lists, reports, exports) keeping its record and history, a new result
//! reactivates it, and `prune --inactive-for` deactivates the nodes not seen for that
//! long. The commands run as the binary, on SQLite and PostgreSQL alike.

mod common;

use std::process::{Command, Output};

use common::fleet::{fill, plugin, t};
use serde_json::{json, Value};

fn admin(dsn: &str, args: &[&str]) -> Output {
    Command::new(common::bin("admin"))
        .args(["-c", "/dev/null", "--dbhost", dsn])
        .args(args)
        .env_remove("VOGELER_DBHOST")
        .env_remove("VOGELER_CONFIG")
        .env("COLUMNS", "200")
        .output()
        .expect("run vogeler-admin")
}

fn ok(dsn: &str, args: &[&str]) -> String {
    let out = admin(dsn, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "vogeler-admin {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

/// The node names `report nodes` lists (the fleet as reports see it).
fn reported(dsn: &str) -> Vec<String> {
    let rows: Value =
        serde_json::from_str(&ok(dsn, &["report", "nodes", "--format", "json"])).expect("json");
    rows.as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["node"].as_str().map(str::to_string))
        .collect()
}

async fn lifecycle(backend: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dsn = vogeler_store::testing::fresh_dsn(backend, dir.path()).await;
    let store = vogeler_store::testing::open(&dsn).await;
    fill(&store).await;
    let dsn = dsn.as_str();
    let all = lines(&ok(dsn, &["node", "--names"]));
    assert!(all.contains(&"fx-web06".to_string()), "{all:?}");
    let history_before = ok(dsn, &["history", "fx-web06", "--format", "json"]);

    let out = ok(dsn, &["node", "fx-web06", "--deactivate"]);
    assert!(out.contains("deactivated fx-web06"), "{out}");
    let active = lines(&ok(dsn, &["node", "--names"]));
    let expected: Vec<String> = all.iter().filter(|n| *n != "fx-web06").cloned().collect();
    assert_eq!(active, expected);
    assert_eq!(lines(&ok(dsn, &["node", "--names", "--all"])), all);
    assert_eq!(reported(dsn), expected);
    assert!(!ok(dsn, &["node"]).contains("fx-web06"));
    let inventory: Value =
        serde_json::from_str(&ok(dsn, &["export", "ansible"])).expect("ansible json");
    assert!(
        inventory["_meta"]["hostvars"].get("fx-web06").is_none()
            && !inventory.to_string().contains("fx-web06"),
        "{inventory}"
    );
    // Still shown by name, with its deactivation time, and its history is kept.
    let doc: Value = serde_json::from_str(&ok(dsn, &["node", "fx-web06"])).expect("doc");
    assert!(doc["deactivated_at"].is_string(), "{doc}");
    assert!(ok(dsn, &["node", "fx-web06", "--summary"]).contains("deactivated"));
    assert_eq!(
        ok(dsn, &["history", "fx-web06", "--format", "json"]),
        history_before
    );
    let missing = admin(dsn, &["node", "fx-nosuch", "--deactivate"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");

    // A new result reactivates it.
    store
        .apply(vec![plugin("fx-web06", t(0), "hello", json!("again"))].into())
        .await
        .expect("apply");
    assert_eq!(lines(&ok(dsn, &["node", "--names"])), all);
    let doc: Value = serde_json::from_str(&ok(dsn, &["node", "fx-web06"])).expect("doc");
    assert!(doc.get("deactivated_at").is_none(), "{doc}");

    // Not seen for a while: every node but the one that just answered.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    store
        .apply(vec![plugin("fx-web01", t(0), "hello", json!("here"))].into())
        .await
        .expect("apply");
    let out = ok(dsn, &["prune", "--inactive-for", "2s"]);
    assert!(
        out.contains(&format!(
            "deactivated {} nodes not seen since",
            all.len() - 1
        )),
        "{out}"
    );
    assert_eq!(lines(&ok(dsn, &["node", "--names"])), ["fx-web01"]);
    assert_eq!(lines(&ok(dsn, &["node", "--names", "--all"])), all);
    let again = ok(dsn, &["prune", "--inactive-for", "2s", "--before", "3650d"]);
    assert!(again.contains("deactivated 0 nodes"), "{again}");
    assert!(again.contains("deleted 0 history entries"), "{again}");
    let neither = admin(dsn, &["prune"]);
    assert_eq!(neither.status.code(), Some(2), "{neither:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_sqlite() {
    lifecycle("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_postgres() {
    lifecycle("postgres").await;
}
