//! Fault tests: the broker restarted or crashed mid-ingest (on a private RabbitMQ node),
//! a member of a three-node cluster killed mid-ingest (quorum queues),
//! the server killed with SIGKILL mid-ingest (on either broker; NATS's own broker
//! faults are in `nats_faults.rs`), the store taken away for a while,
//! thousands of poison messages mixed into good traffic, and two servers writing the
//! same nodes. Every test uses its own names, node and database, so the suite runs in
//! parallel; waits have margins of seconds and the assertions are counts.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::ingest::*;
use common::pg::PgDatabase;
use common::*;
use vogeler_store::Store;
use vogeler_transport::Outgoing;

/// A broker outage mid-ingest on a private node: results keep flowing from a publisher
/// (confirms), the broker goes down (`crash`: SIGKILL, else a clean SIGTERM stop) and
/// comes back on the same mnesia directory. Every confirmed result must be stored
/// exactly once, and the server, both clients and a runner started afterwards work.
fn broker_outage_mid_ingest(crash: bool) {
    let mut rabbit = RabbitNode::start();
    eprintln!(
        "private node {} started in {:?}",
        rabbit.name, rabbit.starts
    );
    let plugins = [plugin("stamp", "date +%s%N", "output")];
    let plugins: Vec<(&str, String)> = plugins
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    let d = Deployment::new(&plugins).with_broker(&rabbit.amqp());
    let t = d.topology();
    let mut server = d.server(&[]);
    let (a, b) = (d.node("agent-a"), d.node("agent-b"));
    let mut clients = [d.client(&a, &[]), d.client(&b, &[])];

    let prefix = format!("{}-r", d.id);
    // The outage starts once results flow and the server is storing them; the
    // publisher keeps going through it (failing, reconnecting) until it confirmed
    // 2000 more after the broker came back.
    let (flow, stored_before) = flowing_results(
        &d,
        Via::Amqp(d.broker(), t.master_exchange.clone()),
        &prefix,
    );
    let before = flow.confirmed();
    if crash {
        rabbit.crash();
    } else {
        rabbit.restart();
    }
    let back = Instant::now();
    let at_back = flow.confirmed();
    eprintln!(
        "broker {} at {before} confirmed, {stored_before} stored; starts took {:?}",
        if crash { "crashed" } else { "restarted" },
        rabbit.starts
    );
    flow.wait_confirmed(at_back + 2000, 90);
    assert!(
        flow.failures() >= 1,
        "the publisher never saw the broker go away"
    );
    let nodes = all_confirmed_stored(&d, flow, &prefix, || {
        format!(
            "after the broker came back; server log:\n{}\n{}",
            server.log_text(),
            rabbit.log_text()
        )
    });
    let n = nodes.len();
    assert_running(&mut server);
    for c in clients.iter_mut() {
        assert_running(c);
    }

    eprintln!(
        "all {n} results stored {:?} after the broker was back",
        back.elapsed()
    );
    // A runner started after the outage reaches both clients through the server.
    let out = d.runner(&[
        "-x",
        "stamp",
        "-n",
        &format!("{a},{b}"),
        "--wait",
        "--timeout",
        "40s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "runner after the broker came back: {}\nclient log:\n{}\nserver log:\n{}",
        out_text(&out),
        clients[0].log_text(),
        server.log_text()
    );
    for node in [&a, &b] {
        d.wait_document(node, 20, |doc| doc["stamp"].is_array());
    }
    eprintln!(
        "runner answered {:?} after the broker was back",
        back.elapsed()
    );
    for (who, log) in [
        ("server", server.log_text()),
        ("client", clients[0].log_text()),
    ] {
        for l in log.lines().filter(|l| l.contains("broker")) {
            eprintln!("{who}: {l}");
        }
    }
    assert!(
        server.log_text().contains("broker session lost"),
        "the server should have noticed the outage:\n{}",
        server.log_text()
    );
    server.stop();
    for c in clients.iter_mut() {
        c.stop();
    }
    assert_history_once_sqlite(&d, &nodes);
}

#[test]
fn broker_restarted_mid_ingest_loses_nothing_and_everyone_reconnects() {
    broker_outage_mid_ingest(false);
}

#[test]
fn broker_crashed_mid_ingest_loses_nothing_and_everyone_reconnects() {
    broker_outage_mid_ingest(true);
}

/// A node given an open-file limit runs with it (the fleet benchmark depends on this: at
/// 1,024 descriptors 10,000 node queues thrash) and `rabbitmqctl status` reports it.
#[test]
fn a_private_node_runs_with_the_open_file_limit_it_was_given() {
    let node = RabbitNode::start_with(NodeSetup {
        open_files: Some(4096),
        ..Default::default()
    });
    let out = node.ctl(&["status", "--formatter", "json"]);
    assert!(
        out.status.success(),
        "rabbitmqctl status: {}",
        out_text(&out)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let limit = status["file_descriptors"]["total_limit"]
        .as_u64()
        .expect("file descriptor limit");
    // RabbitMQ keeps about 100 descriptors back from the process limit.
    assert!((3900..=4096).contains(&limit), "limit {limit}");
}

#[test]
fn server_killed_repeatedly_mid_ingest_stores_each_result_once() {
    server_killed_repeatedly_mid_ingest(Bus::Rabbit);
}

/// The same on NATS: a killed server's unacked results go back to the `servers`
/// consumer after `ack_wait` and the next server stores them, once.
#[test]
fn server_killed_repeatedly_mid_ingest_stores_each_result_once_on_nats() {
    server_killed_repeatedly_mid_ingest(Bus::Nats);
}

fn server_killed_repeatedly_mid_ingest(bus: Bus) {
    let d = Deployment::on(bus, &[]);
    // Small batches: many commits per round, so a kill lands mid-backlog.
    let nats = match bus {
        Bus::Nats => format!("[nats]\nack_wait = {}\n", NATS_TEST_ACK_WAIT.as_secs()),
        Bus::Rabbit => String::new(),
    };
    d.write_conf(&format!(
        "{nats}[server]\nbatch_size = 100\nprefetch = 300\n"
    ));
    let t = d.topology();
    // Started once to declare the queue; each round then starts its own.
    d.server(&[]).stop();
    // Progress is read in-process (WAL: readers beside the writer): spawning
    // `vogeler-admin` per poll is too slow to catch the server mid-backlog.
    let rt = rt();
    let store = vogeler_store::sqlite::SqliteStore::open(&d.db).expect("open SQLite store");
    let (rounds, per_round) = (4, 1500);
    let n = rounds * per_round;
    let prefix = format!("{}-k", d.id);
    let nodes: Vec<String> = (0..n).map(|i| format!("{prefix}{i:05}")).collect();
    // Each round: a backlog waits in the broker, a server starts on it and is killed
    // with SIGKILL after its first commit (holding unacked deliveries); the next round's
    // server starts on what is left plus a new backlog.
    let mut interrupted = 0;
    for round in 0..rounds {
        let bodies: Vec<Vec<u8>> = nodes[round * per_round..(round + 1) * per_round]
            .iter()
            .map(|node| result_body(node, "hello", "hi"))
            .collect();
        match bus {
            Bus::Rabbit => publish_raw(&t.master_exchange, "", &bodies),
            Bus::Nats => d.publish_results(bodies.into_iter().map(Outgoing::new).collect()),
        }
        let published = (round + 1) * per_round;
        let mut server = d.server(&[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let count = || {
            rt.block_on(store.nodes())
                .expect("list nodes")
                .iter()
                .filter(|s| s.name.starts_with(&prefix))
                .count()
        };
        while count() < round * per_round + 100 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the server stalled; log:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill();
        let at_kill = count();
        eprintln!("round {round}: killed with {at_kill} of {published} stored");
        if at_kill < published {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 1,
        "no SIGKILL landed while a backlog was being stored; the test did not exercise it"
    );
    let mut server = d.server(&[]);
    let stored = wait_stored(&d, &prefix, n, 90);
    assert_eq!(
        stored,
        n,
        "every result stored; log:\n{}",
        server.log_text()
    );
    server.stop();
    assert_history_once_sqlite(&d, &nodes);
}

// --- RabbitMQ cluster ----------------------------------------------------------------

/// The port part of a member's AMQP URI as it appears in the programs' logs.
fn port_tag(node: &RabbitNode) -> String {
    format!("127.0.0.1:{}/", node.port)
}

/// `text` without terminal colour codes (`ESC [ … m`), which the programs write even to a file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines of `log` containing `what`.
fn lines_with<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// Issue #10: a three-node cluster with quorum queues, one node killed (SIGKILL) mid-ingest.
/// The node killed is the one the server (and client a) connected to, and the leader of
/// master.in. A publisher on another member keeps going; every confirmed result is stored
/// exactly once, the server fails over to another member, a runner and client b (its node
/// queue on a surviving member) work during the outage, and client a (its classic node queue
/// on the killed member) waits and answers again once the member is back.
#[test]
fn cluster_member_killed_mid_ingest_loses_nothing_and_everyone_carries_on() {
    let test_started = Instant::now();
    let mut cluster = RabbitCluster::start(3);
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    eprintln!("cluster {names:?} formed in {:?}", cluster.formed_in);
    let plugins = [plugin("stamp", "date +%s%N", "output")];
    let plugins: Vec<(&str, String)> = plugins
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    let d = Deployment::new(&plugins).with_broker(&cluster.qhost());
    d.write_conf("queue_type = quorum\n");
    let t = d.topology();
    let mut server = d.server(&["--qhost", &cluster.qhost()]);
    let (a, b) = (d.node("agent-a"), d.node("agent-b"));
    let mut client_a = d.client(&a, &[]);
    let mut client_b = d.client(&b, &["--qhost", &cluster.qhost_from(1)]);

    // Where everything lives: master.in replicated on all three members, led by member 1
    // (declared through it); each node queue on the member its client declared it through.
    let master = cluster.queue(1, &t.master_queue);
    assert_eq!(master["type"], "quorum", "{master}");
    assert_eq!(
        master["members"].as_array().map(Vec::len),
        Some(3),
        "{master}"
    );
    assert_eq!(master["leader"], names[0], "{master}");
    for (node, home) in [(&a, 0), (&b, 1)] {
        let q = cluster.queue(1, node);
        assert_eq!(q["type"], "classic", "{q}");
        let local = cluster.local_queues(home);
        assert!(
            local.contains(node),
            "node queue {node} should live on {}: it has {local:?}",
            names[home]
        );
    }

    let prefix = format!("{}-c", d.id);
    let (flow, stored_before) = flowing_results(
        &d,
        Via::Amqp(cluster.nodes[1].broker(), t.master_exchange.clone()),
        &prefix,
    );
    let before = flow.confirmed();
    cluster.nodes[0].kill();
    let killed = Instant::now();
    eprintln!(
        "member {} killed at {before} confirmed, {stored_before} stored",
        names[0]
    );

    // The publisher on member 2 carries on: 2000 more confirmed while member 1 is down.
    flow.wait_confirmed(before + 2000, 90);
    eprintln!(
        "publisher confirmed 2000 more {:?} after the kill",
        killed.elapsed()
    );
    let leader = cluster.queue(1, &t.master_queue)["leader"].clone();
    assert!(
        leader.as_str().is_some_and(|l| l != names[0].as_str()),
        "master.in should have a new leader, has {leader}"
    );
    // A runner and client b work through the surviving members during the outage.
    let out = d.runner(&["-x", "stamp", "-n", &b, "--wait", "--timeout", "40s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "runner to client b during the outage: {}\nclient b log:\n{}\nserver log:\n{}",
        out_text(&out),
        client_b.log_text(),
        server.log_text()
    );
    eprintln!(
        "runner answered by client b {:?} after the kill",
        killed.elapsed()
    );
    let nodes = all_confirmed_stored(&d, flow, &prefix, || {
        format!("with member 1 down; server log:\n{}", server.log_text())
    });
    let n = nodes.len();
    eprintln!(
        "all {n} results stored {:?} after the kill",
        killed.elapsed()
    );
    assert_running(&mut server);
    assert_running(&mut client_a);
    assert_running(&mut client_b);

    // The server lost member 1 and reconnected to another member.
    let log = server.log_text();
    let connected = lines_with(&log, "connected to broker");
    assert!(
        log.contains("broker session lost")
            && connected.len() >= 2
            && connected
                .last()
                .is_some_and(|l| !l.contains(&port_tag(&cluster.nodes[0]))),
        "the server should have failed over from {} to another member:\n{log}",
        names[0]
    );
    // Client a's node queue lives on the dead member: the others refuse it ("home node
    // ... is down or inaccessible"), and the client retries with growing delays (the
    // backoff resets only once a session consumes), not several times a second.
    // (Before the backoff waited for a consuming session, it reset at every connect: ~7
    // refusals a second, each retried within 200 ms.)
    let log_a = strip_ansi(&client_a.log_text());
    let retries: Vec<u64> = lines_with(&log_a, "is down or inaccessible")
        .iter()
        .filter(|l| l.contains("broker session lost"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("retry_in_ms=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!(
        "client a refused {} times in the {:?} since the kill, retrying in {retries:?} ms",
        retries.len(),
        killed.elapsed()
    );
    // Delay k is uniform in [0, 200·2^k] ms: five or more all under 200 ms would be the
    // old behaviour (by chance: 1 in 30,000).
    let backs_off = (1..20).contains(&retries.len())
        && (retries.len() < 5 || retries.iter().any(|ms| *ms > 200));
    assert!(
        backs_off,
        "client a should retry its refused node queue with growing delays, got {retries:?}:\n{log_a}"
    );
    // A request for client a meanwhile is not lost silently: the runner reports it
    // unroutable (exit status 3), as for a node whose client never started.
    let out = d.runner(&["-x", "stamp", "-n", &a, "--wait", "--timeout", "20s"]);
    assert!(
        out.status.code() == Some(3)
            && String::from_utf8_lossy(&out.stdout).contains(&format!("unroutable  {a}")),
        "runner to client a during the outage: {}",
        out_text(&out)
    );

    cluster.nodes[0].start_again();
    eprintln!(
        "member {} back {:?} after the kill (restart took {:?})",
        names[0],
        killed.elapsed(),
        cluster.nodes[0].starts.last()
    );
    let running = cluster.running_nodes(1);
    assert_eq!(running.len(), 3, "member 1 rejoined: {running:?}");
    let out = d.runner(&[
        "-x",
        "stamp",
        "-n",
        &format!("{a},{b}"),
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "runner to both clients after member 1 came back: {}\nclient a log:\n{}\nserver log:\n{}",
        out_text(&out),
        client_a.log_text(),
        server.log_text()
    );
    for node in [&a, &b] {
        d.wait_document(node, 20, |doc| doc["stamp"].is_array());
    }
    eprintln!(
        "both clients answered {:?} after the kill; test took {:?}",
        killed.elapsed(),
        test_started.elapsed()
    );
    server.stop();
    client_a.stop();
    client_b.stop();
    assert_history_once_sqlite(&d, &nodes);
}

// --- PostgreSQL ---------------------------------------------------------------------

/// A deployment whose servers store into a PostgreSQL database of its own.
fn on_postgres() -> (Deployment, PgDatabase) {
    let d = Deployment::new(&[]);
    let db = PgDatabase::new(&d.id);
    (d.with_store("postgres", &db.url), db)
}

#[test]
fn store_unavailable_for_a_while_holds_results_and_resumes() {
    let (d, db) = on_postgres();
    let t = d.topology();
    let mut server = d.server(&[]);
    let prefix = format!("{}-p", d.id);
    let nodes: Vec<String> = (0..1500).map(|i| format!("{prefix}{i:05}")).collect();
    let bodies: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| result_body(n, "hello", "hi"))
        .collect();

    publish_raw_at(&d.broker(), &t.master_exchange, "", &bodies[..500]);
    assert_eq!(wait_stored(&d, &prefix, 500, 30), 500, "first 500 stored");

    db.take_away();
    // Results arrive while the store is gone: they must wait in the broker.
    publish_raw_at(&d.broker(), &t.master_exchange, "", &bodies[500..]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("store unavailable") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        server.log_text().contains("store unavailable"),
        "the server never noticed the store was gone:\n{}",
        server.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_running(&mut server);
    db.give_back();

    let stored = wait_stored(&d, &prefix, nodes.len(), 60);
    assert_eq!(
        stored,
        nodes.len(),
        "every result stored after the store came back; log:\n{}",
        server.log_text()
    );
    server.stop();
    let store = db.store();
    rt().block_on(assert_history_once(&store, &nodes));
}

#[test]
fn two_servers_on_postgres_lose_no_update() {
    let (d, db) = on_postgres();
    let t = d.topology();
    // Small batches so both servers hold deliveries for the same nodes at once.
    d.write_conf("[server]\nbatch_size = 20\nprefetch = 40\n");
    let mut s1 = d.server(&[]);
    let mut s2 = d.server(&[]);
    // An odd node count, so round-robin delivery does not split the nodes between the
    // servers by parity: each server gets every node.
    let (nodes, keys) = (37, 50);
    let mut bodies = Vec::new();
    for k in 0..keys {
        for i in 0..nodes {
            bodies.push(result_body(
                &format!("{}-s{i:03}", d.id),
                &format!("p{k:03}"),
                &format!("v{k}"),
            ));
        }
    }
    publish_raw_at(&d.broker(), &t.master_exchange, "", &bodies);
    let store = db.store();
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let missing: Vec<String> = rt().block_on(async {
            let mut missing = Vec::new();
            for i in 0..nodes {
                let node = format!("{}-s{i:03}", d.id);
                let doc = store
                    .node(&node)
                    .await
                    .expect("read node")
                    .map(|r| r.document());
                for k in 0..keys {
                    let key = format!("p{k:03}");
                    if doc.as_ref().and_then(|d| d.get(&key)).is_none() {
                        missing.push(format!("{node}/{key}"));
                    }
                }
            }
            missing
        });
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        missing.is_empty(),
        "{} keys lost (first: {:?}); logs:\n{}\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        s1.log_text(),
        s2.log_text()
    );
    // Both servers did part of the work.
    s1.stop();
    s2.stop();
    for (name, s) in [("first", &s1), ("second", &s2)] {
        assert!(
            !s.log_text().contains("panicked"),
            "{name} server panicked:\n{}",
            s.log_text()
        );
    }
    // One history entry per key: nothing applied twice, nothing lost.
    rt().block_on(async {
        for i in 0..nodes {
            let node = format!("{}-s{i:03}", d.id);
            let h = store.history(&node, None).await.expect("history").rows;
            let per_key: BTreeMap<String, usize> = h.iter().fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e.key.clone()).or_default() += 1;
                m
            });
            assert_eq!(per_key.len(), keys, "{node}: {per_key:?}");
            assert!(per_key.values().all(|c| *c == 1), "{node}: {per_key:?}");
        }
    });
}

/// One server on PostgreSQL has two batches in the store at once: a batch that shares a
/// node with one still in the store waits for it, so a node's results are applied in the
/// order they arrived and every change is in history (none turned stale by a later one
/// overtaking it).
#[test]
fn one_server_on_postgres_applies_each_nodes_results_in_order() {
    let (d, db) = on_postgres();
    let t = d.topology();
    // Small batches, many in flight: each node is in nearly every batch.
    d.write_conf("[server]\nbatch_size = 7\nprefetch = 70\n");
    let mut server = d.server(&[]);
    let (nodes, values) = (5, 60);
    let mut bodies = Vec::new();
    for k in 0..values {
        for i in 0..nodes {
            bodies.push(
                format!(
                    r#"{{"v":1,"kind":"result","node":"{}-o{i}","plugin":"p","format":"output","data":["v{k}"],"duration_ms":1,"collected_at":"2026-01-01T00:{:02}:{:02}Z"}}"#,
                    d.id,
                    k / 60,
                    k % 60
                )
                .into_bytes(),
            );
        }
    }
    publish_raw_at(&d.broker(), &t.master_exchange, "", &bodies);
    let store = db.store();
    let deadline = Instant::now() + Duration::from_secs(60);
    let histories = loop {
        let histories: Vec<Vec<String>> = rt().block_on(async {
            let mut all = Vec::new();
            for i in 0..nodes {
                let node = format!("{}-o{i}", d.id);
                let rows = store.history(&node, Some("p")).await.expect("history").rows;
                all.push(
                    rows.iter()
                        .map(|e| e.new.as_ref().map(|v| v.to_string()).unwrap_or_default())
                        .collect(),
                );
            }
            all
        });
        if histories.iter().all(|h| h.len() >= values) || Instant::now() > deadline {
            break histories;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    server.stop();
    let log = server.log_text();
    for (i, h) in histories.iter().enumerate() {
        let want: Vec<String> = (0..values).map(|k| format!("[\"v{k}\"]")).collect();
        assert_eq!(
            h, &want,
            "node {i}: history out of order or missing; log:\n{log}"
        );
    }
    assert!(
        !log.contains("stale"),
        "a result was applied out of order:\n{log}"
    );
}

// --- poison --------------------------------------------------------------------------

#[test]
fn ten_thousand_poison_messages_mixed_into_good_traffic() {
    let d = Deployment::new(&[]);
    // Oversized means above 4 KiB here, so 100 oversized bodies stay small to publish.
    d.write_conf("[server]\nmax_message_bytes = 4096\n");
    let t = d.topology();
    let _server = d.server(&[]);
    let (good, bad) = (2000, 10_000);
    let oversized = 100;
    let prefix = format!("{}-g", d.id);
    type Make = Box<dyn Fn(usize) -> Vec<u8>>;
    let kinds: [(&str, Make); 6] = [
        (
            "not-json",
            Box::new(|i| format!("not json {i}").into_bytes()),
        ),
        ("bad-utf8", Box::new(|i| vec![0xff, 0xfe, (i % 200) as u8])),
        (
            "unknown-version",
            Box::new(|i| format!(r#"{{"v":{},"kind":"result"}}"#, 2 + i % 5).into_bytes()),
        ),
        (
            "unknown-kind",
            Box::new(|i| format!(r#"{{"v":1,"kind":"bogus{i}"}}"#).into_bytes()),
        ),
        (
            "unknown-shape",
            Box::new(|i| format!(r#"{{"unknown":"shape {i}"}}"#).into_bytes()),
        ),
        // A plugin named like a reserved document field: the store refuses it.
        ("refused", {
            let id = d.id.clone();
            Box::new(move |i| result_body(&format!("{id}-bad{i}"), "created_at", "x"))
        }),
    ];
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut bodies = Vec::with_capacity(good + bad);
    let mut g = 0;
    for i in 0..bad {
        let (reason, body) = if i < oversized {
            ("too-large", vec![b'x'; 4097 + i])
        } else {
            let (reason, make) = &kinds[i % kinds.len()];
            (*reason, make(i))
        };
        *expected.entry(reason.to_string()).or_default() += 1;
        bodies.push(body);
        // One good result after every fifth bad one.
        if i % 5 == 4 && g < good {
            bodies.push(result_body(&format!("{prefix}{g:05}"), "hello", "hi"));
            g += 1;
        }
    }
    assert_eq!(g, good);
    let started = Instant::now();
    publish_raw(&t.master_exchange, "", &bodies);
    let published = started.elapsed();

    let stored = wait_stored(&d, &prefix, good, 60);
    assert_eq!(stored, good, "every good result stored");
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead.len() < bad && Instant::now() < deadline {
        dead.extend(drain_queue(&t.dead_queue, Duration::from_millis(1000)));
    }
    eprintln!(
        "{} messages published in {published:?}; all stored and dead-lettered after {:?}",
        bodies.len(),
        started.elapsed()
    );
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for m in &dead {
        let reason = m.header("x-vogeler-reason").unwrap_or_default();
        *got.entry(reason.to_string()).or_default() += 1;
    }
    assert_eq!(
        dead.len(),
        bad,
        "every bad message dead-lettered once: {got:?}"
    );
    assert_eq!(got, expected, "dead letters by reason");
    assert!(
        dead.iter()
            .all(|m| !m.header("x-vogeler-detail").unwrap_or_default().is_empty()),
        "every dead letter has a detail header"
    );
}
