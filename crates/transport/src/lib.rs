//! The AMQP seam: the only crate that knows lapin (and RabbitMQ's management API).
//!
//! Programs hold a [`Broker`] (the broker addresses and a reconnect policy) and
//! open a [`Session`] from it: one connection, one channel in confirm mode. A
//! session declares what its program uses ([`Topology`]), publishes with
//! publisher confirms ([`Session::publish`], pipelined through [`Pending`]), and
//! consumes with manual acks ([`Session::consume`]). When a session fails the
//! program drops it and asks the broker for a new one; [`Backoff`] spaces the
//! attempts with full jitter so a fleet never reconnects in one herd.
//!
//! [`seam`] puts the same operations behind one broker-neutral [`Transport`] trait,
//! implemented over a session ([`AmqpTransport`]) and over NATS JetStream
//! ([`nats::NatsTransport`], feature `nats`); a [`Connector`] picks one from the
//! configured address, and the programs hold only the trait.

mod backoff;
mod connector;
pub mod management;
#[cfg(feature = "nats")]
pub mod nats;
pub mod seam;

pub use backoff::Backoff;
pub use connector::Connector;
pub use management::{Management, ManagementError, QueueInfo};
#[cfg(feature = "nats")]
pub use nats::{DurableSettings, Existing, NatsCredentials, NatsOptions, NatsTransport};
pub use seam::{
    AckHandle, AmqpTransport, Audience, BadResume, Message, QueueKind, Resume, Subscription,
    Transport, REASON_HEADER,
};

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// Why a transport call failed. Every variant means "drop the session and reconnect"
/// except [`TransportError::Refused`], which names a permanent broker refusal, and
/// [`TransportError::TooLarge`], a message no broker session will take.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker could not be reached at any of its addresses.
    #[error("cannot connect to the broker at {addr}: {message}")]
    Connect {
        /// The address tried last (password masked).
        addr: String,
        /// What failed.
        message: String,
    },
    /// The connection or channel failed mid-session.
    #[error("broker session failed: {0}")]
    Session(String),
    /// The broker refused an operation (permissions, a queue declared with other arguments).
    #[error("broker refused {what}: {message}")]
    Refused {
        /// The operation refused.
        what: String,
        /// What the broker said.
        message: String,
    },
    /// The message is larger than the broker accepts: sending it again cannot help.
    #[error("message of {size} bytes is over the limit of {limit} bytes of the broker at {addr}")]
    TooLarge {
        /// The broker (password masked).
        addr: String,
        /// Body and headers, in bytes.
        size: usize,
        /// The broker's limit (NATS `max_payload`).
        limit: usize,
    },
    /// The broker negatively acknowledged a publish.
    #[error("broker nacked the message to exchange {exchange:?}")]
    Nacked {
        /// Target exchange.
        exchange: String,
    },
}

impl TransportError {
    /// The broker refused the login (wrong user or password): retrying cannot help an
    /// interactive command, so it gives up at once.
    pub fn is_refused(&self) -> bool {
        matches!(self, TransportError::Connect { message, .. } if message.starts_with("ACCESS_REFUSED"))
    }

    /// True when trying again cannot help: a refused login, or a TLS failure (an unknown
    /// CA, a missing client certificate, a file that does not load) that is the same on
    /// every attempt. A refused or reset TCP connection is not: the broker may be starting.
    pub fn is_permanent(&self) -> bool {
        match self {
            TransportError::Connect { message, .. } => {
                // The TLS hint that follows every amqps failure is not the reason.
                let reason = message.split(" (TLS: ").next().unwrap_or_default();
                let m = reason.to_ascii_lowercase();
                self.is_refused()
                    || m.contains("certificate")
                    || m.contains("alert")
                    || m.contains("handshake")
                    || m.contains("cannot read")
                    || m.contains("not pem")
            }
            _ => false,
        }
    }

    fn session(e: lapin::Error) -> Self {
        match &e {
            lapin::Error::ProtocolError(p) => TransportError::Refused {
                what: "operation".into(),
                message: p.to_string(),
            },
            _ => TransportError::Session(e.to_string()),
        }
    }
}

/// The exchange and queue names a deployment uses; the defaults are the 2010 names,
/// tests set their own to share one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Direct exchange results are published to.
    pub master_exchange: String,
    /// Topic exchange requests are published to.
    pub broadcast_exchange: String,
    /// The servers' shared queue on the master exchange.
    pub master_queue: String,
    /// Where the server puts messages it cannot use.
    pub dead_queue: String,
    /// Declare the master and dead-letter queues as quorum queues (replicated across a
    /// RabbitMQ cluster). Node queues stay classic: see docs/SCALING.md.
    pub quorum: bool,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            master_exchange: "vogeler.master.in".into(),
            broadcast_exchange: "vogeler.broadcast.in".into(),
            master_queue: "master.in".into(),
            dead_queue: "vogeler.dead".into(),
            quorum: false,
        }
    }
}

/// Routing key every client binds for broadcasts (the 2010 code published it literally).
pub const BROADCAST_KEY: &str = "broadcasts.*";

/// Certificates for `amqps://` brokers. The files are read at every connect, so a renewed
/// certificate is picked up by the next reconnect without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    /// PEM CA certificate(s) trusted in addition to the system roots: a private CA.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its PEM private key, for brokers that verify peers.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl BrokerTls {
    /// lapin's TLS settings, from the files as they are now.
    fn load(&self) -> Result<lapin::tcp::OwnedTLSConfig, String> {
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
        };
        let cert_chain = match &self.ca_file {
            Some(p) => Some(
                String::from_utf8(read("CA file", p)?)
                    .map_err(|_| format!("CA file {} is not PEM text", p.display()))?,
            ),
            None => None,
        };
        let identity = match &self.client_cert {
            Some((cert, key)) => Some(identity(
                cert,
                &read("client certificate", cert)?,
                key,
                &read("client key", key)?,
            )?),
            None => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// Appended to a failed TLS connection's error: which roots the broker was checked against.
    fn hint(&self) -> String {
        let roots = match &self.ca_file {
            Some(p) => format!("the system roots and the CA file {}", p.display()),
            None => "the system roots only (set [amqp] ca_file for a private CA)".into(),
        };
        let client = match &self.client_cert {
            Some((cert, _)) => format!("; client certificate {}", cert.display()),
            None => String::new(),
        };
        format!(" (TLS: the broker's certificate is checked against {roots}{client})")
    }
}

/// The client certificate and key as lapin takes them: a PKCS#12 bundle, built in memory
/// from the PEM files (the password only guards this hand-over within the process).
fn identity(
    cert_path: &std::path::Path,
    cert_pem: &[u8],
    key_path: &std::path::Path,
    key_pem: &[u8],
) -> Result<lapin::tcp::OwnedIdentity, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .map(|c| {
            c.map_err(|e| e.to_string()).and_then(|c| {
                p12_keystore::Certificate::from_der(c.as_ref()).map_err(|e| e.to_string())
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client certificate {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "client certificate {}: no PEM certificate in the file",
            cert_path.display()
        ));
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
        Ok(_) => {
            return Err(format!(
                "client key {} is not PKCS#8 (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`",
                key_path.display()
            ))
        }
        Err(e) => return Err(format!("client key {}: {e}", key_path.display())),
    };
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "vogeler",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            key, b"vogeler", chain,
        )),
    );
    const PASSWORD: &str = "vogeler-in-process";
    let der = store
        .writer(PASSWORD)
        .encryption_iterations(1)
        .mac_iterations(1)
        .write()
        .map_err(|e| format!("client certificate {}: {e}", cert_path.display()))?;
    Ok(lapin::tcp::OwnedIdentity {
        der,
        password: PASSWORD.into(),
    })
}

/// Where a program finds its broker(s), and how it names its connections.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Full AMQP URIs, tried in turn (several for a cluster).
    uris: Vec<String>,
    /// Same addresses with passwords masked, for logs.
    labels: Vec<String>,
    /// Shown in the broker's connection list.
    connection_name: String,
    /// Certificates for `amqps://` addresses.
    tls: BrokerTls,
    /// How long [`Broker::connect_interactive`] keeps trying.
    connect_timeout: Duration,
}

impl Broker {
    /// `uris` are full `amqp://` URIs; `labels` are the same with the password masked.
    pub fn new(uris: Vec<String>, labels: Vec<String>, connection_name: &str) -> Self {
        Broker {
            uris,
            labels,
            connection_name: connection_name.to_string(),
            tls: BrokerTls::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// How long an interactive command keeps trying ([`Broker::connect_interactive`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// [`Broker::connect_within`] the configured `--connect-timeout`.
    pub async fn connect_interactive(&self) -> Result<Session, TransportError> {
        self.connect_within(self.connect_timeout).await
    }

    /// Uses these certificates for the `amqps://` addresses (plain ones ignore them).
    pub fn with_tls(mut self, tls: BrokerTls) -> Self {
        self.tls = tls;
        self
    }

    /// Asks the broker for frames of at most `bytes` (min 4096). lapin keeps two
    /// buffers of 32 frames each, so an agent that sends few, mostly small messages
    /// trades a little throughput on large results for a much smaller resident size.
    pub fn with_frame_max(mut self, bytes: u32) -> Self {
        let bytes = bytes.max(4096);
        for uri in &mut self.uris {
            let sep = if uri.contains('?') { '&' } else { '?' };
            uri.push_str(&format!("{sep}frame_max={bytes}"));
        }
        self
    }

    /// The addresses for logs, passwords masked.
    pub fn describe(&self) -> String {
        self.labels.join(",")
    }

    /// One attempt at each address in turn; the first that answers wins.
    pub async fn connect(&self) -> Result<Session, TransportError> {
        let mut last = TransportError::Connect {
            addr: "(no broker address configured)".into(),
            message: "empty list".into(),
        };
        for (i, uri) in self.uris.iter().enumerate() {
            let label = self.labels.get(i).cloned().unwrap_or_default();
            let props = ConnectionProperties::default()
                .with_executor(tokio_executor_trait::Tokio::current())
                .with_reactor(tokio_reactor_trait::Tokio)
                .with_connection_name(self.connection_name.clone().into());
            let tls = uri.starts_with("amqps://");
            let config = if tls {
                match self.tls.load() {
                    Ok(c) => c,
                    Err(message) => {
                        last = TransportError::Connect {
                            addr: label,
                            message,
                        };
                        continue;
                    }
                }
            } else {
                lapin::tcp::OwnedTLSConfig::default()
            };
            let attempt = tokio::time::timeout(
                Duration::from_secs(10),
                Connection::connect_with_config(uri, props, config),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => return Session::open(conn, label).await,
                Ok(Err(e)) => {
                    let hint = if tls { self.tls.hint() } else { String::new() };
                    last = TransportError::Connect {
                        addr: label,
                        message: format!("{}{hint}", reason(&e)),
                    }
                }
                Err(_) => {
                    last = TransportError::Connect {
                        addr: label,
                        message: "timed out after 10 s".into(),
                    }
                }
            }
        }
        Err(last)
    }

    /// Connects for an interactive command: retries with a short backoff until `timeout`
    /// has passed, then returns the last error (one line, no log per attempt). A refused
    /// login is returned at once: retrying a wrong password only fills the broker's log.
    pub async fn connect_within(&self, timeout: Duration) -> Result<Session, TransportError> {
        connector::within(timeout, || self.describe(), || self.connect()).await
    }

    /// Connects, retrying with `backoff` until it works or `shutdown` resolves (then `None`).
    ///
    /// A connection is not yet a working session, so this never resets `backoff`: the
    /// caller does once its queues are declared and consumed. A cluster member that
    /// accepts connections but refuses a queue (a classic queue whose home member is down)
    /// is then retried with growing delays, not several times a second.
    pub async fn connect_retrying(
        &self,
        backoff: &mut Backoff,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Option<Session> {
        connector::retrying(backoff, shutdown, || self.connect()).await
    }
}

/// A connection failure in a few words an operator can act on: a refused login says
/// `ACCESS_REFUSED` and what to check, without lapin's wording around it.
fn reason(e: &lapin::Error) -> String {
    let text = e.to_string();
    if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
        "ACCESS_REFUSED: login refused (check the user name, password and vhost permissions)".into()
    } else if let Some(rest) = text.strip_prefix("IO error: ") {
        rest.into()
    } else {
        text
    }
}

/// One connection and one confirm-mode channel.
pub struct Session {
    conn: Connection,
    channel: Channel,
    addr: String,
}

/// A message property set the programs care about.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// Message body.
    pub body: Vec<u8>,
    /// String headers (for example the dead-letter reason).
    pub headers: Vec<(String, String)>,
    /// Per-message expiration in milliseconds, so stale requests do not pile up.
    pub expiration_ms: Option<u64>,
    /// Queue the receiver should answer to.
    pub reply_to: Option<String>,
    /// Ask the broker to return the message when no queue is bound (unroutable).
    pub mandatory: bool,
    /// Delivery mode 1: queues keep the message in memory only, so it is lost if the
    /// broker restarts, but a broadcast to thousands of queues writes nothing to disk.
    pub transient: bool,
}

impl Outgoing {
    /// A persistent JSON message with no extras.
    pub fn new(body: Vec<u8>) -> Self {
        Outgoing {
            body,
            ..Default::default()
        }
    }
}

/// What the broker said about a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Confirmed and routed to at least one queue.
    Routed,
    /// Confirmed but returned: no queue was bound for the routing key (mandatory only).
    Unroutable,
}

/// A publish whose confirm has not arrived yet; await [`Pending::confirmed`].
pub struct Pending {
    confirm: PublisherConfirm,
    exchange: String,
}

impl Pending {
    /// Waits for the broker's confirm.
    pub async fn confirmed(self) -> Result<Delivered, TransportError> {
        match self.confirm.await.map_err(TransportError::session)? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Delivered::Routed),
            Confirmation::Ack(Some(_)) => Ok(Delivered::Unroutable),
            Confirmation::Nack(Some(_)) => Ok(Delivered::Unroutable),
            Confirmation::Nack(None) => Err(TransportError::Nacked {
                exchange: self.exchange,
            }),
        }
    }
}

/// A received message; ack or reject it through its [`Session`]'s channel.
#[derive(Debug)]
pub struct Inbound {
    /// Message body as received.
    pub body: Vec<u8>,
    /// Delivery tag, for (multiple) acks.
    pub tag: u64,
    /// Whether the broker delivered it before (a consumer died holding it).
    pub redelivered: bool,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Exchange it was published to.
    pub exchange: String,
    /// The sender's reply queue, if any.
    pub reply_to: Option<String>,
    /// String-valued headers.
    pub headers: Vec<(String, String)>,
}

impl Inbound {
    /// A header's value by name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Queue figures from a passive declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStatus {
    /// Ready messages.
    pub messages: u32,
    /// Attached consumers.
    pub consumers: u32,
}

/// A stream of received messages from [`Session::consume`].
pub struct Consumer {
    inner: lapin::Consumer,
}

impl Consumer {
    /// The next message; `None` or an error means the session is gone.
    pub async fn next(&mut self) -> Option<Result<Inbound, TransportError>> {
        let item = self.inner.next().await?;
        Some(match item {
            Ok(d) => {
                let props = &d.properties;
                let headers = props
                    .headers()
                    .as_ref()
                    .map(|t| {
                        t.inner()
                            .iter()
                            .filter_map(|(k, v)| header_string(v).map(|s| (k.to_string(), s)))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Inbound {
                    tag: d.delivery_tag,
                    redelivered: d.redelivered,
                    routing_key: d.routing_key.to_string(),
                    exchange: d.exchange.to_string(),
                    reply_to: props.reply_to().as_ref().map(|s| s.to_string()),
                    headers,
                    body: d.data,
                })
            }
            Err(e) => Err(TransportError::session(e)),
        })
    }
}

fn header_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Session {
    async fn open(conn: Connection, addr: String) -> Result<Session, TransportError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(TransportError::session)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(TransportError::session)?;
        tracing::info!(broker = %addr, "connected to broker");
        Ok(Session {
            conn,
            channel,
            addr,
        })
    }

    /// The broker address this session talks to (password masked).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Declares both exchanges (durable, no arguments): everything any program publishes to.
    pub async fn declare_exchanges(&self, t: &Topology) -> Result<(), TransportError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(
                &t.broadcast_exchange,
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| refused(&format!("exchange {}", t.broadcast_exchange), e))?;
        self.channel
            .exchange_declare(
                &t.master_exchange,
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| refused(&format!("exchange {}", t.master_exchange), e))?;
        Ok(())
    }

    /// Declares a durable queue with no arguments and binds it with each routing key.
    pub async fn declare_queue(
        &self,
        queue: &str,
        exchange: &str,
        keys: &[&str],
    ) -> Result<(), TransportError> {
        self.declare_queue_of(queue, exchange, keys, false).await
    }

    /// [`Session::declare_queue`], as a quorum queue when `quorum` (the only argument
    /// Vogeler ever sets: a queue's type cannot come from a policy).
    async fn declare_queue_of(
        &self,
        queue: &str,
        exchange: &str,
        keys: &[&str],
        quorum: bool,
    ) -> Result<(), TransportError> {
        let mut args = FieldTable::default();
        if quorum {
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString("quorum".into()),
            );
        }
        self.channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(|e| refused(&format!("queue {queue}"), e))?;
        for key in keys {
            self.channel
                .queue_bind(
                    queue,
                    exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| refused(&format!("binding {queue} to {exchange} with {key:?}"), e))?;
        }
        Ok(())
    }

    /// The server's topology: exchanges, the master queue bound with `""`, the dead-letter queue.
    pub async fn declare_server(&self, t: &Topology) -> Result<(), TransportError> {
        self.declare_exchanges(t).await?;
        self.declare_queue_of(&t.master_queue, &t.master_exchange, &[""], t.quorum)
            .await?;
        self.declare_queue_of(&t.dead_queue, "", &[], t.quorum)
            .await?;
        Ok(())
    }

    /// A client's topology: exchanges and its node queue bound to broadcasts and its name.
    pub async fn declare_client(&self, t: &Topology, node: &str) -> Result<(), TransportError> {
        self.declare_exchanges(t).await?;
        self.declare_queue(node, &t.broadcast_exchange, &[BROADCAST_KEY, node])
            .await
    }

    /// A private, server-named reply queue that lives as long as this session.
    pub async fn declare_reply_queue(&self) -> Result<String, TransportError> {
        let q = self
            .channel
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| refused("reply queue", e))?;
        Ok(q.name().to_string())
    }

    /// Depth and consumers of a queue, or `None` when it does not exist.
    ///
    /// A passive declare of a missing queue closes the channel, so it runs on a
    /// throwaway channel of its own.
    pub async fn queue_status(&self, queue: &str) -> Result<Option<QueueStatus>, TransportError> {
        let ch = self
            .conn
            .create_channel()
            .await
            .map_err(TransportError::session)?;
        let res = ch
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match res {
            Ok(q) => {
                let _ = ch.close(200, "done").await;
                Ok(Some(QueueStatus {
                    messages: q.message_count(),
                    consumers: q.consumer_count(),
                }))
            }
            Err(lapin::Error::ProtocolError(e)) if e.get_id() == 404 => Ok(None),
            Err(e) => Err(TransportError::session(e)),
        }
    }

    /// Deletes a queue (tests and admin clean-up).
    pub async fn delete_queue(&self, queue: &str) -> Result<(), TransportError> {
        self.channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await
            .map_err(TransportError::session)?;
        Ok(())
    }

    /// Deletes an exchange (benchmarks and tests clean up the names they made).
    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), TransportError> {
        self.channel
            .exchange_delete(exchange, lapin::options::ExchangeDeleteOptions::default())
            .await
            .map_err(TransportError::session)?;
        Ok(())
    }

    /// Starts a publish and returns at once; await the [`Pending`] for the confirm.
    /// Messages are persistent (delivery mode 2) JSON unless [`Outgoing::transient`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        msg: Outgoing,
    ) -> Result<Pending, TransportError> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(if msg.transient { 1 } else { 2 })
            .with_content_type(ShortString::from("application/json"));
        if !msg.headers.is_empty() {
            let mut table = FieldTable::default();
            for (k, v) in msg.headers {
                table.insert(
                    ShortString::from(k),
                    AMQPValue::LongString(v.into_bytes().into()),
                );
            }
            props = props.with_headers(table);
        }
        if let Some(ms) = msg.expiration_ms {
            props = props.with_expiration(ShortString::from(ms.to_string()));
        }
        if let Some(r) = msg.reply_to {
            props = props.with_reply_to(ShortString::from(r));
        }
        let confirm = self
            .channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: msg.mandatory,
                    ..Default::default()
                },
                &msg.body,
                props,
            )
            .await
            .map_err(TransportError::session)?;
        Ok(Pending {
            confirm,
            exchange: exchange.to_string(),
        })
    }

    /// Publishes and waits for the confirm.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        msg: Outgoing,
    ) -> Result<Delivered, TransportError> {
        self.publish(exchange, routing_key, msg)
            .await?
            .confirmed()
            .await
    }

    /// Consumes a queue with manual acks and at most `prefetch` unacked messages.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, TransportError> {
        self.channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(TransportError::session)?;
        let inner = self
            .channel
            .basic_consume(
                queue,
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| refused(&format!("consume from {queue}"), e))?;
        Ok(Consumer { inner })
    }

    /// Acks `tag`, and with `multiple` every earlier unacked delivery too.
    pub async fn ack(&self, tag: u64, multiple: bool) -> Result<(), TransportError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
            .map_err(TransportError::session)
    }

    /// Returns `tag` to the queue (requeue) so another consumer may take it.
    pub async fn requeue(&self, tag: u64, multiple: bool) -> Result<(), TransportError> {
        self.channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple,
                    requeue: true,
                },
            )
            .await
            .map_err(TransportError::session)
    }

    /// Closes channel and connection politely.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "bye").await;
        let _ = self.conn.close(200, "bye").await;
    }
}

fn refused(what: &str, e: lapin::Error) -> TransportError {
    match e {
        lapin::Error::ProtocolError(p) => TransportError::Refused {
            what: what.to_string(),
            message: p.to_string(),
        },
        other => TransportError::Session(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::TransportError;

    fn connect(message: &str) -> TransportError {
        TransportError::Connect {
            addr: "amqps://guest:****@127.0.0.1:5671/%2F".into(),
            message: message.into(),
        }
    }

    #[test]
    fn tls_and_login_failures_are_not_retried_but_a_refused_port_is() {
        let hint = " (TLS: the broker's certificate is checked against the system roots only)";
        assert!(connect("invalid peer certificate: UnknownIssuer").is_permanent());
        assert!(connect("received fatal alert: CertificateRequired").is_permanent());
        assert!(connect("cannot read CA file /nonexistent/ca.pem: No such file").is_permanent());
        assert!(connect("ACCESS_REFUSED: login refused").is_permanent());
        // The hint after every amqps failure mentions certificates; it is not the reason.
        assert!(!connect(&format!("Connection refused (os error 111){hint}")).is_permanent());
        assert!(!connect("timed out after 10 s").is_permanent());
    }
}
