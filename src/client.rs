//! `vogeler-client`: the agent on every host.
//!
//! It binds its durable node queue to the broadcast exchange (`broadcasts.*` and its
//! own name), runs only authorized plugins, converts their output per result format,
//! and publishes the result to the master exchange. A delivery is acked only after the
//! broker confirmed the result, so a client killed mid-run answers again on restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use vogeler_plugins::{ExecLimits, Format, Plugin, PluginOutcome, Registry};
use vogeler_protocol::{limits, Decoded, Message, PluginResult, Pong, Request};
use vogeler_signing::{
    Keyring, Rejection, ReplayGuard, SecretKey, KEY_ID_HEADER, SIGNATURE_HEADER,
};
use vogeler_transport::{
    Backoff, Connector, Message as Delivery, Outgoing, Resume, Topology, Transport,
};

use crate::shutdown::Shutdown;

/// Which message shapes the programs emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// Versioned JSON (`v: 1`).
    #[default]
    V1,
    /// The 2010 Python shapes, to talk to a 2010 server or client.
    Legacy,
}

/// Everything the client needs to run.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The broker (RabbitMQ or NATS) and its addresses.
    pub broker: Connector,
    /// Exchange names.
    pub topology: Topology,
    /// This node's name: its queue name, routing key and document id.
    pub node: String,
    /// Directory of plugin `.cfg` files.
    pub plugin_dir: PathBuf,
    /// Where the plugin files are compiled to (one file, as the 2010 client did).
    pub compiled_path: PathBuf,
    /// Timeout and output cap for each plugin run.
    pub limits: ExecLimits,
    /// Run command lines that are not plugins (loudly logged; off by default).
    pub allow_unsafe: bool,
    /// Exit after the first request.
    pub oneshot: bool,
    /// Message shapes to emit.
    pub wire: Wire,
    /// Plugins run at once; more requests wait in the broker.
    pub concurrency: usize,
    /// Which requests to accept, by signature.
    pub policy: RequestPolicy,
    /// Signs every result, so the server can tell this node from an impostor
    /// publishing under its name; `None` sends unsigned.
    pub signing_key: Option<Arc<SecretKey>>,
    /// Scheduled inventory: run every plugin this often (a plugin's own `interval`
    /// overrides it); `None` runs only plugins that have their own (see [`crate::schedule`]).
    pub interval: Option<Duration>,
    /// Heartbeat period; `None` sends none.
    pub heartbeat: Option<Duration>,
    /// Where the replay memory is kept (`[client] state_dir`), so a restart still
    /// refuses a signed request it already ran.
    pub state_dir: PathBuf,
    /// The server's message limit (`[server] max_message_bytes`, the same setting the
    /// server reads): a result whose encoding is larger is replaced by a short error
    /// result, so the runner and the record hear about it instead of silence.
    pub max_message_bytes: usize,
}

/// Most signed request ids remembered at once (each until its ttl passes).
pub const REPLAY_MEMORY: usize = 100_000;

/// How a client judges a request's signature (`[client] trusted_keys`, `require_signed`).
///
/// With no trusted keys, signatures are not checked and every request is treated as
/// unsigned (the 2010 behaviour), which still refuses unsafe command lines.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    /// Runners' public keys, by key id.
    pub keyring: Arc<Keyring>,
    /// Refuse unsigned requests, and so every 2010-format request.
    pub require_signed: bool,
    /// Signed request ids seen within their ttl.
    pub replay: Arc<Mutex<ReplayGuard>>,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy::new(Keyring::default(), false)
    }
}

impl RequestPolicy {
    /// A policy over these trusted keys.
    pub fn new(keyring: Keyring, require_signed: bool) -> RequestPolicy {
        RequestPolicy {
            keyring: Arc::new(keyring),
            require_signed,
            replay: Arc::new(Mutex::new(ReplayGuard::new(REPLAY_MEMORY))),
        }
    }

    /// Keeps the replay memory in `<state_dir>/replay-<node>` from now on (loading
    /// what an earlier run remembered). Only signed requests are remembered, so nothing
    /// is written without trusted keys.
    pub fn keep_replay_memory(
        &self,
        state_dir: &std::path::Path,
        node: &str,
    ) -> anyhow::Result<()> {
        if self.keyring.is_empty() {
            return Ok(());
        }
        let file: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = state_dir.join(format!("replay-{file}"));
        let guard = ReplayGuard::open(&path, REPLAY_MEMORY, Utc::now()).map_err(|e| {
            anyhow::anyhow!("{e} (the replay memory; set [client] state_dir or --state-dir to a writable directory)")
        })?;
        tracing::info!(file = %path.display(), remembered = guard.len(), "replay memory on disk");
        let mut g = match self.replay.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = guard;
        Ok(())
    }

    /// Whether a request may run on `node`: `Ok(true)` signed by a trusted key (fresh,
    /// not a replay), `Ok(false)` unsigned and allowed, `Err` refused with the reason.
    ///
    /// A request runs only on its targets: empty targets or `all` is a broadcast, any
    /// other list must name `node` exactly (the signature covers the body, targets
    /// included, so a signed request copied to another node's queue is refused).
    /// `legacy` marks a 2010 request (a bare string): it has no id or ttl a signature
    /// could be bound to. A redelivered message (the broker's own retry after this
    /// client lost its channel before acking) is not counted as a replay.
    pub fn judge(
        &self,
        d: &Delivery,
        r: &Request,
        legacy: bool,
        node: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, Rejection> {
        let signer = if self.keyring.is_empty() {
            None
        } else {
            self.keyring
                .verify(&d.body, d.header(SIGNATURE_HEADER), d.header(KEY_ID_HEADER))?
        };
        if !is_target(&r.targets, node) {
            return Err(Rejection::NotTarget(format!(
                "request {} is for {} and this node is {node}",
                r.id,
                describe_targets(&r.targets)
            )));
        }
        let Some(key) = signer else {
            if self.require_signed {
                return Err(Rejection::Unsigned(if legacy {
                    "a 2010-format request cannot be signed and [client] require_signed = true"
                        .into()
                } else {
                    "the request carries no signature and [client] require_signed = true".into()
                }));
            }
            return Ok(false);
        };
        if legacy || r.id.is_empty() || r.ttl == 0 {
            return Err(Rejection::Expired(
                "a signed request needs an id and a ttl, or it could be replayed forever".into(),
            ));
        }
        if r.is_expired(now) {
            return Err(Rejection::Expired(format!(
                "request {} was sent {} with ttl {} s",
                r.id, r.sent_at, r.ttl
            )));
        }
        let ttl = chrono::Duration::seconds(i64::try_from(r.ttl).unwrap_or(i64::MAX / 1000));
        let until = r
            .sent_at
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if !d.redelivered {
            let mut guard = match self.replay.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.check(key.id(), &r.id, until, now)?;
        }
        Ok(true)
    }
}

/// Whether `node` is among `targets`: empty or `all` is everyone, else an exact name.
pub fn is_target(targets: &[String], node: &str) -> bool {
    targets.is_empty() || targets.iter().any(|t| t == "all" || t == node)
}

/// The first few targets, for a log line (a broadcast may name thousands).
fn describe_targets(targets: &[String]) -> String {
    let mut text: Vec<String> = targets.iter().take(5).map(|t| format!("{t:?}")).collect();
    if targets.len() > 5 {
        text.push(format!("and {} more", targets.len() - 5));
    }
    text.join(", ")
}

/// RabbitMQ's direct reply-to pseudo-queue. Set as the `reply_to` property of a publish
/// from a channel that does not consume it, the broker closes the channel
/// (`PRECONDITION_FAILED - fast reply consumer does not exist`); a reply to it is never
/// what a runner meant (runners declare a reply queue of their own).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether a reply queue name can be published to and carried as a `reply_to`: AMQP
/// routing keys are short strings (at most 255 bytes), and [`DIRECT_REPLY_TO`] closes
/// the channel; anything else would make the publish fail, and with it the session,
/// again on every redelivery.
pub fn valid_reply_to(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(char::is_control)
        && name != DIRECT_REPLY_TO
}

/// What one request produced, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Plugin name (the document key) or the command as asked.
    pub plugin: String,
    /// Result format name.
    pub format: String,
    /// Converted output, or the error.
    pub outcome: Result<serde_json::Value, String>,
    /// Raw output, kept for errors and the 2010 wire.
    pub raw: Option<String>,
    /// Exit status of the command.
    pub exit_status: Option<i32>,
    /// How long it ran.
    pub duration: Duration,
    /// False for a volatile plugin (`history = false`): sent as the result's `history`.
    pub history: bool,
}

/// The registry as currently loaded; swapped whole on reload.
pub type SharedRegistry = Arc<RwLock<Arc<Registry>>>;

/// Loads (compiles) the plugin directory, logging every broken file with its place.
pub fn load_registry(opts: &ClientOptions) -> anyhow::Result<Registry> {
    let (registry, problems) = Registry::compile(&opts.plugin_dir, &opts.compiled_path)?;
    for p in problems {
        tracing::warn!(problem = %p, "plugin skipped");
    }
    for w in registry.warnings() {
        tracing::warn!(warning = %w, "plugin warning");
    }
    Ok(registry)
}

/// The `list` table: every registered plugin, available or not, and where it came from.
pub fn render_plugins(registry: &Registry) -> String {
    registry.describe()
}

/// Runs the client until `shutdown` fires (or after one request with `oneshot`).
pub async fn run(opts: ClientOptions, mut shutdown: Shutdown) -> anyhow::Result<()> {
    if opts.allow_unsafe {
        tracing::warn!(
            "--allow-unsafe is ON: this client will run ANY command line it is sent, not only authorized plugins"
        );
    }
    opts.policy
        .keep_replay_memory(&opts.state_dir, &opts.node)?;
    let registry: SharedRegistry = Arc::new(RwLock::new(Arc::new(load_registry(&opts)?)));
    {
        let names: Vec<String> = current(&registry)
            .plugins()
            .map(|p| p.name.clone())
            .collect();
        tracing::info!(node = %opts.node, plugins = ?names, "vogeler-client has started");
    }
    let reloader = tokio::spawn(watch_plugins(
        opts.clone(),
        registry.clone(),
        shutdown.clone(),
    ));
    let mut backoff = Backoff::default();
    let schedule = Arc::new(crate::schedule::ScheduleState::default());
    let unsent = Arc::new(Unsent::default());
    let result = loop {
        let mut stop = Box::pin(shutdown.clone().wait_owned());
        let Some(session) = opts.broker.connect_retrying(&mut backoff, &mut stop).await else {
            break Ok(());
        };
        match serve(
            &opts,
            session.clone(),
            &registry,
            &schedule,
            &unsent,
            &mut shutdown,
            &mut backoff,
        )
        .await
        {
            Ok(()) => {
                session.close().await;
                break Ok(());
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker session lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => break Ok(()),
                }
            }
        }
    };
    reloader.abort();
    tracing::info!("vogeler-client stopped");
    result
}

/// The registry as loaded now (reloads swap it whole).
pub(crate) fn current(registry: &SharedRegistry) -> Arc<Registry> {
    match registry.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

async fn serve(
    opts: &ClientOptions,
    session: Arc<dyn Transport>,
    registry: &SharedRegistry,
    schedule: &Arc<crate::schedule::ScheduleState>,
    unsent: &Arc<Unsent>,
    shutdown: &mut Shutdown,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let concurrency = opts.concurrency.max(1);
    let prefetch = u16::try_from(concurrency).unwrap_or(u16::MAX);
    let place = ResumeFile::new(&opts.state_dir, &opts.node);
    // A NATS client may start before any server or `setup --messaging`: without the
    // results stream its first heartbeat or result fails the session (on RabbitMQ an
    // unbound exchange takes it), so it makes what it publishes to, as runners do.
    if opts.broker.is_nats() {
        session.declare_sender().await?;
    }
    let mut saved = place.load();
    let mut consumer = session
        .consume_node(&opts.node, saved.clone(), prefetch)
        .await?;
    // Saved at once: a first start's place (the stream's end) is where a restart
    // resumes, even if the client stops before it handled anything.
    place.save(&mut saved, consumer.resume());
    // On a broker that stores a request to any name (NATS) a runner learns that a node
    // exists from the servers' registry: with heartbeats on, one before taking requests,
    // so a request sent once this client is up never finds the node unknown.
    let beat_sent =
        !session.reports_unroutable() && opts.wire == Wire::V1 && opts.heartbeat.is_some();
    if beat_sent {
        let body = vogeler_protocol::encode(&Message::Heartbeat(vogeler_protocol::Heartbeat {
            node: opts.node.clone(),
            sent_at: Utc::now(),
        }));
        session.publish_result(Outgoing::new(body)).await?;
    }
    tracing::info!(node = %opts.node, broker = %session.addr(), "waiting for requests");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only a session that lasts counts as reconnected (the backoff starts again): a member
    // that refuses the node queue (its home member is down), or a broker that refuses
    // every answer (no server queue bound yet), is retried with growing delays, not five
    // times a second by every node.
    let started = tokio::time::Instant::now();
    let mut proven = false;
    let session_no = unsent.next_session();
    let slots = Arc::new(Semaphore::new(concurrency));
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    // Scheduled runs and heartbeats live as long as this session (dropped on return).
    let _clock = if opts.oneshot {
        Vec::new()
    } else {
        crate::schedule::start(opts, &session, registry, schedule, &failed_tx, beat_sent)
    };
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            e = failed_rx.recv() => {
                place.save(&mut saved, consumer.resume());
                return Err(e.unwrap_or_else(|| anyhow::anyhow!("worker failed")));
            }
            _ = tick.tick() => {
                // Where a restart resumes (NATS only; RabbitMQ keeps the node queue).
                place.save(&mut saved, consumer.resume());
                if !proven && started.elapsed() >= SESSION_PROVEN {
                    backoff.reset();
                    proven = true;
                }
                continue;
            }
            _ = shutdown.wait() => {
                // Let running plugins finish and their results be confirmed.
                let _ = slots.acquire_many(concurrency as u32).await;
                place.save(&mut saved, consumer.resume());
                return Ok(());
            }
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the broker closed the consumer"),
        };
        let permit = slots.clone().acquire_owned().await?;
        let task = {
            let opts = opts.clone();
            let session = session.clone();
            let registry = current(registry);
            let unsent = unsent.clone();
            let failed = failed_tx.clone();
            async move {
                let unsent = SessionUnsent {
                    unsent: &unsent,
                    session: session_no,
                };
                if let Err(e) = handle(&opts, &session, &registry, unsent, delivery).await {
                    let _ = failed.try_send(e);
                }
                drop(permit);
            }
        };
        if opts.oneshot {
            task.await;
            place.save(&mut saved, consumer.resume());
            tracing::info!("--oneshot: answered one request; exiting");
            return Ok(());
        }
        tokio::spawn(task);
    }
}

/// How long a broker session must last before a reconnect starts from the shortest delay.
const SESSION_PROVEN: Duration = Duration::from_secs(10);

/// Answers not confirmed by the broker (refused while no server queue is bound, or the
/// session lost first), by the request message they answer: when the broker delivers that
/// request again, the same answer goes out instead of its plugin running again. Until a
/// server declares its queue, every reconnect would otherwise run the plugin (ohai,
/// facter) again, on every node a broadcast reached.
///
/// An answer is taken only by a redelivery in the session right after the one that
/// delivered its request: a request delivered again before its first run ended (the
/// connection lost meanwhile) has run again and been acked, and that run's late answer
/// must never answer a later request with the same bytes (a 2010 request is a bare
/// command, with no id). Several answers may wait for the same bytes (copies of one
/// 2010 broadcast). Bounded: the oldest goes first past [`UNSENT_BYTES`] (its request
/// then runs again), and a larger one is not kept.
#[derive(Default)]
struct Unsent {
    /// The session now serving (counted from 0 at start).
    session: std::sync::atomic::AtomicU64,
    kept: Mutex<std::collections::VecDeque<Kept>>,
}

/// An answer [`Unsent`] keeps: the session that delivered its request, the request's
/// bytes, the answer.
type Kept = (u64, Vec<u8>, Outgoing);

/// Most bytes of answers [`Unsent`] keeps.
const UNSENT_BYTES: usize = 4 * 1024 * 1024;

impl Unsent {
    fn kept(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Kept>> {
        match self.kept.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A new broker session starts: its number. Answers from before the session just
    /// ended can no longer be taken, and go.
    fn next_session(&self) -> u64 {
        let now = self
            .session
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.kept().retain(|(s, _, _)| s + 1 >= now);
        now
    }

    /// Keeps `answer` to `request` (the delivery's body), delivered in session `session`.
    fn keep(&self, session: u64, request: &[u8], answer: Outgoing) {
        let size = |(_, r, a): &Kept| r.len() + a.body.len();
        let entry = (session, request.to_vec(), answer);
        if size(&entry) > UNSENT_BYTES {
            return;
        }
        let mut kept = self.kept();
        while kept.iter().map(size).sum::<usize>() + size(&entry) > UNSENT_BYTES {
            kept.pop_front();
        }
        kept.push_back(entry);
    }

    /// An answer kept for `request` redelivered in session `session` (delivered in the
    /// one before), taken out.
    fn take(&self, session: u64, request: &[u8]) -> Option<Outgoing> {
        let mut kept = self.kept();
        let i = kept
            .iter()
            .position(|(s, r, _)| s + 1 == session && r.as_slice() == request)?;
        kept.remove(i).map(|(_, _, answer)| answer)
    }
}

/// [`Unsent`] as the session that delivered a request sees it.
#[derive(Clone, Copy)]
struct SessionUnsent<'a> {
    unsent: &'a Unsent,
    session: u64,
}

impl SessionUnsent<'_> {
    /// The answer kept for this redelivered `request`, if one is.
    fn take(self, request: &[u8]) -> Option<Outgoing> {
        self.unsent.take(self.session, request)
    }

    /// Keeps the answer to `request`, delivered in this session.
    fn keep(self, request: &[u8], answer: Outgoing) {
        self.unsent.keep(self.session, request, answer)
    }
}

/// Handles one delivery: answer it, publish the answer (confirmed), then ack.
async fn handle(
    opts: &ClientOptions,
    session: &Arc<dyn Transport>,
    registry: &Registry,
    unsent: SessionUnsent<'_>,
    delivery: Delivery,
) -> anyhow::Result<()> {
    tracing::info!(bytes = delivery.body.len(), "message received");
    // The broker's retry of a request whose answer it did not confirm: that answer again.
    if let Some(msg) = delivery
        .redelivered
        .then(|| unsent.take(&delivery.body))
        .flatten()
    {
        tracing::info!("request delivered again: sending the answer the broker did not confirm, not running the plugin again");
        return publish_answer(session, unsent, &delivery, msg).await;
    }
    let mut rejected = false;
    let (request, answer) = match vogeler_protocol::decode(&delivery.body) {
        Ok(Decoded::Message(Message::Request(mut r))) => {
            if r.reply_to.as_deref().is_some_and(|q| !valid_reply_to(q)) {
                tracing::warn!(request = %r.id, "the request's reply_to is not a usable queue name; answering without a confirmation");
                r.reply_to = None;
            }
            let answer = match judge(opts, registry, &delivery, &r, false) {
                Ok(signed) => answer_request(opts, registry, &r, signed).await,
                Err(answer) => {
                    rejected = true;
                    *answer
                }
            };
            (Some(r), answer)
        }
        Ok(Decoded::LegacyRequest(command)) => {
            let r = Request::legacy(command, &opts.node);
            let answer = match judge(opts, registry, &delivery, &r, true) {
                Ok(signed) => answer_request(opts, registry, &r, signed).await,
                Err(answer) => {
                    rejected = true;
                    *answer
                }
            };
            (Some(r), answer)
        }
        Ok(Decoded::Message(Message::Ping(p))) => {
            if let Err(why) = judge_ping(opts, &delivery, &p, Utc::now()) {
                // Acked and dropped: answering would let anyone enumerate the fleet.
                tracing::info!(ping = %p.id, sender = %p.sender, "ping ignored: {why}");
                session.ack(&delivery.ack).await?;
                return Ok(());
            }
            let pong = Message::Pong(Pong {
                ping_id: p.id.clone(),
                node: opts.node.clone(),
                sent_at: Utc::now(),
            });
            session
                .publish_reply(&p.reply_to, Outgoing::new(vogeler_protocol::encode(&pong)))
                .await?;
            session.ack(&delivery.ack).await?;
            return Ok(());
        }
        Ok(_) => {
            tracing::warn!("ignoring a message that is not a request");
            session.ack(&delivery.ack).await?;
            return Ok(());
        }
        Err(e) => (
            None,
            Answer {
                plugin: "request".into(),
                format: "raw".into(),
                outcome: Err(format!("could not decode request: {e}")),
                raw: None,
                exit_status: None,
                duration: Duration::ZERO,
                history: true,
            },
        ),
    };
    if rejected {
        // judge() logged the one line with the reason.
    } else if let Err(e) = &answer.outcome {
        tracing::warn!(plugin = %answer.plugin, error = %e, "answering with an error result");
    } else {
        tracing::info!(plugin = %answer.plugin, ms = answer.duration.as_millis() as u64, "plugin ran");
    }
    let body = encode_answer(opts, request.as_ref(), &answer);
    let reply_to = request.as_ref().and_then(|r| r.reply_to.clone());
    let headers = opts
        .signing_key
        .as_ref()
        .map(|k| k.headers(&body))
        .unwrap_or_default();
    let msg = Outgoing {
        body,
        headers,
        reply_to,
        ..Default::default()
    };
    publish_answer(session, unsent, &delivery, msg).await
}

/// Publishes a request's answer (confirmed), then acks the request; an answer the broker
/// did not confirm is kept for the request's redelivery ([`Unsent`], with the number of
/// the session that delivered it).
async fn publish_answer(
    session: &Arc<dyn Transport>,
    unsent: SessionUnsent<'_>,
    delivery: &Delivery,
    msg: Outgoing,
) -> anyhow::Result<()> {
    if let Err(e) = session.publish_result(msg.clone()).await {
        unsent.keep(&delivery.body, msg);
        return Err(e.into());
    }
    session.ack(&delivery.ack).await?;
    Ok(())
}

/// The file a client keeps its place in the request stream in (NATS: see
/// [`vogeler_transport::Resume`]), so requests sent while it was down run when it is
/// back; RabbitMQ's durable node queue needs none, and none is written.
struct ResumeFile {
    path: PathBuf,
}

impl ResumeFile {
    fn new(state_dir: &std::path::Path, node: &str) -> Self {
        ResumeFile {
            path: state_dir.join(format!("resume-{}", sanitize_file_name(node))),
        }
    }

    /// The place saved by the last run; a missing or unreadable file starts from now
    /// (logged: requests sent meanwhile are not run).
    fn load(&self) -> Option<Resume> {
        // A place is at most a few hundred KB (4,096 identities); a larger file is not
        // one, and is not read into memory whole.
        const MAX_BYTES: u64 = 1024 * 1024;
        let read = std::fs::File::open(&self.path).and_then(|f| {
            use std::io::Read;
            let mut text = String::new();
            f.take(MAX_BYTES + 1).read_to_string(&mut text)?;
            if text.len() as u64 > MAX_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("larger than {MAX_BYTES} bytes"),
                ));
            }
            Ok(text)
        });
        let text = match read {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read the saved request-stream place; starting from new requests");
                return None;
            }
        };
        match text.parse() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "the saved request-stream place is unreadable; starting from new requests");
                None
            }
        }
    }

    /// Writes `now` when it moved past `saved` (write to a temporary file, then rename,
    /// so a crash never leaves half a number).
    fn save(&self, saved: &mut Option<Resume>, now: Option<Resume>) {
        let Some(now) = now else { return };
        if saved.as_ref() == Some(&now) {
            return;
        }
        let tmp = self.path.with_extension("tmp");
        let written =
            std::fs::create_dir_all(self.path.parent().unwrap_or(std::path::Path::new(".")))
                .and_then(|()| std::fs::write(&tmp, now.to_string()))
                .and_then(|()| std::fs::rename(&tmp, &self.path));
        match written {
            Ok(()) => *saved = Some(now),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot save the request-stream place")
            }
        }
    }
}

/// A node name as one safe file-name component: `%XX` for every byte outside
/// `A-Z a-z 0-9 - _`, so two names never share a file.
fn sanitize_file_name(node: &str) -> String {
    node.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Applies the signature policy; a refusal is logged (one WARN line with the reason)
/// and becomes the error result answered instead of running anything. An unsafe
/// command line needs a valid signature even with `--allow-unsafe`.
fn judge(
    opts: &ClientOptions,
    registry: &Registry,
    d: &Delivery,
    r: &Request,
    legacy: bool,
) -> Result<bool, Box<Answer>> {
    let verdict = opts
        .policy
        .judge(d, r, legacy, &opts.node, Utc::now())
        .and_then(|signed| {
            let needs_signature =
                r.unsafe_command && opts.allow_unsafe && registry.lookup(&r.command).is_none();
            if needs_signature && !signed {
                return Err(Rejection::Unsigned(
                    "an unsafe command line runs only when signed by a trusted key, even with --allow-unsafe"
                        .into(),
                ));
            }
            Ok(signed)
        });
    verdict.map_err(|rejection| {
        tracing::warn!(
            reason = rejection.reason(),
            request = %r.id,
            command = %r.command,
            sender = %r.sender,
            key_id = d.header(KEY_ID_HEADER).unwrap_or("-"),
            "request refused: {rejection}"
        );
        Box::new(error_answer(
            &r.command,
            format!("request {} refused: {rejection}", r.id),
        ))
    })
}

/// Most a signed ping may have aged before it is ignored (a copy replayed later).
const PING_MAX_AGE: Duration = Duration::from_secs(300);

/// Whether to answer a ping: its reply queue must be usable, and with `require_signed`
/// it must be signed by a trusted key and recent; `Err` says why not.
fn judge_ping(
    opts: &ClientOptions,
    d: &Delivery,
    p: &vogeler_protocol::Ping,
    now: DateTime<Utc>,
) -> Result<(), String> {
    if !valid_reply_to(&p.reply_to) {
        return Err("its reply_to is not a usable queue name".into());
    }
    if !opts.policy.require_signed {
        return Ok(());
    }
    let signed = opts
        .policy
        .keyring
        .verify(&d.body, d.header(SIGNATURE_HEADER), d.header(KEY_ID_HEADER))
        .map_err(|r| r.to_string())?;
    if signed.is_none() {
        return Err("unsigned, and [client] require_signed = true".into());
    }
    let age = now.signed_duration_since(p.sent_at);
    if age > chrono::Duration::from_std(PING_MAX_AGE).unwrap_or(chrono::Duration::MAX) {
        return Err(format!(
            "sent {} ago, older than {} s",
            age,
            PING_MAX_AGE.as_secs()
        ));
    }
    Ok(())
}

/// Decides what to run for a request and runs it. `signed`: the request carried a
/// valid signature of a trusted key (unsafe command lines need it).
pub async fn answer_request(
    opts: &ClientOptions,
    registry: &Registry,
    r: &Request,
    signed: bool,
) -> Answer {
    let now = Utc::now();
    if r.is_expired(now) {
        return error_answer(
            &r.command,
            format!(
                "request {} expired (sent {} with ttl {} s); not run",
                r.id, r.sent_at, r.ttl
            ),
        );
    }
    if let Some(plugin) = registry.lookup(&r.command) {
        return finish(vogeler_plugins::run_plugin(plugin, &opts.limits).await);
    }
    if r.unsafe_command {
        if !opts.allow_unsafe {
            return error_answer(
                &r.command,
                format!(
                    "command line {:?} is not a plugin and this client was not started with --allow-unsafe",
                    r.command
                ),
            );
        }
        if !signed {
            return error_answer(
                &r.command,
                format!(
                    "command line {:?} is not a plugin and the request is not signed by a trusted key",
                    r.command
                ),
            );
        }
        let argv = match shell_words::split(&r.command) {
            Ok(a) if !a.is_empty() => a,
            _ => {
                return error_answer(
                    &r.command,
                    format!("cannot split command line {:?}", r.command),
                )
            }
        };
        tracing::warn!(command = %r.command, "running an unsafe command line (--allow-unsafe)");
        let adhoc = Plugin {
            name: unsafe_key(&argv[0]),
            description: "unsafe command line".into(),
            command_line: r.command.clone(),
            command: argv,
            format: Format::Output,
            alias: None,
            interval: None,
            timeout: None,
            history: true,
            source: "(request)".into(),
            line: 0,
            available: true,
            unavailable_reason: None,
        };
        return finish(vogeler_plugins::run_plugin(&adhoc, &opts.limits).await);
    }
    // A plugin name this host does not know is a different mistake from a command
    // line it will not run: say which.
    if limits::check_plugin_name("command", &r.command).is_ok() {
        let mut names: Vec<&str> = registry.plugins().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        let known = if names.is_empty() {
            "it has no plugins".to_string()
        } else {
            format!("its plugins: {}", names.join(", "))
        };
        return error_answer(
            &r.command,
            format!(
                "unknown plugin {:?}: this host has no plugin or alias of that name ({known})",
                r.command
            ),
        );
    }
    error_answer(
        &r.command,
        format!(
            "Plugin {} is not authorized for this host. Ignoring",
            r.command
        ),
    )
}

fn unsafe_key(program: &str) -> String {
    let base = program.rsplit('/').next().unwrap_or(program);
    format!("unsafe_{base}")
}

/// The most of an error message a client sends (and logs): a refusal that quotes a
/// hostile request's field must not grow the answer with it.
const MAX_ERROR_BYTES: usize = 2048;

fn error_answer(plugin: &str, message: String) -> Answer {
    let message = vogeler_protocol::limits::bounded(&message, MAX_ERROR_BYTES).into_owned();
    Answer {
        plugin: plugin.to_string(),
        format: "raw".into(),
        outcome: Err(message),
        raw: None,
        exit_status: None,
        duration: Duration::ZERO,
        history: true,
    }
}

/// A plugin run as an answer (warning when a non-zero exit still parsed).
pub(crate) fn finish(o: PluginOutcome) -> Answer {
    if let (Ok(_), Some(code)) = (&o.result, o.exit_status.filter(|c| *c != 0)) {
        let first = o
            .stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        tracing::warn!(plugin = %o.plugin, code, stderr = %first, "plugin exited non-zero but its output parsed; storing it");
    }
    let outcome = o.result.map_err(|e| e.to_string());
    Answer {
        plugin: o.plugin,
        format: o.format.as_str().to_string(),
        outcome,
        raw: Some(o.raw),
        exit_status: o.exit_status,
        duration: o.duration,
        history: o.history,
    }
}

/// Encodes an answer in the configured wire shape, checked as the server will check
/// it: a result larger than `max_message_bytes` or refused by the protocol's limits
/// (`vogeler_protocol::limits`) is replaced by a short error result saying why, which
/// the server stores as the plugin's `last_error`.
pub fn encode_answer(opts: &ClientOptions, request: Option<&Request>, a: &Answer) -> Vec<u8> {
    // An error answer to a command as asked (`rm -rf /`) keys it by a name the server
    // accepts, keeping the message ("not authorized").
    let renamed;
    let a = if limits::check_plugin_name("plugin", &a.plugin).is_err() {
        renamed = Answer {
            plugin: safe_plugin_name(&a.plugin),
            ..a.clone()
        };
        &renamed
    } else {
        a
    };
    let body = encode_unchecked(opts, request, a);
    let Err(why) = check_outgoing(opts, &body) else {
        return body;
    };
    tracing::warn!(plugin = %a.plugin, error = %why, "answering with a short error result instead");
    let short = Answer {
        plugin: a.plugin.clone(),
        format: limits::bounded(&a.format, limits::MAX_NAME_BYTES).into_owned(),
        outcome: Err(why),
        raw: None,
        exit_status: a.exit_status,
        duration: a.duration,
        history: a.history,
    };
    encode_unchecked(opts, request, &short)
}

/// Why the server would refuse this encoded result, in a short sentence.
fn check_outgoing(opts: &ClientOptions, body: &[u8]) -> Result<(), String> {
    let max = opts.max_message_bytes.min(limits::MAX_MESSAGE_BYTES);
    if body.len() > max {
        return Err(format!(
            "output of {} exceeds the {} limit ([server] max_message_bytes); nothing of it was sent",
            megabytes(body.len()),
            megabytes(max)
        ));
    }
    let checked = match vogeler_protocol::decode_raw_result(body) {
        Some(r) => r.map(drop),
        None => vogeler_protocol::decode(body).map(drop),
    };
    checked.map_err(|e| {
        let why = format!(
            "result refused by the protocol limits ({}): {e}",
            e.reason()
        );
        limits::bounded(&why, 512).into_owned()
    })
}

/// `n` bytes as `20.0 MB` (MiB, one decimal).
fn megabytes(n: usize) -> String {
    format!("{:.1} MB", n as f64 / (1024.0 * 1024.0))
}

/// A plugin name the protocol accepts: characters outside `[A-Za-z0-9_.-]` become `_`
/// (an unknown command as asked, `ls -l`, becomes `ls_-l`), cut to the name limit.
fn safe_plugin_name(name: &str) -> String {
    let mut safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    safe.truncate(limits::MAX_NAME_BYTES);
    if safe.is_empty() {
        safe.push_str("unknown");
    }
    safe
}

/// Encodes an answer in the configured wire shape, as it is.
fn encode_unchecked(opts: &ClientOptions, request: Option<&Request>, a: &Answer) -> Vec<u8> {
    match opts.wire {
        Wire::Legacy => match &a.outcome {
            Ok(_) => vogeler_protocol::encode_legacy_result(
                &opts.node,
                &a.plugin,
                a.raw.as_deref().unwrap_or_default(),
                &a.format,
            ),
            Err(e) => vogeler_protocol::encode_legacy_error(&opts.node, e, Utc::now()),
        },
        Wire::V1 => {
            let (data, error, raw) = match &a.outcome {
                Ok(v) => (Some(v.clone()), None, None),
                Err(e) => (None, Some(e.clone()), a.raw.clone()),
            };
            vogeler_protocol::encode(&Message::Result(PluginResult {
                request_id: request.map(|r| r.id.clone()).filter(|id| !id.is_empty()),
                node: opts.node.clone(),
                plugin: a.plugin.clone(),
                format: a.format.clone(),
                data,
                error,
                raw,
                exit_status: a.exit_status,
                duration_ms: a.duration.as_millis() as u64,
                collected_at: Utc::now(),
                reply_to: request.and_then(|r| r.reply_to.clone()),
                // Copied like reply_to: the server sends the stored value back.
                want_value: request.is_some_and(|r| r.want_value && r.reply_to.is_some()),
                history: a.history,
            }))
        }
    }
}

/// Reloads the registry on SIGHUP and when the plugin directory changes.
async fn watch_plugins(opts: ClientOptions, registry: SharedRegistry, mut shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut last = dir_fingerprint(&opts.plugin_dir);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reason = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => "SIGHUP",
            _ = tick.tick() => {
                let now = dir_fingerprint(&opts.plugin_dir);
                if now == last { continue; }
                last = now;
                "plugin directory changed"
            }
            _ = shutdown.wait() => return,
        };
        match load_registry(&opts) {
            Ok(r) => {
                let names: Vec<String> = r.plugins().map(|p| p.name.clone()).collect();
                tracing::info!(reason, plugins = ?names, "plugins reloaded");
                match registry.write() {
                    Ok(mut g) => *g = Arc::new(r),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(r),
                }
            }
            Err(e) => {
                tracing::error!(reason, error = %e, "plugin reload failed; keeping the plugins loaded before")
            }
        }
    }
}

/// Names, sizes and modification times of the `.cfg` files: cheap to poll, changes on any edit.
fn dir_fingerprint(dir: &std::path::Path) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".cfg") {
                continue;
            }
            let meta = e.metadata().ok();
            out.push((
                name,
                meta.as_ref().map(|m| m.len()).unwrap_or(0),
                meta.and_then(|m| m.modified().ok()),
            ));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_answers_are_taken_once_by_the_next_session_and_bounded() {
        let u = Unsent::default();
        let answer = |n: usize| Outgoing::new(vec![b'x'; n]);
        let first = u.next_session();
        u.keep(first, b"r1", answer(10));
        // Not in the session that delivered it (a late answer of a request run again).
        assert!(u.take(first, b"r1").is_none());
        let second = u.next_session();
        assert!(u.take(second, b"r2").is_none());
        assert_eq!(u.take(second, b"r1").map(|a| a.body.len()), Some(10));
        assert!(u.take(second, b"r1").is_none(), "taken once");
        // Two copies of one 2010 broadcast: an answer each.
        u.keep(second, b"same", answer(1));
        u.keep(second, b"same", answer(2));
        let third = u.next_session();
        assert!(u.take(third, b"same").is_some());
        assert!(u.take(third, b"same").is_some());
        // An answer not taken in the next session is gone after it.
        u.keep(third, b"late", answer(3));
        u.next_session();
        let fifth = u.next_session();
        assert!(u.take(fifth, b"late").is_none());
        assert!(u.kept().is_empty());
        // Past the budget the oldest goes first; one larger than all of it is not kept.
        u.keep(fifth, b"a", answer(UNSENT_BYTES / 2));
        u.keep(fifth, b"b", answer(UNSENT_BYTES / 2));
        u.keep(fifth, b"huge", answer(UNSENT_BYTES + 1));
        let sixth = u.next_session();
        assert!(u.take(sixth, b"a").is_none());
        assert!(u.take(sixth, b"b").is_some());
        assert!(u.take(sixth, b"huge").is_none());
    }

    #[test]
    fn a_resume_file_too_large_or_corrupt_starts_from_new_requests() {
        let dir = std::env::temp_dir().join(format!("vogeler-resume-{}", std::process::id()));
        let place = ResumeFile::new(&dir, "web1.example.com");
        std::fs::create_dir_all(&dir).expect("state dir");
        let write = |text: &[u8]| std::fs::write(&place.path, text).expect("write the place");
        write(b"12:34:00ff,abc");
        assert_eq!(
            place.load().map(|r| (r.broadcast, r.node, r.handled.len())),
            Some((12, 34, 2))
        );
        for bad in [
            b"garbage".to_vec(),
            b"1:2:xyz".to_vec(),
            b"99999999999999999999999:1".to_vec(),
            vec![0xff, 0xfe, b':', b'1'],
            format!("1:2:{}", vec!["ab"; 5000].join(",")).into_bytes(),
            vec![b'7'; 3 * 1024 * 1024],
        ] {
            write(&bad);
            assert_eq!(place.load(), None, "{:?}", &bad[..bad.len().min(20)]);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn delivery(body: Vec<u8>, headers: Vec<(String, String)>) -> Delivery {
        Delivery {
            body,
            redelivered: false,
            key: "n".into(),
            source: "x".into(),
            reply_to: None,
            headers,
            ack: vogeler_transport::AckHandle::detached(),
        }
    }

    fn request(id: &str, sent_ago: i64, ttl: u64) -> Request {
        Request {
            id: id.into(),
            command: "facter".into(),
            targets: vec!["all".into()],
            sender: "test".into(),
            sent_at: Utc::now() - chrono::Duration::seconds(sent_ago),
            ttl,
            reply_to: None,
            unsafe_command: false,
            want_value: false,
        }
    }

    fn signed(key: &SecretKey, r: &Request) -> Delivery {
        let body = vogeler_protocol::encode(&Message::Request(r.clone()));
        let headers = key.headers(&body);
        delivery(body, headers)
    }

    fn reason(v: Result<bool, Rejection>) -> &'static str {
        v.expect_err("refused").reason()
    }

    #[test]
    fn reply_queues_that_would_close_the_channel_are_unusable() {
        assert!(valid_reply_to("amq.gen-JzTY20BRgKO-HjmUJj0wLg"));
        assert!(valid_reply_to("amq.rabbitmq.reply-to.g1h2AA"));
        for bad in ["", "a\u{7}b", DIRECT_REPLY_TO, &"q".repeat(256)] {
            assert!(!valid_reply_to(bad), "{bad:?}");
        }
    }

    #[test]
    fn judge_every_path() {
        let runner = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let policy = RequestPolicy::new(Keyring::new([runner.public("runner")]), false);
        let now = Utc::now();

        let r = request("a", 0, 300);
        assert_eq!(
            policy.judge(&signed(&runner, &r), &r, false, "n", now),
            Ok(true)
        );
        // The same message again: a replay; redelivered by the broker: not one.
        assert_eq!(
            reason(policy.judge(&signed(&runner, &r), &r, false, "n", now)),
            "replayed"
        );
        let mut again = signed(&runner, &r);
        again.redelivered = true;
        assert_eq!(policy.judge(&again, &r, false, "n", now), Ok(true));

        let r = request("b", 0, 300);
        let mut altered = signed(&runner, &r);
        altered.body[10] ^= 1;
        assert_eq!(
            reason(policy.judge(&altered, &r, false, "n", now)),
            "bad-signature"
        );
        assert_eq!(
            reason(policy.judge(&signed(&other, &r), &r, false, "n", now)),
            "unknown-key"
        );
        let r = request("c", 600, 60);
        assert_eq!(
            reason(policy.judge(&signed(&runner, &r), &r, false, "n", now)),
            "expired"
        );
        let r = request("d", 0, 0);
        assert_eq!(
            reason(policy.judge(&signed(&runner, &r), &r, false, "n", now)),
            "expired",
            "a signed request without a ttl could be replayed forever"
        );

        // Unsigned: allowed unless require_signed (which also refuses the 2010 shape).
        let r = request("e", 0, 300);
        let unsigned = delivery(
            vogeler_protocol::encode(&Message::Request(r.clone())),
            vec![],
        );
        assert_eq!(policy.judge(&unsigned, &r, false, "n", now), Ok(false));
        let strict = RequestPolicy::new(Keyring::new([runner.public("runner")]), true);
        assert_eq!(
            reason(strict.judge(&unsigned, &r, false, "n", now)),
            "unsigned"
        );
        let legacy = Request::legacy("facter".into(), "n");
        let d = delivery(vogeler_protocol::encode_legacy_request("facter"), vec![]);
        assert_eq!(
            reason(strict.judge(&d, &legacy, true, "n", now)),
            "unsigned"
        );
        assert_eq!(policy.judge(&d, &legacy, true, "n", now), Ok(false));

        // Bound to its targets: a signed request copied to another node's queue is
        // refused there, before it is remembered as seen.
        let mut r = request("t", 0, 300);
        r.targets = vec!["web01".into(), "web02".into()];
        assert_eq!(
            reason(policy.judge(&signed(&runner, &r), &r, false, "web03", now)),
            "not-target"
        );
        assert_eq!(
            policy.judge(&signed(&runner, &r), &r, false, "web02", now),
            Ok(true)
        );
        // Prefixes and globs are not names.
        r.id = "t2".into();
        r.targets = vec!["web0*".into(), "web".into()];
        assert_eq!(
            reason(policy.judge(&signed(&runner, &r), &r, false, "web01", now)),
            "not-target"
        );
        // An edited copy naming another node no longer verifies.
        let mut copy = signed(&runner, &request("t3", 0, 300));
        let edited = String::from_utf8_lossy(&copy.body).replace("\"all\"", "\"web03\"");
        copy.body = edited.into_bytes();
        assert_eq!(
            reason(policy.judge(&copy, &r, false, "web03", now)),
            "bad-signature"
        );
        r.targets = vec![];
        r.id = "t4".into();
        assert_eq!(
            policy.judge(&signed(&runner, &r), &r, false, "any", now),
            Ok(true),
            "empty targets: a broadcast"
        );

        // No trusted keys: nothing is checked, everything counts as unsigned.
        let open = RequestPolicy::default();
        let r = request("f", 0, 300);
        assert_eq!(
            open.judge(&signed(&other, &r), &r, false, "n", now),
            Ok(false)
        );
    }

    #[test]
    fn the_replay_memory_survives_a_restart() {
        let runner = SecretKey::from_seed([1; 32]);
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Utc::now();
        let r = request("restart", 0, 300);
        let policy = || {
            let p = RequestPolicy::new(Keyring::new([runner.public("runner")]), false);
            p.keep_replay_memory(dir.path(), "web/01")
                .expect("replay file");
            p
        };
        assert_eq!(
            policy().judge(&signed(&runner, &r), &r, false, "n", now),
            Ok(true)
        );
        // A new process (a restarted client) still remembers it.
        assert_eq!(
            reason(policy().judge(&signed(&runner, &r), &r, false, "n", now)),
            "replayed"
        );
        assert!(dir.path().join("replay-web_01").is_file());
    }
}
