//! The one transport conformance suite, run unchanged over every backend on a real
//! broker: RabbitMQ (guest/guest on 127.0.0.1:5672, vhost `VOGELER_TEST_VHOST`, default
//! `vogeler-test`) and NATS with JetStream (127.0.0.1:4222, `VOGELER_TEST_NATS`).
//!
//! A broker that does not answer fails every case, naming it: the suite never skips
//! (`scripts/services.sh ensure` starts both). Each case makes its own names (exchanges
//! and queues, or a subject prefix and its streams) so cases run in parallel beside other
//! people's tests on the same brokers, and removes what it made when it passes.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{timeout, Instant};
use vogeler_transport::{
    AmqpTransport, Audience, Broker, Message, NatsOptions, NatsTransport, Outgoing, QueueKind,
    Resume, Subscription, Topology, Transport, TransportError, REASON_HEADER,
};

/// How long a message may take to arrive (a margin of seconds, never a measurement).
const ARRIVE: Duration = Duration::from_secs(20);
/// How long a consumer is watched to show that nothing (more) arrives.
const QUIET: Duration = Duration::from_secs(3);
/// The results' ack wait on NATS: a crashed server's results go to another after it.
const NATS_ACK_WAIT: Duration = Duration::from_secs(2);

/// One backend, with names of its own for one case.
#[async_trait]
trait Backend: Send + Sync {
    /// A new connection to the same deployment (same names); panics naming the broker.
    async fn connect(&self) -> Box<dyn Transport>;
    /// A node name unique to this case (a hostname, dots and all).
    fn node(&self, name: &str) -> String;
    /// The size limit when the broker does not announce one.
    fn default_limit(&self) -> usize;
    /// How long an unacked message of a crashed consumer may take to come back.
    fn redelivery(&self) -> Duration;
    /// Removes what the case made.
    async fn cleanup(&self, nodes: &[String]);
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

fn vhost() -> String {
    std::env::var("VOGELER_TEST_VHOST").unwrap_or_else(|_| "vogeler-test".into())
}

struct Amqp {
    id: String,
    topology: Topology,
}

impl Amqp {
    fn new() -> Self {
        let id = unique();
        let topology = Topology {
            master_exchange: format!("conformance.{id}.master"),
            broadcast_exchange: format!("conformance.{id}.broadcast"),
            master_queue: format!("conformance.{id}.master.in"),
            dead_queue: format!("conformance.{id}.dead"),
            quorum: false,
        };
        Amqp { id, topology }
    }

    async fn session(&self) -> vogeler_transport::Session {
        let vhost = vhost();
        let uri = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        let label = format!("amqp://guest:****@127.0.0.1:5672/{vhost}");
        match Broker::new(vec![uri], vec![label], "transport-conformance")
            .connect()
            .await
        {
            Ok(s) => s,
            Err(e) => panic!(
                "RabbitMQ is needed for the conformance suite (scripts/services.sh ensure): {e}"
            ),
        }
    }
}

#[async_trait]
impl Backend for Amqp {
    async fn connect(&self) -> Box<dyn Transport> {
        Box::new(AmqpTransport::new(
            self.session().await,
            self.topology.clone(),
        ))
    }
    fn node(&self, name: &str) -> String {
        format!("{name}.{}.example.com", self.id)
    }
    fn default_limit(&self) -> usize {
        // RabbitMQ 3.10's default max_message_size (128 MiB).
        128 * 1024 * 1024
    }
    fn redelivery(&self) -> Duration {
        ARRIVE
    }
    async fn cleanup(&self, nodes: &[String]) {
        let s = self.session().await;
        for q in [&self.topology.master_queue, &self.topology.dead_queue]
            .into_iter()
            .chain(nodes)
        {
            s.delete_queue(q)
                .await
                .expect("delete a queue this case made");
        }
        s.close().await;
    }
}

struct Nats {
    id: String,
    opts: NatsOptions,
}

impl Nats {
    fn new() -> Self {
        let id = unique();
        let opts = NatsOptions {
            prefix: format!("conformance.t{id}"),
            connection_name: "transport-conformance".into(),
            ack_wait: NATS_ACK_WAIT,
            request_max_age: Duration::from_secs(3600),
            dead_max_age: Duration::from_secs(3600),
            client_inactive: Duration::from_secs(60),
            ..Default::default()
        };
        Nats { id, opts }
    }

    async fn transport(&self) -> NatsTransport {
        let url =
            std::env::var("VOGELER_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        match NatsTransport::connect(&url, self.opts.clone()).await {
            Ok(t) => t,
            Err(e) => panic!(
                "NATS with JetStream is needed for the conformance suite (scripts/services.sh ensure): {e}"
            ),
        }
    }
}

#[async_trait]
impl Backend for Nats {
    async fn connect(&self) -> Box<dyn Transport> {
        Box::new(self.transport().await)
    }
    fn node(&self, name: &str) -> String {
        format!("{name}.{}.example.com", self.id)
    }
    fn default_limit(&self) -> usize {
        1024 * 1024
    }
    fn redelivery(&self) -> Duration {
        NATS_ACK_WAIT + ARRIVE
    }
    async fn cleanup(&self, _nodes: &[String]) {
        let t = self.transport().await;
        t.delete_streams()
            .await
            .expect("delete the streams this case made");
        t.close().await;
    }
}

/// The next message within `within`, or `None`; a failed subscription fails the case.
async fn recv(sub: &mut Box<dyn Subscription>, within: Duration) -> Option<Message> {
    match timeout(within, sub.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => None,
    }
}

/// Receives and acks exactly `n` messages, then shows nothing more arrives; the bodies.
async fn take(t: &dyn Transport, sub: &mut Box<dyn Subscription>, n: usize) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    for i in 0..n {
        let m = recv(sub, ARRIVE)
            .await
            .unwrap_or_else(|| panic!("only {i} of {n} messages arrived: {got:?}"));
        t.ack(&m.ack).await.expect("ack");
        assert!(
            got.insert(text(&m)),
            "{:?} arrived twice on one consumer",
            text(&m)
        );
    }
    if let Some(m) = recv(sub, QUIET).await {
        panic!("after {got:?}, an extra message arrived: {:?}", text(&m));
    }
    got
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

fn msg(body: &str) -> Outgoing {
    Outgoing::new(body.as_bytes().to_vec())
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn result_goes_to_exactly_one_server(b: &dyn Backend) {
    let (t1, t2, publisher) = (b.connect().await, b.connect().await, b.connect().await);
    t1.declare().await.expect("declare");
    let mut s1 = t1.consume_results(4).await.expect("consume");
    let mut s2 = t2.consume_results(4).await.expect("consume");
    let sent: BTreeSet<String> = (0..12).map(|i| format!("result {i}")).collect();
    for body in &sent {
        publisher.publish_result(msg(body)).await.expect("publish");
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + ARRIVE;
    while seen.len() < sent.len() {
        tokio::select! {
            m = s1.next() => {
                let m = m.expect("subscription open").expect("message");
                t1.ack(&m.ack).await.expect("ack");
                seen.push(text(&m));
            }
            m = s2.next() => {
                let m = m.expect("subscription open").expect("message");
                t2.ack(&m.ack).await.expect("ack");
                seen.push(text(&m));
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let (extra1, extra2) = tokio::join!(recv(&mut s1, QUIET), recv(&mut s2, QUIET));
    seen.extend(extra1.iter().chain(extra2.iter()).map(text));
    seen.sort();
    let expected: Vec<String> = sent.iter().cloned().collect();
    assert_eq!(
        seen, expected,
        "each result once, to one of the two servers"
    );
    for t in [t1, t2, publisher] {
        t.close().await;
    }
    b.cleanup(&[]).await;
}

async fn unacked_result_goes_to_another_server_after_a_crash(b: &dyn Backend) {
    let (t1, t2) = (b.connect().await, b.connect().await);
    t1.declare().await.expect("declare");
    let mut s1 = t1.consume_results(1).await.expect("consume");
    t2.publish_result(msg("held by a crashing server"))
        .await
        .expect("publish");
    let m = recv(&mut s1, ARRIVE)
        .await
        .expect("the first server gets it");
    assert_eq!(text(&m), "held by a crashing server");
    assert!(!m.redelivered);
    // The first server dies holding it: its connection goes, the message unacked.
    drop(m);
    drop(s1);
    t1.close().await;
    let mut s2 = t2.consume_results(1).await.expect("consume");
    let again = recv(&mut s2, b.redelivery())
        .await
        .expect("the other server gets it after the crash");
    assert_eq!(text(&again), "held by a crashing server");
    assert!(again.redelivered, "marked as delivered before");
    t2.ack(&again.ack).await.expect("ack");
    assert!(
        recv(&mut s2, QUIET).await.is_none(),
        "delivered once more only"
    );
    t2.close().await;
    b.cleanup(&[]).await;
}

async fn acked_result_is_not_redelivered(b: &dyn Backend) {
    let (t1, t2) = (b.connect().await, b.connect().await);
    t1.declare().await.expect("declare");
    let mut s1 = t1.consume_results(1).await.expect("consume");
    t2.publish_result(msg("committed")).await.expect("publish");
    assert_eq!(take(t1.as_ref(), &mut s1, 1).await, set(&["committed"]));
    drop(s1);
    t1.close().await;
    let mut s2 = t2.consume_results(1).await.expect("consume");
    if let Some(m) = recv(&mut s2, b.redelivery().min(QUIET + NATS_ACK_WAIT)).await {
        panic!("an acked result came back: {:?}", text(&m));
    }
    let status = t2
        .queue_status(QueueKind::Results)
        .await
        .expect("queue status")
        .expect("the result queue exists");
    assert_eq!(status.messages, 0, "nothing left waiting");
    t2.close().await;
    b.cleanup(&[]).await;
}

async fn broadcasts_reach_every_node_and_node_requests_one(b: &dyn Backend) {
    // The first name is a prefix of the second: neither may get the other's requests.
    let nodes = [b.node("web1"), b.node("web1.eu"), b.node("db_2-x")];
    let runner = b.connect().await;
    runner.declare().await.expect("declare");
    let mut clients = Vec::new();
    for n in &nodes {
        let t = b.connect().await;
        let s = t.consume_node(n, None, 8).await.expect("consume");
        clients.push((t, s));
    }
    runner
        .publish_request(Audience::Everyone, msg("to everyone"))
        .await
        .expect("broadcast");
    for n in &nodes[..2] {
        runner
            .publish_request(Audience::Node(n), msg(&format!("to {n}")))
            .await
            .expect("node request");
    }
    for (i, (t, s)) in clients.iter_mut().enumerate() {
        let mut expected = set(&["to everyone"]);
        if i < 2 {
            expected.insert(format!("to {}", nodes[i]));
        }
        assert_eq!(
            take(t.as_ref(), s, expected.len()).await,
            expected,
            "{}",
            nodes[i]
        );
    }
    for (t, _) in clients {
        t.close().await;
    }
    runner.close().await;
    b.cleanup(&nodes).await;
}

/// A client of `node` that ran once and stopped: the place it saved (AMQP: its queue
/// exists and keeps its requests).
async fn first_run(b: &dyn Backend, node: &str) -> Option<Resume> {
    let first = b.connect().await;
    let s = first.consume_node(node, None, 8).await.expect("consume");
    let place = s.resume();
    drop(s);
    first.close().await;
    place
}

async fn requests_sent_while_a_client_is_down_reach_it(b: &dyn Backend) {
    let node = b.node("sleeper");
    let runner = b.connect().await;
    runner.declare().await.expect("declare");
    // The client has run once: its place (AMQP: its queue) exists.
    let place = first_run(b, &node).await;

    runner
        .publish_request(Audience::Node(&node), msg("sent while down"))
        .await
        .expect("node request");
    runner
        .publish_request(Audience::Everyone, msg("broadcast while down"))
        .await
        .expect("broadcast");

    let back = b.connect().await;
    let mut s = back
        .consume_node(&node, place.clone(), 8)
        .await
        .expect("consume");
    assert_eq!(
        take(back.as_ref(), &mut s, 2).await,
        set(&["sent while down", "broadcast while down"])
    );
    let handled = s.resume();
    if let (Some(before), Some(after)) = (&place, &handled) {
        assert!(
            after.broadcast > before.broadcast && after.node > before.node,
            "acks move the place on: {before} to {after}"
        );
    }
    drop(s);
    back.close().await;

    // Handled requests are not run again after the next restart.
    let again = b.connect().await;
    let mut s = again
        .consume_node(&node, handled, 8)
        .await
        .expect("consume");
    assert_eq!(take(again.as_ref(), &mut s, 0).await, BTreeSet::new());
    drop(s);
    again.close().await;
    runner.close().await;
    b.cleanup(&[node]).await;
}

/// A request handled while the client runs is not run again after a restart; one that
/// arrived and was not handled is.
async fn a_restart_runs_again_only_what_was_not_handled(b: &dyn Backend) {
    let node = b.node("restarting");
    let runner = b.connect().await;
    runner.declare().await.expect("declare");
    let first = b.connect().await;
    let mut s = first.consume_node(&node, None, 8).await.expect("consume");
    for body in ["handled", "handled broadcast"] {
        let to = if body == "handled" {
            Audience::Node(&node)
        } else {
            Audience::Everyone
        };
        runner
            .publish_request(to, msg(body))
            .await
            .expect("request");
    }
    assert_eq!(
        take(first.as_ref(), &mut s, 2).await,
        set(&["handled", "handled broadcast"])
    );
    runner
        .publish_request(Audience::Node(&node), msg("arrived, not handled"))
        .await
        .expect("request");
    let m = recv(&mut s, ARRIVE)
        .await
        .expect("the third request arrives");
    assert_eq!(text(&m), "arrived, not handled");
    // Stopped before the ack.
    let place = s.resume();
    drop(s);
    first.close().await;

    let back = b.connect().await;
    let mut s = back.consume_node(&node, place, 8).await.expect("consume");
    assert_eq!(
        take(back.as_ref(), &mut s, 1).await,
        set(&["arrived, not handled"])
    );
    drop(s);
    back.close().await;
    runner.close().await;
    b.cleanup(&[node]).await;
}

async fn an_expired_request_is_not_delivered(b: &dyn Backend) {
    let node = b.node("late");
    let runner = b.connect().await;
    runner.declare().await.expect("declare");
    let place = first_run(b, &node).await;

    let mut stale = msg("expires in one second");
    stale.expiration_ms = Some(1_000);
    runner
        .publish_request(Audience::Node(&node), stale)
        .await
        .expect("request");
    let mut fresh = msg("expires in ten minutes");
    fresh.expiration_ms = Some(600_000);
    runner
        .publish_request(Audience::Node(&node), fresh)
        .await
        .expect("request");
    // The client comes back well after the first one's expiration.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let back = b.connect().await;
    let mut s = back.consume_node(&node, place, 8).await.expect("consume");
    assert_eq!(
        take(back.as_ref(), &mut s, 1).await,
        set(&["expires in ten minutes"])
    );
    drop(s);
    back.close().await;
    runner.close().await;
    b.cleanup(&[node]).await;
}

async fn a_reply_reaches_the_runners_inbox(b: &dyn Backend) {
    let node = b.node("answering");
    let (runner, client) = (b.connect().await, b.connect().await);
    runner.declare().await.expect("declare");
    let mut requests = client.consume_node(&node, None, 8).await.expect("consume");
    let (address, mut inbox) = runner.reply_inbox().await.expect("reply inbox");
    let mut request = msg("ping");
    request.reply_to = Some(address.clone());
    runner
        .publish_request(Audience::Node(&node), request)
        .await
        .expect("request");
    let got = recv(&mut requests, ARRIVE).await.expect("the request");
    assert_eq!(text(&got), "ping");
    assert_eq!(got.reply_to.as_deref(), Some(address.as_str()));
    let mut answer = msg("pong");
    answer.headers = vec![("x-vogeler-node".into(), node.clone())];
    client
        .publish_reply(&address, answer)
        .await
        .expect("publish reply");
    client.ack(&got.ack).await.expect("ack");
    let reply = recv(&mut inbox, ARRIVE).await.expect("the reply");
    assert_eq!(text(&reply), "pong");
    assert_eq!(reply.header("x-vogeler-node"), Some(node.as_str()));
    runner.ack(&reply.ack).await.expect("ack");
    assert!(recv(&mut inbox, QUIET).await.is_none(), "one reply");
    client.close().await;
    runner.close().await;
    b.cleanup(&[node]).await;
}

async fn a_dead_letter_keeps_its_reason(b: &dyn Backend) {
    let t = b.connect().await;
    t.declare().await.expect("declare");
    let mut bad = msg("{not json");
    bad.headers = vec![
        ("x-vogeler-detail".into(), "line 1: expected a value".into()),
        (REASON_HEADER.into(), "spoofed by the sender".into()),
    ];
    t.dead_letter(bad, "undecodable")
        .await
        .expect("dead letter");
    let status = t
        .queue_status(QueueKind::Dead)
        .await
        .expect("queue status")
        .expect("the dead-letter queue exists");
    assert_eq!(status.messages, 1);
    let mut dead = t.consume_dead(8).await.expect("consume dead letters");
    let m = recv(&mut dead, ARRIVE).await.expect("the dead letter");
    assert_eq!(text(&m), "{not json");
    let reasons: Vec<&str> = m
        .headers
        .iter()
        .filter(|(k, _)| k == REASON_HEADER)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(reasons, ["undecodable"], "one reason, the transport's");
    assert_eq!(
        m.header("x-vogeler-detail"),
        Some("line 1: expected a value")
    );
    t.ack(&m.ack).await.expect("ack");
    assert!(recv(&mut dead, QUIET).await.is_none());
    t.close().await;
    b.cleanup(&[]).await;
}

async fn headers_round_trip(b: &dyn Backend) {
    let node = b.node("headers");
    let (t, client) = (b.connect().await, b.connect().await);
    t.declare().await.expect("declare");
    let headers: Vec<(String, String)> = vec![
        ("x-vogeler-signature".into(), "ed25519:AbC+/9==".into()),
        ("x-vogeler-key-id".into(), "fleet key 2026".into()),
        ("x-vogeler-plugin".into(), "facter".into()),
    ];
    let expected: BTreeSet<(String, String)> = headers.iter().cloned().collect();

    let mut results = t.consume_results(4).await.expect("consume");
    let mut result = msg("with headers");
    result.headers = headers.clone();
    t.publish_result(result).await.expect("publish");
    let m = recv(&mut results, ARRIVE).await.expect("the result");
    assert_eq!(m.headers.iter().cloned().collect::<BTreeSet<_>>(), expected);
    t.ack(&m.ack).await.expect("ack");

    // A request keeps its headers beside its expiration and reply address.
    let mut requests = client.consume_node(&node, None, 4).await.expect("consume");
    let mut request = msg("request with headers");
    request.headers = headers.clone();
    request.expiration_ms = Some(600_000);
    request.reply_to = Some("somewhere".into());
    t.publish_request(Audience::Node(&node), request)
        .await
        .expect("publish");
    let m = recv(&mut requests, ARRIVE).await.expect("the request");
    assert_eq!(m.headers.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(m.reply_to.as_deref(), Some("somewhere"));
    client.ack(&m.ack).await.expect("ack");
    client.close().await;
    t.close().await;
    b.cleanup(&[node]).await;
}

async fn an_oversized_message_is_a_clear_error(b: &dyn Backend) {
    let t = b.connect().await;
    t.declare().await.expect("declare");
    let limit = t.max_message_bytes().unwrap_or_else(|| b.default_limit());
    let big = Outgoing::new(vec![b'x'; limit + 1]);
    let outcome = timeout(Duration::from_secs(120), t.publish_result(big))
        .await
        .expect("an oversized publish answers, it does not hang");
    let err: TransportError = match outcome {
        Ok(()) => panic!("a message of {} bytes was accepted", limit + 1),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    match err {
        TransportError::TooLarge {
            size,
            limit: l,
            addr,
        } => {
            assert_eq!((size, l), (limit + 1, limit), "{text}");
            assert!(addr.contains("127.0.0.1"), "names the broker: {text}");
        }
        other => panic!("not a size error: {other}"),
    }
    t.close().await;
    // The broker is none the worse: a normal result still goes through.
    let t = b.connect().await;
    let mut s = t.consume_results(1).await.expect("consume");
    t.publish_result(msg("small")).await.expect("publish");
    assert_eq!(take(t.as_ref(), &mut s, 1).await, set(&["small"]));
    t.close().await;
    b.cleanup(&[]).await;
}

/// A result sent before any server declared its queue (a client that starts first on a
/// new broker) is kept or refused, never dropped: RabbitMQ refuses it (no queue to keep
/// it; the client answers again later), a NATS stream keeps it; either way it reaches a
/// server once one is there.
async fn a_result_before_any_server_is_refused_or_kept(b: &dyn Backend) {
    let (client, server) = (b.connect().await, b.connect().await);
    client
        .declare_sender()
        .await
        .expect("declare what a client publishes to");
    let kept = match client.publish_result(msg("early")).await {
        Ok(()) => true,
        Err(TransportError::Refused { message, .. }) => {
            assert!(message.contains("vogeler-admin setup"), "{message}");
            false
        }
        Err(e) => panic!("neither kept nor refused: {e}"),
    };
    server.declare().await.expect("declare");
    let mut s = server.consume_results(1).await.expect("consume");
    if !kept {
        client
            .publish_result(msg("early"))
            .await
            .expect("publish once a server queue is there");
    }
    assert_eq!(take(server.as_ref(), &mut s, 1).await, set(&["early"]));
    client.close().await;
    server.close().await;
    b.cleanup(&[]).await;
}

macro_rules! backend {
    ($module:ident, $make:expr; $($case:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = $make;
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

macro_rules! suite {
    ($module:ident, $make:expr) => {
        backend!($module, $make;
            result_goes_to_exactly_one_server,
            unacked_result_goes_to_another_server_after_a_crash,
            acked_result_is_not_redelivered,
            broadcasts_reach_every_node_and_node_requests_one,
            requests_sent_while_a_client_is_down_reach_it,
            a_restart_runs_again_only_what_was_not_handled,
            an_expired_request_is_not_delivered,
            a_reply_reaches_the_runners_inbox,
            a_dead_letter_keeps_its_reason,
            headers_round_trip,
            an_oversized_message_is_a_clear_error,
            a_result_before_any_server_is_refused_or_kept,
        );
    };
}

suite!(amqp, super::Amqp::new());
suite!(nats, super::Nats::new());

/// NATS only: a client's saved place and hostile request headers.
mod nats_places {
    use super::*;

    async fn raw() -> async_nats::Client {
        let url =
            std::env::var("VOGELER_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("NATS at {url} is needed (scripts/services.sh ensure): {e}"))
    }

    /// A place saved against a stream since deleted and made again (or an edited file)
    /// is past the stream's end: the client starts from new requests and saves a place
    /// it can resume from, instead of skipping every request until the stream got that
    /// far (or, at `u64::MAX`, overflowing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saved_place_past_the_stream_end_starts_from_new_requests() {
        let b = Nats::new();
        let node = format!("past-{}", b.id);
        let runner = b.connect().await;
        runner.declare().await.expect("declare");
        for far in [10_000, u64::MAX] {
            let client = b.connect().await;
            let hostile = Resume {
                broadcast: far,
                node: far,
                handled: vec!["00ff".into()],
            };
            let mut s = client
                .consume_node(&node, Some(hostile), 8)
                .await
                .expect("consume");
            let place = s.resume().expect("a place");
            assert!(
                place.broadcast < 10_000 && place.node < 10_000,
                "the place is within the stream: {place}"
            );
            // Live requests still arrive.
            runner
                .publish_request(Audience::Node(&node), msg(&format!("live {far}")))
                .await
                .expect("request");
            assert_eq!(
                take(client.as_ref(), &mut s, 1).await,
                set(&[&format!("live {far}")])
            );
            let place = s.resume();
            drop(s);
            client.close().await;

            // And one sent while it is down runs when it is back.
            runner
                .publish_request(Audience::Node(&node), msg(&format!("down {far}")))
                .await
                .expect("request");
            let back = b.connect().await;
            let mut s = back.consume_node(&node, place, 8).await.expect("consume");
            assert_eq!(
                take(back.as_ref(), &mut s, 1).await,
                set(&[&format!("down {far}")])
            );
            drop(s);
            back.close().await;
        }
        runner.close().await;
        b.cleanup(&[]).await;
    }

    /// A stored request whose expiration header is any number at all (huge, negative,
    /// not a number) neither stops a catch-up nor the requests after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_expiration_headers_do_not_stop_a_catch_up() {
        let b = Nats::new();
        let node = format!("expiry-{}", b.id);
        let runner = b.connect().await;
        runner.declare().await.expect("declare");
        let place = first_run(&b, &node).await;

        let js = async_nats::jetstream::new(raw().await);
        let subject = format!("{}.req.node.{node}", b.opts.prefix);
        for (body, value) in [
            ("huge", i128::MAX.to_string()),
            ("negative huge", i128::MIN.to_string()),
            ("not a number", "soon".to_string()),
            ("past u64", "99999999999999999999999".to_string()),
        ] {
            let mut h = async_nats::HeaderMap::new();
            h.insert("x-vogeler-expiration-ms", value.as_str());
            js.publish_with_headers(subject.clone(), h, body.to_string().into_bytes().into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
        runner
            .publish_request(Audience::Node(&node), msg("after them"))
            .await
            .expect("request");

        let back = b.connect().await;
        let mut s = back.consume_node(&node, place, 8).await.expect("consume");
        // i128::MIN is long expired; the others never or cannot be read: delivered.
        assert_eq!(
            take(back.as_ref(), &mut s, 4).await,
            set(&["huge", "not a number", "past u64", "after them"])
        );
        drop(s);
        back.close().await;
        runner.close().await;
        b.cleanup(&[]).await;
    }
}
