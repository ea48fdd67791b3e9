//! `vogeler-runner`: sends one command to all nodes or to named nodes, and with
//! `--wait` collects the server's `stored` confirmations into a summary.
//!
//! Publishes are mandatory and confirmed: a node whose queue does not exist (a
//! client never started) comes back unroutable and is reported, exit status 3. On a
//! broker that stores every request (NATS JetStream) the runner asks the servers'
//! registry instead: a named node no server has ever heard from is reported unroutable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use vogeler_protocol::{Decoded, Message, Request, Stored};
use vogeler_signing::SecretKey;
use vogeler_transport::{
    Audience, Connector, Delivered, Outgoing, Subscription, Topology, Transport, TransportError,
};

use crate::client::Wire;

/// What to send, where, and whether to wait.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// The broker (RabbitMQ or NATS) and its addresses.
    pub broker: Connector,
    /// Exchange names.
    pub topology: Topology,
    /// Plugin name or alias (or a command line with `unsafe_command`).
    pub command: String,
    /// `["all"]` or node names.
    pub targets: Vec<String>,
    /// Wait for `stored` confirmations.
    pub wait: bool,
    /// How long to wait for them.
    pub timeout: Duration,
    /// Seconds after which a client must not run the request any more.
    pub ttl: u64,
    /// Send a command line that is not a plugin (clients need `--allow-unsafe`).
    pub unsafe_command: bool,
    /// Message shape to emit.
    pub wire: Wire,
    /// Filters on stored facts (`-W`); with them (or a glob in `targets`) the runner
    /// asks the servers which nodes match and sends to those only.
    pub filters: Vec<String>,
    /// Discovery counts only nodes seen within this window; `None` means every stored
    /// node for `-W` and globs, and [`DEFAULT_SEEN_WITHIN_ALL`] for `-n all --wait`.
    pub seen_within: Option<Duration>,
    /// How long to wait for a server to answer the discovery request (and, with
    /// `ping`, the most time spent collecting pongs).
    pub discovery_timeout: Duration,
    /// Signs every request (headers over the exact body), so clients that trust the key
    /// can tell this runner from anyone else who can publish; `None` sends unsigned.
    pub signing_key: Option<Arc<SecretKey>>,
    /// Discover by broadcasting a ping and collecting the clients' pongs instead of
    /// asking the servers; `targets` globs then filter the answering nodes.
    pub ping: bool,
    /// With `ping`: stop collecting once no pong came for this long.
    pub ping_quiet: Duration,
    /// `--output`: ask for each node's stored value back (`want_value`) and show it, or
    /// the value at this path in it. Needs `wait` and the v1 wire.
    pub output: Option<OutputPath>,
}

/// Where `--output` looks in each node's value: a dotted path (`os.family`,
/// `disks.0.size`: a number indexes an array), or the whole value. Keys that contain a
/// dot cannot be named; print the whole value instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputPath {
    parts: Vec<String>,
}

impl OutputPath {
    /// The whole value.
    pub fn whole() -> OutputPath {
        OutputPath::default()
    }

    /// Parses `--output`'s argument: empty or `.` is the whole value; otherwise dotted
    /// parts, none empty (`a..b` and `a.` are mistakes, refused before anything is sent).
    pub fn parse(s: &str) -> Result<OutputPath, String> {
        let s = s.trim();
        if s.is_empty() || s == "." {
            return Ok(OutputPath::whole());
        }
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!(
                "{s:?} has an empty part: use dotted keys such as os.family or disks.0"
            ));
        }
        Ok(OutputPath { parts })
    }

    /// Whether this is the whole value (no path).
    pub fn is_whole(&self) -> bool {
        self.parts.is_empty()
    }

    /// The value at this path in `value`: a key of an object, an index of an array.
    pub fn lookup<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.parts.iter().try_fold(value, |v, part| match v {
            Value::Object(map) => map.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

impl std::fmt::Display for OutputPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

/// One node's answer as `--output` shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    /// The value (at the path).
    Value(Value),
    /// The value has nothing at the path.
    Missing,
    /// The value was larger than the protocol sends back (`value_truncated`); the
    /// plugin names where it is stored.
    Truncated {
        /// The plugin's key in the node's document.
        plugin: String,
    },
    /// The confirmation carries no value: the node's client or the server predates
    /// `--output` (did not copy or honour `want_value`).
    NoValue,
    /// The node answered with an error result.
    Error(String),
    /// The result was older than the stored value and not applied.
    Stale,
}

impl Shown {
    /// What a `stored` confirmation shows at `path`.
    pub fn of(s: &Stored, path: &OutputPath) -> Shown {
        if !s.ok {
            return Shown::Error(s.error.clone().unwrap_or_else(|| "(no message)".into()));
        }
        if s.stale {
            return Shown::Stale;
        }
        match &s.value {
            Some(v) => match path.lookup(v) {
                Some(found) => Shown::Value(found.clone()),
                None => Shown::Missing,
            },
            None if s.value_truncated => Shown::Truncated {
                plugin: s.plugin.clone(),
            },
            None => Shown::NoValue,
        }
    }

    /// The `NODE: VALUE` line: a string bare, any other value as compact JSON.
    pub fn line(&self, node: &str, path: &OutputPath) -> String {
        let what = match self {
            Shown::Value(Value::String(s)) => s.clone(),
            Shown::Value(v) => v.to_string(),
            Shown::Missing => format!("(no {path} in the value)"),
            Shown::Truncated { plugin } => {
                let key = if path.is_whole() {
                    plugin.clone()
                } else {
                    format!("{plugin}.{path}")
                };
                format!(
                    "(value over {} KiB, not sent back: vogeler-admin node {node} {key})",
                    vogeler_protocol::limits::MAX_STORED_VALUE_BYTES / 1024
                )
            }
            Shown::NoValue => {
                "(no value in the answer: its client or server predates --output)".into()
            }
            Shown::Error(e) => format!("error: {e}"),
            Shown::Stale => "(stale: older than the stored value, not applied)".into(),
        };
        format!("{node}: {what}")
    }
}

/// `--output` in the JSON summary: each node's value at the path, and the nodes
/// without one (error and stale answers are in the summary's own lists).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OutputReport {
    /// The path asked for; `None` for the whole value.
    pub path: Option<String>,
    /// Each node's value (at the path).
    pub values: BTreeMap<String, Value>,
    /// Nodes whose value has nothing at the path.
    pub missing: Vec<String>,
    /// Nodes whose value was too large to send back (read it with `vogeler-admin node`).
    pub truncated: Vec<String>,
    /// Nodes whose confirmation carried no value (a client or server older than
    /// `--output`).
    pub without_value: Vec<String>,
}

impl OutputReport {
    fn new(path: &OutputPath) -> OutputReport {
        OutputReport {
            path: (!path.is_whole()).then(|| path.to_string()),
            ..Default::default()
        }
    }

    fn add(&mut self, node: &str, shown: &Shown) {
        match shown {
            Shown::Value(v) => {
                self.values.insert(node.to_string(), v.clone());
            }
            Shown::Missing => self.missing.push(node.to_string()),
            Shown::Truncated { .. } => self.truncated.push(node.to_string()),
            Shown::NoValue => self.without_value.push(node.to_string()),
            Shown::Error(_) | Shown::Stale => {}
        }
    }
}

/// Whom `-n all --wait` expects by default: nodes seen within the last hour, so a
/// client that heartbeats (every 60 s by default) is expected and one long gone is not.
pub const DEFAULT_SEEN_WITHIN_ALL: Duration = Duration::from_secs(3600);

impl RunnerOptions {
    /// Whether the servers must be asked for the targets (filters, or node-name globs).
    pub fn discovers(&self) -> bool {
        !self.ping
            && (!self.filters.is_empty()
                || self.targets.iter().any(|t| t.contains(['*', '?', '['])))
    }

    /// Whether this is a broadcast to every node whose expected set the runner learns
    /// from the registry (or, with no server, from a ping) so it can name the silent.
    fn expects_broadcast(&self) -> bool {
        self.wait
            && self.wire == Wire::V1
            && !self.ping
            && self.filters.is_empty()
            && is_broadcast(&self.targets)
    }
}

/// What happened, in the figures MCollective users know.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Request id.
    pub request_id: String,
    /// Command sent.
    pub command: String,
    /// Nodes targeted (empty for a broadcast without discovery).
    pub discovered: Vec<String>,
    /// Nodes whose result the server stored without error.
    pub answered: Vec<String>,
    /// Nodes that answered with an error result, and the message.
    pub errors: BTreeMap<String, String>,
    /// Expected (targeted, or in the registry for `-n all`) nodes with no stored
    /// answer before the timeout: the silent ones, exit 3.
    pub no_answer: Vec<String>,
    /// Nodes whose queue does not exist (never started), or, on a broker that stores
    /// every request, nodes the servers' registry has never heard from.
    pub unroutable: Vec<String>,
    /// Whether `unroutable` came from the registry (NATS) rather than the broker, which
    /// changes what the report says about them.
    #[serde(skip)]
    pub unknown_to_registry: bool,
    /// Answers from nodes that were not expected, such as new nodes not yet in the
    /// registry (counted as success).
    pub unexpected: Vec<String>,
    /// Nodes whose result was older than the value already stored, so it was not
    /// applied (`Stored.stale`): reported apart so an old answer is not taken for news.
    pub stale: Vec<String>,
    /// A glob or filter matched no node, so nothing was sent: exit 3, not a silent 0.
    pub no_match: bool,
    /// Whether the runner waited for answers.
    pub waited: bool,
    /// Milliseconds spent publishing (and discovering).
    pub discovery_ms: u64,
    /// Milliseconds in all.
    pub total_ms: u64,
    /// With `--output`: each node's value (at the path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputReport>,
}

impl Summary {
    /// The summary for `--json`: its fields, plus `silent`, the same list as
    /// `no_answer` under the name the text summary uses.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("silent".into(), serde_json::json!(self.no_answer));
        }
        v
    }

    /// 0 all stored without error, 1 some error results, 3 some nodes did not answer,
    /// were unroutable, or no node matched.
    pub fn exit_code(&self) -> i32 {
        let nobody_answered = self.waited
            && self.answered.is_empty()
            && self.errors.is_empty()
            && self.stale.is_empty();
        if self.no_match
            || !self.unroutable.is_empty()
            || !self.no_answer.is_empty()
            || nobody_answered
        {
            3
        } else if !self.errors.is_empty() {
            1
        } else {
            0
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.no_match {
            out.push_str(&format!(
                "no node matches the given names or filters: {} not sent\n",
                self.command
            ));
            return out;
        }
        out.push_str(&format!("request {} ({})\n", self.request_id, self.command));
        // An answer from a node outside the expected set is said on its own line, once.
        let unexpected = |n: &String| {
            if self.unexpected.contains(n) {
                " (unexpected: not among the active nodes seen recently)"
            } else {
                ""
            }
        };
        for n in &self.answered {
            out.push_str(&format!("  stored      {n}{}\n", unexpected(n)));
        }
        for n in &self.stale {
            out.push_str(&format!(
                "  stale       {n} (older than the stored value, not applied){}\n",
                unexpected(n)
            ));
        }
        for (n, e) in &self.errors {
            out.push_str(&format!("  error       {n}: {e}{}\n", unexpected(n)));
        }
        for n in &self.no_answer {
            out.push_str(&format!("  silent      {n} (expected, never answered)\n"));
        }
        out.push_str(&self.unroutable_lines());
        for n in &self.unexpected {
            let listed =
                self.answered.contains(n) || self.stale.contains(n) || self.errors.contains_key(n);
            if !listed {
                out.push_str(&format!("  unexpected  {n}\n"));
            }
        }
        out.push_str(&format!(
            "discovered: {}  answered: {}  stale: {}  errors: {}  silent: {}  unroutable: {}  unexpected: {}\n",
            self.discovered.len(),
            self.answered.len(),
            self.stale.len(),
            self.errors.len(),
            self.no_answer.len(),
            self.unroutable.len(),
            self.unexpected.len()
        ));
        out.push_str(&format!(
            "discovery time: {} ms  total time: {} ms\n",
            self.discovery_ms, self.total_ms
        ));
        out
    }

    /// One line per unroutable node, saying why in the broker's terms.
    fn unroutable_lines(&self) -> String {
        let why = if self.unknown_to_registry {
            "unknown to the servers: its client never started; the request waits in the stream until its ttl in case it does"
        } else {
            "no queue reachable: its client never started, or the cluster member holding its queue is down"
        };
        self.unroutable
            .iter()
            .map(|n| format!("  unroutable  {n} ({why})\n"))
            .collect()
    }

    /// The report without `--wait`: where the request went and how to follow it, since
    /// nothing was collected.
    pub fn render_sent(&self) -> String {
        if self.no_match {
            return self.render();
        }
        let to = if self.discovered.is_empty() && self.unroutable.is_empty() {
            "broadcast to every node".to_string()
        } else {
            format!("sent to {} node(s)", self.discovered.len())
        };
        let mut out = format!("request {} ({}) {to}\n", self.request_id, self.command);
        out.push_str(&self.unroutable_lines());
        out.push_str(&format!(
            "follow with: vogeler-admin requests {}\n",
            self.request_id
        ));
        out
    }
}

/// Whether the targets mean every node.
fn is_broadcast(targets: &[String]) -> bool {
    targets.is_empty() || targets.iter().any(|t| t == "all")
}

/// Sends the request and, with `wait`, collects the answers.
pub async fn run(opts: &RunnerOptions) -> anyhow::Result<Summary> {
    run_with(opts, |_, _| Ok(())).await
}

/// [`run`], calling `on_answer` with each node's answer as it arrives when
/// `opts.output` is set (`--output` prints it), as well as adding it to the summary.
pub async fn run_with(
    opts: &RunnerOptions,
    mut on_answer: impl FnMut(&str, &Shown) -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let session = opts.broker.connect_interactive().await?;
    session.declare_sender().await?;
    let discovering = opts.discovers() || opts.ping;
    let expects_broadcast = opts.expects_broadcast();
    // Named nodes on a broker that cannot say a node is unroutable: ask the registry.
    let check_names = !session.reports_unroutable() && !discovering && !is_broadcast(&opts.targets);
    let waits = opts.wait && opts.wire == Wire::V1;
    let (reply_queue, mut replies) = if waits || discovering || check_names {
        let (address, inbox) = session.reply_inbox().await?;
        (Some(address), Some(inbox))
    } else {
        (None, None)
    };
    let mut targets = opts.targets.clone();
    // For `-n all --wait`: the nodes the registry (or a ping) says should answer.
    let mut registry: Option<BTreeSet<String>> = None;
    if discovering || expects_broadcast {
        let (Some(queue), Some(consumer)) = (&reply_queue, replies.as_mut()) else {
            anyhow::bail!("discovery needs a reply queue");
        };
        let found = if opts.ping {
            ping(opts, &session, queue, consumer).await?
        } else {
            match discover(opts, &session, queue, consumer).await? {
                Some(nodes) => nodes,
                // Filters need the store; names and `all` can be learnt from the clients.
                None if opts.filters.is_empty() => {
                    eprintln!(
                        "no vogeler-server answered discovery within {} s (is one consuming {}?); discovering by --ping instead",
                        opts.discovery_timeout.as_secs(),
                        opts.broker.results_queue(&opts.topology)
                    );
                    ping(opts, &session, queue, consumer).await?
                }
                None => anyhow::bail!(
                    "no vogeler-server answered the discovery request within {} s (is a server consuming {}?); -W filters need one",
                    opts.discovery_timeout.as_secs(),
                    opts.broker.results_queue(&opts.topology)
                ),
            }
        };
        if expects_broadcast {
            if found.is_empty() {
                eprintln!(
                    "no active node is known (none seen within {} s, or every one deactivated): broadcasting anyway; every answer is unexpected",
                    opts.seen_within.unwrap_or(DEFAULT_SEEN_WITHIN_ALL).as_secs()
                );
            }
            registry = Some(found.into_iter().collect());
        } else {
            targets = found;
        }
        if !expects_broadcast && targets.is_empty() {
            tracing::warn!("no node matches: nothing sent");
            session.close().await;
            return Ok(Summary {
                command: opts.command.clone(),
                waited: opts.wait,
                no_match: true,
                discovery_ms: started.elapsed().as_millis() as u64,
                total_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            });
        }
    }
    // Without --wait the inbox only served the registry check after publishing.
    let mut check_inbox = None;
    if !waits {
        check_inbox = replies.take();
    }
    let broadcast = !discovering && is_broadcast(&targets);
    debug_assert!(!expects_broadcast || broadcast);
    let request = Request {
        id: uuid::Uuid::new_v4().to_string(),
        command: opts.command.clone(),
        targets: if broadcast {
            vec!["all".into()]
        } else {
            targets.clone()
        },
        sender: format!("vogeler-runner@{}", vogeler_config::host_name()),
        sent_at: Utc::now(),
        ttl: opts.ttl,
        reply_to: reply_queue.clone().filter(|_| waits || discovering),
        unsafe_command: opts.unsafe_command,
        want_value: opts.output.is_some() && replies.is_some(),
    };
    if opts.wire == Wire::V1 {
        announce(&session, &request, broadcast).await?;
    }
    let body = match opts.wire {
        Wire::V1 => vogeler_protocol::encode(&Message::Request(request.clone())),
        Wire::Legacy => vogeler_protocol::encode_legacy_request(&opts.command),
    };
    // A 2010 request has no id or ttl a signature could be bound to, so it goes unsigned.
    let headers = match (&opts.signing_key, opts.wire) {
        (Some(key), Wire::V1) => key.headers(&body),
        (Some(_), Wire::Legacy) => {
            tracing::warn!(
                "a 2010-format request cannot be signed (no id or ttl); sending it unsigned"
            );
            Vec::new()
        }
        (None, _) => Vec::new(),
    };
    let msg = |mandatory| {
        let mut m = Outgoing::new(body.clone());
        m.headers = headers.clone();
        m.expiration_ms = Some(opts.ttl.saturating_mul(1000));
        m.reply_to = request.reply_to.clone();
        m.mandatory = mandatory;
        m
    };
    let mut summary = Summary {
        request_id: request.id.clone(),
        command: opts.command.clone(),
        waited: opts.wait,
        output: opts
            .output
            .as_ref()
            .filter(|_| replies.is_some())
            .map(OutputReport::new),
        ..Default::default()
    };
    let routes: Vec<Audience<'_>> = if broadcast {
        vec![Audience::Everyone]
    } else {
        targets.iter().map(|t| Audience::Node(t)).collect()
    };
    // Published together, confirmed together (the order of `routes` is kept).
    let sent = futures_util::future::join_all(
        routes
            .iter()
            .map(|to| session.publish_request(*to, msg(true))),
    )
    .await;
    for (to, delivered) in routes.iter().zip(sent) {
        let key = match to {
            Audience::Everyone => "all".to_string(),
            Audience::Node(n) => n.to_string(),
        };
        match delivered? {
            Delivered::Routed => {
                tracing::info!(command = %opts.command, to = %key, "request sent");
                if !broadcast {
                    summary.discovered.push(key);
                }
            }
            Delivered::Unroutable => {
                if broadcast {
                    summary.unroutable.push("all".into());
                } else {
                    summary.unroutable.push(key);
                }
            }
        }
    }
    if check_names {
        if let (Some(queue), Some(consumer)) = (&reply_queue, check_inbox.as_mut()) {
            let sent = summary.discovered.clone();
            mark_unknown(opts, &session, queue, consumer, &sent, &mut summary).await?;
        }
    }
    summary.discovery_ms = started.elapsed().as_millis() as u64;

    if let Some(consumer) = replies.as_mut() {
        let expected: BTreeSet<String> = match &registry {
            Some(known) => known.clone(),
            None => summary.discovered.iter().cloned().collect(),
        };
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let mut seen: BTreeSet<String> = BTreeSet::new();
        // An empty registry gives nothing to finish on: collect until the timeout.
        let can_finish = !expected.is_empty();
        let progress = progress_bar(can_finish.then_some(expected.len() as u64));
        while !(can_finish && expected.iter().all(|n| seen.contains(n))) {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let d = match next {
                Err(_) => break,
                Ok(None) => anyhow::bail!("the broker closed the reply queue"),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(d))) => d,
            };
            session.ack(&d.ack).await?;
            let Ok(Decoded::Message(Message::Stored(s))) = vogeler_protocol::decode(&d.body) else {
                continue;
            };
            if s.request_id.as_deref() != Some(request.id.as_str()) || !seen.insert(s.node.clone())
            {
                continue;
            }
            if !expected.contains(&s.node) {
                summary.unexpected.push(s.node.clone());
            }
            if let (Some(path), Some(report)) = (&opts.output, summary.output.as_mut()) {
                let shown = Shown::of(&s, path);
                report.add(&s.node, &shown);
                progress.suspend(|| on_answer(&s.node, &shown))?;
            }
            match s.error {
                Some(e) if !s.ok => {
                    summary.errors.insert(s.node.clone(), e);
                }
                _ if s.stale => summary.stale.push(s.node.clone()),
                _ => summary.answered.push(s.node.clone()),
            }
            progress.set_position(seen.len() as u64);
        }
        progress.finish_and_clear();
        summary.discovered = if registry.as_ref().is_some_and(|r| !r.is_empty()) {
            expected.iter().cloned().collect()
        } else if broadcast {
            seen.iter().cloned().collect()
        } else {
            std::mem::take(&mut summary.discovered)
        };
        summary.no_answer = expected.difference(&seen).cloned().collect();
        // Silent named nodes the servers never heard from were never reachable.
        if check_names && !summary.no_answer.is_empty() {
            if let Some(queue) = &reply_queue {
                let silent = summary.no_answer.clone();
                mark_unknown(opts, &session, queue, consumer, &silent, &mut summary).await?;
            }
        }
    }
    summary.answered.sort();
    summary.stale.sort();
    if let Some(report) = summary.output.as_mut() {
        report.missing.sort();
        report.truncated.sort();
        report.without_value.sort();
    }
    summary.total_ms = started.elapsed().as_millis() as u64;
    session.close().await;
    Ok(summary)
}

/// Tells the servers (over `master.in`) which request goes to which nodes, before
/// the request itself, so they can keep its ledger; confirmed, never expiring.
async fn announce(
    session: &Arc<dyn Transport>,
    request: &Request,
    broadcast: bool,
) -> anyhow::Result<()> {
    let a = vogeler_protocol::Announce {
        request_id: request.id.clone(),
        command: request.command.clone(),
        expected: (!broadcast).then(|| request.targets.clone()),
        sender: request.sender.clone(),
        sent_at: request.sent_at,
        ttl: request.ttl,
    };
    let id = a.request_id.clone();
    match session
        .publish_result(Outgoing::new(vogeler_protocol::encode(&Message::Announce(
            a,
        ))))
        .await
    {
        Ok(()) => Ok(()),
        // No servers' queue: the request goes out all the same (its clients keep their
        // answers until a server declares that queue), without a ledger.
        Err(TransportError::Refused { what, message }) => {
            tracing::warn!(request = %id, "{what}: {message}: this request is not in any server's ledger");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The node-name globs of `-n` (`all` selects every node, so it is no glob).
fn name_globs(opts: &RunnerOptions) -> Vec<String> {
    opts.targets
        .iter()
        .filter(|t| t.as_str() != "all")
        .cloned()
        .collect()
}

/// Broadcasts a ping and collects pongs until none came for `ping_quiet` (at most
/// `discovery_timeout`); returns the answering nodes that match the `targets` globs,
/// sorted. A client that is not running does not answer, so it is not targeted.
async fn ping(
    opts: &RunnerOptions,
    session: &Arc<dyn Transport>,
    reply_queue: &str,
    consumer: &mut Box<dyn Subscription>,
) -> anyhow::Result<Vec<String>> {
    let names = name_globs(opts);
    let matcher = vogeler_store::Query::parse(&[], &names)?.name_matcher()?;
    let p = vogeler_protocol::Ping {
        id: uuid::Uuid::new_v4().to_string(),
        sender: format!("vogeler-runner@{}", vogeler_config::host_name()),
        sent_at: Utc::now(),
        reply_to: reply_queue.to_string(),
    };
    let body = vogeler_protocol::encode(&Message::Ping(p.clone()));
    // Signed when the runner has a key: clients with require_signed answer no one else.
    let headers = opts
        .signing_key
        .as_ref()
        .map(|k| k.headers(&body))
        .unwrap_or_default();
    session
        .publish_request(
            Audience::Everyone,
            Outgoing {
                body,
                headers,
                // A client that is down must not answer a later runner's question.
                expiration_ms: Some(opts.discovery_timeout.as_millis() as u64),
                ..Default::default()
            },
        )
        .await?;
    let deadline = tokio::time::Instant::now() + opts.discovery_timeout;
    let mut last = tokio::time::Instant::now();
    let mut found = BTreeSet::new();
    loop {
        let limit = deadline.min(last + opts.ping_quiet);
        let Some(reply) = next_reply(session, consumer, limit).await? else {
            break;
        };
        if let Ok(Decoded::Message(Message::Pong(pong))) = reply {
            if pong.ping_id != p.id {
                continue;
            }
            last = tokio::time::Instant::now();
            if matcher.as_ref().is_none_or(|m| m.is_match(&pong.node)) {
                found.insert(pong.node);
            }
        }
    }
    tracing::info!(nodes = found.len(), "discovered by ping");
    Ok(found.into_iter().collect())
}

/// Asks the servers (over `master.in`) which nodes match the filters and globs, and
/// waits for the answer; an error answer is an error naming the cause, silence is
/// `None` (no server within `discovery_timeout`) so the caller can fall back to a ping.
async fn discover(
    opts: &RunnerOptions,
    session: &Arc<dyn Transport>,
    reply_queue: &str,
    consumer: &mut Box<dyn Subscription>,
) -> anyhow::Result<Option<Vec<String>>> {
    // A bad filter is refused here, before anything is sent.
    vogeler_store::Query::parse(&opts.filters, &[])?;
    let q = vogeler_protocol::Discover {
        id: uuid::Uuid::new_v4().to_string(),
        filters: opts.filters.clone(),
        names: name_globs(opts),
        seen_within_secs: opts
            .seen_within
            .or(opts.expects_broadcast().then_some(DEFAULT_SEEN_WITHIN_ALL))
            .map(|d| d.as_secs()),
        sent_at: Utc::now(),
        reply_to: reply_queue.to_string(),
    };
    ask_registry(opts, session, q, consumer).await
}

/// Moves the `nodes` the servers' registry has never heard from (no stored document,
/// however old) from `discovered` and `no_answer` to `unroutable`: on a broker that
/// stores every request this is how the runner learns no client of that name exists.
/// With no server answering it cannot tell, and leaves the summary as it is.
async fn mark_unknown(
    opts: &RunnerOptions,
    session: &Arc<dyn Transport>,
    reply_queue: &str,
    consumer: &mut Box<dyn Subscription>,
    nodes: &[String],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    let q = vogeler_protocol::Discover {
        id: uuid::Uuid::new_v4().to_string(),
        filters: Vec::new(),
        names: nodes.to_vec(),
        seen_within_secs: None,
        sent_at: Utc::now(),
        reply_to: reply_queue.to_string(),
    };
    let known = match ask_registry(opts, session, q, consumer).await {
        Ok(Some(known)) => known,
        Ok(None) => {
            tracing::warn!(
                "no vogeler-server answered within {} s: cannot tell whether the named nodes exist",
                opts.discovery_timeout.as_secs()
            );
            return Ok(());
        }
        Err(e) => {
            tracing::warn!("cannot tell whether the named nodes exist: {e:#}");
            return Ok(());
        }
    };
    let known: BTreeSet<String> = known.into_iter().collect();
    for n in nodes.iter().filter(|n| !known.contains(*n)) {
        summary.discovered.retain(|d| d != n);
        summary.no_answer.retain(|d| d != n);
        if !summary.unroutable.contains(n) {
            summary.unroutable.push(n.clone());
        }
    }
    summary.unknown_to_registry |= !summary.unroutable.is_empty();
    Ok(())
}

/// Sends a discovery question to the servers (over `master.in`) and waits for its
/// answer: the matching node names, `None` when no server answered in time.
async fn ask_registry(
    opts: &RunnerOptions,
    session: &Arc<dyn Transport>,
    q: vogeler_protocol::Discover,
    consumer: &mut Box<dyn Subscription>,
) -> anyhow::Result<Option<Vec<String>>> {
    let body = vogeler_protocol::encode(&Message::Discover(q.clone()));
    let sent = session
        .publish_result(Outgoing {
            body,
            expiration_ms: Some(opts.discovery_timeout.as_millis() as u64),
            ..Default::default()
        })
        .await;
    match sent {
        Ok(()) => {}
        // No servers' queue on the broker: no server can answer, said at once.
        Err(TransportError::Refused { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let deadline = tokio::time::Instant::now() + opts.discovery_timeout;
    loop {
        let Some(reply) = next_reply(session, consumer, deadline).await? else {
            return Ok(None);
        };
        if let Ok(Decoded::Message(Message::Discovered(a))) = reply {
            if a.discover_id != q.id {
                continue;
            }
            if let Some(e) = a.error {
                anyhow::bail!("discovery failed: {e}");
            }
            tracing::info!(nodes = a.nodes.len(), "discovered");
            return Ok(Some(a.nodes));
        }
    }
}

/// The next message on the reply queue, acked and decoded; `None` once `until` passed.
async fn next_reply(
    session: &Arc<dyn Transport>,
    consumer: &mut Box<dyn Subscription>,
    until: tokio::time::Instant,
) -> anyhow::Result<Option<Result<Decoded, vogeler_protocol::ProtocolError>>> {
    let d = match tokio::time::timeout_at(until, consumer.next()).await {
        Err(_) => return Ok(None),
        Ok(None) => anyhow::bail!("the broker closed the reply queue"),
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(Some(Ok(d))) => d,
    };
    session.ack(&d.ack).await?;
    Ok(Some(vogeler_protocol::decode(&d.body)))
}

/// A live "stored / expected" bar on a terminal; hidden when stderr is not one.
fn progress_bar(expected: Option<u64>) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match expected {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if expected.is_some() {
        "{spinner} {pos}/{len} stored [{bar:30}] {elapsed}"
    } else {
        "{spinner} {pos} stored {elapsed}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexpected_answer_is_listed_once() {
        let s = Summary {
            command: "facter".into(),
            answered: vec!["a".into(), "b".into()],
            unexpected: vec!["b".into()],
            ..Summary::default()
        };
        let text = s.render();
        assert!(text.contains("  stored      a\n"), "{text}");
        assert!(text.contains("  stored      b (unexpected"), "{text}");
        assert_eq!(text.matches(" b").count(), 1, "{text}");
    }

    #[test]
    fn no_match_is_incomplete_and_says_so() {
        let s = Summary {
            command: "uname".into(),
            no_match: true,
            ..Default::default()
        };
        assert_eq!(s.exit_code(), 3);
        assert!(s.render().contains("no node matches"));
        assert!(s.render_sent().contains("no node matches"));
    }

    #[test]
    fn stale_answers_are_reported_apart_and_complete() {
        let s = Summary {
            request_id: "r1".into(),
            command: "uname".into(),
            discovered: vec!["a".into(), "b".into()],
            answered: vec!["a".into()],
            stale: vec!["b".into()],
            waited: true,
            ..Default::default()
        };
        assert_eq!(s.exit_code(), 0);
        let out = s.render();
        assert!(out.contains("stale       b"), "{out}");
        assert!(out.contains("stale: 1"), "{out}");
    }

    #[test]
    fn output_paths_name_keys_and_indices() {
        let v = serde_json::json!({
            "operatingsystem": "Debian",
            "processorcount": 4,
            "a": {"b": [10, {"c": null}]},
            "0": "zero"
        });
        let at = |p: &str| OutputPath::parse(p).expect("a path").lookup(&v).cloned();
        assert_eq!(at(""), Some(v.clone()));
        assert_eq!(at("."), Some(v.clone()));
        assert_eq!(at("operatingsystem"), Some(serde_json::json!("Debian")));
        assert_eq!(at("processorcount"), Some(serde_json::json!(4)));
        assert_eq!(at("a.b.0"), Some(serde_json::json!(10)));
        assert_eq!(at("a.b.1.c"), Some(Value::Null));
        assert_eq!(at("0"), Some(serde_json::json!("zero")));
        assert_eq!(at("a.b.2"), None);
        assert_eq!(at("a.b.x"), None);
        assert_eq!(at("operatingsystem.x"), None);
        assert_eq!(at("nope"), None);
        for bad in ["a..b", "a.", ".a"] {
            assert!(OutputPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            OutputPath::parse("a.b.0").expect("path").to_string(),
            "a.b.0"
        );
    }

    #[test]
    fn output_lines_show_strings_bare_and_say_what_is_missing() {
        let stored = |value: Option<Value>| Stored {
            request_id: Some("r1".into()),
            node: "web01".into(),
            plugin: "facter".into(),
            ok: true,
            error: None,
            stale: false,
            clamped_from: None,
            stored_at: Utc::now(),
            value,
            value_truncated: false,
        };
        let v = serde_json::json!({"os": "Debian", "n": 4, "l": [1, "x"]});
        let line = |s: &Stored, p: &str| {
            let path = OutputPath::parse(p).expect("path");
            Shown::of(s, &path).line(&s.node, &path)
        };
        let s = stored(Some(v));
        assert_eq!(line(&s, "os"), "web01: Debian");
        assert_eq!(line(&s, "n"), "web01: 4");
        assert_eq!(line(&s, "l"), r#"web01: [1,"x"]"#);
        assert_eq!(line(&s, ""), r#"web01: {"l":[1,"x"],"n":4,"os":"Debian"}"#);
        assert_eq!(line(&s, "os.x"), "web01: (no os.x in the value)");
        let truncated = Stored {
            value_truncated: true,
            ..stored(None)
        };
        assert_eq!(
            line(&truncated, "os"),
            "web01: (value over 64 KiB, not sent back: vogeler-admin node web01 facter.os)"
        );
        assert!(line(&stored(None), "").contains("no value in the answer"));
        let error = Stored {
            ok: false,
            error: Some("plugin facter exited with status 1".into()),
            ..stored(None)
        };
        assert_eq!(
            line(&error, "os"),
            "web01: error: plugin facter exited with status 1"
        );
        let stale = Stored {
            stale: true,
            ..stored(None)
        };
        assert!(line(&stale, "").starts_with("web01: (stale"));

        let mut report = OutputReport::new(&OutputPath::parse("os").expect("path"));
        report.add("a", &Shown::Value(serde_json::json!("Debian")));
        report.add("b", &Shown::Missing);
        report.add("c", &Shown::Error("x".into()));
        assert_eq!(
            serde_json::to_value(&report).expect("json"),
            serde_json::json!({"path": "os", "values": {"a": "Debian"}, "missing": ["b"],
                "truncated": [], "without_value": []})
        );
    }

    #[test]
    fn without_wait_the_report_names_the_request_and_how_to_follow_it() {
        let broadcast = Summary {
            request_id: "r2".into(),
            command: "uname".into(),
            ..Default::default()
        };
        let out = broadcast.render_sent();
        assert!(out.contains("r2") && out.contains("broadcast"), "{out}");
        assert!(
            out.contains("follow with: vogeler-admin requests r2"),
            "{out}"
        );
        let named = Summary {
            discovered: vec!["a".into(), "b".into()],
            ..broadcast
        };
        assert!(named.render_sent().contains("sent to 2 node(s)"));
    }

    #[test]
    fn unroutable_says_why_in_the_brokers_terms() {
        let amqp = Summary {
            request_id: "r3".into(),
            unroutable: vec!["ghost".into()],
            waited: true,
            ..Default::default()
        };
        assert_eq!(amqp.exit_code(), 3);
        assert!(amqp
            .render()
            .contains("unroutable  ghost (no queue reachable"));
        let nats = Summary {
            unknown_to_registry: true,
            ..amqp
        };
        assert_eq!(nats.exit_code(), 3);
        for out in [nats.render(), nats.render_sent()] {
            assert!(
                out.contains("unroutable  ghost (unknown to the servers"),
                "{out}"
            );
        }
        assert_eq!(nats.to_json()["unroutable"], serde_json::json!(["ghost"]));
        assert!(nats.to_json().get("unknown_to_registry").is_none());
    }
}
