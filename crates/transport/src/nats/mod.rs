//! The NATS JetStream backend of the [`Transport`] seam (feature `nats`), for fleets of
//! tens of thousands of nodes per broker.
//!
//! The mapping, for a subject prefix `P` (default `vogeler`; stream names are `P` with
//! dots as `_`, then `_RESULTS`, `_REQUESTS`, `_DEAD`):
//!
//! | AMQP                          | NATS                                                   |
//! |-------------------------------|--------------------------------------------------------|
//! | master exchange + queue       | stream `P_RESULTS` on `P.results` (work-queue retention), one durable pull consumer `servers` shared by every server |
//! | broadcast exchange, node queue| stream `P_REQUESTS` on `P.req.>`: `P.req.all` and `P.req.node.<node>`; per client two core subscriptions, the stream read to catch up |
//! | exclusive reply queue         | a core NATS `_INBOX.…` subscription                    |
//! | dead-letter queue             | stream `P_DEAD` on `P.dead` (work-queue retention), durable consumer `admin` |
//!
//! **Results.** Servers share the durable pull consumer `servers`: each message goes to
//! one server, is acked explicitly after the commit (a double ack, so the ack is known to
//! have landed), and is redelivered to another server after [`NatsOptions::ack_wait`]
//! when a server crashed holding it. `max_ack_pending` ([`NatsOptions::max_ack_pending`])
//! caps what all servers hold unacked; each server pulls `prefetch` at a time.
//!
//! **Replicas and changed settings.** Every stream and durable consumer has
//! [`NatsOptions::replicas`] copies (3 on a three-node cluster: a member lost loses no
//! result). JetStream keeps a durable's settings from whoever made it first, so
//! [`Transport::declare`] with [`Existing::Update`] (the server) or [`Existing::Require`]
//! (`vogeler-admin setup --messaging`) updates an existing stream's replicas and `max_age`
//! and a durable's `ack_wait`, `max_ack_pending` and replicas in place when they differ
//! from the options; clients and runners ([`Existing::Keep`]) never do.
//!
//! **Requests: no consumer per node.** JetStream keeps every durable consumer's state on
//! disk and, clustered, in a Raft group of its own per consumer; NATS maintainers answer
//! reports of load with many consumers on a stream (nats-io/nats-server#5451, "the
//! default R3 consumers at high scale put undue stress on the system") with a redesign,
//! not a setting. Even an ephemeral consumer costs nats-server about 40 KB. So a running
//! client holds none: it takes requests live on two core subscriptions, and reads the
//! stream only to catch up after a start, a reconnect or dropped messages, through
//! consumers deleted once it is caught up (`nats/requests.rs`). The client keeps its own place:
//! [`Subscription::resume`] gives it ([`Resume`]: stream sequences per subject and the
//! requests handled live since), the client stores that text after each ack and passes
//! it back on restart. A request sent while the client was down is still delivered, as
//! long as the stream keeps it. The catch-up consumers filter on one subject each:
//! several filter subjects on one consumer need nats-server 2.10, and Debian 12 ships
//! 2.9, whose servers ignore the field and would deliver every node's requests.
//!
//! **Request expiry.** The requests stream keeps messages at most
//! [`NatsOptions::request_max_age`] (`max_age`). A request with
//! [`Outgoing::expiration_ms`] carries it in the `x-vogeler-expiration-ms` header; a
//! catch-up passes over a request older than that by the stream's publish time, so a node
//! back after a long outage does not run stale requests. Per-message TTLs (`Nats-TTL`)
//! need nats-server 2.11.
//!
//! **Node names as subject tokens.** A token cannot hold `.`, `*`, `>` or whitespace, and
//! node names are dotted hostnames. [`encode_node`] percent-encodes every byte outside
//! `A-Z a-z 0-9 - _` as `%XX` (upper-case hex), `%` included, so `web1.example.com`
//! becomes `web1%2Eexample%2Ecom`; [`decode_node`] reverses it. Names stay case-sensitive,
//! as RabbitMQ queue names are.
//!
//! **Replies** go to core NATS inboxes (`_INBOX.<nuid>`): nothing is stored; a reply whose
//! runner has gone is simply dropped, as with an exclusive AMQP reply queue. A
//! JetStream message's own reply subject is its ack address, so a request carries its
//! reply address in the `x-vogeler-reply-to` header.

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use async_trait::async_trait;
use futures_util::{Stream, StreamExt};

mod requests;

use crate::seam::{AckHandle, AckInner, Audience, Message, QueueKind, Resume, Subscription};
use crate::{Delivered, Outgoing, QueueStatus, Transport, TransportError, REASON_HEADER};

/// The header carrying a request's expiration (milliseconds after its publish time).
pub const EXPIRATION_HEADER: &str = "x-vogeler-expiration-ms";
/// The header carrying a request's reply address (a JetStream reply subject is its ack).
pub const REPLY_TO_HEADER: &str = "x-vogeler-reply-to";
/// The durable consumer every server of a deployment shares.
pub const SERVERS_CONSUMER: &str = "servers";
/// How long a message given back ([`Transport::requeue`]) waits before redelivery.
const REQUEUE_DELAY: Duration = Duration::from_secs(2);
/// Idle heartbeat of a pull on a durable consumer (servers, admin): a lost consumer is
/// noticed after two missed, 10 s.
const SHARED_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long one pull on a durable consumer waits before it is made again.
const SHARED_PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The durable consumer the admin reads dead letters with.
pub const DEAD_CONSUMER: &str = "admin";
/// How many times a declare's look-up of a stream or consumer is asked when nobody
/// answered it (each waits the client library's 5 s): a stream whose replicas were just
/// raised answers nothing about itself or its consumers while its new copies join.
const DECLARE_ATTEMPTS: usize = 4;

/// The stream and durable consumer behind a shared queue.
fn durable_of(queue: QueueKind) -> (&'static str, &'static str) {
    match queue {
        QueueKind::Results => ("RESULTS", SERVERS_CONSUMER),
        QueueKind::Dead => ("DEAD", DEAD_CONSUMER),
    }
}

/// How long `setup --messaging` waits for a stream to show replicas it was updated to.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Runs `attempt` until it succeeds, fails with an error `timed_out` does not call a
/// timeout, or `times` attempts were made; returns the last result. For idempotent
/// JetStream API requests only (look-ups, get-or-create).
async fn again_on_timeout<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    what: &str,
    times: usize,
    timed_out: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(e) if tried < times && timed_out(&e) => {
                tracing::info!(error = %e, attempt = tried, "no answer about {what}; asking again");
                tried += 1;
            }
            result => return result,
        }
    }
}

/// How a deployment uses its NATS server: names and timings.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Subject prefix (dot-separated tokens of `A-Z a-z 0-9 - _`); tests use their own.
    pub prefix: String,
    /// Shown in the server's connection list.
    pub connection_name: String,
    /// How long a server may hold a result unacked before it goes to another server.
    pub ack_wait: Duration,
    /// Results all servers together may hold unacked (the consumer's `max_ack_pending`).
    pub max_ack_pending: i64,
    /// How long the requests stream keeps a request (`max_age`).
    pub request_max_age: Duration,
    /// How long the dead-letter stream keeps a message.
    pub dead_max_age: Duration,
    /// How long a client's catch-up consumers outlive a client that died reading.
    pub client_inactive: Duration,
    /// How long [`NatsTransport::connect`] waits for the server.
    pub connect_timeout: Duration,
    /// A private CA and a client certificate, for `tls://` servers.
    pub tls: crate::BrokerTls,
    /// A `.creds` file (JWT and nkey seed) or an nkey seed file, read at connect.
    pub credentials: NatsCredentials,
    /// Copies a JetStream cluster keeps of each stream and durable consumer (1 to 5):
    /// with 3, a member lost loses no result.
    pub replicas: usize,
    /// What [`Transport::declare`] does with a stream or durable consumer that exists
    /// with other settings than these.
    pub existing: Existing,
}

/// What a declare does with a stream or durable consumer made earlier with other
/// settings (`ack_wait`, `max_ack_pending`, replicas, `max_age`): the first declarer's
/// settings would otherwise stay for good, whatever the config says later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Existing {
    /// Use it as it is (clients and runners: their config is not the deployment's).
    #[default]
    Keep,
    /// Bring it to these settings; a refused update is logged and what is there is used
    /// (the server: ingest never stops over a setting).
    Update,
    /// Bring it to these settings or fail, naming the refusal (`vogeler-admin setup`).
    Require,
}

/// A durable consumer's settings as the server has them ([`NatsTransport::durable_settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableSettings {
    /// How long a server may hold a message unacked.
    pub ack_wait: Duration,
    /// Messages all pullers together may hold unacked.
    pub max_ack_pending: i64,
    /// Copies of the consumer's state (its stream's when it sets none).
    pub replicas: usize,
    /// Copies of its stream.
    pub stream_replicas: usize,
}

/// How a client proves who it is beyond what the URL carries (user:password@, token@).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsCredentials {
    /// Nothing more than the URL.
    #[default]
    None,
    /// A decentralized-auth `.creds` file (`nsc` writes them).
    CredsFile(std::path::PathBuf),
    /// A file holding one nkey seed (`SU…`).
    NkeyFile(std::path::PathBuf),
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            prefix: "vogeler".into(),
            connection_name: "vogeler".into(),
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 10_000,
            request_max_age: Duration::from_secs(24 * 3600),
            dead_max_age: Duration::from_secs(30 * 24 * 3600),
            client_inactive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            tls: crate::BrokerTls::default(),
            credentials: NatsCredentials::None,
            replicas: 1,
            existing: Existing::Keep,
        }
    }
}

/// Encodes a node name as one subject token: `%XX` for every byte outside
/// `A-Z a-z 0-9 - _` (so `.`, `*`, `>`, whitespace and `%` itself never appear raw).
pub fn encode_node(node: &str) -> String {
    let mut out = String::with_capacity(node.len());
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode_node`]; `None` for a token it could not have made.
pub fn decode_node(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || v == b'-' || v == b'_' || hex != format!("{v:02X}") {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// A `nats://` URL with its password (or token) masked, for logs and errors.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let masked = match user.split_once(':') {
                Some((u, _)) => format!("{u}:****"),
                None => "****".to_string(),
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Credentials in a `nats://` URL, taken out of it: async-nats ignores them in the URL.
/// `user:password@` is a login, `token@` a token; both percent-decoded.
fn split_credentials(url: &str) -> (String, Option<(String, Option<String>)>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let creds = match userinfo.split_once(':') {
                Some((u, p)) => (decode(u), Some(decode(p))),
                None => (decode(userinfo), None),
            };
            (format!("{scheme}://{}", &rest[at + 1..]), Some(creds))
        }
        None => (url.to_string(), None),
    }
}

/// `nats://h1:4222,nats://h2:4222` (or bare `h2:4222` after the first) as one address
/// each, for the client library.
fn server_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// A connection to a NATS server with JetStream, as a [`Transport`]. Cloning shares
/// the connection (a durable subscription's background work holds one).
#[derive(Clone)]
pub struct NatsTransport {
    client: async_nats::Client,
    js: jetstream::Context,
    opts: NatsOptions,
    addr: String,
    /// Told of each reconnect and of messages the library dropped for a slow reader:
    /// a client's request subscription then reads the stream to catch up, and a
    /// durable subscription looks for unreadable messages in flight.
    gaps: tokio::sync::broadcast::Sender<()>,
}

/// How a delivered message is acked.
pub(crate) enum NatsAck {
    /// A JetStream delivery of a durable consumer (servers, admin): acked on the server.
    Stream(jetstream::message::Acker),
    /// A client's request: its place moves; nothing goes to the server.
    Request(requests::RequestAck),
}

impl std::fmt::Debug for NatsAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAck::Stream(_) => f.write_str("NatsAck::Stream"),
            NatsAck::Request(r) => r.fmt(f),
        }
    }
}

fn now_ms() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or_default()
}

impl NatsTransport {
    /// Connects to `url` (`nats://[user:password@]host:4222`). One attempt: the error is
    /// one line naming the server (password masked); a refused login says
    /// `ACCESS_REFUSED` ([`TransportError::is_refused`]) and is never retried.
    pub async fn connect(url: &str, opts: NatsOptions) -> Result<Self, TransportError> {
        let addr = mask_url(url);
        check_prefix(&opts.prefix).map_err(|message| TransportError::Connect {
            addr: addr.clone(),
            message,
        })?;
        let (bare, creds) = split_credentials(url);
        let (gaps, _) = tokio::sync::broadcast::channel(16);
        let told = gaps.clone();
        let broker = addr.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(&opts.connection_name)
            .connection_timeout(opts.connect_timeout)
            .event_callback(move |event| {
                let (told, broker) = (told.clone(), broker.clone());
                async move {
                    match event {
                        async_nats::Event::Connected | async_nats::Event::SlowConsumer(_) => {
                            tracing::debug!(%event, "NATS connection event: requests catch up");
                            let _ = told.send(());
                        }
                        // The library's own error lines are off below DEBUG (`logging`).
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%broker, "connection to NATS lost; reconnecting")
                        }
                        event => tracing::debug!(%event, "NATS connection event"),
                    }
                }
            });
        match creds {
            Some((user, Some(pass))) => options = options.user_and_password(user, pass),
            Some((token, None)) => options = options.token(token),
            None => {}
        }
        let refused = |message: String| TransportError::Connect {
            addr: addr.clone(),
            message,
        };
        match &opts.credentials {
            NatsCredentials::None => {}
            NatsCredentials::CredsFile(p) => {
                options = options
                    .credentials_file(p)
                    .await
                    .map_err(|e| refused(format!("credentials file {}: {e}", p.display())))?
            }
            NatsCredentials::NkeyFile(p) => {
                let seed = std::fs::read_to_string(p)
                    .map_err(|e| refused(format!("nkey seed file {}: {e}", p.display())))?;
                options = options.nkey(seed.trim().to_string());
            }
        }
        if bare.starts_with("tls://") || opts.tls.ca_file.is_some() {
            options = options.require_tls(true);
            if let Some(ca) = &opts.tls.ca_file {
                options = options.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &opts.tls.client_cert {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let attempt = tokio::time::timeout(
            opts.connect_timeout + Duration::from_secs(1),
            // A cluster's list is one address each: the client library reads a
            // comma-separated string as one (bad) URL.
            options.connect(server_addrs(&bare)),
        )
        .await;
        let client = match attempt {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                use async_nats::ConnectErrorKind as K;
                let message = match e.kind() {
                    K::AuthorizationViolation | K::Authentication => {
                        "ACCESS_REFUSED: login refused (check the user name and password)".into()
                    }
                    _ => e.to_string().replace('\n', " "),
                };
                return Err(TransportError::Connect { addr, message });
            }
            Err(_) => {
                return Err(TransportError::Connect {
                    addr,
                    message: format!("timed out after {} s", opts.connect_timeout.as_secs()),
                })
            }
        };
        if !client.server_info().jetstream {
            return Err(TransportError::Connect {
                addr,
                message: "the server runs without JetStream (start nats-server with -js)".into(),
            });
        }
        let js = jetstream::new(client.clone());
        tracing::info!(broker = %addr, "connected to NATS");
        Ok(NatsTransport {
            client,
            js,
            opts,
            addr,
            gaps,
        })
    }

    /// Deletes this prefix's three streams and their consumers (tests and admin
    /// clean-up): every result, request and dead letter of the deployment is gone.
    pub async fn delete_streams(&self) -> Result<(), TransportError> {
        for what in ["RESULTS", "REQUESTS", "DEAD"] {
            let name = self.stream_name(what);
            if let Err(e) = self.js.delete_stream(&name).await {
                let gone = matches!(
                    e.kind(),
                    jetstream::context::DeleteStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                );
                if !gone {
                    return Err(self.err(&format!("delete stream {name}"), e));
                }
            }
        }
        Ok(())
    }

    fn stream_name(&self, what: &str) -> String {
        stream_name(&self.opts.prefix, what)
    }

    fn subject(&self, tail: &str) -> String {
        format!("{}.{tail}", self.opts.prefix)
    }

    fn node_subject(&self, node: &str) -> String {
        self.subject(&format!("req.node.{}", encode_node(node)))
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> TransportError {
        TransportError::Session(format!("{what} on {}: {e}", self.addr))
    }

    fn refused(&self, what: &str, e: impl std::fmt::Display) -> TransportError {
        TransportError::Refused {
            what: format!("{what} on {}", self.addr),
            message: e.to_string(),
        }
    }

    /// The size limit, checked here: the client library would refuse it too, but a
    /// [`TransportError::TooLarge`] says which limit and which server.
    fn check_size(&self, msg: &Outgoing) -> Result<(), TransportError> {
        let limit = self.client.server_info().max_payload;
        let headers: usize = msg.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let size = msg.body.len() + headers;
        if size > limit {
            return Err(TransportError::TooLarge {
                addr: self.addr.clone(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// The settings of one of the deployment's streams.
    fn stream_config(&self, what: &str) -> stream::Config {
        let (subjects, retention, max_age) = match what {
            "RESULTS" => (
                vec![self.subject("results")],
                stream::RetentionPolicy::WorkQueue,
                Duration::ZERO,
            ),
            "REQUESTS" => (
                vec![self.subject("req.>")],
                stream::RetentionPolicy::Limits,
                self.opts.request_max_age,
            ),
            _ => (
                vec![self.subject("dead")],
                stream::RetentionPolicy::WorkQueue,
                self.opts.dead_max_age,
            ),
        };
        stream::Config {
            name: self.stream_name(what),
            subjects,
            retention,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: self.opts.replicas,
            ..Default::default()
        }
    }

    /// One of the deployment's streams, made with [`NatsTransport::stream_config`] if
    /// it does not exist yet (an existing one is used as it is).
    async fn stream(&self, what: &str) -> Result<stream::Stream, TransportError> {
        let config = self.stream_config(what);
        let name = config.name.clone();
        use jetstream::context::CreateStreamErrorKind;
        again_on_timeout(
            &format!("stream {name}"),
            DECLARE_ATTEMPTS,
            |e: &jetstream::context::CreateStreamError| {
                matches!(e.kind(), CreateStreamErrorKind::TimedOut)
            },
            || self.js.get_or_create_stream(config.clone()),
        )
        .await
        .map_err(|e| self.refused(&format!("stream {name}"), e))
    }

    /// The settings of a durable consumer (the servers' or the admin's).
    fn durable_config(&self, name: &str) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(name.to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.opts.ack_wait,
            max_ack_pending: self.opts.max_ack_pending,
            num_replicas: self.opts.replicas,
            ..Default::default()
        }
    }

    async fn durable(
        &self,
        what: &str,
        name: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, TransportError> {
        let stream = self.stream(what).await?;
        self.durable_on(&stream, what, name).await
    }

    /// [`NatsTransport::durable`] on a stream handle already in hand.
    async fn durable_on(
        &self,
        stream: &stream::Stream,
        what: &str,
        name: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, TransportError> {
        let on = format!("consumer {name} on {}", self.stream_name(what));
        again_on_timeout(
            &on,
            DECLARE_ATTEMPTS,
            |e: &stream::ConsumerError| matches!(e.kind(), stream::ConsumerErrorKind::TimedOut),
            || stream.get_or_create_consumer(name, self.durable_config(name)),
        )
        .await
        .map_err(|e| self.refused(&on, e))
    }

    /// Declares a stream, and with [`Existing::Update`] or [`Existing::Require`] brings
    /// an existing one to this deployment's replicas and `max_age`.
    async fn settle_stream(&self, what: &str) -> Result<stream::Stream, TransportError> {
        let mut stream = self.stream(what).await?;
        if self.opts.existing == Existing::Keep {
            return Ok(stream);
        }
        let want = self.stream_config(what);
        let have = stream.cached_info().config.clone();
        let changes = differences(&[
            ("replicas", have.num_replicas, want.num_replicas),
            (
                "max_age_s",
                have.max_age.as_secs() as usize,
                want.max_age.as_secs() as usize,
            ),
        ]);
        if changes.is_empty() {
            return Ok(stream);
        }
        let updated = stream::Config {
            num_replicas: want.num_replicas,
            max_age: want.max_age,
            ..have
        };
        let result = self.js.update_stream(&updated).await.map(drop);
        let applied = result.is_ok();
        self.settled(&format!("stream {}", want.name), &changes, result)?;
        // The handle again, with the settings it has now. A cluster applies an update
        // through its meta group: for a moment after it was accepted the stream may
        // still answer with its old replicas, and a consumer given the new count then
        // is refused ("exceeds parent stream"): wait (bounded) until it shows them.
        stream = self.stream(what).await?;
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        while applied
            && stream.cached_info().config.num_replicas != want.num_replicas
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            stream = self.stream(what).await?;
        }
        Ok(stream)
    }

    /// Declares a durable consumer, and with [`Existing::Update`] or
    /// [`Existing::Require`] brings an existing one to this deployment's `ack_wait`,
    /// `max_ack_pending` and replicas (JetStream updates those in place: the consumer
    /// keeps its place and what it holds).
    async fn settle_durable(&self, what: &str, name: &str) -> Result<(), TransportError> {
        let stream = self.settle_stream(what).await?;
        let consumer = self.durable_on(&stream, what, name).await?;
        if self.opts.existing == Existing::Keep {
            return Ok(());
        }
        let want = self.durable_config(name);
        let have = &consumer.cached_info().config;
        let have_replicas =
            consumer_replicas(have.num_replicas, stream.cached_info().config.num_replicas);
        let changes = differences(&[
            (
                "ack_wait_ms",
                have.ack_wait.as_millis() as usize,
                want.ack_wait.as_millis() as usize,
            ),
            (
                "max_ack_pending",
                have.max_ack_pending as usize,
                want.max_ack_pending as usize,
            ),
            ("replicas", have_replicas, want.num_replicas),
        ]);
        if changes.is_empty() {
            return Ok(());
        }
        // Made again with the same name: JetStream updates a durable in place. Refused
        // while the stream's own new replica count is still being applied across the
        // cluster ("exceeds parent stream"): asked again until it is (bounded).
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        let result = loop {
            let result = stream.create_consumer(want.clone()).await.map(drop);
            match &result {
                Err(e)
                    if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::CONSUMER_REPLICAS_EXCEEDS_STREAM)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                _ => break result,
            }
        };
        self.settled(
            &format!("consumer {name} on {}", self.stream_name(what)),
            &changes,
            result,
        )
    }

    /// Logs an update of `what`, or its refusal: an error with [`Existing::Require`], a
    /// warning (going on with what is there) with [`Existing::Update`].
    fn settled<E: std::fmt::Display>(
        &self,
        what: &str,
        changes: &str,
        result: Result<(), E>,
    ) -> Result<(), TransportError> {
        match result {
            Ok(()) => {
                tracing::info!(broker = %self.addr, %changes, "updated {what} to the configured settings");
                Ok(())
            }
            Err(e) if self.opts.existing == Existing::Require => {
                Err(self.refused(&format!("update of {what} ({changes})"), e))
            }
            Err(e) => {
                tracing::warn!(broker = %self.addr, %changes, error = %e, "could not update {what} to the configured settings; using it as it is");
                Ok(())
            }
        }
    }

    /// The stream and durable consumer behind `queue`, as they are on the server;
    /// `None` when either does not exist (nothing declared yet).
    async fn lookup(
        &self,
        queue: QueueKind,
    ) -> Result<Option<(stream::Stream, consumer::Info)>, TransportError> {
        let (what, name) = durable_of(queue);
        use jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
        use jetstream::ErrorCode;
        let stream = match self.js.get_stream(self.stream_name(what)).await {
            Ok(s) => s,
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    return Ok(None)
                }
                _ => return Err(self.err("stream info", e)),
            },
        };
        // A consumer whose replicas are changing answers nothing while it elects a
        // leader: asked again, as a declare does.
        let on = format!("consumer {name} on {}", self.stream_name(what));
        let info = match again_on_timeout(
            &on,
            DECLARE_ATTEMPTS,
            |e: &jetstream::context::ConsumerInfoError| {
                matches!(e.kind(), ConsumerInfoErrorKind::TimedOut)
            },
            || stream.consumer_info(name),
        )
        .await
        {
            Ok(i) => i,
            Err(e) => match e.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => {
                    return Ok(None)
                }
                ConsumerInfoErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND =>
                {
                    return Ok(None)
                }
                _ => return Err(self.err("consumer info", e)),
            },
        };
        Ok(Some((stream, info)))
    }

    /// The settings the servers' (or the admin's) durable consumer and its stream have
    /// on the server now, whoever made them: what `vogeler-admin setup --messaging`
    /// brought them to. `None` before anything was declared.
    pub async fn durable_settings(
        &self,
        queue: QueueKind,
    ) -> Result<Option<DurableSettings>, TransportError> {
        let Some((stream, info)) = self.lookup(queue).await? else {
            return Ok(None);
        };
        let stream_replicas = stream.cached_info().config.num_replicas;
        Ok(Some(DurableSettings {
            ack_wait: info.config.ack_wait,
            max_ack_pending: info.config.max_ack_pending,
            replicas: consumer_replicas(info.config.num_replicas, stream_replicas),
            stream_replicas,
        }))
    }

    async fn publish_js(
        &self,
        subject: String,
        msg: Outgoing,
        extra: Vec<(&str, String)>,
    ) -> Result<(), TransportError> {
        self.check_size(&msg)?;
        let mut headers = HeaderMap::new();
        for (k, v) in msg.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        for (k, v) in extra {
            headers.insert(k, v.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, msg.body.into())
            .await
            .map_err(|e| self.err(&format!("publish to {subject}"), e))?;
        ack.await
            .map_err(|e| self.err(&format!("confirm of publish to {subject}"), e))?;
        Ok(())
    }

    /// Removes the messages of `queue` whose header block the client library cannot
    /// read: anyone allowed to publish can store one, the library drops the connection on
    /// its delivery, it is never acked, and it came back after every `ack_wait` to drop
    /// the next connection too. Results in flight (after the servers' consumer's ack
    /// floor, through its last delivery: a poison's first delivery costs one reconnect,
    /// and this, at the reconnect, removes it) are dead-lettered (`unreadable-headers`)
    /// first; dead letters not yet acked are removed, with a warning (they are already
    /// dead, and `vogeler-admin dead --requeue` would stop at them). Cheap when nothing
    /// is in flight; failures only logged.
    async fn quarantine_unreadable(&self, queue: QueueKind) {
        let (stream_info, info) = match self.lookup(queue).await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look at the messages in flight");
                return;
            }
        };
        let (what, tail) = match queue {
            QueueKind::Results => ("RESULTS", "results"),
            QueueKind::Dead => ("DEAD", "dead"),
        };
        let floor = info.ack_floor.stream_sequence;
        let last = match queue {
            QueueKind::Results => info.delivered.stream_sequence,
            QueueKind::Dead => stream_info.cached_info().state.last_sequence,
        };
        let stream = self.stream_name(what);
        let subject = self.subject(tail);
        let mut seq = floor.saturating_add(1);
        let end = last.min(floor.saturating_add(QUARANTINE_SCAN));
        while seq <= end {
            let Some(m) = raw_next(&self.client, &stream, seq, Some(&subject)).await else {
                break;
            };
            if m.seq > end {
                break;
            }
            seq = m.seq.saturating_add(1);
            if m.readable() {
                continue;
            }
            tracing::warn!(broker = %self.addr, %stream, stream_sequence = m.seq, bytes = m.body.len(), "a message whose headers the NATS client cannot read (it drops the connection on every delivery): removed");
            if queue == QueueKind::Results {
                if let Err(e) = self
                    .dead_letter(Outgoing::new(m.body), "unreadable-headers")
                    .await
                {
                    tracing::warn!(error = %e, "cannot dead-letter the unreadable result; left in place");
                    continue;
                }
            }
            if let Err(e) = stream_info.delete_message(m.seq).await {
                tracing::warn!(error = %e, "cannot remove the unreadable message");
            }
        }
    }

    /// The servers' results consumer or the admin's dead-letter consumer, read after
    /// the unreadable messages in flight are removed, and again after each reconnect.
    async fn consume_durable(
        &self,
        queue: QueueKind,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let (what, name) = durable_of(queue);
        let c = self.durable(what, name).await?;
        let reconnects = self.gaps.subscribe();
        self.quarantine_unreadable(queue).await;
        Ok(Box::new(NatsSubscription {
            feed: self.pull(c, prefetch).await?,
            addr: self.addr.clone(),
            _quarantine: self.quarantine_on_reconnect(queue, reconnects),
        }))
    }

    /// Runs [`Self::quarantine_unreadable`] after every reconnect while the
    /// subscription lives. The library's pull outlives a reconnect, so a subscription
    /// is not made again after one: without this, a poison delivered to it dropped the
    /// connection again after every `ack_wait`, for good. A run is never cut short (a
    /// cut between its dead letter and its removal would dead-letter a poison twice):
    /// dropping the returned sender ends the task between runs.
    fn quarantine_on_reconnect(
        &self,
        queue: QueueKind,
        mut reconnects: tokio::sync::broadcast::Receiver<()>,
    ) -> tokio::sync::oneshot::Sender<()> {
        use tokio::sync::broadcast::error::RecvError;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    r = reconnects.recv() => match r {
                        Ok(()) | Err(RecvError::Lagged(_)) => me.quarantine_unreadable(queue).await,
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
        stop
    }

    async fn pull(
        &self,
        c: consumer::Consumer<consumer::pull::Config>,
        prefetch: u16,
    ) -> Result<Feeds, TransportError> {
        // A consumer whose member went away (while a cluster elects) sends nothing, not
        // even an error: without heartbeats a pull would wait on it for good. Two missed
        // ones end the feed with an error, and the program reconnects.
        // Half the prefetch per pull: the library asks for the next batch when half of
        // one is still to come, so up to 1.5 batches are on their way: about `prefetch`
        // results in flight, as RabbitMQ's prefetch holds (a full prefetch per pull held
        // half as much again in the server's memory).
        let s = c
            .stream()
            .max_messages_per_batch(usize::from(prefetch / 2).max(1))
            .heartbeat(SHARED_HEARTBEAT)
            .expires(SHARED_PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| self.err("pull", e))?;
        Ok(Box::pin(s.map(|m| m.map_err(|e| e.to_string()))))
    }
}

/// A stored message as the stream's JSON message API gives it: the headers as bytes,
/// never parsed by the client library (which drops the whole connection on a header
/// block it cannot read, and anyone allowed to publish can store one).
pub(crate) struct RawStored {
    pub seq: u64,
    pub subject: String,
    /// The header block, when the message has one.
    pub headers: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

impl RawStored {
    /// Whether a consumer's delivery of this message can be read (see
    /// [`requests::headers_readable`]).
    pub fn readable(&self) -> bool {
        self.headers
            .as_deref()
            .is_none_or(requests::headers_readable)
    }
}

/// The first message of `stream` at or after `seq` (on `subject` when given), through
/// `$JS.API.STREAM.MSG.GET`; `None` when there is none or the look failed (logged).
pub(crate) async fn raw_next(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
    subject: Option<&str>,
) -> Option<RawStored> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ask = match subject {
        Some(s) => serde_json::json!({ "seq": seq, "next_by_subj": s }),
        None => serde_json::json!({ "seq": seq }),
    };
    let reply = match client
        .request(
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            ask.to_string().into(),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%stream, error = %e, "cannot look at a stored message");
            return None;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    let m = &v["message"];
    let headers = match m["hdrs"].as_str() {
        Some(h) => Some(b64.decode(h).ok()?),
        None => None,
    };
    Some(RawStored {
        seq: m["seq"].as_u64()?,
        subject: m["subject"].as_str().unwrap_or_default().to_string(),
        headers,
        body: m["data"]
            .as_str()
            .and_then(|d| b64.decode(d).ok())
            .unwrap_or_default(),
    })
}

/// Most in-flight results looked at when a server starts consuming.
const QUARANTINE_SCAN: u64 = 20_000;

/// The stream `what` (`RESULTS`, `REQUESTS`, `DEAD`) of the deployment under subject
/// prefix `prefix`: stream names take no dots.
pub fn stream_name(prefix: &str, what: &str) -> String {
    format!("{}_{what}", prefix.replace('.', "_"))
}

/// A durable consumer's copies: `0` (a consumer declared without a count) means as
/// many as its stream keeps.
fn consumer_replicas(consumer: usize, stream: usize) -> usize {
    match consumer {
        0 => stream,
        n => n,
    }
}

/// `name: have -> want` for each setting that differs, comma-separated; empty when
/// none does.
fn differences(settings: &[(&str, usize, usize)]) -> String {
    settings
        .iter()
        .filter(|(_, have, want)| have != want)
        .map(|(name, have, want)| format!("{name}: {have} -> {want}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `to` is a subject a reply may go to: printable tokens without wildcards, at
/// most 255 bytes, not under `prefix` (the results, requests and dead streams) and not a
/// system subject (`$…`).
fn reply_subject_ok(to: &str, prefix: &str) -> bool {
    let plain = !to.is_empty()
        && to.len() <= 255
        && to.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    let own = to == prefix || to.starts_with(&format!("{prefix}."));
    // `$` subjects are the system's own (`$JS`, `$SYS`, `$KV`, `$O`, `$G`…): no reply
    // goes there.
    plain && !own && !to.starts_with('$')
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad subject prefix {prefix:?}: use dot-separated tokens of A-Z a-z 0-9 - _"
        ))
    }
}

type Feeds = Pin<Box<dyn Stream<Item = Result<jetstream::Message, String>> + Send + 'static>>;

/// Splits a message's headers into the program's, the reply address and the
/// expiration (both travel in headers: see the module docs).
pub(crate) fn parse_headers(
    h: Option<&HeaderMap>,
) -> (Vec<(String, String)>, Option<String>, Option<i128>) {
    let mut headers = Vec::new();
    let mut reply_to = None;
    let mut expiration = None;
    for (k, values) in h.into_iter().flat_map(|h| h.iter()) {
        for v in values {
            match k.as_ref() {
                REPLY_TO_HEADER => reply_to = Some(v.as_str().to_string()),
                EXPIRATION_HEADER => expiration = v.as_str().parse().ok(),
                name => headers.push((name.to_string(), v.as_str().to_string())),
            }
        }
    }
    (headers, reply_to, expiration)
}

/// A durable consumer (the servers' or the admin's) as one [`Subscription`].
struct NatsSubscription {
    feed: Feeds,
    addr: String,
    /// Ends the subscription's quarantine task when dropped.
    _quarantine: tokio::sync::oneshot::Sender<()>,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<Result<Message, TransportError>> {
        let m = match self.feed.next().await? {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(TransportError::Session(format!(
                    "consume on {}: {e}",
                    self.addr
                ))))
            }
        };
        let delivered = match m.info() {
            Ok(i) => i.delivered,
            Err(e) => {
                return Some(Err(TransportError::Session(format!(
                    "message metadata on {}: {e}",
                    self.addr
                ))))
            }
        };
        let (core, acker) = m.split();
        let (headers, reply_to, _) = parse_headers(core.headers.as_ref());
        Some(Ok(Message {
            body: core.payload.to_vec(),
            headers,
            reply_to,
            redelivered: delivered > 1,
            source: self.addr.clone(),
            key: core.subject.to_string(),
            ack: AckHandle(AckInner::Nats(Box::new(NatsAck::Stream(acker)))),
        }))
    }
}

/// A core NATS subscription (the reply inbox) as a [`Subscription`].
struct InboxSubscription(async_nats::Subscriber);

#[async_trait]
impl Subscription for InboxSubscription {
    async fn next(&mut self) -> Option<Result<Message, TransportError>> {
        let m = self.0.next().await?;
        let mut headers = Vec::new();
        if let Some(h) = &m.headers {
            for (k, values) in h.iter() {
                for v in values {
                    headers.push((k.to_string(), v.as_str().to_string()));
                }
            }
        }
        Some(Ok(Message {
            body: m.payload.to_vec(),
            headers,
            reply_to: m.reply.map(|r| r.to_string()),
            redelivered: false,
            source: String::new(),
            key: m.subject.to_string(),
            ack: AckHandle(AckInner::None),
        }))
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn max_message_bytes(&self) -> Option<usize> {
        Some(self.client.server_info().max_payload)
    }

    /// The requests stream stores a request to any node name, listened for or not.
    fn reports_unroutable(&self) -> bool {
        false
    }

    async fn declare(&self) -> Result<(), TransportError> {
        self.settle_durable("RESULTS", SERVERS_CONSUMER).await?;
        self.settle_stream("REQUESTS").await?;
        self.settle_durable("DEAD", DEAD_CONSUMER).await?;
        Ok(())
    }

    async fn declare_sender(&self) -> Result<(), TransportError> {
        // A runner's config is not the deployment's: it never updates what is there.
        self.durable("RESULTS", SERVERS_CONSUMER).await?;
        self.stream("REQUESTS").await?;
        self.durable("DEAD", DEAD_CONSUMER).await?;
        Ok(())
    }

    async fn publish_result(&self, mut msg: Outgoing) -> Result<(), TransportError> {
        // A JetStream message's own reply subject is its ack: the runner's inbox rides
        // in a header, as on requests.
        let extra = msg
            .reply_to
            .take()
            .map(|r| vec![(REPLY_TO_HEADER, r)])
            .unwrap_or_default();
        self.publish_js(self.subject("results"), msg, extra).await
    }

    async fn publish_request(
        &self,
        to: Audience<'_>,
        mut msg: Outgoing,
    ) -> Result<Delivered, TransportError> {
        let subject = match to {
            Audience::Everyone => self.subject("req.all"),
            Audience::Node(node) => self.node_subject(node),
        };
        let mut extra = Vec::new();
        if let Some(ms) = msg.expiration_ms {
            extra.push((EXPIRATION_HEADER, ms.to_string()));
        }
        if let Some(r) = msg.reply_to.take() {
            extra.push((REPLY_TO_HEADER, r));
        }
        self.publish_js(subject, msg, extra).await?;
        Ok(Delivered::Routed)
    }

    async fn publish_reply(&self, to: &str, msg: Outgoing) -> Result<(), TransportError> {
        // A reply address comes from whoever sent the request: one that is no subject,
        // or that points into this deployment's own streams, is not published to (an
        // error here would fail the session, and again on every redelivery).
        if !reply_subject_ok(to, &self.opts.prefix) {
            tracing::warn!(reply_to = %to, "a reply address that is not a plain subject outside the deployment's streams; not answered");
            return Ok(());
        }
        self.check_size(&msg)?;
        let mut headers = HeaderMap::new();
        for (k, v) in &msg.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        self.client
            .publish_with_headers(to.to_string(), headers, msg.body.into())
            .await
            .map_err(|e| self.err(&format!("reply to {to}"), e))?;
        self.client
            .flush()
            .await
            .map_err(|e| self.err(&format!("reply to {to}"), e))
    }

    async fn dead_letter(&self, mut msg: Outgoing, reason: &str) -> Result<(), TransportError> {
        msg.headers.retain(|(k, _)| k != REASON_HEADER);
        msg.headers
            .insert(0, (REASON_HEADER.to_string(), reason.to_string()));
        self.stream("DEAD").await?;
        self.publish_js(self.subject("dead"), msg, Vec::new()).await
    }

    async fn consume_results(
        &self,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.consume_durable(QueueKind::Results, prefetch).await
    }

    async fn consume_node(
        &self,
        node: &str,
        resume: Option<Resume>,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let mut stream = self.stream("REQUESTS").await?;
        let subjects = [self.subject("req.all"), self.node_subject(node)];
        let gaps = self.gaps.subscribe();
        let mut live = Vec::with_capacity(2);
        for subject in &subjects {
            live.push(
                self.client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| self.err(&format!("subscribe to {subject}"), e))?,
            );
        }
        // Subscribed on the server before the stream's end is read: a request sent
        // after that read arrives live.
        self.client
            .flush()
            .await
            .map_err(|e| self.err("subscribe", e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| self.err("stream info", e))?
            .state
            .last_sequence;
        let from_now = Resume {
            broadcast: last,
            node: last,
            handled: Vec::new(),
        };
        let (start, catch_up_first) = match resume {
            // A place past the stream's end was not saved against this stream (it was
            // deleted and made again, or the file was edited): read from it and every
            // request until the stream got that far again would be skipped.
            Some(r) if r.broadcast > last || r.node > last => {
                tracing::warn!(broker = %self.addr, saved = %Resume { handled: Vec::new(), ..r }, stream_end = last, "the saved request-stream place is past the end of the requests stream (stream made again?); starting from new requests");
                (from_now, false)
            }
            Some(r) => (r, true),
            None => (from_now, false),
        };
        let (Some(n), Some(b)) = (live.pop(), live.pop()) else {
            return Err(self.err("subscribe", "no subscription made"));
        };
        Ok(Box::new(requests::Requests::start(requests::Parts {
            stream,
            subjects,
            live: [b, n],
            gaps,
            client: self.client.clone(),
            start,
            catch_up_first,
            inactive: self.opts.client_inactive,
            prefetch,
            addr: self.addr.clone(),
        })))
    }

    async fn consume_dead(&self, prefetch: u16) -> Result<Box<dyn Subscription>, TransportError> {
        self.consume_durable(QueueKind::Dead, prefetch).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Message>, TransportError> {
        // Read by sequence, not consumed: listing twice shows the same letters, and the
        // admin's durable consumer is left as it was.
        let mut stream = self.stream("DEAD").await?;
        let state = stream
            .info()
            .await
            .map_err(|e| self.err("stream info", e))?
            .state
            .clone();
        let mut out = Vec::new();
        let mut seq = state.first_sequence.max(1);
        while out.len() < limit && seq <= state.last_sequence && state.messages > 0 {
            match stream.get_raw_message(seq).await {
                Ok(m) => {
                    let mut headers = Vec::new();
                    for (k, values) in m.headers.iter() {
                        for v in values {
                            headers.push((k.to_string(), v.as_str().to_string()));
                        }
                    }
                    out.push(Message {
                        body: m.payload.to_vec(),
                        headers,
                        reply_to: None,
                        redelivered: false,
                        source: self.stream_name("DEAD"),
                        key: m.subject.to_string(),
                        ack: AckHandle(AckInner::None),
                    });
                }
                // A sequence acked away (a requeued letter) leaves a gap.
                Err(e) => tracing::debug!(stream_sequence = seq, error = %e, "no dead letter here"),
            }
            seq += 1;
        }
        Ok(out)
    }

    async fn reply_inbox(&self) -> Result<(String, Box<dyn Subscription>), TransportError> {
        let inbox = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.err("reply inbox", e))?;
        // The subscription is on the server before anyone is told its address.
        self.client
            .flush()
            .await
            .map_err(|e| self.err("reply inbox", e))?;
        Ok((inbox, Box::new(InboxSubscription(sub))))
    }

    async fn ack(&self, handle: &AckHandle) -> Result<(), TransportError> {
        match &handle.0 {
            AckInner::Nats(a) => match a.as_ref() {
                NatsAck::Stream(acker) => acker.double_ack().await.map_err(|e| self.err("ack", e)),
                NatsAck::Request(r) => {
                    r.handled();
                    Ok(())
                }
            },
            AckInner::None => Ok(()),
            AckInner::Amqp(_) => Err(self.err("ack", "an AMQP delivery cannot be acked on NATS")),
        }
    }

    async fn ack_batch(&self, handles: &[&AckHandle]) -> Result<(), TransportError> {
        // Plain acks go out in order on one connection; the last one is confirmed, so
        // when this returns the server has every ack of the batch.
        let Some((last, rest)) = handles.split_last() else {
            return Ok(());
        };
        for h in rest {
            if let AckInner::Nats(a) = &h.0 {
                match a.as_ref() {
                    NatsAck::Stream(acker) => acker.ack().await.map_err(|e| self.err("ack", e))?,
                    NatsAck::Request(r) => r.handled(),
                }
            }
        }
        self.ack(last).await
    }

    async fn requeue(&self, handle: &AckHandle) -> Result<(), TransportError> {
        match &handle.0 {
            // Redelivered after a pause, not at once: a pull still open on this
            // connection would take it straight back (the admin lists, gives every
            // message back, then closes).
            AckInner::Nats(a) => match a.as_ref() {
                NatsAck::Stream(acker) => acker
                    .ack_with(AckKind::Nak(Some(REQUEUE_DELAY)))
                    .await
                    .map_err(|e| self.err("requeue", e)),
                // Not handled: it runs again after the client's next restart.
                NatsAck::Request(_) => Ok(()),
            },
            AckInner::None => Ok(()),
            AckInner::Amqp(_) => {
                Err(self.err("requeue", "an AMQP delivery cannot be requeued on NATS"))
            }
        }
    }

    async fn queue_status(&self, queue: QueueKind) -> Result<Option<QueueStatus>, TransportError> {
        let Some((_, info)) = self.lookup(queue).await? else {
            return Ok(None);
        };
        // Dead letters the admin listed and gave back wait for redelivery, counted as
        // ack-pending: they are still there. Results held by a server are not "ready".
        let held = match queue {
            QueueKind::Dead => info.num_ack_pending as u64,
            QueueKind::Results => 0,
        };
        Ok(Some(QueueStatus {
            messages: u32::try_from(info.num_pending + held).unwrap_or(u32::MAX),
            consumers: u32::try_from(info.num_waiting).unwrap_or(u32::MAX),
        }))
    }

    async fn close(&self) {
        let _ = self.client.drain().await;
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_declare_look_up_is_asked_again_only_when_nobody_answered() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = AtomicUsize::new(0);
        let timed_out = |e: &String| e == "timed out";
        // Answered on the third try: two timeouts, then the stream.
        let answered = super::again_on_timeout("stream S", 4, timed_out, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err("timed out".to_string())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answered, Ok(2));
        // A refusal is final at once.
        calls.store(0, Ordering::SeqCst);
        let refused: Result<(), String> = super::again_on_timeout("stream S", 4, timed_out, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err("insufficient resources".to_string()) }
        })
        .await;
        assert_eq!(refused, Err("insufficient resources".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Nobody ever answers: given up after the attempts allowed.
        calls.store(0, Ordering::SeqCst);
        let silent: Result<(), String> = super::again_on_timeout("stream S", 4, timed_out, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err("timed out".to_string()) }
        })
        .await;
        assert_eq!(silent, Err("timed out".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    use super::{decode_node, differences, encode_node, mask_url, split_credentials};

    #[test]
    fn a_server_list_is_one_address_each() {
        assert_eq!(
            super::server_addrs("nats://a:1, nats://b:2,,c:3"),
            ["nats://a:1", "nats://b:2", "c:3"]
        );
        let (bare, creds) = split_credentials("nats://u:p@a:1,nats://b:2");
        assert_eq!(super::server_addrs(&bare), ["nats://a:1", "nats://b:2"]);
        assert_eq!(creds, Some(("u".to_string(), Some("p".to_string()))));
    }

    #[test]
    fn differences_name_each_changed_setting() {
        assert_eq!(differences(&[("replicas", 1, 1)]), "");
        assert_eq!(
            differences(&[
                ("ack_wait_ms", 60_000, 3_000),
                ("replicas", 1, 1),
                ("r", 1, 3)
            ]),
            "ack_wait_ms: 60000 -> 3000, r: 1 -> 3"
        );
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        assert_eq!(
            split_credentials("nats://u:p%40ss@h:4222"),
            (
                "nats://h:4222".to_string(),
                Some(("u".to_string(), Some("p@ss".to_string())))
            )
        );
        assert_eq!(
            split_credentials("nats://tok@h"),
            ("nats://h".to_string(), Some(("tok".to_string(), None)))
        );
        assert_eq!(
            split_credentials("nats://h:4222"),
            ("nats://h:4222".to_string(), None)
        );
    }

    #[test]
    fn node_names_become_safe_tokens_and_back() {
        for node in [
            "web1.example.com",
            "db-2_a",
            "odd name*>.%",
            "UPPER.lower",
            "",
        ] {
            let t = encode_node(node);
            assert!(
                !t.contains(['.', '*', '>', ' ', '\t']),
                "{node:?} gave {t:?}"
            );
            assert_eq!(decode_node(&t).as_deref(), Some(node));
        }
        assert_eq!(encode_node("web1.example.com"), "web1%2Eexample%2Ecom");
        // Distinct names never share a token.
        assert_ne!(encode_node("a.b"), encode_node("a%2Eb"));
        assert_eq!(decode_node("a%2eb"), None);
        assert_eq!(decode_node("a%41"), None);
        assert_eq!(decode_node("a.b"), None);
    }

    #[test]
    fn replies_go_only_to_plain_subjects_outside_the_deployment() {
        use super::reply_subject_ok;
        assert!(reply_subject_ok("_INBOX.abc.def", "vogeler"));
        for bad in [
            "",
            "a b",
            "a.*",
            "a.>",
            "a..b",
            "vogeler.results",
            "vogeler",
            "$JS.API.STREAM.DELETE.x",
            "$KV.config.key",
            "$O.bucket.x",
            "a\nb",
        ] {
            assert!(!reply_subject_ok(bad, "vogeler"), "{bad:?}");
        }
        assert!(reply_subject_ok("vogelerx.results", "vogeler"));
    }

    #[test]
    fn passwords_and_tokens_are_masked() {
        assert_eq!(
            mask_url("nats://u:secret@127.0.0.1:4222"),
            "nats://u:****@127.0.0.1:4222"
        );
        assert_eq!(mask_url("nats://tok@h:4222"), "nats://****@h:4222");
        assert_eq!(mask_url("nats://h:4222"), "nats://h:4222");
    }
}
