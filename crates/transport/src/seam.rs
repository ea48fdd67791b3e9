//! The transport seam: what Vogeler's programs need from a broker, in broker-neutral
//! words, behind one [`Transport`] trait that RabbitMQ ([`AmqpTransport`]) and NATS
//! JetStream ([`crate::nats::NatsTransport`]) both implement. One conformance suite
//! (`tests/conformance.rs`) runs unchanged over both, like the store crate's.
//!
//! The programs hold an `Arc<dyn Transport>` from a [`crate::Connector`] (which broker
//! the `--qhost` scheme names) and know neither client library.
//!
//! The model, whichever the broker:
//! - **results** go to one work queue shared by every server of a deployment: each
//!   message reaches one server, and comes back to another if it is not acked (a crash);
//! - **requests** go to every node (a broadcast) or to one node, and wait for a client
//!   that is down, for as long as their expiration allows;
//! - **replies** go to a private inbox a runner opens for one run;
//! - **dead letters** keep the message and the reason ([`REASON_HEADER`]) it was refused.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;

use crate::{Consumer, Delivered, Outgoing, QueueStatus, Session, Topology, TransportError};

/// The header a dead letter carries its reason in (the server's `x-vogeler-reason`).
pub const REASON_HEADER: &str = "x-vogeler-reason";

/// Who a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// Every node (a broadcast).
    Everyone,
    /// The one node of this name (its hostname, dots and all).
    Node(&'a str),
}

/// The queues whose depth an operator asks for ([`Transport::queue_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// The servers' shared result queue.
    Results,
    /// The dead-letter queue.
    Dead,
}

/// Acks or requeues one received message; opaque, so each broker acks its own way (an
/// AMQP delivery tag on its channel, a JetStream message's own reply subject).
#[derive(Debug)]
pub struct AckHandle(pub(crate) AckInner);

#[derive(Debug)]
pub(crate) enum AckInner {
    /// An AMQP delivery tag (on the session's one channel).
    Amqp(u64),
    /// A JetStream message, acked by its own reply subject.
    #[cfg(feature = "nats")]
    Nats(Box<crate::nats::NatsAck>),
    /// Nothing to ack: a core NATS message (a reply), or one made by a test.
    None,
}

impl AckHandle {
    /// A handle that acks nothing, for messages made outside a broker (unit tests).
    pub fn detached() -> Self {
        AckHandle(AckInner::None)
    }
}

/// A received message: body, string headers, and the handle to ack it with.
#[derive(Debug)]
pub struct Message {
    /// Body as received.
    pub body: Vec<u8>,
    /// String-valued headers (NATS does not keep their order).
    pub headers: Vec<(String, String)>,
    /// The sender's reply address, if any ([`Transport::publish_reply`]).
    pub reply_to: Option<String>,
    /// Whether the broker delivered it before (a consumer died holding it).
    pub redelivered: bool,
    /// Where it was sent: the exchange on AMQP, the stream on NATS (kept on dead letters).
    pub source: String,
    /// Its routing key on AMQP, its subject on NATS.
    pub key: String,
    /// Pass to [`Transport::ack`] once the message is committed, or to
    /// [`Transport::requeue`] to give it back.
    pub ack: AckHandle,
}

impl Message {
    /// A header's value by name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a client's request subscription resumes after a restart, on brokers where the
/// client, not the broker, keeps its place (NATS: see [`crate::nats`]). The client
/// stores [`Subscription::resume`]'s text after each ack and hands it back to
/// [`Transport::consume_node`]; RabbitMQ keeps a durable queue per node and ignores it.
///
/// Text form `B:N` or `B:N:ID,ID,…`: the stream sequence read through of broadcasts and
/// of node requests, then the identities (hex) of requests handled since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Broadcasts: the stream sequence handled through.
    pub broadcast: u64,
    /// Node requests: the stream sequence handled through.
    pub node: u64,
    /// Requests handled after those sequences, by identity (the stream is read from
    /// the sequences on, and these are skipped).
    pub handled: Vec<String>,
}

/// Most identities a resume point may name: a client folds them in long before.
const MAX_HANDLED: usize = 4096;

impl fmt::Display for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.broadcast, self.node)?;
        if !self.handled.is_empty() {
            write!(f, ":{}", self.handled.join(","))?;
        }
        Ok(())
    }
}

/// A resume point that is not `B:N` with two decimal numbers, optionally followed by
/// `:` and comma-separated hex identities.
#[derive(Debug, thiserror::Error)]
#[error("bad resume point {0:?}: expected BROADCAST:NODE[:ID,ID,...] (numbers, then hex)")]
pub struct BadResume(String);

impl FromStr for Resume {
    type Err = BadResume;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadResume(s.chars().take(80).collect());
        let mut parts = s.trim().splitn(3, ':');
        let (Some(b), Some(n)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        let handled: Vec<String> = match parts.next() {
            None => Vec::new(),
            Some(ids) => ids.split(',').map(str::to_string).collect(),
        };
        let hex =
            |id: &String| (1..=64).contains(&id.len()) && id.bytes().all(|c| c.is_ascii_hexdigit());
        if handled.len() > MAX_HANDLED || !handled.iter().all(hex) {
            return Err(bad());
        }
        Ok(Resume {
            broadcast: b.parse().map_err(|_| bad())?,
            node: n.parse().map_err(|_| bad())?,
            handled,
        })
    }
}

/// A stream of received messages from one of [`Transport`]'s `consume_*` calls.
#[async_trait]
pub trait Subscription: Send {
    /// The next message; `None` or an error means the session is gone: reconnect.
    async fn next(&mut self) -> Option<Result<Message, TransportError>>;

    /// Where a client subscription resumes after a restart, updated by every ack
    /// ([`Resume`]); `None` where the broker keeps the place itself.
    fn resume(&self) -> Option<Resume> {
        None
    }
}

/// What every program needs from a broker; see the module docs for the model.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The broker address this transport talks to (password masked), for logs.
    fn addr(&self) -> &str;

    /// The largest message (body and headers) the broker announced it accepts, so a
    /// sender can refuse early; `None` where the broker does not say (RabbitMQ).
    fn max_message_bytes(&self) -> Option<usize>;

    /// Declares what a deployment shares (result and dead-letter queues, the request
    /// exchange or stream); idempotent, so every program may call it after connecting.
    async fn declare(&self) -> Result<(), TransportError>;

    /// Declares only what a sender publishes to (the exchanges on AMQP), so a runner does
    /// not create the servers' queues with its own arguments; [`Transport::declare`]
    /// where the broker makes no difference.
    async fn declare_sender(&self) -> Result<(), TransportError> {
        self.declare().await
    }

    /// Publishes a result to the servers' shared queue and waits for the broker's confirm;
    /// refused (`TransportError::Refused`) when there is no such queue to keep it, never
    /// dropped: the caller keeps what it answers and tries again.
    async fn publish_result(&self, msg: Outgoing) -> Result<(), TransportError>;

    /// Whether [`Transport::publish_request`] answers `Unroutable` for a node nobody
    /// listens for (AMQP: no queue of that name). A stream that stores every request
    /// cannot tell, so a sender asks the servers' registry instead (the runner does).
    fn reports_unroutable(&self) -> bool {
        true
    }

    /// Publishes a request to every node or to one, confirmed. `Unroutable` means no node
    /// of that name is known (AMQP with `mandatory`; a stream stores every request).
    async fn publish_request(
        &self,
        to: Audience<'_>,
        msg: Outgoing,
    ) -> Result<Delivered, TransportError>;

    /// Sends an answer to a reply address taken from [`Message::reply_to`].
    async fn publish_reply(&self, to: &str, msg: Outgoing) -> Result<(), TransportError>;

    /// Moves a message to the dead-letter queue with its reason in [`REASON_HEADER`].
    async fn dead_letter(&self, msg: Outgoing, reason: &str) -> Result<(), TransportError>;

    /// Consumes as a server: every server shares one queue, each message goes to one of
    /// them, at most `prefetch` unacked at a time; an unacked one is redelivered.
    async fn consume_results(&self, prefetch: u16)
        -> Result<Box<dyn Subscription>, TransportError>;

    /// Consumes as the client of `node`: broadcasts and this node's own requests, including
    /// those sent while it was down (from `resume`, where the broker needs one).
    async fn consume_node(
        &self,
        node: &str,
        resume: Option<Resume>,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError>;

    /// Consumes the dead-letter queue (the admin's `dead --requeue`): ack what it took.
    async fn consume_dead(&self, prefetch: u16) -> Result<Box<dyn Subscription>, TransportError>;

    /// Up to `limit` dead letters, oldest first, left where they are (the admin's `dead`).
    /// The default takes them and gives every one back; a broker that can read a stream
    /// without consuming it does that instead. The handles of what it returns ack nothing.
    async fn list_dead(&self, limit: usize) -> Result<Vec<Message>, TransportError> {
        let mut sub = self.consume_dead(1000).await?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Ok(Some(next)) =
                tokio::time::timeout(std::time::Duration::from_secs(2), sub.next()).await
            else {
                break;
            };
            out.push(next?);
        }
        for m in out.iter().rev() {
            self.requeue(&m.ack).await?;
        }
        for m in &mut out {
            m.ack = AckHandle::detached();
        }
        Ok(out)
    }

    /// A private inbox that lives as long as this transport: its address, for
    /// [`Outgoing::reply_to`], and the subscription the answers arrive on.
    async fn reply_inbox(&self) -> Result<(String, Box<dyn Subscription>), TransportError>;

    /// Acks one message, after its effects are committed.
    async fn ack(&self, handle: &AckHandle) -> Result<(), TransportError>;

    /// Acks a batch received in this order on one subscription, after its commit: one
    /// multiple-ack on AMQP, one ack each on NATS (the last one confirmed).
    async fn ack_batch(&self, handles: &[&AckHandle]) -> Result<(), TransportError> {
        for h in handles {
            self.ack(h).await?;
        }
        Ok(())
    }

    /// Gives one message back so it is delivered again (to this consumer or another).
    async fn requeue(&self, handle: &AckHandle) -> Result<(), TransportError>;

    /// Depth and consumers of a queue, or `None` when it does not exist yet.
    async fn queue_status(&self, queue: QueueKind) -> Result<Option<QueueStatus>, TransportError>;

    /// Closes the connection politely; unacked messages go back to the broker.
    async fn close(&self);
}

/// The AMQP backend of the seam: a [`Session`] and the deployment's [`Topology`], every
/// call delegating to the session's own methods unchanged.
pub struct AmqpTransport {
    session: Session,
    topology: Topology,
}

impl AmqpTransport {
    /// Wraps a connected session; `topology` names the exchanges and queues.
    pub fn new(session: Session, topology: Topology) -> Self {
        AmqpTransport { session, topology }
    }

    /// The underlying session, for what the seam does not cover yet.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

/// An AMQP consumer as a [`Subscription`].
struct AmqpSubscription(Consumer);

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Result<Message, TransportError>> {
        let d = match self.0.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(Message {
            body: d.body,
            headers: d.headers,
            reply_to: d.reply_to,
            redelivered: d.redelivered,
            source: d.exchange,
            key: d.routing_key,
            ack: AckHandle(AckInner::Amqp(d.tag)),
        }))
    }
}

/// RabbitMQ's refusal of a message over its `max_message_size` (it closes the channel
/// with `PRECONDITION_FAILED - message size N is larger than configured max size M`) as
/// a [`TransportError::TooLarge`] naming the broker; any other error as it was.
fn too_large(addr: &str, e: TransportError) -> TransportError {
    let TransportError::Refused { message, .. } = &e else {
        return e;
    };
    let number_after = |text: &str, marker: &str| -> Option<usize> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    match (
        number_after(message, "message size "),
        number_after(message, "configured max size "),
    ) {
        (Some(size), Some(limit)) => TransportError::TooLarge {
            addr: addr.to_string(),
            size,
            limit,
        },
        _ => e,
    }
}

fn amqp_tag(handle: &AckHandle) -> Result<Option<u64>, TransportError> {
    match handle.0 {
        AckInner::Amqp(tag) => Ok(Some(tag)),
        AckInner::None => Ok(None),
        #[cfg(feature = "nats")]
        AckInner::Nats(_) => Err(TransportError::Session(
            "a NATS message cannot be acked on an AMQP session".into(),
        )),
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    fn addr(&self) -> &str {
        self.session.addr()
    }

    fn max_message_bytes(&self) -> Option<usize> {
        None
    }

    async fn declare(&self) -> Result<(), TransportError> {
        self.session.declare_server(&self.topology).await
    }

    async fn declare_sender(&self) -> Result<(), TransportError> {
        self.session.declare_exchanges(&self.topology).await
    }

    async fn publish_result(&self, msg: Outgoing) -> Result<(), TransportError> {
        // Mandatory: with no server queue bound (a broker no server or `setup` has
        // declared on yet) RabbitMQ would drop the message and confirm it all the same.
        let msg = Outgoing {
            mandatory: true,
            ..msg
        };
        match self
            .session
            .publish_confirmed(&self.topology.master_exchange, "", msg)
            .await
            .map_err(|e| too_large(self.addr(), e))?
        {
            Delivered::Routed => Ok(()),
            Delivered::Unroutable => Err(TransportError::Refused {
                what: format!("result to {}", self.topology.master_exchange),
                message: "no server queue is bound (run `vogeler-admin setup`)".into(),
            }),
        }
    }

    async fn publish_request(
        &self,
        to: Audience<'_>,
        msg: Outgoing,
    ) -> Result<Delivered, TransportError> {
        let key = match to {
            Audience::Everyone => crate::BROADCAST_KEY,
            Audience::Node(node) => node,
        };
        self.session
            .publish_confirmed(&self.topology.broadcast_exchange, key, msg)
            .await
            .map_err(|e| too_large(self.addr(), e))
    }

    async fn publish_reply(&self, to: &str, msg: Outgoing) -> Result<(), TransportError> {
        self.session
            .publish_confirmed("", to, msg)
            .await
            .map(|_| ())
            .map_err(|e| too_large(self.addr(), e))
    }

    async fn dead_letter(&self, mut msg: Outgoing, reason: &str) -> Result<(), TransportError> {
        msg.headers.retain(|(k, _)| k != REASON_HEADER);
        msg.headers
            .insert(0, (REASON_HEADER.to_string(), reason.to_string()));
        self.session
            .publish_confirmed("", &self.topology.dead_queue, msg)
            .await
            .map(|_| ())
            .map_err(|e| too_large(self.addr(), e))
    }

    async fn consume_results(
        &self,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.session.declare_server(&self.topology).await?;
        let c = self
            .session
            .consume(&self.topology.master_queue, prefetch, "")
            .await?;
        Ok(Box::new(AmqpSubscription(c)))
    }

    async fn consume_node(
        &self,
        node: &str,
        _resume: Option<Resume>,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.session.declare_client(&self.topology, node).await?;
        let c = self.session.consume(node, prefetch, "").await?;
        Ok(Box::new(AmqpSubscription(c)))
    }

    async fn consume_dead(&self, prefetch: u16) -> Result<Box<dyn Subscription>, TransportError> {
        let c = self
            .session
            .consume(&self.topology.dead_queue, prefetch, "")
            .await?;
        Ok(Box::new(AmqpSubscription(c)))
    }

    async fn reply_inbox(&self) -> Result<(String, Box<dyn Subscription>), TransportError> {
        let q = self.session.declare_reply_queue().await?;
        let c = self.session.consume(&q, 1000, "").await?;
        Ok((q, Box::new(AmqpSubscription(c))))
    }

    async fn ack(&self, handle: &AckHandle) -> Result<(), TransportError> {
        match amqp_tag(handle)? {
            Some(tag) => self.session.ack(tag, false).await,
            None => Ok(()),
        }
    }

    async fn ack_batch(&self, handles: &[&AckHandle]) -> Result<(), TransportError> {
        // Tags grow along one channel: acking the highest with `multiple` acks the batch.
        let mut last = None;
        for h in handles {
            if let Some(tag) = amqp_tag(h)? {
                last = Some(last.map_or(tag, |l: u64| l.max(tag)));
            }
        }
        match last {
            Some(tag) => self.session.ack(tag, true).await,
            None => Ok(()),
        }
    }

    async fn requeue(&self, handle: &AckHandle) -> Result<(), TransportError> {
        match amqp_tag(handle)? {
            Some(tag) => self.session.requeue(tag, false).await,
            None => Ok(()),
        }
    }

    async fn queue_status(&self, queue: QueueKind) -> Result<Option<QueueStatus>, TransportError> {
        let name = match queue {
            QueueKind::Results => &self.topology.master_queue,
            QueueKind::Dead => &self.topology.dead_queue,
        };
        self.session.queue_status(name).await
    }

    async fn close(&self) {
        self.session.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::{too_large, Resume};
    use crate::TransportError;

    #[test]
    fn rabbitmqs_size_refusal_names_size_limit_and_broker() {
        let e = too_large(
            "amqp://guest:****@127.0.0.1:5672/v",
            TransportError::Refused {
                what: "operation".into(),
                message: "AMQP soft error: PRECONDITION-FAILED: PRECONDITION_FAILED - message size 134217729 is larger than configured max size 134217728".into(),
            },
        );
        assert!(
            matches!(
                e,
                TransportError::TooLarge {
                    size: 134217729,
                    limit: 134217728,
                    ..
                }
            ),
            "{e}"
        );
        let other = too_large(
            "x",
            TransportError::Refused {
                what: "queue q".into(),
                message: "NOT_FOUND".into(),
            },
        );
        assert!(matches!(other, TransportError::Refused { .. }));
    }

    #[test]
    fn resume_points_round_trip_as_text() {
        let r = Resume {
            broadcast: 12,
            node: 7,
            handled: Vec::new(),
        };
        assert_eq!(r.to_string(), "12:7");
        assert_eq!("12:7".parse::<Resume>().ok(), Some(r.clone()));
        let with = Resume {
            handled: vec!["00ff".into(), "abc1".into()],
            ..r
        };
        assert_eq!(with.to_string(), "12:7:00ff,abc1");
        assert_eq!("12:7:00ff,abc1\n".parse::<Resume>().ok(), Some(with));
        for bad in ["12", "a:1", "1:2:", "1:2:xyz", "1:2:ab,,cd", "1:2:ab:cd"] {
            assert!(bad.parse::<Resume>().is_err(), "{bad}");
        }
    }
}
