//! Orchestration on the real brokers: ping discovery, the request ledger
//! (`vogeler-admin requests`), scheduled inventory, heartbeats, `-n all --wait` and
//! `--output` (each once on RabbitMQ and once on NATS JetStream), and the node-queue policy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn json_out(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(o)))
}

/// Polls `f` until it returns `Some` or `secs` pass (then panics with `what`).
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what} did not happen within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ping_discovers_the_running_clients_only(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[("hello.cfg", plugin("hello", "echo hello", "output").1)],
    );
    let (a, b, never) = (d.node("a1"), d.node("b1"), d.node("c1"));
    let _server = d.server(&[]);
    let _clients = [d.client(&a, &[]), d.client(&b, &[])];

    let out = d.runner(&[
        "-x",
        "hello",
        "--ping",
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = json_out(&out);
    assert_eq!(s["discovered"], json!([a.clone(), b.clone()]), "{s}");
    assert_eq!(s["answered"], json!([a.clone(), b.clone()]), "{s}");
    assert!(!s.to_string().contains(&never), "{s}");

    // Globs filter the answering nodes.
    let glob = format!("{}-a*", d.id);
    let out = d.runner(&[
        "-x",
        "hello",
        "--ping",
        "-n",
        &glob,
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(json_out(&out)["answered"], json!([a.clone()]));

    // Filters need the store: refused as a usage error.
    let out = d.runner(&["-x", "hello", "--ping", "-W", "facter.os.family=Debian"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--ping"), "{}", text(&out));
}

#[test]
fn ping_discovers_the_running_clients_only_on_rabbitmq() {
    ping_discovers_the_running_clients_only(Bus::Rabbit);
}

#[test]
fn ping_discovers_the_running_clients_only_on_nats() {
    ping_discovers_the_running_clients_only(Bus::Nats);
}

fn the_ledger_shows_stored_error_and_missing_nodes(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[("hello.cfg", plugin("hello", "echo hello", "output").1)],
    );
    let empty = d.path("no-plugins");
    std::fs::create_dir_all(&empty).expect("empty plugin dir");
    let (ok, bad, gone) = (d.node("ok"), d.node("bad"), d.node("gone"));
    let _server = d.server(&[]);
    let _ok = d.client(&ok, &[]);
    let _bad = d.client(&bad, &["-p", empty.to_str().expect("utf-8 path")]);
    // Its queue exists, its client is stopped: the request waits there and expires.
    d.client(&gone, &[]).stop();

    let targets = format!("{ok},{bad},{gone}");
    let out = d.runner(&[
        "-x",
        "hello",
        "-n",
        &targets,
        "--ttl",
        "3",
        "--wait",
        "--timeout",
        "4s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let s = json_out(&out);
    let id = s["request_id"].as_str().expect("request id").to_string();
    assert_eq!(s["answered"], json!([ok.clone()]));
    assert_eq!(s["no_answer"], json!([gone.clone()]));
    assert_eq!(s["silent"], s["no_answer"], "{s}");

    // The list: once the ttl passed, the node that never answered is missing.
    let row = eventually(20, "the request expiring in the ledger", || {
        let out = d.admin(&["requests", "--format", "json"]);
        assert!(out.status.success(), "{}", text(&out));
        let rows = json_out(&out);
        let row = rows
            .as_array()?
            .iter()
            .find(|r| r["id"] == json!(id))?
            .clone();
        (row["state"] == "expired").then_some(row)
    });
    assert_eq!(row["command"], "hello");
    assert_eq!(row["expected"], 3);
    assert_eq!(row["stored"], 1);
    assert_eq!(row["errors"], 1);
    assert_eq!(row["missing"], 1);

    let table = text(&d.admin(&["requests"]));
    assert!(table.contains("ID") && table.contains("STATE"), "{table}");
    assert!(table.contains(&id) && table.contains("expired"), "{table}");

    // One request: per node.
    let out = d.admin(&["requests", &id, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let nodes: Vec<(String, String)> = json_out(&out)
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or_default().to_string(),
                r["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut want = vec![
        (ok.clone(), "stored".to_string()),
        (bad.clone(), "error".to_string()),
        (gone.clone(), "missing".to_string()),
    ];
    want.sort();
    assert_eq!(nodes, want);
    let detail = json_out(&out);
    let error_row = detail
        .as_array()
        .and_then(|r| r.iter().find(|r| r["node"] == json!(bad)))
        .expect("error row");
    assert!(
        error_row["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown plugin \"hello\"") && e.contains("no plugins")),
        "{error_row}"
    );
    let table = text(&d.admin(&["requests", &id]));
    assert!(table.contains("OUTCOME"), "{table}");
    assert!(
        table.contains(&gone) && table.contains("missing"),
        "{table}"
    );
    assert!(
        table.contains("(hello)") && table.contains("expired"),
        "{table}"
    );

    // An unknown id is an error naming it.
    let out = d.admin(&["requests", "no-such-request"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no-such-request"), "{}", text(&out));
}

#[test]
fn the_ledger_shows_stored_error_and_missing_nodes_on_rabbitmq() {
    the_ledger_shows_stored_error_and_missing_nodes(Bus::Rabbit);
}

#[test]
fn the_ledger_shows_stored_error_and_missing_nodes_on_nats() {
    the_ledger_shows_stored_error_and_missing_nodes(Bus::Nats);
}

/// How many times `key` of `node` changed, from `vogeler-admin history`.
fn changes_of(d: &Deployment, node: &str, key: &str) -> usize {
    let out = d.admin(&["history", node, "--format", "json"]);
    if !out.status.success() {
        return 0;
    }
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    let mut at: Vec<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["key"] == json!(key))
        .filter_map(|r| r["at"].as_str().map(str::to_string))
        .collect();
    at.dedup();
    at.len()
}

fn scheduled_runs_arrive_and_heartbeats_move_last_seen(bus: Bus) {
    // `stamp` has no interval of its own; `tick` runs every second on its own.
    let d = Deployment::on(bus, &[
        plugin_ref(plugin("stamp", "date +%s%N", "output")),
        (
            "tick.cfg",
            "[tick]\nname = tick\ndescription = t\ncommand = date +%s%N\nresult_format = output\ninterval = 1\n"
                .to_string(),
        ),
    ]);
    let empty = d.path("no-plugins");
    std::fs::create_dir_all(&empty).expect("empty plugin dir");
    let (own, all, quiet) = (d.node("own"), d.node("all"), d.node("quiet"));
    let _server = d.server(&[]);
    let _own = d.client(&own, &["--heartbeat-interval", "0"]);
    let _all = d.client(&all, &["--interval", "1", "--heartbeat-interval", "0"]);
    let _quiet = d.client(
        &quiet,
        &[
            "-p",
            empty.to_str().expect("utf-8 path"),
            "--heartbeat-interval",
            "1",
        ],
    );

    // Every client pushes on its own: several runs within a few seconds.
    eventually(30, "three scheduled runs of tick on own", || {
        (changes_of(&d, &own, "tick") >= 3).then_some(())
    });
    eventually(30, "three scheduled runs of stamp on all", || {
        (changes_of(&d, &all, "stamp") >= 3).then_some(())
    });
    let doc = d.document(&all).expect("all stored");
    assert!(doc.get("tick").is_some(), "{doc}");
    // Only plugins with an interval run without [client] interval.
    let doc = d.document(&own).expect("own stored");
    assert!(doc.get("stamp").is_none(), "{doc}");

    // Heartbeats alone create the node and keep moving last_seen.
    let first = d.wait_document(&quiet, 20, |doc| doc["last_seen"].is_string());
    let later = d.wait_document(&quiet, 20, |doc| doc["last_seen"] != first["last_seen"]);
    assert!(later.get("tick").is_none(), "{later}");
    assert_eq!(later["created_at"], first["created_at"]);
}

#[test]
fn scheduled_runs_arrive_and_heartbeats_move_last_seen_on_rabbitmq() {
    scheduled_runs_arrive_and_heartbeats_move_last_seen(Bus::Rabbit);
}

#[test]
fn scheduled_runs_arrive_and_heartbeats_move_last_seen_on_nats() {
    scheduled_runs_arrive_and_heartbeats_move_last_seen(Bus::Nats);
}

fn plugin_ref((name, body): (String, String)) -> (&'static str, String) {
    (Box::leak(name.into_boxed_str()), body)
}

#[test]
fn setup_prints_the_node_queue_policy() {
    let d = Deployment::new(&[]);
    let out = d.admin(&["setup", "--messaging", "--node-queue-max-length", "250"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    let master = format!("{}\\.master\\.in", d.id);
    let dead = format!("{}\\.dead", d.id);
    let vhost = common::vhost();
    let want = format!(
        "rabbitmqctl set_policy -p {vhost} --apply-to queues vogeler-node-queues '^(?!({master}|{dead}|amq\\..*)$).*' '{{\"max-length\":250,\"overflow\":\"drop-head\"}}'"
    );
    assert!(t.contains(&want), "{t}\nwanted: {want}");
}

/// Client arguments for a node the registry learns of within a second (a heartbeat).
const BEATING: &[&str] = &["--heartbeat-interval", "1"];

/// Waits until the registry has seen `node` (its first heartbeat), so `-n all` expects it.
fn wait_seen(d: &Deployment, node: &str) {
    d.wait_document(node, 20, |doc| doc["last_seen"].is_string());
}

/// Issue 18: `-n all --wait` expects the registry: a stopped node is named silent
/// (exit 3), a node the registry does not know is unexpected but a success.
fn a_broadcast_names_the_silent_and_the_unexpected(bus: Bus) {
    // The runner ends once the expected nodes answered: theirs is the slow plugin, so
    // the unexpected node's quick answer comes first.
    let (name, slow) = plugin("hello", "sh -c 'sleep 2; echo hello'", "output");
    let d = Deployment::on(bus, &[(name.as_str(), slow)]);
    let fast = d.path("fast");
    std::fs::create_dir_all(&fast).expect("plugin dir");
    std::fs::write(fast.join(&name), plugin("hello", "echo hello", "output").1)
        .expect("plugin file");
    let (a, b, gone, new) = (d.node("a"), d.node("b"), d.node("gone"), d.node("new"));
    let _server = d.server(&[]);
    let _clients = [d.client(&a, BEATING), d.client(&b, BEATING)];
    // No heartbeat: the registry does not know it until it answers.
    let fast = fast.to_str().expect("utf-8 path");
    let _new = d.client(&new, &["--heartbeat-interval", "0", "-p", fast]);
    wait_seen(&d, &a);
    wait_seen(&d, &b);

    let out = d.runner(&[
        "-x",
        "hello",
        "-n",
        "all",
        "--wait",
        "--timeout",
        "15s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = json_out(&out);
    assert_eq!(s["discovered"], json!([a.clone(), b.clone()]), "{s}");
    let mut answered = vec![a.clone(), b.clone(), new.clone()];
    answered.sort();
    assert_eq!(s["answered"], json!(answered), "{s}");
    assert_eq!(s["unexpected"], json!([new.clone()]), "{s}");
    assert_eq!(s["no_answer"], json!([]), "{s}");

    // Known to the registry, then stopped: its queue keeps the request, nobody answers.
    let mut g = d.client(&gone, BEATING);
    wait_seen(&d, &gone);
    g.stop();
    let out = d.runner(&["-x", "hello", "-n", "all", "--wait", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&format!("silent      {gone}")), "{t}");
    assert!(t.contains(&format!("stored      {a}")), "{t}");
    assert!(t.contains(&format!("stored      {b}")), "{t}");
    assert!(t.contains("silent: 1"), "{t}");
}

#[test]
fn a_broadcast_names_the_silent_and_the_unexpected_on_rabbitmq() {
    a_broadcast_names_the_silent_and_the_unexpected(Bus::Rabbit);
}

#[test]
fn a_broadcast_names_the_silent_and_the_unexpected_on_nats() {
    a_broadcast_names_the_silent_and_the_unexpected(Bus::Nats);
}

/// Issue 18: with the expected set known there is no quiet window, so a plugin that
/// takes 3 s is waited for within `--timeout`, not dropped.
fn a_broadcast_waits_for_a_slow_plugin(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[(
            "slow.cfg",
            plugin("slow", "sh -c 'sleep 3; echo slow'", "output").1,
        )],
    );
    let (a, b) = (d.node("a"), d.node("b"));
    let _server = d.server(&[]);
    let _clients = [d.client(&a, BEATING), d.client(&b, BEATING)];
    wait_seen(&d, &a);
    wait_seen(&d, &b);
    let out = d.runner(&["-x", "slow", "--wait", "--timeout", "15s", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = json_out(&out);
    assert_eq!(s["answered"], json!([a.clone(), b.clone()]), "{s}");
    assert_eq!(s["no_answer"], json!([]), "{s}");
}

#[test]
fn a_broadcast_waits_for_a_slow_plugin_on_rabbitmq() {
    a_broadcast_waits_for_a_slow_plugin(Bus::Rabbit);
}

#[test]
fn a_broadcast_waits_for_a_slow_plugin_on_nats() {
    a_broadcast_waits_for_a_slow_plugin(Bus::Nats);
}

/// Issue 18: with no server to answer discovery the runner says so in one line and
/// discovers by ping; with no server nothing is stored, so the pinged nodes are silent.
fn without_a_server_a_broadcast_falls_back_to_ping(bus: Bus) {
    let d = Deployment::on(
        bus,
        &[("hello.cfg", plugin("hello", "echo hello", "output").1)],
    );
    let (a, b) = (d.node("a"), d.node("b"));
    let _clients = [d.client(&a, BEATING), d.client(&b, BEATING)];
    let out = d.runner(&[
        "-x",
        "hello",
        "--wait",
        "--discovery-timeout",
        "2s",
        "--timeout",
        "3s",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let fallback: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("discovering by --ping instead"))
        .collect();
    assert_eq!(fallback.len(), 1, "{}", text(&out));
    let results = match bus {
        Bus::Rabbit => format!("{}.master.in", d.id),
        Bus::Nats => format!("stream {}_RESULTS, consumer servers", d.id),
    };
    assert!(fallback[0].contains(&results), "{bus:?}: {err}");
    let s = json_out(&out);
    assert_eq!(s["discovered"], json!([a.clone(), b.clone()]), "{s}");
    assert_eq!(s["no_answer"], json!([a.clone(), b.clone()]), "{s}");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[test]
fn without_a_server_a_broadcast_falls_back_to_ping_on_rabbitmq() {
    without_a_server_a_broadcast_falls_back_to_ping(Bus::Rabbit);
}

#[test]
fn without_a_server_a_broadcast_falls_back_to_ping_on_nats() {
    without_a_server_a_broadcast_falls_back_to_ping(Bus::Nats);
}

/// The runner's stdout lines that start with `node: `.
fn lines_of<'a>(stdout: &'a str, node: &str) -> Vec<&'a str> {
    let prefix = format!("{node}: ");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// Issue 18: `--output [PATH]` prints each node's stored value (or the value at a
/// dotted path in it) as `NODE: VALUE` before the summary, a string bare and anything
/// else as compact JSON; a missing path and an error result say so; `--json` puts the
/// values in the summary instead.
fn output_prints_each_nodes_value_or_a_path_in_it(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    let (a, b, bad) = (d.node("a"), d.node("b"), d.node("bad"));
    let facts = [
        (
            a.clone(),
            json!({"operatingsystem": "Debian", "processorcount": 2,
                   "disks": [{"size": 10}], "tags": ["web", "eu"]}),
        ),
        (
            b.clone(),
            json!({"operatingsystem": "Alpine", "processorcount": 8,
                   "disks": [{"size": 20}, {"size": 30}], "tags": []}),
        ),
    ];
    let _server = d.server(&[]);
    let mut clients = Vec::new();
    for (node, value) in &facts {
        let dir = d.path(&format!("plugins-{node}"));
        std::fs::create_dir_all(&dir).expect("plugin dir");
        let file = dir.join("facts.json");
        std::fs::write(&file, value.to_string()).expect("facts file");
        let (name, cfg) = plugin("facts", &format!("cat {}", file.display()), "json");
        std::fs::write(dir.join(name), cfg).expect("plugin file");
        clients.push(d.client(node, &["-p", dir.to_str().expect("utf-8 path")]));
    }
    // No plugins at all: its answer is an error result.
    let empty = d.path("no-plugins");
    std::fs::create_dir_all(&empty).expect("empty plugin dir");
    clients.push(d.client(&bad, &["-p", empty.to_str().expect("utf-8 path")]));
    let both = format!("{a},{b}");
    let run = |extra: &[&str]| {
        let mut args = vec!["-x", "facts", "-n", &both, "--timeout", "20s"];
        args.extend_from_slice(extra);
        let out = d.runner(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // A path to a string prints it bare, one line per node, before the summary
    // (--output implies --wait: the summary is the --wait one).
    let out = run(&["--output", "operatingsystem"]);
    assert_eq!(lines_of(&out, &a), ["Debian"], "{out}");
    assert_eq!(lines_of(&out, &b), ["Alpine"], "{out}");
    let summary_at = out.find("request ").expect("the summary");
    for node in [&a, &b] {
        let line = out.find(&format!("{node}: ")).expect("a line");
        assert!(line < summary_at, "{out}");
        assert!(out.contains(&format!("stored      {node}")), "{out}");
    }
    assert!(out.contains("answered: 2"), "{out}");

    // Numbers, array indices and non-string values print as compact JSON.
    let out = run(&["--output", "processorcount"]);
    assert_eq!(lines_of(&out, &a), ["2"], "{out}");
    assert_eq!(lines_of(&out, &b), ["8"], "{out}");
    let out = run(&["--output", "disks.1.size"]);
    assert_eq!(
        lines_of(&out, &a),
        ["(no disks.1.size in the value)"],
        "{out}"
    );
    assert_eq!(lines_of(&out, &b), ["30"], "{out}");
    let out = run(&["--output", "tags"]);
    assert_eq!(lines_of(&out, &a), [r#"["web","eu"]"#], "{out}");
    assert_eq!(lines_of(&out, &b), ["[]"], "{out}");

    // Without a PATH: the whole value (a following flag is not taken for a path).
    let out = run(&["--output", "--wait"]);
    for (node, value) in &facts {
        let lines = lines_of(&out, node);
        assert_eq!(lines.len(), 1, "{out}");
        let printed: Value = serde_json::from_str(lines[0]).expect("compact JSON");
        assert_eq!(&printed, value, "{out}");
        assert!(!lines[0].contains(": "), "compact: {out}");
    }

    // A path that is not there: said per node, and not a failure.
    let out = run(&["--output", "kernel.release"]);
    for node in [&a, &b] {
        assert_eq!(
            lines_of(&out, node),
            ["(no kernel.release in the value)"],
            "{out}"
        );
    }

    // --json: no lines, the values in the summary.
    let json_run = |path: &str| -> Value {
        serde_json::from_str(&run(&["--output", path, "--json"])).expect("--json summary")
    };
    let s = json_run("operatingsystem");
    assert_eq!(s["answered"], json!([a.clone(), b.clone()]), "{s}");
    assert_eq!(s["output"]["path"], "operatingsystem", "{s}");
    assert_eq!(
        s["output"]["values"],
        json!({a.clone(): "Debian", b.clone(): "Alpine"}),
        "{s}"
    );
    assert_eq!(s["output"]["missing"], json!([]), "{s}");
    let s = json_run("nope");
    assert_eq!(s["output"]["values"], json!({}), "{s}");
    assert_eq!(s["output"]["missing"], json!([a.clone(), b.clone()]), "{s}");

    // An error result: `NODE: error: MESSAGE`, and the --wait exit status (1).
    let targets = format!("{a},{bad}");
    let out = d.runner(&[
        "-x",
        "facts",
        "-n",
        &targets,
        "--timeout",
        "20s",
        "--output",
        "operatingsystem",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(lines_of(&stdout, &a), ["Debian"], "{stdout}");
    let errors = lines_of(&stdout, &bad);
    assert_eq!(errors.len(), 1, "{stdout}");
    assert!(errors[0].starts_with("error: "), "{stdout}");
    assert!(errors[0].contains("facts"), "{stdout}");

    // A malformed path is a usage error, before anything is sent.
    let out = d.runner(&["-x", "facts", "-n", &both, "--output", "a..b"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn output_prints_each_nodes_value_or_a_path_in_it_on_rabbitmq() {
    output_prints_each_nodes_value_or_a_path_in_it(Bus::Rabbit);
}

#[test]
fn output_prints_each_nodes_value_or_a_path_in_it_on_nats() {
    output_prints_each_nodes_value_or_a_path_in_it(Bus::Nats);
}

/// Issue 18: a value over the protocol's bound (64 KiB of JSON) is not sent back; the
/// line says so and where to read it, and the node still counts as stored.
fn output_says_when_a_value_is_too_large_to_send_back(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    let big = d.path("big.json");
    let value = json!({"blob": "x".repeat(70 * 1024), "small": "yes"});
    std::fs::write(&big, value.to_string()).expect("big file");
    let (name, cfg) = plugin("big", &format!("cat {}", big.display()), "json");
    std::fs::write(d.plugins.join(name), cfg).expect("plugin file");
    let node = d.node("a");
    let _server = d.server(&[]);
    let _client = d.client(&node, &[]);

    let out = d.runner(&[
        "-x",
        "big",
        "-n",
        &node,
        "--timeout",
        "20s",
        "--output",
        "small",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        lines_of(&stdout, &node),
        [format!(
            "(value over 64 KiB, not sent back: vogeler-admin node {node} big.small)"
        )],
        "{stdout}"
    );
    assert!(stdout.contains(&format!("stored      {node}")), "{stdout}");
    // It was stored all the same, and the line's hint reads it.
    let doc = d.document(&node).expect("the document");
    assert_eq!(doc["big"]["small"], "yes", "{doc}");
    let hint = d.admin(&["node", &node, "big.small"]);
    assert!(hint.status.success(), "{}", text(&hint));
    assert!(
        String::from_utf8_lossy(&hint.stdout).contains("yes"),
        "{}",
        text(&hint)
    );

    let out = d.runner(&[
        "-x",
        "big",
        "-n",
        &node,
        "--timeout",
        "20s",
        "--output",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = json_out(&out);
    assert_eq!(s["output"]["truncated"], json!([node.clone()]), "{s}");
    assert_eq!(s["output"]["values"], json!({}), "{s}");
    assert_eq!(s["output"]["path"], Value::Null, "{s}");
}

#[test]
fn output_says_when_a_value_is_too_large_to_send_back_on_rabbitmq() {
    output_says_when_a_value_is_too_large_to_send_back(Bus::Rabbit);
}

#[test]
fn output_says_when_a_value_is_too_large_to_send_back_on_nats() {
    output_says_when_a_value_is_too_large_to_send_back(Bus::Nats);
}
