//! Rows a store holds but cannot read back (written by earlier versions or by hand,
//! issue 17): every view skips and counts them instead of failing, `vogeler-admin
//! check` finds them and `--quarantine` moves them aside; a query over the time limit
//! is a 503, not a stall; discovery runs beside ingest; a panic decoding a message
//! dead-letters it and the server goes on, and so does a panic after a commit; moving a
//! row aside leaves every other row reading what it read before. Each
//! test runs on SQLite and PostgreSQL (the one after the commit on SQLite only).

mod common;

use common::{publish_raw, rt, Deployment};

fn result(node: &str, plugin: &str, data: &str, at: &str) -> Vec<u8> {
    format!(
        r#"{{"v":1,"kind":"result","node":"{node}","plugin":"{plugin}","format":"json","data":{data},"duration_ms":1,"collected_at":"{at}"}}"#
    )
    .into_bytes()
}

use common::web::get_text as get;

fn json_of(url: &str) -> serde_json::Value {
    let (status, body) = rt().block_on(get(url));
    assert!(status.is_success(), "GET {url}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// A store under test: its backend and DSN, and how to write bad rows into it.
struct Backend {
    name: &'static str,
    dsn: String,
}

impl Backend {
    fn sqlite(d: &Deployment) -> Backend {
        Backend {
            name: "sqlite",
            dsn: d.sqlite_dsn(),
        }
    }

    fn postgres() -> Backend {
        Backend {
            name: "postgres",
            dsn: rt().block_on(vogeler_store::testing::fresh_postgres()),
        }
    }

    fn deployment(&self) -> Deployment {
        let d = Deployment::new(&[]);
        match self.name {
            "sqlite" => d,
            _ => d.with_store(self.name, &self.dsn),
        }
    }

    /// Runs SQL against the store's own tables (bad rows written by hand).
    fn sql(&self, d: &Deployment, sql: &str) {
        match self.name {
            "sqlite" => {
                let conn = rusqlite::Connection::open(&d.db).expect("open the SQLite store");
                conn.execute_batch(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            _ => rt().block_on(async {
                let (client, conn) = tokio_postgres::connect(&self.dsn, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", self.dsn));
                tokio::spawn(conn);
                client
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }),
        }
    }

    /// Makes node `a`'s `facter` value and its history rows unreadable: text that does
    /// not parse in SQLite; a number outside f64 and nesting deeper than serde_json
    /// reads in PostgreSQL's JSONB.
    fn corrupt(&self, d: &Deployment, a: &str) {
        match self.name {
            "sqlite" => self.sql(
                d,
                &format!(
                    "UPDATE node_keys SET value = '{{\"os\": {{\"family\": \"Deb' WHERE node = '{a}' AND key = 'facter';
                     UPDATE history SET old = '[1,' WHERE node = '{a}' AND old IS NOT NULL;"
                ),
            ),
            _ => {
                let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
                self.sql(
                    d,
                    &format!(
                        "UPDATE node_keys SET value = '{{\"os\": {{\"family\": {deep}}}}}'::jsonb WHERE node = '{a}' AND key = 'facter';
                         UPDATE history SET old = '{{\"x\": 1e400}}'::jsonb WHERE node = '{a}' AND old IS NOT NULL;"
                    ),
                )
            }
        }
    }

    fn drop_database(&self) {
        if self.name != "postgres" {
            return;
        }
        let name = self.dsn.rsplit('/').next().unwrap_or_default().to_string();
        rt().block_on(async {
            let admin = vogeler_store::testing::postgres_admin_url();
            if let Ok((client, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        });
    }
}

fn unreadable_rows_are_skipped_counted_and_quarantined(b: Backend, d: Deployment) {
    let port = common::free_port();
    let server = d.server(&["--http", &port.to_string()]);
    let base = format!("http://127.0.0.1:{port}");
    let t = d.topology();
    let (a, other) = (d.node("a"), d.node("b"));
    let debian = r#"{"os":{"family":"Debian"}}"#;
    publish_raw(
        &t.master_exchange,
        "",
        &[
            result(
                &a,
                "facter",
                r#"{"os":{"family":"Ubuntu"}}"#,
                "2026-01-01T00:00:00Z",
            ),
            result(&a, "facter", debian, "2026-01-01T00:01:00Z"),
            result(&other, "facter", debian, "2026-01-01T00:00:00Z"),
        ],
    );
    d.wait_document(&a, 20, |doc| doc["facter"]["os"]["family"] == "Debian");
    d.wait_document(&other, 20, |doc| doc.get("facter").is_some());
    b.corrupt(&d, &a);

    // Reports answer, with the bad row skipped and said so.
    let out = d.admin(&["report", "facts", "facter.os.family"]);
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&other) && !text.contains(&a), "{text}");
    assert!(
        text.contains("1 unreadable row skipped (run vogeler-admin check)"),
        "{text}"
    );
    let out = d.admin(&["report", "facts", "facter.os.family", "--format", "json"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(rows[0]["count"], 1, "{rows}");
    for args in [
        vec!["report", "changes", "--since", "3650d"],
        vec!["history", a.as_str()],
        vec!["report", "nodes", "-W", "facter.os.family=Debian"],
    ] {
        let out = d.admin(&args);
        let text = common::text(&out);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(text.contains("unreadable row"), "{args:?}: {text}");
    }
    let out = d.admin(&["node", &a]);
    assert!(out.status.success(), "{}", common::text(&out));

    // The web pages and the API answer, counting what they skipped.
    let values = json_of(&format!("{base}/api/values?path=facter.os.family"));
    assert_eq!(values["skipped"], 1, "{values}");
    assert_eq!(values["values"][0]["count"], 1, "{values}");
    let nodes = json_of(&format!("{base}/api/nodes?where=facter.os.family%3DDebian"));
    assert_eq!(
        (nodes["total"].clone(), nodes["skipped"].clone()),
        (1.into(), 1.into()),
        "{nodes}"
    );
    let doc = json_of(&format!("{base}/api/nodes/{a}"));
    assert_eq!(doc["_unreadable"][0]["key"], "facter", "{doc}");
    let history = json_of(&format!("{base}/api/nodes/{a}/history"));
    assert!(history["skipped"].as_u64() >= Some(1), "{history}");
    let changes = json_of(&format!("{base}/api/changes?since=3650d"));
    assert!(changes["skipped"].as_u64() >= Some(1), "{changes}");
    let stats = json_of(&format!("{base}/api/stats"));
    assert!(stats["skipped"].as_u64() >= Some(1), "{stats}");
    for page in [
        format!("/nodes/{a}"),
        "/".into(),
        "/nodes?where=facter.os.family%3DDebian".into(),
    ] {
        let (status, body) = rt().block_on(get(&format!("{base}{page}")));
        assert!(status.is_success(), "GET {page}: {status} {body}");
        assert!(body.contains("unreadable row"), "GET {page}: {body}");
    }

    // Discovery's query skips and counts too.
    let store = rt().block_on(vogeler_store::testing::open(&b.dsn));
    let q = vogeler_store::Query::parse(&["facter.os.family=Debian".into()], &[]).expect("query");
    let found = rt().block_on(store.select(&q)).expect("select");
    assert_eq!((found.rows.len(), found.skipped.len()), (1, 1), "{found:?}");

    // Migrate copies what reads back and says what it left behind.
    let to = format!("sqlite://{}", d.path("copy.db").display());
    let out = d.admin(&["migrate", "--to", &to]);
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("unreadable rows skipped"), "{text}");

    // A later result replaces the unreadable value (the key is not frozen).
    publish_raw(
        &t.master_exchange,
        "",
        &[result(
            &a,
            "facter",
            r#"{"os":{"family":"Arch"}}"#,
            "2026-01-01T00:02:00Z",
        )],
    );
    d.wait_document(&a, 20, |doc| doc["facter"]["os"]["family"] == "Arch");

    // check lists them and exits 1; --quarantine moves them aside; then all is clean.
    let out = d.admin(&["check"]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("node {a} key facter")), "{text}");
    let out = d.admin(&["check", "--quarantine"]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("moved to quarantine; 0 unreadable row(s) left"),
        "{text}"
    );
    let out = d.admin(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    let out = d.admin(&["report", "changes", "--since", "3650d"]);
    let text = common::text(&out);
    assert!(
        out.status.success() && !text.contains("unreadable"),
        "{text}"
    );
    let history = json_of(&format!("{base}/api/nodes/{a}/history"));
    assert_eq!(history["skipped"], 0, "{history}");
    drop(server);
    b.drop_database();
}

#[test]
fn unreadable_rows_on_sqlite() {
    let d = Deployment::new(&[]);
    let b = Backend::sqlite(&d);
    unreadable_rows_are_skipped_counted_and_quarantined(b, d);
}

#[test]
fn unreadable_rows_on_postgres() {
    let b = Backend::postgres();
    let d = b.deployment();
    unreadable_rows_are_skipped_counted_and_quarantined(b, d);
}

/// Moving a row aside never changes what another row says: a history row reads an
/// implicit `new` from the row after it (or the key's current value), so the row that
/// reads it is pinned first. Before, the row ahead of a quarantined one read the next
/// surviving row's `old`, and the latest row read a later result's value.
fn quarantine_keeps_the_other_rows_values(b: Backend, d: Deployment) {
    let server = d.server(&[]);
    let t = d.topology();
    let c = d.node("c");
    let release = |i: u32| serde_json::json!({"os": {"release": i.to_string()}});
    let publish = |i: u32| {
        let data = release(i).to_string();
        let at = format!("2026-01-01T00:0{i}:00Z");
        publish_raw(&t.master_exchange, "", &[result(&c, "facter", &data, &at)]);
        d.wait_document(&c, 20, |doc| doc["facter"] == release(i));
    };
    for i in 1..=4 {
        publish(i);
    }
    // Row 2 gets an unreadable `new` of its own; the current value turns unreadable,
    // so row 4 (which reads it) does too. Rows 1 and 3 still read back.
    match b.name {
        "sqlite" => b.sql(
            &d,
            &format!(
                "UPDATE history SET new = '[1,' WHERE node = '{c}' AND at LIKE '2026-01-01T00:02%';
                 UPDATE node_keys SET value = '{{\"os\": ' WHERE node = '{c}' AND key = 'facter';"
            ),
        ),
        _ => b.sql(
            &d,
            &format!(
                "UPDATE history SET new = '{{\"x\": 1e400}}'::jsonb, new_implicit = false
                 WHERE node = '{c}' AND at = '2026-01-01T00:02:00Z';
                 UPDATE node_keys SET value = '{{\"x\": 1e400}}'::jsonb WHERE node = '{c}' AND key = 'facter';"
            ),
        ),
    }
    let store = rt().block_on(vogeler_store::testing::open(&b.dsn));
    let rows = |want_skipped: usize| {
        let h = rt().block_on(store.history(&c, None)).expect("history");
        assert_eq!(h.skipped.len(), want_skipped, "{h:?}");
        let mut rows: Vec<_> = h
            .rows
            .into_iter()
            .map(|e| (e.at.format("%M").to_string(), e.old, e.new))
            .collect();
        rows.sort_by(|x, y| x.0.cmp(&y.0));
        rows
    };
    assert_eq!(rows(2).len(), 2);
    let out = d.admin(&["check", "--quarantine"]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("0 unreadable row(s) left"), "{text}");
    let kept = vec![
        ("01".to_string(), None, Some(release(1))),
        ("03".to_string(), Some(release(2)), Some(release(3))),
    ];
    assert_eq!(rows(0), kept);

    // The key's next result starts afresh; the rows before it keep their values.
    publish(5);
    let mut after = kept;
    after.push(("05".to_string(), None, Some(release(5))));
    assert_eq!(rows(0), after);
    drop(server);
    b.drop_database();
}

#[test]
fn quarantine_keeps_the_other_rows_values_on_sqlite() {
    let d = Deployment::new(&[]);
    let b = Backend::sqlite(&d);
    quarantine_keeps_the_other_rows_values(b, d);
}

#[test]
fn quarantine_keeps_the_other_rows_values_on_postgres() {
    let b = Backend::postgres();
    let d = b.deployment();
    quarantine_keeps_the_other_rows_values(b, d);
}

/// 2,000 nodes and a query time limit of 1 ms: a filtered web query answers 503 with
/// the limit in its message (not a stall), and ingest goes on meanwhile.
fn queries_over_the_time_limit_are_503(b: Backend, d: Deployment) {
    seed_hostnames(&b, &d, 20);
    d.write_conf("[server]\nquery_timeout_ms = 1\n");
    let port = common::free_port();
    let server = d.server(&["--http", &port.to_string()]);
    let base = format!("http://127.0.0.1:{port}");
    for (path, json) in [
        ("/api/nodes?where=facter.hostname~a%2Bz", true),
        ("/nodes?where=facter.hostname~a%2Bz", false),
    ] {
        let (status, body) = rt().block_on(get(&format!("{base}{path}")));
        assert_eq!(
            status,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "GET {path}: {body}"
        );
        assert!(body.contains("time limit of 1ms"), "GET {path}: {body}");
        assert_eq!(body.starts_with('{'), json, "GET {path}: {body}");
    }
    let out = d.admin(&["report", "facts", "facter.hostname"]);
    let text = common::text(&out);
    assert!(
        !out.status.success() && text.contains("time limit"),
        "{text}"
    );
    // The server keeps its 1 ms limit; the admin that reads the document back must
    // not share it (on a loaded machine its own query would time out, not ingest).
    d.write_conf("");
    ingest_goes_on(&d);
    drop(server);
    b.drop_database();
}

#[test]
fn time_limit_on_sqlite() {
    let d = Deployment::new(&[]);
    let b = Backend::sqlite(&d);
    queries_over_the_time_limit_are_503(b, d);
}

#[test]
fn time_limit_on_postgres() {
    let b = Backend::postgres();
    let d = b.deployment();
    queries_over_the_time_limit_are_503(b, d);
}

/// 2,000 stored nodes; discovery questions over all of them (more at once than the
/// server answers together, and one with a regular expression too big to compile)
/// while results keep arriving: each question is answered, and a result published
/// meanwhile is stored within seconds.
fn discovery_runs_beside_ingest(b: Backend, d: Deployment) {
    seed_hostnames(&b, &d, 40);
    let server = d.server(&[]);
    let runners: Vec<_> = (0..8)
        .map(|i| {
            let filter = if i == 0 {
                r"facter.hostname~\w{200}c".to_string()
            } else {
                format!(r"facter.hostname~^host{i}\w{{3}}-(a|b)+c$")
            };
            let conf = d.conf.clone();
            std::thread::spawn(move || {
                std::process::Command::new(common::bin("runner"))
                    .arg("-c")
                    .arg(&conf)
                    .args(["-x", "hello", "-W", &filter, "--json"])
                    .args(["--discovery-timeout", "30s"])
                    .env_remove("VOGELER_QHOST")
                    .env_remove("VOGELER_DBHOST")
                    .env_remove("VOGELER_CONFIG")
                    .output()
                    .expect("runner")
            })
        })
        .collect();
    ingest_goes_on(&d);
    let mut refused = 0;
    let mut busy = 0;
    for (i, r) in runners.into_iter().enumerate() {
        let out = r.join().expect("runner thread");
        let text = common::text(&out);
        if text.contains("busy") {
            busy += 1;
        } else if i == 0 {
            assert!(text.contains("bad regular expression"), "{text}");
            refused += 1;
        } else {
            // Nothing matches: the runner says so and exits 3 (incomplete), not a silent 0.
            assert_eq!(out.status.code(), Some(3), "{text}\n{}", server.log_text());
            assert!(
                text.contains("\"discovered\": []") || text.contains("\"discovered\":[]"),
                "{text}"
            );
        }
    }
    assert!(
        refused + busy >= 1,
        "the too-big regex was neither refused nor busy"
    );
    drop(server);
    b.drop_database();
}

#[test]
fn discovery_beside_ingest_on_sqlite() {
    let d = Deployment::new(&[]);
    let b = Backend::sqlite(&d);
    discovery_runs_beside_ingest(b, d);
}

#[test]
fn discovery_beside_ingest_on_postgres() {
    let b = Backend::postgres();
    let d = b.deployment();
    discovery_runs_beside_ingest(b, d);
}

/// A message whose decoding panics (the test-only hook `VOGELER_TEST_PANIC_ON`) is
/// dead-lettered with reason `panic`; the server keeps its session and stores the
/// next result.
fn a_panic_is_dead_lettered(b: Backend, d: Deployment) {
    let server = d.server_env(&[], &[("VOGELER_TEST_PANIC_ON", "panic-me")]);
    let t = d.topology();
    let (bad, good) = (d.node("panic-me"), d.node("good"));
    publish_raw(
        &t.master_exchange,
        "",
        &[
            result(&bad, "facter", "1", "2026-01-01T00:00:00Z"),
            result(&good, "facter", "2", "2026-01-01T00:00:00Z"),
        ],
    );
    d.wait_document(&good, 20, |doc| doc["facter"] == 2);
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dead.is_empty() && std::time::Instant::now() < deadline {
        dead.extend(common::drain_queue(
            &t.dead_queue,
            std::time::Duration::from_millis(500),
        ));
    }
    assert_eq!(dead.len(), 1, "{}", server.log_text());
    assert_eq!(dead[0].header("x-vogeler-reason"), Some("panic"));
    assert!(d.document(&bad).is_none());
    let log = server.log_text();
    assert!(!log.contains("broker session lost"), "{log}");
    drop(server);
    b.drop_database();
}

#[test]
fn panic_on_sqlite() {
    let d = Deployment::new(&[]);
    let b = Backend::sqlite(&d);
    a_panic_is_dead_lettered(b, d);
}

#[test]
fn panic_on_postgres() {
    let b = Backend::postgres();
    let d = b.deployment();
    a_panic_is_dead_lettered(b, d);
}

/// A panic after the commit (the test hook panics recording a request's ledger) loses
/// that ledger record only: the result is stored and confirmed, the runner exits 0, the
/// server keeps its session and stores the next result.
#[test]
fn a_panic_after_the_commit_keeps_the_session() {
    let (file, text) = common::plugin("ledgerboom", "echo boom", "output");
    let d = Deployment::new(&[(file.as_str(), text)]);
    let server = d.server_env(&[], &[("VOGELER_TEST_PANIC_ON", "ledger:ledgerboom")]);
    let node = d.node("boom");
    let client = d.client(&node, &[]);
    d.wait_for_queue(&node, &client);
    let out = d.runner(&[
        "-x",
        "ledgerboom",
        "-n",
        &node,
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        common::text(&out),
        server.log_text()
    );
    d.wait_document(&node, 20, |doc| doc["ledgerboom"][0] == "boom");
    ingest_goes_on(&d);
    let log = server.log_text();
    assert!(
        log.contains("recording the request ledger panicked"),
        "{log}"
    );
    assert!(!log.contains("broker session lost"), "{log}");
}

/// Stores 2,000 nodes `n0000`… straight into the store, each with a facter hostname
/// of `pad` trailing `a`s: enough rows that a slow query shows.
fn seed_hostnames(b: &Backend, d: &Deployment, pad: usize) {
    let store = rt().block_on(vogeler_store::testing::open(&b.dsn));
    let batch: Vec<vogeler_store::Observation> = (0..2000)
        .map(|i| vogeler_store::Observation {
            node: d.node(&format!("n{i:04}")),
            at: chrono::Utc::now(),
            change: vogeler_store::Change::Plugin {
                name: "facter".into(),
                value: serde_json::json!({"hostname": format!("host{i:04}-{}", "a".repeat(pad))})
                    .into(),
                history: true,
            },
        })
        .collect();
    rt().block_on(store.apply(batch.into()))
        .expect("seed 2000 nodes");
}

/// A result published now is stored within seconds: whatever the test loaded the
/// server with, ingest was not stalled by it.
fn ingest_goes_on(d: &Deployment) {
    let node = d.node("later");
    publish_raw(
        &d.topology().master_exchange,
        "",
        &[result(
            &node,
            "facter",
            r#"{"n":1}"#,
            "2026-01-01T00:00:00Z",
        )],
    );
    d.wait_document(&node, 20, |doc| doc["facter"]["n"] == 1);
}
