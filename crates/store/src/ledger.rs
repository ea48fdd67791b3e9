//! The request ledger: what was asked of which nodes, and what came back.
//!
//! Backends keep two plain records, written idempotently in any order (a result may
//! reach a server before the runner's announcement of its request): the
//! [`LedgerRequest`] and one [`LedgerAnswer`] per node that answered. What those mean
//! (stored, error, missing once the ttl passed, unexpected, and the request's state)
//! is computed here, once, by [`Ledger::build`], so every backend answers the same.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A request as the runner announced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRequest {
    /// The request id (results carry it back).
    pub id: String,
    /// Plugin name or alias asked for.
    pub command: String,
    /// Who sent it.
    pub sender: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// Seconds after `sent_at` when clients stop running it (0: never).
    pub ttl: u64,
    /// The nodes expected to answer, sorted. A broadcast's list (the registry when it
    /// was announced) also holds [`BROADCAST`]: every node that answers it was asked.
    pub expected: Vec<String>,
}

/// The marker in a broadcast's `expected` list (never a node name: node names are
/// host names). Nodes the registry did not know when the broadcast was announced (new
/// clients, or results that reach the server in a later batch than the announcement)
/// then count as expected when they answer, not as unexpected.
pub const BROADCAST: &str = "*";

impl LedgerRequest {
    /// When the request stops being runnable; `None` for a ttl of 0 (never).
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        if self.ttl == 0 {
            return None;
        }
        let ttl = chrono::Duration::seconds(i64::try_from(self.ttl).ok()?);
        self.sent_at.checked_add_signed(ttl)
    }
}

/// One node's stored answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerAnswer {
    /// The request answered.
    pub request_id: String,
    /// The node that answered.
    pub node: String,
    /// The plugin that ran.
    pub plugin: String,
    /// The error of an error result; `None` when the result was stored without error.
    pub error: Option<String>,
    /// The result was older (`collected_at`) than the value already stored for its key,
    /// so it changed nothing: the answer is reported as stale, not as stored.
    #[serde(default)]
    pub stale: bool,
    /// When the server committed it.
    pub at: DateTime<Utc>,
}

/// What became of one node of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOutcome {
    /// Its result was stored.
    Stored,
    /// It answered, but with a result older than the value already stored, which was kept.
    Stale,
    /// It answered with an error result.
    Error,
    /// Expected, no answer yet, ttl not over.
    Pending,
    /// Expected, and the ttl ended without an answer.
    Missing,
    /// Answered without being expected.
    Unexpected,
}

impl NodeOutcome {
    /// The word the tables print.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeOutcome::Stored => "stored",
            NodeOutcome::Stale => "stale",
            NodeOutcome::Error => "error",
            NodeOutcome::Pending => "pending",
            NodeOutcome::Missing => "missing",
            NodeOutcome::Unexpected => "unexpected",
        }
    }
}

/// One node's line in a request's ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerNode {
    /// Node name.
    pub node: String,
    /// What became of it.
    pub outcome: NodeOutcome,
    /// The error message, for an error answer.
    pub error: Option<String>,
    /// When its answer was stored.
    pub at: Option<DateTime<Utc>>,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Some expected nodes have not answered and the ttl is not over.
    Pending,
    /// Every expected node answered.
    Complete,
    /// The ttl ended with expected nodes missing.
    Expired,
}

impl RequestState {
    /// The word the tables print.
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Complete => "complete",
            RequestState::Expired => "expired",
        }
    }
}

/// A request with what became of each node, as `vogeler-admin requests` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The request as announced.
    pub request: LedgerRequest,
    /// One line per expected or answering node, sorted by node.
    pub nodes: Vec<LedgerNode>,
    /// Where it stands.
    pub state: RequestState,
    /// Sent to every node (`-n all`): whoever answers was expected.
    #[serde(default)]
    pub broadcast: bool,
    /// How many nodes were expected: the announced list, and for a broadcast also
    /// every node that answered it.
    #[serde(default)]
    pub expected: usize,
}

impl Ledger {
    /// The meaning of a request's records at `now`: answers of the same node after
    /// the first are ignored (a redelivery), expected nodes without an answer are
    /// pending until the deadline and missing after it.
    pub fn build(
        mut request: LedgerRequest,
        answers: &[LedgerAnswer],
        now: DateTime<Utc>,
    ) -> Ledger {
        let broadcast = request.expected.iter().any(|n| n == BROADCAST);
        request.expected.retain(|n| n != BROADCAST);
        let mut expected: BTreeSet<&str> = request.expected.iter().map(String::as_str).collect();
        let mut first: BTreeMap<&str, &LedgerAnswer> = BTreeMap::new();
        for a in answers.iter().filter(|a| a.request_id == request.id) {
            let keep = first.get(a.node.as_str()).is_none_or(|b| a.at < b.at);
            if keep {
                first.insert(a.node.as_str(), a);
            }
        }
        if broadcast {
            expected.extend(first.keys().copied());
        }
        let over = request.deadline().is_some_and(|d| now > d);
        let mut nodes: Vec<LedgerNode> = Vec::new();
        for n in &expected {
            nodes.push(match first.get(n) {
                Some(a) => LedgerNode {
                    node: n.to_string(),
                    outcome: if a.error.is_some() {
                        NodeOutcome::Error
                    } else if a.stale {
                        NodeOutcome::Stale
                    } else {
                        NodeOutcome::Stored
                    },
                    error: a.error.clone(),
                    at: Some(a.at),
                },
                None => LedgerNode {
                    node: n.to_string(),
                    outcome: if over {
                        NodeOutcome::Missing
                    } else {
                        NodeOutcome::Pending
                    },
                    error: None,
                    at: None,
                },
            });
        }
        for (n, a) in &first {
            if !expected.contains(n) {
                nodes.push(LedgerNode {
                    node: n.to_string(),
                    outcome: NodeOutcome::Unexpected,
                    error: a.error.clone(),
                    at: Some(a.at),
                });
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let waiting = nodes
            .iter()
            .any(|n| matches!(n.outcome, NodeOutcome::Pending | NodeOutcome::Missing));
        let state = if !waiting {
            RequestState::Complete
        } else if over {
            RequestState::Expired
        } else {
            RequestState::Pending
        };
        let expected_count = expected.len();
        Ledger {
            request,
            nodes,
            state,
            broadcast,
            expected: expected_count,
        }
    }

    /// How many nodes ended with `outcome`.
    pub fn count(&self, outcome: NodeOutcome) -> usize {
        self.nodes.iter().filter(|n| n.outcome == outcome).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap_or_default()
    }

    fn answer(node: &str, at: i64, error: Option<&str>) -> LedgerAnswer {
        LedgerAnswer {
            request_id: "r1".into(),
            node: node.into(),
            plugin: "p".into(),
            error: error.map(str::to_string),
            stale: false,
            at: t(at),
        }
    }

    fn request(ttl: u64) -> LedgerRequest {
        LedgerRequest {
            id: "r1".into(),
            command: "p".into(),
            sender: "me".into(),
            sent_at: t(0),
            ttl,
            expected: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn pending_then_missing_after_the_ttl() {
        let answers = [
            answer("a", 1, None),
            answer("b", 2, Some("boom")),
            answer("a", 3, Some("later")),
            answer("x", 2, None),
        ];
        let l = Ledger::build(request(10), &answers, t(5));
        assert_eq!(l.state, RequestState::Pending);
        let outcomes: Vec<(&str, NodeOutcome)> = l
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.outcome.clone()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                ("a", NodeOutcome::Stored),
                ("b", NodeOutcome::Error),
                ("c", NodeOutcome::Pending),
                ("x", NodeOutcome::Unexpected),
            ]
        );
        let l = Ledger::build(request(10), &answers, t(11));
        assert_eq!(l.state, RequestState::Expired);
        assert_eq!(l.count(NodeOutcome::Missing), 1);
        assert_eq!(l.nodes[1].error.as_deref(), Some("boom"));
    }

    #[test]
    fn a_broadcast_expects_whoever_answers() {
        let mut r = request(10);
        r.expected = vec![BROADCAST.into(), "a".into()];
        let answers = [answer("a", 1, None), answer("new", 2, Some("boom"))];
        let l = Ledger::build(r, &answers, t(5));
        assert!(l.broadcast);
        assert_eq!(l.expected, 2);
        assert_eq!(l.request.expected, ["a"]);
        assert_eq!(l.count(NodeOutcome::Unexpected), 0);
        assert_eq!(l.count(NodeOutcome::Error), 1);
        assert_eq!(l.state, RequestState::Complete);
        let l = Ledger::build(request(10), &answers, t(5));
        assert_eq!((l.broadcast, l.expected), (false, 3));
        assert_eq!(l.count(NodeOutcome::Unexpected), 1);
    }

    #[test]
    fn complete_when_all_answered_and_ttl_zero_never_expires() {
        let all = [
            answer("a", 1, None),
            answer("b", 1, None),
            answer("c", 1, None),
        ];
        assert_eq!(
            Ledger::build(request(10), &all, t(100)).state,
            RequestState::Complete
        );
        let l = Ledger::build(request(0), &all[..1], t(1_000_000));
        assert_eq!(l.state, RequestState::Pending);
        assert_eq!(l.count(NodeOutcome::Pending), 2);
    }

    #[test]
    fn a_stale_answer_is_an_answer_but_not_stored() {
        let mut old = answer("b", 1, None);
        old.stale = true;
        let all = [answer("a", 1, None), old, answer("c", 1, None)];
        let l = Ledger::build(request(10), &all, t(2));
        assert_eq!(l.state, RequestState::Complete);
        assert_eq!(l.count(NodeOutcome::Stored), 2);
        assert_eq!(l.count(NodeOutcome::Stale), 1);
        assert_eq!(l.nodes[1].outcome.as_str(), "stale");
    }
}
