//! `vogeler-admin`: set-up of broker and store, node queries and queue status.
//!
//! Every subcommand returns its output as text so `main` only prints it and maps
//! errors to exit codes; tests call the binary and read the same text.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use std::sync::Arc;
use vogeler_store::{query, rfc3339, DynStore, KeyPath};

use vogeler_transport::{Connector, Management, QueueKind, Session, Topology, Transport};

/// `vogeler-admin node NAME [KEY] [--at T]`: one document (as it was at `at`, when
/// given), or one dotted key of it, as JSON.
pub async fn show_node(
    store: &DynStore,
    name: &str,
    key: Option<&str>,
    at: Option<DateTime<Utc>>,
) -> anyhow::Result<String> {
    let record = record_at(store, name, at).await?;
    let doc = record.document();
    let value = match key {
        None => &doc,
        Some(k) => KeyPath::parse(k)?.find(&doc).ok_or_else(|| {
            crate::cli::not_found(format!(
                "node {name:?} has no key {k:?} (its top-level keys: {})",
                doc.as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ))
        })?,
    };
    Ok(format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// A node's record now, or as it was at `at`; a missing node (or one that did not
/// exist yet) is "not there" (exit 3).
async fn record_at(
    store: &DynStore,
    name: &str,
    at: Option<DateTime<Utc>>,
) -> anyhow::Result<vogeler_store::NodeRecord> {
    let Some(current) = store.node(name).await? else {
        return Err(crate::cli::no_such_node(name));
    };
    match at {
        None => Ok(current),
        Some(t) => {
            let history = store.history(name, None).await?.rows;
            query::rewind(current, &history, t).ok_or_else(|| {
                crate::cli::not_found(format!("node {name:?} did not exist yet at {}", rfc3339(t)))
            })
        }
    }
}

/// Where each summary line looks, first found wins: facter 4's structured facts, then
/// facter's legacy names, ohai, and the os_release plugin, so a node with any of them
/// gets a summary.
const SUMMARY: &[(&str, &[&str])] = &[
    (
        "os",
        &[
            "facter.os.distro.description",
            "facter.operatingsystem",
            "ohai.platform",
            "os_release.PRETTY_NAME",
        ],
    ),
    (
        "release",
        &[
            "facter.os.release.full",
            "facter.operatingsystemrelease",
            "ohai.platform_version",
            "os_release.VERSION_ID",
        ],
    ),
    ("kernel", &["facter.kernelrelease", "ohai.kernel.release"]),
    (
        "architecture",
        &["facter.os.architecture", "ohai.kernel.machine"],
    ),
    (
        "ip",
        &["facter.networking.ip", "facter.ipaddress", "ohai.ipaddress"],
    ),
    (
        "ip6",
        &[
            "facter.networking.ip6",
            "facter.ipaddress6",
            "ohai.ip6address",
        ],
    ),
    (
        "fqdn",
        &["facter.networking.fqdn", "facter.fqdn", "ohai.fqdn"],
    ),
    (
        "cpus",
        &[
            "facter.processors.count",
            "facter.processorcount",
            "ohai.cpu.total",
        ],
    ),
    (
        "cpu model",
        &["facter.processors.models.0", "ohai.cpu.0.model_name"],
    ),
    (
        "memory",
        &[
            "facter.memory.system.total",
            "facter.memorysize",
            "ohai.memory.total",
        ],
    ),
    (
        "uptime",
        &[
            "facter.system_uptime.uptime",
            "facter.uptime",
            "ohai.uptime",
        ],
    ),
    ("virtual", &["facter.virtual", "ohai.virtualization.system"]),
];

/// `vogeler-admin node NAME --summary`: the lines an operator reads first (OS, kernel,
/// addresses, CPU, memory, uptime, last seen, packages, errors), each from whichever
/// plugin has it; the whole document is one `node NAME` away.
pub fn summary_lines(record: &vogeler_store::NodeRecord) -> Vec<(String, String)> {
    let doc = record.document();
    let mut out = vec![("node".to_string(), record.name.clone())];
    for (label, paths) in SUMMARY {
        let found = paths.iter().find_map(|p| {
            let v = KeyPath::parse(p).ok()?.find(&doc)?.clone();
            (!v.is_null()).then_some(v)
        });
        if let Some(v) = found {
            out.push((label.to_string(), crate::report::cell_text(&v)));
        }
    }
    out.push(("last seen".into(), rfc3339(record.last_seen)));
    out.push(("first seen".into(), rfc3339(record.created_at)));
    if let Some(t) = record.deactivated_at {
        out.push(("deactivated".into(), rfc3339(t)));
    }
    for key in vogeler_store::PACKAGE_KEYS {
        if let Some(n) = record
            .keys
            .get(*key)
            .and_then(|v| v.as_object())
            .map(|m| m.len())
        {
            out.push((format!("packages ({key})"), n.to_string()));
        }
    }
    out.push((
        "plugins".into(),
        record.keys.keys().cloned().collect::<Vec<_>>().join(", "),
    ));
    let error = record
        .last_error
        .as_ref()
        .map(|e| {
            let plugin = e.get("plugin").and_then(|p| p.as_str()).unwrap_or("-");
            let message = e
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default();
            format!("{plugin}: {message}")
        })
        .unwrap_or_else(|| "none".into());
    out.push(("last error".into(), error));
    out
}

/// [`summary_lines`] of a node (as it was at `at`), aligned.
pub async fn show_summary(
    store: &DynStore,
    name: &str,
    at: Option<DateTime<Utc>>,
) -> anyhow::Result<String> {
    let record = record_at(store, name, at).await?;
    let lines = summary_lines(&record);
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in lines {
        let _ = writeln!(out, "{label:<width$}  {value}");
    }
    Ok(out)
}

/// `vogeler-admin check [--quarantine]`: every stored row that does not read back, one
/// line each (node, key, why); with `quarantine` they are moved aside. The exit code
/// is 1 while unreadable rows remain in place, so scripts and monitoring can tell.
pub async fn check(store: &DynStore, quarantine: bool) -> anyhow::Result<(String, i32)> {
    let found = store.check().await?;
    let mut out = String::new();
    for u in &found {
        let _ = writeln!(out, "unreadable: {u}");
    }
    if found.is_empty() {
        let _ = writeln!(out, "every stored row reads back");
        return Ok((out, 0));
    }
    if !quarantine {
        let _ = writeln!(
            out,
            "{} unreadable row(s); `vogeler-admin check --quarantine` moves them aside",
            found.len()
        );
        return Ok((out, 1));
    }
    let moved = store.quarantine(&found).await?;
    let left = store.check().await?.len();
    let _ = writeln!(
        out,
        "{moved} row(s) moved to quarantine; {left} unreadable row(s) left"
    );
    Ok((out, i32::from(left > 0)))
}

/// Name of the RabbitMQ policy that bounds node queues.
pub const NODE_QUEUE_POLICY: &str = "vogeler-node-queues";

/// Default bound of a node queue (`setup --node-queue-max-length`).
pub const DEFAULT_NODE_QUEUE_MAX_LENGTH: u64 = 1000;

/// The `rabbitmqctl` lines that create a vhost, give a user all rights on it, and
/// bound every node queue with a policy: at most `max_length` requests wait, the
/// oldest dropped first. It is a second bound beside the per-message expiration
/// (a client down for long does not pile up requests); queues stay declared without
/// arguments, so the 2010 programs' queues stay compatible. The pattern leaves out
/// the servers' queue, the dead-letter queue and runners' reply queues (`amq.*`).
pub fn rabbitmqctl_lines(
    vhost: &str,
    user: &str,
    topology: &Topology,
    max_length: u64,
) -> Vec<Vec<String>> {
    let pattern = format!(
        "^(?!({}|{}|amq\\..*)$).*",
        regex_escape(&topology.master_queue),
        regex_escape(&topology.dead_queue)
    );
    vec![
        vec!["add_vhost".into(), vhost.into()],
        vec![
            "set_permissions".into(),
            "-p".into(),
            vhost.into(),
            user.into(),
            ".*".into(),
            ".*".into(),
            ".*".into(),
        ],
        vec![
            "set_policy".into(),
            "-p".into(),
            vhost.into(),
            "--apply-to".into(),
            "queues".into(),
            NODE_QUEUE_POLICY.into(),
            pattern,
            format!("{{\"max-length\":{max_length},\"overflow\":\"drop-head\"}}"),
        ],
    ]
}

/// A queue name as a literal inside a RabbitMQ (PCRE) pattern.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.^$|?*+()[]{}-/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Declares what the servers share: on RabbitMQ the exchanges, master queue and
/// dead-letter queue; on NATS the results, requests and dead-letter streams and the
/// servers' and admin's durable consumers.
pub async fn declare_topology(broker: &Connector, topology: &Topology) -> anyhow::Result<String> {
    let session = broker.connect_interactive().await?;
    session.declare().await?;
    session.close().await;
    Ok(if broker.is_nats() {
        format!(
            "declared JetStream streams (results, requests, dead letters) and the durable consumers of the servers and the admin on {}\n",
            broker.describe()
        )
    } else {
        format!(
            "declared exchanges {} (direct) and {} (topic), queues {} and {} on {}\n",
            topology.master_exchange,
            topology.broadcast_exchange,
            topology.master_queue,
            topology.dead_queue,
            broker.describe()
        )
    })
}

/// `queue --status` on a broker without per-node queues (NATS): the results and dead
/// letters a JetStream consumer has not taken yet, and who pulls them.
pub async fn stream_status(
    session: &Arc<dyn Transport>,
) -> anyhow::Result<(Vec<QueueRow>, FigureSource)> {
    let mut rows = Vec::new();
    for (queue, role, kind) in [
        ("results", "results", QueueKind::Results),
        ("dead", "dead letters", QueueKind::Dead),
    ] {
        let figures = session.queue_status(kind).await?.map(|s| Figures {
            ready: u64::from(s.messages),
            consumers: u64::from(s.consumers),
            ..Figures::default()
        });
        rows.push(queue_row(queue.to_string(), role.to_string(), figures));
    }
    Ok((rows, FigureSource::JetStream))
}

/// One `queue --status` row, flagged the same way whichever broker gave the figures.
fn queue_row(queue: String, role: String, figures: Option<Figures>) -> QueueRow {
    let flag = match (&figures, role.as_str()) {
        (None, _) => "MISSING".to_string(),
        (Some(f), "dead letters") if f.ready > 0 => "has dead letters".into(),
        (Some(f), _) if f.ready > 100 => "BACKING UP".into(),
        (Some(f), "results" | "node") if f.consumers == 0 => "no consumer".into(),
        _ => String::new(),
    };
    QueueRow {
        queue,
        role,
        messages: figures.map(|f| f.ready),
        unacked: figures.and_then(|f| f.unacked),
        consumers: figures.map(|f| f.consumers),
        memory: figures.and_then(|f| f.memory),
        flag,
    }
}

/// One row of `queue --status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueRow {
    /// Queue name.
    pub queue: String,
    /// What the queue is for.
    pub role: String,
    /// Ready messages, `None` when the queue does not exist.
    pub messages: Option<u64>,
    /// Delivered but not yet acknowledged (management API only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unacked: Option<u64>,
    /// Consumers, `None` when the queue does not exist.
    pub consumers: Option<u64>,
    /// Bytes the queue uses on the broker (management API only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// A short warning: missing, backing up, no consumer.
    pub flag: String,
}

/// Where `queue --status` read its figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureSource {
    /// One call to the management API: every queue, with unacked counts and memory.
    ManagementApi,
    /// One passive declare per queue over AMQP (ready messages and consumers only).
    PassiveDeclare,
    /// JetStream consumer info (pending messages and waiting pulls).
    JetStream,
}

/// The figures of one queue, from either source.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    ready: u64,
    unacked: Option<u64>,
    consumers: u64,
    memory: Option<u64>,
}

/// Depth and consumers of master.in, the dead-letter queue and every known node queue.
///
/// With `management` the figures come from one management API call (queues it does
/// not list are missing); when that API does not answer, from passive declares, and
/// the second value says which.
pub async fn queue_status(
    session: &Session,
    topology: &Topology,
    nodes: &[String],
    management: Option<(&Management, &str)>,
) -> anyhow::Result<(Vec<QueueRow>, FigureSource)> {
    let mut wanted = vec![
        (topology.master_queue.clone(), "results".to_string()),
        (topology.dead_queue.clone(), "dead letters".to_string()),
    ];
    for n in nodes {
        wanted.push((n.clone(), "node".into()));
    }
    let listed = match management {
        Some((api, vhost)) => match api.queues(vhost).await {
            Ok(queues) => Some(
                queues
                    .into_iter()
                    .map(|q| {
                        let f = Figures {
                            ready: q.messages_ready,
                            unacked: Some(q.messages_unacknowledged),
                            consumers: q.consumers,
                            memory: q.memory,
                        };
                        (q.name, f)
                    })
                    .collect::<std::collections::HashMap<_, _>>(),
            ),
            Err(e) => {
                tracing::info!(error = %e, "using passive declares instead");
                None
            }
        },
        None => None,
    };
    let source = if listed.is_some() {
        FigureSource::ManagementApi
    } else {
        FigureSource::PassiveDeclare
    };
    let mut rows = Vec::with_capacity(wanted.len());
    for (queue, role) in wanted {
        let figures = match &listed {
            Some(all) => all.get(&queue).copied(),
            None => session.queue_status(&queue).await?.map(|s| Figures {
                ready: u64::from(s.messages),
                consumers: u64::from(s.consumers),
                ..Figures::default()
            }),
        };
        rows.push(queue_row(queue, role, figures));
    }
    Ok((rows, source))
}

/// Renders queue rows as a table; the unacked and memory columns appear when the
/// management API gave them.
pub fn render_queue_rows(rows: &[QueueRow], source: &FigureSource) -> String {
    let width = rows.iter().map(|r| r.queue.len()).max().unwrap_or(5).max(5);
    let full = *source == FigureSource::ManagementApi;
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let mut out = format!("{:width$}  {:12}  {:>8}", "QUEUE", "ROLE", "MESSAGES");
    if full {
        out.push_str(&format!("  {:>7}", "UNACKED"));
    }
    out.push_str(&format!("  {:>9}", "CONSUMERS"));
    if full {
        out.push_str(&format!("  {:>9}", "MEMORY"));
    }
    out.push_str("  FLAG\n");
    for r in rows {
        let _ = write!(
            out,
            "{:width$}  {:12}  {:>8}",
            r.queue,
            r.role,
            num(r.messages)
        );
        if full {
            let _ = write!(out, "  {:>7}", num(r.unacked));
        }
        let _ = write!(out, "  {:>9}", num(r.consumers));
        if full {
            let mem = r
                .memory
                .map(|b| format!("{:.0} KB", b as f64 / 1024.0))
                .unwrap_or_else(|| "-".into());
            let _ = write!(out, "  {mem:>9}");
        }
        let _ = writeln!(out, "  {}", r.flag);
    }
    out.push_str(match source {
        FigureSource::ManagementApi => "(figures from the management API)\n",
        FigureSource::PassiveDeclare => "(figures from passive declares over AMQP)\n",
        FigureSource::JetStream => {
            "(figures from the JetStream consumers: pending messages, waiting pulls)\n"
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    fn topology() -> Topology {
        Topology::default()
    }

    #[test]
    fn the_policy_bounds_node_queues_only() {
        let lines = rabbitmqctl_lines("/", "guest", &topology(), 500);
        assert_eq!(
            lines[2],
            vec![
                "set_policy",
                "-p",
                "/",
                "--apply-to",
                "queues",
                "vogeler-node-queues",
                r"^(?!(master\.in|vogeler\.dead|amq\..*)$).*",
                r#"{"max-length":500,"overflow":"drop-head"}"#,
            ]
        );
        assert_eq!(regex_escape("a-b.c"), r"a\-b\.c");
    }

    #[test]
    fn rabbitmqctl_lines_match_the_2010_readme() {
        let lines = rabbitmqctl_lines("/vogeler", "guest", &topology(), 1000);
        assert_eq!(lines[0], vec!["add_vhost", "/vogeler"]);
        assert_eq!(
            lines[1],
            vec![
                "set_permissions",
                "-p",
                "/vogeler",
                "guest",
                ".*",
                ".*",
                ".*"
            ]
        );
    }
}

/// One dead-lettered message as `vogeler-admin dead` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Why the server refused it (`x-vogeler-reason`).
    pub reason: String,
    /// The server's sentence about it.
    pub detail: String,
    /// Where it was first published.
    pub exchange: String,
    /// Its original routing key.
    pub routing_key: String,
    /// Size of the body in bytes.
    pub bytes: usize,
    /// The body's start, lossily decoded, for a human to recognise it.
    pub preview: String,
}

/// Lists the dead letters, leaving them as they were; with `requeue`, republishes each
/// (confirmed) to the servers' results, then removes it from the dead letters.
pub async fn dead_letters(
    session: &Arc<dyn Transport>,
    requeue: bool,
) -> anyhow::Result<Vec<DeadLetter>> {
    // Only what is there now: a requeued message that fails again comes back to the
    // dead letters and must not be taken around a second time.
    let depth = match session.queue_status(QueueKind::Dead).await? {
        Some(status) => status.messages as usize,
        None => return Ok(Vec::new()),
    };
    if depth == 0 {
        return Ok(Vec::new());
    }
    if !requeue {
        return Ok(session
            .list_dead(depth)
            .await?
            .iter()
            .map(dead_letter_row)
            .collect());
    }
    let mut consumer = session.consume_dead(1000).await?;
    let mut out = Vec::new();
    while out.len() < depth {
        let Ok(Some(delivery)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), consumer.next()).await
        else {
            break;
        };
        let d = delivery?;
        let mut msg = vogeler_transport::Outgoing::new(d.body.clone());
        // A signed message keeps its signature, so a result dead-lettered as
        // `unverified` verifies once its node's key is installed.
        for name in [
            vogeler_signing::SIGNATURE_HEADER,
            vogeler_signing::KEY_ID_HEADER,
        ] {
            if let Some(v) = d.header(name) {
                msg.headers.push((name.to_string(), v.to_string()));
            }
        }
        session.publish_result(msg).await?;
        session.ack(&d.ack).await?;
        out.push(dead_letter_row(&d));
    }
    Ok(out)
}

/// What `dead` shows of one dead letter.
fn dead_letter_row(d: &vogeler_transport::Message) -> DeadLetter {
    let header = |k: &str| d.header(k).unwrap_or_default().to_string();
    let text = String::from_utf8_lossy(&d.body);
    DeadLetter {
        reason: header(crate::server::REASON_HEADER),
        detail: header(crate::server::DETAIL_HEADER),
        exchange: header("x-original-exchange"),
        routing_key: header("x-original-routing-key"),
        bytes: d.body.len(),
        preview: text.chars().take(120).collect(),
    }
}

/// Renders dead letters as a table.
pub fn render_dead_letters(rows: &[DeadLetter], requeued: bool) -> String {
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{:16} {:>8} B  {}\n{:16} {}",
            r.reason, r.bytes, r.detail, "", r.preview
        );
    }
    let _ = writeln!(
        out,
        "{} dead-lettered message(s){}",
        rows.len(),
        if requeued {
            " republished to their original exchange"
        } else {
            ""
        }
    );
    out
}
