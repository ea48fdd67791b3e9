//! Which broker a program talks to, chosen once from the `--qhost` scheme, and how it
//! (re)connects: the programs ask a [`Connector`] for an `Arc<dyn Transport>` and never
//! name lapin or async-nats.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{AmqpTransport, Backoff, Broker, Topology, Transport, TransportError};

/// A broker and the names a deployment uses on it.
#[derive(Debug, Clone)]
pub enum Connector {
    /// RabbitMQ (AMQP 0-9-1): the addresses of a cluster and the exchange/queue names.
    Amqp {
        /// Addresses, TLS files and connection name.
        broker: Broker,
        /// Exchange and queue names.
        topology: Topology,
    },
    /// NATS with JetStream.
    #[cfg(feature = "nats")]
    Nats {
        /// `nats://` or `tls://` server list, credentials included (never logged).
        url: String,
        /// The same, credentials masked, for logs.
        label: String,
        /// Prefix, timings and credentials.
        opts: crate::nats::NatsOptions,
    },
}

impl Connector {
    /// The broker address(es) for logs and errors, passwords masked.
    pub fn describe(&self) -> String {
        match self {
            Connector::Amqp { broker, .. } => broker.describe(),
            #[cfg(feature = "nats")]
            Connector::Nats { label, .. } => label.clone(),
        }
    }

    /// Where the servers take results from, in the broker's own words (`topology`'s
    /// queue, or the NATS results stream and its consumer), for messages that ask the
    /// operator whether a server is running.
    pub fn results_queue(&self, topology: &Topology) -> String {
        match self {
            Connector::Amqp { .. } => topology.master_queue.clone(),
            #[cfg(feature = "nats")]
            Connector::Nats { opts, .. } => format!(
                "stream {}, consumer {}",
                crate::nats::stream_name(&opts.prefix, "RESULTS"),
                crate::nats::SERVERS_CONSUMER
            ),
        }
    }

    /// Whether this is a NATS deployment (no per-node queues, no management API).
    pub fn is_nats(&self) -> bool {
        !matches!(self, Connector::Amqp { .. })
    }

    /// The AMQP broker, for what only RabbitMQ has (its management API, node queues).
    pub fn amqp(&self) -> Option<(&Broker, &Topology)> {
        match self {
            Connector::Amqp { broker, topology } => Some((broker, topology)),
            #[cfg(feature = "nats")]
            Connector::Nats { .. } => None,
        }
    }

    /// One attempt (at each address of a cluster in turn).
    pub async fn connect(&self) -> Result<Arc<dyn Transport>, TransportError> {
        match self {
            Connector::Amqp { broker, topology } => {
                let session = broker.connect().await?;
                Ok(Arc::new(AmqpTransport::new(session, topology.clone())))
            }
            #[cfg(feature = "nats")]
            Connector::Nats { url, opts, .. } => Ok(Arc::new(
                crate::nats::NatsTransport::connect(url, opts.clone()).await?,
            )),
        }
    }

    /// Connects for an interactive command within `timeout`, retrying a broker that is
    /// not up yet; a permanent error (a refused login, a bad certificate) at once.
    pub async fn connect_within(
        &self,
        timeout: Duration,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        within(timeout, || self.describe(), || self.connect()).await
    }

    /// [`Connector::connect_within`] the configured `--connect-timeout`.
    pub async fn connect_interactive(&self) -> Result<Arc<dyn Transport>, TransportError> {
        let timeout = match self {
            Connector::Amqp { broker, .. } => broker.connect_timeout,
            #[cfg(feature = "nats")]
            Connector::Nats { opts, .. } => opts.connect_timeout,
        };
        self.connect_within(timeout).await
    }

    /// Connects for a daemon, retrying with `backoff` until it works or `shutdown`
    /// resolves (then `None`). Never resets `backoff`: the caller does once it consumes
    /// (see [`Broker::connect_retrying`]).
    pub async fn connect_retrying(
        &self,
        backoff: &mut Backoff,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<Arc<dyn Transport>> {
        retrying(backoff, shutdown, || self.connect()).await
    }
}

/// Runs `attempt` until it succeeds or `timeout` has passed, then returns the last error
/// (one line, no log per attempt); a permanent one ([`TransportError::is_permanent`])
/// at once: retrying a wrong password only fills the broker's log.
pub(crate) async fn within<T, F: Future<Output = Result<T, TransportError>>>(
    timeout: Duration,
    describe: impl Fn() -> String,
    mut attempt: impl FnMut() -> F,
) -> Result<T, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut last: Option<TransportError> = None;
    loop {
        let err = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(t)) => return Ok(t),
            Ok(Err(e)) => e,
            // An attempt cut off by the deadline says less than the one before it: a
            // certificate error must not turn into "no answer" on a loaded machine.
            Err(_) => {
                return Err(last.unwrap_or_else(|| TransportError::Connect {
                    addr: describe(),
                    message: format!(
                        "no answer within {} s (--connect-timeout)",
                        timeout.as_secs_f64()
                    ),
                }))
            }
        };
        if err.is_permanent() {
            return Err(err);
        }
        let wait = backoff.next_delay();
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(err);
        }
        tracing::debug!(error = %err, retry_in_ms = wait.as_millis() as u64, "broker unavailable; retrying");
        last = Some(err);
        tokio::time::sleep(wait).await;
    }
}

/// Runs `attempt` with `backoff` between tries, one warning each, until it succeeds or
/// `shutdown` resolves (`None`).
pub(crate) async fn retrying<T, F: Future<Output = Result<T, TransportError>>>(
    backoff: &mut Backoff,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    loop {
        match attempt().await {
            Ok(t) => return Some(t),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut *shutdown => return None,
                }
            }
        }
    }
}
