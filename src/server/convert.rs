//! Decode step of the ingest pipeline: one delivery body in, observations or a
//! dead-letter reason out. Pure: no I/O, so every bad input is a unit test.

use chrono::Utc;
use vogeler_plugins::Format;
use vogeler_protocol::{Decoded, Message, PluginResult};
use vogeler_store::{Change, Data, Observation};

/// What one delivery turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    /// Something to store, and who to tell once it is stored.
    Store {
        /// The observation to apply.
        observation: Observation,
        /// Confirmation to send after the commit, when the sender asked for one.
        confirm: Option<Confirm>,
        /// The request answered, for the ledger (`None`: scheduled, heartbeat, 2010).
        request_id: Option<String>,
    },
    /// A runner announced a request: record it in the ledger, store nothing else.
    Announce(vogeler_protocol::Announce),
    /// A discovery question: answer it from the store, store nothing.
    Discover(vogeler_protocol::Discover),
    /// Unusable: dead-letter it with this reason code and message.
    Dead {
        /// Short stable code (header value).
        reason: &'static str,
        /// Human-readable detail.
        detail: String,
    },
}

/// Where and what to confirm once a result is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirm {
    /// The runner's reply queue.
    pub reply_to: String,
    /// The request the result answers.
    pub request_id: Option<String>,
    /// Node that answered.
    pub node: String,
    /// Plugin that ran.
    pub plugin: String,
    /// Error text when the result was an error result.
    pub error: Option<String>,
    /// The result was older than the stored value and changed nothing (set once the
    /// store said so).
    pub stale: bool,
    /// The `collected_at` the result claimed, when it was clamped to its arrival time.
    pub clamped_from: Option<chrono::DateTime<Utc>>,
}

/// A v1 result (data held as `D`) as an observation and its confirmation.
fn result<D>(
    r: PluginResult<D>,
    data: impl FnOnce(D) -> Data,
    reply_to: Option<&str>,
) -> Converted {
    if r.node.trim().is_empty() {
        return dead("bad-field", "result has an empty node name".into());
    }
    let change = match (r.error, r.data) {
        (Some(message), _) => Change::Error {
            plugin: Some(r.plugin.clone()),
            message,
            raw: r.raw,
        },
        (None, Some(value)) => Change::Plugin {
            name: r.plugin.clone(),
            value: data(value),
        },
        (None, None) => {
            return dead(
                "bad-field",
                format!(
                    "result from {} for {} has neither data nor error",
                    r.node, r.plugin
                ),
            )
        }
    };
    let error = match &change {
        Change::Error { message, .. } => Some(message.clone()),
        _ => None,
    };
    let request_id = r.request_id.clone().filter(|id| !id.is_empty());
    let confirm = r
        .reply_to
        .or_else(|| reply_to.map(str::to_string))
        .map(|reply_to| Confirm {
            reply_to,
            request_id: r.request_id.clone(),
            node: r.node.clone(),
            plugin: r.plugin.clone(),
            error,
            stale: false,
            clamped_from: None,
        });
    Converted::Store {
        observation: Observation {
            node: r.node,
            at: r.collected_at,
            change,
        },
        confirm,
        request_id,
    }
}

/// Turns one message body into what the server does with it.
///
/// `max_bytes` bounds what is accepted at all; `reply_to` is the AMQP property,
/// used when the body does not name a reply queue itself.
pub fn convert(body: &[u8], max_bytes: usize, reply_to: Option<&str>) -> Converted {
    if body.len() > max_bytes {
        return dead(
            "too-large",
            format!(
                "message of {} bytes exceeds the limit of {max_bytes} bytes",
                body.len()
            ),
        );
    }
    // Hot path: a v1 result's data goes to the store as the text it arrived in.
    if let Some(raw) = vogeler_protocol::decode_raw_result(body) {
        return match raw {
            Ok(r) => result(r, Data::Text, reply_to),
            Err(e) => dead(e.reason(), e.to_string()),
        };
    }
    let decoded = match vogeler_protocol::decode(body) {
        Ok(d) => d,
        Err(e) => return dead(e.reason(), e.to_string()),
    };
    match decoded {
        Decoded::Message(Message::Result(r)) => result(r, Data::Tree, reply_to),
        Decoded::Message(Message::Heartbeat(h)) => seen(h.node, h.sent_at),
        Decoded::Message(Message::Pong(p)) => seen(p.node, p.sent_at),
        Decoded::Message(Message::Discover(d)) => Converted::Discover(d),
        Decoded::Message(Message::Announce(a)) => {
            if a.request_id.trim().is_empty() {
                return dead("bad-field", "announce has an empty request_id".into());
            }
            Converted::Announce(a)
        }
        Decoded::Message(other) => dead(
            "unexpected-kind",
            format!(
                "a {} message does not belong on the master exchange",
                other.kind()
            ),
        ),
        Decoded::LegacyRequest(cmd) => dead(
            "unexpected-kind",
            format!("a request ({cmd:?}) does not belong on the master exchange"),
        ),
        Decoded::LegacyResult(l) => {
            let now = Utc::now();
            if let Some(err) = l.error {
                return Converted::Store {
                    observation: Observation {
                        node: l.node,
                        at: err.timestamp.unwrap_or(now),
                        change: Change::Error {
                            plugin: l.plugin,
                            message: err.message,
                            raw: None,
                        },
                    },
                    confirm: None,
                    request_id: None,
                };
            }
            let (Some(plugin), Some(raw)) = (l.plugin, l.raw) else {
                return dead("unknown-shape", "2010 result without a plugin key".into());
            };
            let format = match Format::parse(&l.format) {
                Ok(f) => f,
                Err(e) => return dead("unknown-format", e.to_string()),
            };
            let change = match format.convert(&raw) {
                Ok(value) => Change::Plugin {
                    name: plugin,
                    value: value.into(),
                },
                Err(e) => Change::Error {
                    plugin: Some(plugin.clone()),
                    message: format!("plugin {plugin}: {e}"),
                    raw: Some(raw),
                },
            };
            Converted::Store {
                observation: Observation {
                    node: l.node,
                    at: now,
                    change,
                },
                confirm: None,
                request_id: None,
            }
        }
    }
}

fn seen(node: String, at: chrono::DateTime<Utc>) -> Converted {
    if node.trim().is_empty() {
        return dead("bad-field", "message has an empty node name".into());
    }
    Converted::Store {
        observation: Observation {
            node,
            at,
            change: Change::Seen,
        },
        confirm: None,
        request_id: None,
    }
}

fn dead(reason: &'static str, detail: String) -> Converted {
    Converted::Dead { reason, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_and_request_ids_reach_the_ledger() {
        let a = Message::Announce(vogeler_protocol::Announce {
            request_id: "r1".into(),
            command: "facter".into(),
            expected: None,
            sender: "runner".into(),
            sent_at: Utc::now(),
            ttl: 60,
        });
        let body = vogeler_protocol::encode(&a);
        assert!(
            matches!(convert(&body, 1 << 20, None), Converted::Announce(x) if x.request_id == "r1")
        );
        let result = |id: Option<&str>| {
            vogeler_protocol::encode(&Message::Result(vogeler_protocol::PluginResult {
                request_id: id.map(str::to_string),
                node: "web01".into(),
                plugin: "facter".into(),
                format: "json".into(),
                data: Some(serde_json::json!({})),
                error: None,
                raw: None,
                exit_status: Some(0),
                duration_ms: 1,
                collected_at: Utc::now(),
                reply_to: None,
            }))
        };
        match convert(&result(Some("r1")), 1 << 20, None) {
            Converted::Store { request_id, .. } => assert_eq!(request_id.as_deref(), Some("r1")),
            other => panic!("{other:?}"),
        }
        // A scheduled run carries none.
        match convert(&result(None), 1 << 20, None) {
            Converted::Store { request_id, .. } => assert_eq!(request_id, None),
            other => panic!("{other:?}"),
        }
        let empty = vogeler_protocol::encode(&Message::Announce(vogeler_protocol::Announce {
            request_id: " ".into(),
            command: "facter".into(),
            expected: None,
            sender: String::new(),
            sent_at: Utc::now(),
            ttl: 0,
        }));
        assert!(matches!(
            convert(&empty, 1 << 20, None),
            Converted::Dead {
                reason: "bad-field",
                ..
            }
        ));
    }
}
