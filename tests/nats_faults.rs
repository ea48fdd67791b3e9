//! Fault tests on NATS with JetStream: a private nats-server restarted (SIGTERM) or
//! killed (SIGKILL) mid-ingest, a member of a three-node JetStream cluster (results
//! stream with three replicas) killed mid-ingest, replicas raised from one to three on
//! a live cluster, two servers sharing the `servers` consumer (one killed mid-ingest),
//! and the durable consumers brought to a changed config by `vogeler-admin setup
//! --messaging` and by the server. (The server killed repeatedly mid-ingest runs on
//! both brokers in `faults.rs`; refused logins and the runner's exit codes with two
//! servers in `exitcodes.rs`.) Private nodes come from `tests/common/nats.rs`; every
//! test has its own subject prefix, so the suite runs in parallel. Waits have margins
//! of seconds and the assertions are counts.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::ingest::*;
use common::nats::{NatsCluster, NatsNode};
use common::*;
use vogeler_transport::{DurableSettings, NatsOptions, NatsTransport, QueueKind, Transport};

/// A deployment on private NATS server(s) (`servers` makes the URL for its prefix),
/// with `[nats]` settings `nats` (a killed server's results come back in seconds:
/// [`NATS_TEST_ACK_WAIT`]) and a `stamp` plugin for the runner to ask for.
fn deployment_on(servers: impl Fn(&str) -> String, nats: &str) -> Deployment {
    let (name, body) = plugin("stamp", "date +%s%N", "output");
    let d = Deployment::new(&[(name.as_str(), body)]);
    let url = servers(&d.id);
    let d = d.with_broker(&url);
    d.write_conf(&format!(
        "[nats]\nack_wait = {}\n{nats}",
        NATS_TEST_ACK_WAIT.as_secs()
    ));
    d
}

/// A runner asks both clients through the server and waits for both `stored`.
fn runner_reaches(d: &Deployment, nodes: &[&str], context: impl Fn() -> String) {
    let out = d.runner(&[
        "-x",
        "stamp",
        "-n",
        &nodes.join(","),
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "runner to {nodes:?}: {}\n{}",
        out_text(&out),
        context()
    );
    for node in nodes {
        d.wait_document(node, 30, |doc| doc["stamp"].is_array());
    }
}

/// A private nats-server goes down mid-ingest and comes back on the same store dir
/// (`crash`: SIGKILL, then started again a second later; else a clean SIGTERM restart),
/// while results flow from a publisher. Every confirmed result is stored exactly once,
/// the server and both clients carry on, and a runner reaches the clients afterwards.
fn nats_server_down_mid_ingest(crash: bool) {
    let mut nats = NatsNode::start();
    eprintln!(
        "private nats-server {} ready in {:?}",
        nats.name, nats.starts
    );
    let d = deployment_on(|id| nats.url(id), "");
    let server = d.server(&[]);
    let (a, b) = (d.node("agent-a"), d.node("agent-b"));
    let clients = [d.client(&a, &[]), d.client(&b, &[])];

    let prefix = format!("{}-r", d.id);
    let (flow, stored_before) = flowing_results(&d, Via::Seam(d.connector()), &prefix);
    let before = flow.confirmed();
    let fault = if crash {
        nats.kill();
        // Down long enough for every connection to notice.
        std::thread::sleep(Duration::from_secs(1));
        nats.start_again();
        "the kill"
    } else {
        nats.restart();
        "the restart"
    };
    let back = Instant::now();
    let at_back = flow.confirmed();
    eprintln!(
        "nats-server back after {fault} at {before} confirmed, {stored_before} stored; starts took {:?}",
        nats.starts
    );
    // The publisher carries on through the outage: 2000 more confirmed after it.
    flow.wait_confirmed(at_back + 2000, 90);
    eprintln!(
        "{} publisher session failures through {fault}",
        flow.failures()
    );
    let nodes = all_confirmed_stored(&d, flow, &prefix, || {
        format!(
            "after {fault}; server log:\n{}\nnats log:\n{}",
            server.log_text(),
            nats.log_text()
        )
    });
    // The clients' live subscriptions (gone with the server) came back.
    everyone_carries_on(&d, server, clients, [&a, &b], &nodes, back, fault);
}

#[test]
fn nats_server_restarted_mid_ingest_loses_nothing_and_everyone_reconnects() {
    nats_server_down_mid_ingest(false);
}

/// SIGKILL: JetStream gets no chance to flush; what it had confirmed must still be there.
#[test]
fn nats_server_killed_mid_ingest_loses_nothing_and_everyone_reconnects() {
    nats_server_down_mid_ingest(true);
}

/// After a fault at `since`: the server and both clients (of nodes `names`) still run,
/// a runner reaches both clients through the server, and once they stopped every node in `nodes` has
/// exactly one history entry.
fn everyone_carries_on(
    d: &Deployment,
    mut server: Proc,
    mut clients: [Proc; 2],
    names: [&str; 2],
    nodes: &[String],
    since: Instant,
    fault: &str,
) {
    eprintln!(
        "all {} results stored {:?} after {fault}",
        nodes.len(),
        since.elapsed()
    );
    assert_running(&mut server);
    for c in clients.iter_mut() {
        assert_running(c);
    }
    runner_reaches(d, &names, || {
        format!(
            "client log:\n{}\nserver log:\n{}",
            clients[0].log_text(),
            server.log_text()
        )
    });
    eprintln!("runner answered {:?} after {fault}", since.elapsed());
    server.stop();
    for c in clients.iter_mut() {
        c.stop();
    }
    assert_history_once_sqlite(d, nodes);
}

/// Every stream's detail (`/jsz`: config, cluster, consumers) as member `via` sees it.
fn stream_details(cluster: &NatsCluster, via: usize) -> Vec<serde_json::Value> {
    cluster.jsz(via)["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The `server_name` of the leader of `stream`, as member `via` sees it.
fn stream_leader(cluster: &NatsCluster, via: usize, stream: &str) -> Option<String> {
    stream_details(cluster, via)
        .into_iter()
        .find(|s| s["name"] == stream)
        .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_string))
}

/// The replica groups of the deployment `prefix`'s streams and their consumers
/// (`STREAM` and `STREAM/consumer`): the configured replicas (a consumer's 0 means its
/// stream's) and how many members hold a current copy (the leader and every replica
/// that is current), as the best informed member sees it (a follower does not know
/// whether another follower is current; the leader does; an R1 stream is only listed
/// by the member holding it).
fn replica_groups(cluster: &NatsCluster, prefix: &str) -> BTreeMap<String, (u64, usize)> {
    let copies = |c: &serde_json::Value| {
        let current = c["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["current"] == true)
            .count();
        usize::from(c["leader"].is_string()) + current
    };
    let mut groups = BTreeMap::new();
    let mut add = |name: String, seen: (u64, usize)| {
        let best = groups.entry(name).or_insert(seen);
        if seen.1 > best.1 {
            *best = seen;
        }
    };
    for via in 0..cluster.nodes.len() {
        for s in stream_details(cluster, via) {
            let Some(name) = s["name"]
                .as_str()
                .filter(|n| n.starts_with(&format!("{prefix}_")))
            else {
                continue;
            };
            let replicas = s["config"]["num_replicas"].as_u64().unwrap_or(0);
            add(name.to_string(), (replicas, copies(&s["cluster"])));
            for c in s["consumer_detail"].as_array().into_iter().flatten() {
                let configured = match c["config"]["num_replicas"].as_u64().unwrap_or(0) {
                    0 => replicas,
                    n => n,
                };
                add(
                    format!("{name}/{}", c["name"].as_str().unwrap_or_default()),
                    (configured, copies(&c["cluster"])),
                );
            }
        }
    }
    groups
}

#[test]
fn nats_cluster_member_killed_mid_ingest_loses_nothing_and_ingest_carries_on() {
    let test_started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    eprintln!("cluster {names:?} ready in {:?}", cluster.formed_in);
    let d = deployment_on(|id| cluster.url(id), "replicas = 3\n");
    let server = d.server(&[]);
    let (a, b) = (d.node("agent-a"), d.node("agent-b"));
    let clients = [d.client(&a, &[]), d.client(&b, &[])];

    // The server's declare made the results stream and the servers' consumer with
    // three replicas each, as `[nats] replicas` says.
    let settings = servers_consumer(&d);
    assert_eq!(
        (settings.stream_replicas, settings.replicas),
        (3, 3),
        "{settings:?}"
    );

    let stream = format!("{}_RESULTS", d.id);
    let prefix = format!("{}-c", d.id);
    let (flow, stored_before) = flowing_results(&d, Via::Seam(d.connector()), &prefix);
    let before = flow.confirmed();
    // The member leading the results stream goes: the hardest one to lose.
    let leader = stream_leader(&cluster, 0, &stream).expect("the results stream has a leader");
    let victim = names
        .iter()
        .position(|n| *n == leader)
        .expect("the leader is a member");
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    eprintln!("stream leader {leader} killed at {before} confirmed, {stored_before} stored");

    // Ingest carries on on the two members left: 2000 more confirmed, and stored.
    flow.wait_confirmed(before + 2000, 120);
    eprintln!(
        "publisher confirmed 2000 more {:?} after the kill ({} session failures)",
        killed.elapsed(),
        flow.failures()
    );
    let survivor = (victim + 1) % 3;
    let new_leader = stream_leader(&cluster, survivor, &stream);
    assert!(
        new_leader.as_deref().is_some_and(|l| l != leader),
        "the results stream should have a new leader, has {new_leader:?}"
    );
    let nodes = all_confirmed_stored(&d, flow, &prefix, || {
        format!("with {leader} down; server log:\n{}", server.log_text())
    });
    // Requests still reach both clients with a member down (a client connected to it
    // reconnects to another member, subscribes again and catches up from its place).
    everyone_carries_on(&d, server, clients, [&a, &b], &nodes, killed, "the kill");
    eprintln!("test took {:?}", test_started.elapsed());
}

/// Replicas raised from 1 to 3 on a live three-node cluster: the streams made with
/// `[nats] replicas = 1`, ingest running, then `vogeler-admin setup --messaging` with
/// `replicas = 3`. Every stream and the servers' consumer end with three current
/// copies, and nothing confirmed before, during or after is lost.
#[test]
fn replicas_raised_from_one_to_three_on_a_live_cluster_lose_nothing() {
    let test_started = Instant::now();
    let cluster = NatsCluster::start(3);
    eprintln!("cluster ready in {:?}", cluster.formed_in);
    let d = deployment_on(|id| cluster.url(id), "replicas = 1\n");
    let server = d.server(&[]);
    let (a, b) = (d.node("agent-a"), d.node("agent-b"));
    let clients = [d.client(&a, &[]), d.client(&b, &[])];
    let settings = servers_consumer(&d);
    assert_eq!(
        (settings.stream_replicas, settings.replicas),
        (1, 1),
        "{settings:?}"
    );
    let results = format!("{}_RESULTS", d.id);
    let groups = replica_groups(&cluster, &d.id);
    assert_eq!(groups.get(&results), Some(&(1, 1)), "{groups:?}");

    let prefix = format!("{}-u", d.id);
    let (flow, stored_before) = flowing_results(&d, Via::Seam(d.connector()), &prefix);
    d.write_conf(&format!(
        "[nats]\nack_wait = {}\nreplicas = 3\n",
        NATS_TEST_ACK_WAIT.as_secs()
    ));
    let at_setup = flow.confirmed();
    let out = d.admin(&["setup", "--messaging"]);
    let raised = Instant::now();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    eprintln!(
        "setup raised replicas at {at_setup} confirmed, {stored_before} stored:\n{}",
        text(&out)
    );
    // The cluster applies a new configuration through its meta group: a member may
    // still answer with the old one for a moment after setup returned (seen in CI).
    let deadline = Instant::now() + Duration::from_secs(30);
    let settings = loop {
        let settings = servers_consumer(&d);
        if (settings.stream_replicas, settings.replicas) == (3, 3) || Instant::now() > deadline {
            break settings;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        (settings.stream_replicas, settings.replicas),
        (3, 3),
        "{settings:?}"
    );
    // Ingest carries on while the new copies catch up: 2000 more confirmed.
    flow.wait_confirmed(at_setup + 2000, 90);
    let nodes = all_confirmed_stored(&d, flow, &prefix, || {
        format!("after raising replicas; server log:\n{}", server.log_text())
    });
    // Every stream and the servers' consumer: three members with a current copy.
    let want = [
        results.clone(),
        format!("{results}/servers"),
        format!("{}_REQUESTS", d.id),
        format!("{}_DEAD", d.id),
        format!("{}_DEAD/admin", d.id),
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    let groups = loop {
        let groups = replica_groups(&cluster, &d.id);
        let settled = want.iter().all(|g| groups.get(g) == Some(&(3, 3)));
        if settled || Instant::now() > deadline {
            break groups;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for g in &want {
        assert_eq!(groups.get(g), Some(&(3, 3)), "{g}: {groups:?}");
    }
    eprintln!(
        "three current copies of every group {:?} after setup",
        raised.elapsed()
    );
    everyone_carries_on(&d, server, clients, [&a, &b], &nodes, raised, "the raise");
    eprintln!("test took {:?}", test_started.elapsed());
}

/// How many results `server` (a [`Deployment::verbose_server`]) logged as stored.
fn stored_by(server: &Proc) -> usize {
    server.log_text().matches(" stored node=").count()
}

/// Two servers side by side on the shared NATS, one PostgreSQL store, pulling from the
/// one durable `servers` consumer: both store part of the results, and one killed
/// (SIGKILL) mid-ingest loses nothing: what it held unacked goes to the other after
/// `ack_wait`. Every confirmed result is stored, each exactly once (history counted).
#[test]
fn two_servers_share_the_servers_consumer_and_one_killed_mid_ingest_loses_nothing() {
    // Small batches: each server holds few results at a time, so both get some.
    let (d, db) = Deployment::on(Bus::Nats, &[]).on_postgres("[server]\nbatch_size = 50\n");
    let mut first = d.verbose_server();
    let mut second = d.verbose_server();
    let prefix = format!("{}-t", d.id);
    let (flow, _) = flowing_results(&d, Via::Seam(d.connector()), &prefix);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (stored_by(&first) == 0 || stored_by(&second) == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (by_first, by_second) = (stored_by(&first), stored_by(&second));
    eprintln!("before the kill: first stored {by_first}, second {by_second}");
    assert!(
        by_first > 0 && by_second > 0,
        "both servers should store some: {by_first} and {by_second}; logs:\n{}\n{}",
        first.log_text(),
        second.log_text()
    );
    first.kill();
    let at_kill = flow.confirmed();
    let killed = Instant::now();
    flow.wait_confirmed(at_kill + 2000, 90);
    let nodes = all_confirmed_stored(&d, flow, &prefix, || {
        format!(
            "with the first server killed; second server log:\n{}",
            second.log_text()
        )
    });
    eprintln!(
        "all {} results stored {:?} after the kill",
        nodes.len(),
        killed.elapsed()
    );
    assert_running(&mut second);
    second.stop();
    let (by_first, by_second) = (stored_by(&first), stored_by(&second));
    eprintln!("in all: first stored {by_first}, second {by_second}");
    assert!(
        by_first + by_second >= nodes.len(),
        "{by_first} + {by_second} stored, {} confirmed",
        nodes.len()
    );
    rt().block_on(assert_history_once(&db.store(), &nodes));
}

/// The servers' consumer as it is on the deployment's NATS, read with a fresh connection.
fn servers_consumer(d: &Deployment) -> DurableSettings {
    rt().block_on(async {
        let t = NatsTransport::connect(
            &d.nats_servers(),
            NatsOptions {
                prefix: d.id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("connect to the deployment's NATS");
        let s = t.durable_settings(QueueKind::Results).await;
        t.close().await;
        s.expect("consumer info")
            .expect("the servers' consumer exists")
    })
}

/// Declares with `ack_wait` as a program that keeps what exists would (a client, a
/// runner, or an older version that only ever created).
fn declare_keeping(d: &Deployment, ack_wait_s: u64) {
    rt().block_on(async {
        let t = NatsTransport::connect(
            &d.nats_servers(),
            NatsOptions {
                prefix: d.id.clone(),
                ack_wait: std::time::Duration::from_secs(ack_wait_s),
                ..Default::default()
            },
        )
        .await
        .expect("connect to the test NATS");
        t.declare().await.expect("declare");
        t.close().await;
    })
}

#[test]
fn setup_and_the_server_bring_an_existing_consumer_to_the_configured_ack_wait() {
    let d = Deployment::on(Bus::Nats, &[]);
    // Made first with a 60 s ack_wait (the old default), as before this was followed.
    declare_keeping(&d, 60);
    assert_eq!(servers_consumer(&d).ack_wait.as_secs(), 60);

    // `setup --messaging` with `[nats] ack_wait = 3` updates it in place.
    let out = d.admin(&["setup", "--messaging"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = servers_consumer(&d);
    assert_eq!(
        (now.ack_wait, now.replicas, now.stream_replicas),
        (NATS_TEST_ACK_WAIT, 1, 1),
        "{now:?}"
    );
    // A program that keeps what exists (client, runner) leaves it as setup made it.
    declare_keeping(&d, 60);
    assert_eq!(servers_consumer(&d).ack_wait, NATS_TEST_ACK_WAIT);

    // The config changes: the server's own declare follows it at start, and logs it.
    d.write_conf("[nats]\nack_wait = 7\n");
    let mut server = d.server(&[]);
    assert_eq!(servers_consumer(&d).ack_wait.as_secs(), 7);
    let log = server.log_text();
    assert!(
        log.contains("updated consumer servers") && log.contains("ack_wait_ms: 3000 -> 7000"),
        "the server should log what it changed:\n{log}"
    );
    server.stop();
    // Nothing to change: setup says so without an update.
    let out = d.admin(&["setup", "--messaging"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(servers_consumer(&d).ack_wait.as_secs(), 7);
}

/// A refused update is an error of `setup` naming what was refused, and a warning of the
/// server, which goes on with what is there: replicated consumers on a lone server.
#[test]
fn setup_fails_naming_an_update_the_server_refuses_and_the_server_carries_on() {
    let d = Deployment::on(Bus::Nats, &[]);
    declare_keeping(&d, NATS_TEST_ACK_WAIT.as_secs());
    d.write_conf(&format!(
        "[nats]\nack_wait = {}\nreplicas = 3\n",
        NATS_TEST_ACK_WAIT.as_secs()
    ));
    let out = d.admin(&["setup", "--messaging"]);
    let said = text(&out);
    eprintln!("{said}");
    // nats-server 2.9 alone takes the stream's replicas setting (and keeps one copy),
    // but refuses the consumer's.
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("refused update of consumer servers")
            && said.contains("replicas: 1 -> 3")
            && said.contains("not supported in non-clustered mode"),
        "{said}"
    );
    let settings = servers_consumer(&d);
    assert_eq!(settings.replicas, 1, "{settings:?}");
    let mut server = d.server(&[]);
    let log = server.log_text();
    assert!(
        log.contains("could not update") && log.contains("replicas: 1 -> 3"),
        "{log}"
    );
    d.publish_results(vec![vogeler_transport::Outgoing::new(result_body(
        &d.node("n1"),
        "hello",
        "hi",
    ))]);
    assert_eq!(wait_stored(&d, &d.id, 1, 30), 1, "{}", server.log_text());
    server.stop();
}
