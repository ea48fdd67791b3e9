//! Wire messages: versioned JSON (`"v": 1`, `"kind"`) and the 2010 Python shapes.
//!
//! [`decode`] accepts both; the 2010 shapes are recognised by the absence of `v`: a
//! bare JSON string is a request, an object with `syskey` is a result. Encoding the
//! 2010 shapes reproduces Python's `json.dumps` byte for byte, so a 2010 server or
//! client can still talk to these programs (`[amqp] wire = legacy`).

pub mod limits;

use chrono::{DateTime, NaiveDateTime, Utc};
use limits::{check_each, check_len, check_node_name, check_plugin_name, Refusal};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this crate speaks.
pub const VERSION: u64 = 1;
/// Direct exchange results go to (2010 name).
pub const MASTER_EXCHANGE: &str = "vogeler.master.in";
/// Topic exchange requests go to (2010 name).
pub const BROADCAST_EXCHANGE: &str = "vogeler.broadcast.in";
/// The servers' result queue, bound to the master exchange with `""`.
pub const MASTER_QUEUE: &str = "master.in";
/// Routing key for every node; published literally, matched by each client's binding.
pub const BROADCAST_ROUTING_KEY: &str = "broadcasts.*";
/// Where the server puts messages it cannot use.
pub const DEAD_LETTER_QUEUE: &str = "vogeler.dead";
/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-vogeler-reason";

/// A request to run a plugin (runner → clients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Unique id; results and confirmations carry it back.
    pub id: String,
    /// Plugin name or alias (or a command line when `unsafe_command`).
    pub command: String,
    /// `["all"]` or node names.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Who sent it, for logs.
    #[serde(default)]
    pub sender: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// Seconds after `sent_at` when clients must no longer run it.
    pub ttl: u64,
    /// The runner's reply queue for `stored` confirmations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `command` is a command line, not a plugin (needs `--allow-unsafe` on the client).
    #[serde(default, skip_serializing_if = "is_false")]
    pub unsafe_command: bool,
    /// The runner wants the stored value back in its `stored` confirmation
    /// (`vogeler-runner --output`); needs `reply_to`. Absent (false) from older runners.
    #[serde(default, skip_serializing_if = "is_false")]
    pub want_value: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// A field that is present is `Some`, even when it is JSON `null` (a plugin whose value
/// is `null` still has a value); an absent one is `None` through `serde(default)`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Request {
    /// A 2010 request (a bare command string) in the v1 shape: no id, never expires.
    pub fn legacy(command: String, sender: &str) -> Request {
        Request {
            id: String::new(),
            command,
            targets: vec!["all".into()],
            sender: sender.to_string(),
            sent_at: Utc::now(),
            ttl: 0,
            reply_to: None,
            unsafe_command: false,
            want_value: false,
        }
    }

    /// Whether the request is past its ttl at `now` (ttl 0 never expires).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        if self.ttl == 0 {
            return false;
        }
        let ttl = chrono::Duration::seconds(i64::try_from(self.ttl).unwrap_or(i64::MAX / 1000));
        self.sent_at
            .checked_add_signed(ttl)
            .is_some_and(|deadline| now > deadline)
    }
}

/// A plugin's result (client → server). `D` is how `data` is held: a tree by
/// default, JSON text ([`RawResult`]) on the server's hot path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
pub struct PluginResult<D = Value> {
    /// The request answered; `None` for scheduled runs and 2010 requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Node name: the document it belongs to.
    pub node: String,
    /// Plugin name: the document key.
    pub plugin: String,
    /// Result format the client converted with.
    pub format: String,
    /// The converted output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
    /// What went wrong, for an error result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Raw output kept beside an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The command's exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// How long the plugin ran.
    #[serde(default)]
    pub duration_ms: u64,
    /// When the output was collected: orders results of the same key.
    pub collected_at: DateTime<Utc>,
    /// Copied from the request so the server can confirm to the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Copied from the request: the server puts the stored value in its confirmation.
    #[serde(default, skip_serializing_if = "is_false")]
    pub want_value: bool,
    /// `false` for a volatile plugin (`history = false` in its file): the server keeps
    /// only the current value, with no history and no entry in `changes`. Absent
    /// (older clients, the 2010 shapes) means true: history is kept.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub history: bool,
}

/// The server's confirmation that a result was committed (server → runner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The request answered.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Node that answered.
    pub node: String,
    /// Plugin that ran.
    pub plugin: String,
    /// False when the stored result was an error result.
    pub ok: bool,
    /// The error, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result was older (`collected_at`) than the value already stored for that
    /// key, so it was not applied: the runner reports it as stale, not as stored.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stale: bool,
    /// The result's `collected_at` when it was further ahead of the server's clock than
    /// `[server] max_clock_skew`: it was stored as collected at its arrival instead, so
    /// a clock running ahead cannot freeze the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped_from: Option<DateTime<Utc>>,
    /// When the store committed it.
    pub stored_at: DateTime<Utc>,
    /// The value stored, when the result asked for it (`want_value`), was stored `ok`
    /// and not stale, and its JSON fits [`limits::MAX_STORED_VALUE_BYTES`]: what
    /// `vogeler-runner --output` prints.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub value: Option<Value>,
    /// The value was asked for but is larger than [`limits::MAX_STORED_VALUE_BYTES`], so
    /// it was left out (read it from the store instead).
    #[serde(default, skip_serializing_if = "is_false")]
    pub value_truncated: bool,
}

impl Stored {
    /// Puts `value` in the confirmation when its compact JSON fits
    /// [`limits::MAX_STORED_VALUE_BYTES`]; otherwise marks it `value_truncated`.
    pub fn attach_value(&mut self, value: Value) {
        if limits::json_len(&value) <= limits::MAX_STORED_VALUE_BYTES {
            self.value = Some(value);
            self.value_truncated = false;
        } else {
            self.value = None;
            self.value_truncated = true;
        }
    }
}

/// Liveness probe (runner → clients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in each pong.
    pub id: String,
    /// Who asked.
    #[serde(default)]
    pub sender: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// Where pongs go.
    pub reply_to: String,
}

/// Answer to a [`Ping`] (client → runner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping answered.
    pub ping_id: String,
    /// The answering node.
    pub node: String,
    /// When it answered.
    pub sent_at: DateTime<Utc>,
}

/// "Still here" between inventory runs (client → server): moves `last_seen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node.
    pub node: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
}

/// "Which nodes match?" (runner → server): answered from the store's registry of
/// nodes, so runners never need store access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discover {
    /// Correlates the answer.
    pub id: String,
    /// Filters on stored facts (`facter.os.family=Debian`), all of which must hold.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Node-name globs; empty means every node.
    #[serde(default)]
    pub names: Vec<String>,
    /// Only nodes seen within this many seconds (`None`: any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_within_secs: Option<u64>,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// Where the answer goes.
    pub reply_to: String,
}

/// The answer to a [`Discover`] (server → runner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discovered {
    /// The discovery answered.
    pub discover_id: String,
    /// Matching node names, sorted.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Why the question could not be answered (a bad filter, the store down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// "I am sending this request to these nodes" (runner → servers, on the master
/// exchange, before the request itself): the start of the request's ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announce {
    /// The request's id.
    pub request_id: String,
    /// Plugin name or alias asked for.
    pub command: String,
    /// Nodes expected to answer; `None` for a broadcast, which the server reads as
    /// every node in its registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Vec<String>>,
    /// Who sent it.
    #[serde(default)]
    pub sender: String,
    /// The request's `sent_at`.
    pub sent_at: DateTime<Utc>,
    /// The request's ttl, seconds.
    pub ttl: u64,
}

/// Every v1 message kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Run a plugin.
    Request(Request),
    /// A plugin's output.
    Result(PluginResult),
    /// A result was committed.
    Stored(Stored),
    /// Who is there?
    Ping(Ping),
    /// I am.
    Pong(Pong),
    /// Still alive.
    Heartbeat(Heartbeat),
    /// Which nodes match?
    Discover(Discover),
    /// These.
    Discovered(Discovered),
    /// A request is on its way to these nodes.
    Announce(Announce),
}

impl Message {
    /// The `kind` string on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::Result(_) => "result",
            Message::Stored(_) => "stored",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Heartbeat(_) => "heartbeat",
            Message::Discover(_) => "discover",
            Message::Discovered(_) => "discovered",
            Message::Announce(_) => "announce",
        }
    }
}

const KINDS: &[&str] = &[
    "request",
    "result",
    "stored",
    "ping",
    "pong",
    "heartbeat",
    "discover",
    "discovered",
    "announce",
];

/// A 2010 result: `{"syskey": node, "<plugin>": raw, "format": f}` or an error.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyResult {
    /// `syskey`: the node.
    pub node: String,
    /// The one extra key: the plugin name.
    pub plugin: Option<String>,
    /// `format`: how the server should parse `raw`.
    pub format: String,
    /// The plugin's raw output.
    pub raw: Option<String>,
    /// `last_error`, for an error result.
    pub error: Option<LegacyError>,
}

/// The 2010 `last_error` object.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyError {
    /// Naive `%Y-%m-%d %H:%M:%S%.f`, read as UTC.
    pub timestamp: Option<DateTime<Utc>>,
    /// What went wrong.
    pub message: String,
}

/// What a message body turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A versioned message.
    Message(Message),
    /// A 2010 request: the command string.
    LegacyRequest(String),
    /// A 2010 result.
    LegacyResult(LegacyResult),
}

/// Why a body could not be decoded; [`ProtocolError::reason`] is the dead-letter code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// Not UTF-8.
    #[error("message is not UTF-8: invalid byte at offset {offset}")]
    BadUtf8 {
        /// First invalid byte.
        offset: usize,
    },
    /// Not JSON.
    #[error("message is not JSON: {message} (line {line}, column {column})")]
    NotJson {
        /// Parser message.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A `v` this program does not speak.
    #[error("unsupported protocol version v={0} (this program speaks v=1)")]
    UnknownVersion(String),
    /// A `kind` this program does not know.
    #[error("unknown message kind {0:?} (known: request, result, stored, ping, pong, heartbeat, discover, discovered, announce)")]
    UnknownKind(String),
    /// A field missing or of the wrong type.
    #[error("bad {kind} message: {message}")]
    BadField {
        /// Message kind.
        kind: String,
        /// Which field and why.
        message: String,
    },
    /// Valid JSON of no known shape.
    #[error("unknown message shape: {0}")]
    UnknownShape(String),
    /// A message that breaks one of the protocol's [`limits`] (depth, numbers, strings,
    /// names, field lengths, size); the reason code names which.
    #[error("message refused: {0}")]
    Refused(Refusal),
}

impl From<Refusal> for ProtocolError {
    fn from(r: Refusal) -> ProtocolError {
        ProtocolError::Refused(r)
    }
}

impl ProtocolError {
    /// Short stable code for the dead-letter header.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::BadUtf8 { .. } => "bad-utf8",
            ProtocolError::NotJson { .. } => "not-json",
            ProtocolError::UnknownVersion(_) => "unknown-version",
            ProtocolError::UnknownKind(_) => "unknown-kind",
            ProtocolError::BadField { .. } => "bad-field",
            ProtocolError::UnknownShape(_) => "unknown-shape",
            ProtocolError::Refused(r) => r.limit.reason(),
        }
    }
}

/// Decodes a body in either generation of the protocol.
pub fn decode(body: &[u8]) -> Result<Decoded, ProtocolError> {
    let text = std::str::from_utf8(body).map_err(|e| ProtocolError::BadUtf8 {
        offset: e.valid_up_to(),
    })?;
    let canonical = limits::scan(text)?;
    let text = canonical.as_deref().unwrap_or(text);
    let decoded = decode_text(text)?;
    check_decoded(&decoded)?;
    Ok(decoded)
}

/// [`decode`] of a text that passed [`limits::scan`], before the field checks.
fn decode_text(text: &str) -> Result<Decoded, ProtocolError> {
    if let Some(decoded) = decode_v1_result(text) {
        return decoded;
    }
    let value: Value = serde_json::from_str(text).map_err(|e| ProtocolError::NotJson {
        message: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    match value {
        Value::String(command) => {
            if command.trim().is_empty() {
                return Err(ProtocolError::UnknownShape("an empty request".into()));
            }
            Ok(Decoded::LegacyRequest(command))
        }
        Value::Object(ref map) => match map.get("v") {
            Some(v) if v.as_u64() == Some(VERSION) => {
                let kind = match map.get("kind") {
                    Some(Value::String(k)) => k.clone(),
                    Some(other) => return Err(ProtocolError::UnknownKind(other.to_string())),
                    None => {
                        return Err(ProtocolError::BadField {
                            kind: "v1".into(),
                            message: "missing field `kind`".into(),
                        })
                    }
                };
                if !KINDS.contains(&kind.as_str()) {
                    return Err(ProtocolError::UnknownKind(kind));
                }
                serde_json::from_value::<Message>(value)
                    .map(Decoded::Message)
                    .map_err(|e| ProtocolError::BadField {
                        kind,
                        message: e.to_string(),
                    })
            }
            Some(v) => Err(ProtocolError::UnknownVersion(v.to_string())),
            None if map.contains_key("syskey") => {
                decode_legacy_result(map).map(Decoded::LegacyResult)
            }
            None => Err(ProtocolError::UnknownShape(
                "an object with neither `v` nor `syskey`".into(),
            )),
        },
        other => Err(ProtocolError::UnknownShape(format!(
            "a JSON {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(_) => "number",
                Value::Array(_) => "array",
                _ => "value",
            }
        ))),
    }
}

/// A result whose `data` stays the JSON text it arrived as (validated, never built
/// into a tree): what the server stores.
pub type RawResult = PluginResult<Box<serde_json::value::RawValue>>;

/// The server's hot path: a v1 result with its data left as text (numbers
/// canonicalised, see [`limits`]). `None` when the body is anything else (not UTF-8,
/// not a v1 result): [`decode`] then decodes it and words the error. A body that
/// breaks a structural limit is refused here whatever its kind, with the same
/// [`ProtocolError::Refused`] that [`decode`] would give.
pub fn decode_raw_result(body: &[u8]) -> Option<Result<RawResult, ProtocolError>> {
    let text = std::str::from_utf8(body).ok()?;
    let canonical = match limits::scan(text) {
        Ok(c) => c,
        // Refused whatever it is; a non-result is worded the same way by `decode`.
        Err(r) => return Some(Err(r.into())),
    };
    let text = canonical.as_deref().unwrap_or(text);
    let decoded = decode_raw_text(text)?;
    Some(decoded.and_then(|r| {
        check_result(&r)?;
        Ok(r)
    }))
}

/// [`decode_raw_result`] of a text that passed [`limits::scan`], before the field checks.
fn decode_raw_text(text: &str) -> Option<Result<RawResult, ProtocolError>> {
    // The data is most of a result: it is scanned once, by this parse; the envelope
    // check then reads the message with the data cut out.
    match serde_json::from_str::<PluginResult<&serde_json::value::RawValue>>(text) {
        Ok(r) => {
            let envelope = match r.data.and_then(|d| span_in(text, d.get())) {
                Some((start, end)) => {
                    std::borrow::Cow::Owned(format!("{}null{}", &text[..start], &text[end..]))
                }
                None => std::borrow::Cow::Borrowed(text),
            };
            is_v1_result(&envelope).then(|| Ok(r.map_data(|d| d.to_owned())))
        }
        Err(e) => is_v1_result(text).then(|| {
            Err(ProtocolError::BadField {
                kind: "result".into(),
                message: e.to_string(),
            })
        }),
    }
}

/// The field checks of [`limits`] on a decoded message: names, ids and every other
/// string field within its bound, and fields that contradict each other.
fn check_decoded(d: &Decoded) -> Result<(), ProtocolError> {
    use limits::{MAX_COMMAND_BYTES, MAX_FILTER_BYTES, MAX_NAME_BYTES, MAX_NODE_NAME_BYTES};
    let bad = |kind: &str, message: &str| {
        Err(ProtocolError::BadField {
            kind: kind.into(),
            message: message.into(),
        })
    };
    match d {
        Decoded::LegacyRequest(command) => Ok(check_len("command", command, MAX_COMMAND_BYTES)?),
        Decoded::LegacyResult(r) => {
            check_node_name("syskey", &r.node)?;
            if let Some(p) = &r.plugin {
                check_plugin_name("plugin key", p)?;
            }
            Ok(check_len("format", &r.format, MAX_NAME_BYTES)?)
        }
        Decoded::Message(m) => match m {
            Message::Request(r) => {
                check_len("id", &r.id, MAX_NAME_BYTES)?;
                check_len("command", &r.command, MAX_COMMAND_BYTES)?;
                check_each("targets", &r.targets, MAX_FILTER_BYTES)?;
                check_len("sender", &r.sender, MAX_NAME_BYTES)?;
                check_len(
                    "reply_to",
                    r.reply_to.as_deref().unwrap_or(""),
                    MAX_NAME_BYTES,
                )?;
                if r.want_value && r.reply_to.is_none() {
                    return bad(
                        "request",
                        "`want_value` needs `reply_to`: the value comes back to the reply queue",
                    );
                }
                Ok(())
            }
            Message::Result(r) => Ok(check_result(r)?),
            Message::Stored(s) => {
                check_len(
                    "request_id",
                    s.request_id.as_deref().unwrap_or(""),
                    MAX_NAME_BYTES,
                )?;
                check_node_name("node", &s.node)?;
                check_len("plugin", &s.plugin, MAX_NAME_BYTES)?;
                if let Some(v) = &s.value {
                    let len = limits::json_len(v);
                    if len > limits::MAX_STORED_VALUE_BYTES {
                        return Err(Refusal {
                            limit: limits::Limit::FieldTooLong,
                            field: "value".into(),
                            message: format!(
                                "{len} bytes of JSON exceed the limit of {}",
                                limits::MAX_STORED_VALUE_BYTES
                            ),
                        }
                        .into());
                    }
                    if s.value_truncated {
                        return bad("stored", "`value` and `value_truncated` together");
                    }
                    if !s.ok || s.stale {
                        return bad(
                            "stored",
                            "`value` on an error or stale confirmation (nothing was stored)",
                        );
                    }
                }
                Ok(())
            }
            Message::Ping(p) => {
                check_len("id", &p.id, MAX_NAME_BYTES)?;
                check_len("sender", &p.sender, MAX_NAME_BYTES)?;
                Ok(check_len("reply_to", &p.reply_to, MAX_NAME_BYTES)?)
            }
            Message::Pong(p) => {
                check_len("ping_id", &p.ping_id, MAX_NAME_BYTES)?;
                Ok(check_node_name("node", &p.node)?)
            }
            Message::Heartbeat(h) => Ok(check_node_name("node", &h.node)?),
            Message::Discover(q) => {
                check_len("id", &q.id, MAX_NAME_BYTES)?;
                check_each("filters", &q.filters, MAX_FILTER_BYTES)?;
                check_each("names", &q.names, MAX_FILTER_BYTES)?;
                Ok(check_len("reply_to", &q.reply_to, MAX_NAME_BYTES)?)
            }
            Message::Discovered(a) => {
                check_len("discover_id", &a.discover_id, MAX_NAME_BYTES)?;
                Ok(check_each("nodes", &a.nodes, MAX_NODE_NAME_BYTES)?)
            }
            Message::Announce(a) => {
                check_len("request_id", &a.request_id, MAX_NAME_BYTES)?;
                check_len("command", &a.command, MAX_COMMAND_BYTES)?;
                check_each(
                    "expected",
                    a.expected.as_deref().unwrap_or(&[]),
                    MAX_NODE_NAME_BYTES,
                )?;
                Ok(check_len("sender", &a.sender, MAX_NAME_BYTES)?)
            }
        },
    }
}

/// The field checks of a result, however its data is held.
fn check_result<D>(r: &PluginResult<D>) -> Result<(), Refusal> {
    use limits::MAX_NAME_BYTES;
    check_len(
        "request_id",
        r.request_id.as_deref().unwrap_or(""),
        MAX_NAME_BYTES,
    )?;
    check_node_name("node", &r.node)?;
    check_plugin_name("plugin", &r.plugin)?;
    check_len("format", &r.format, MAX_NAME_BYTES)?;
    check_len(
        "reply_to",
        r.reply_to.as_deref().unwrap_or(""),
        MAX_NAME_BYTES,
    )
}

/// Where `part`, a slice borrowed from `text`, lies in it.
fn span_in(text: &str, part: &str) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (text.get(start..end)? == part).then_some((start, end))
}

impl<D> PluginResult<D> {
    /// The same result with its data held another way.
    pub fn map_data<E>(self, f: impl FnOnce(D) -> E) -> PluginResult<E> {
        PluginResult {
            request_id: self.request_id,
            node: self.node,
            plugin: self.plugin,
            format: self.format,
            data: self.data.map(f),
            error: self.error,
            raw: self.raw,
            exit_status: self.exit_status,
            duration_ms: self.duration_ms,
            collected_at: self.collected_at,
            reply_to: self.reply_to,
            want_value: self.want_value,
            history: self.history,
        }
    }
}

/// Whether `text` is a v1 result envelope (`v` = 1, `kind` = result); every other
/// field is skipped without allocating.
fn is_v1_result(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe<'a> {
        v: Option<u64>,
        #[serde(borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Probe<'_>>(text)
        .is_ok_and(|p| p.v == Some(VERSION) && p.kind.as_deref() == Some("result"))
}

/// The hot path: a v1 result parsed straight into [`PluginResult`], building its
/// data tree once. `None` when the body is anything else (or not even an object):
/// the general path then decodes it and words the error.
fn decode_v1_result(text: &str) -> Option<Result<Decoded, ProtocolError>> {
    if !is_v1_result(text) {
        return None;
    }
    Some(
        serde_json::from_str::<PluginResult>(text)
            .map(|r| Decoded::Message(Message::Result(r)))
            .map_err(|e| ProtocolError::BadField {
                kind: "result".into(),
                message: e.to_string(),
            }),
    )
}

fn legacy_field(message: impl Into<String>) -> ProtocolError {
    ProtocolError::BadField {
        kind: "2010 result".into(),
        message: message.into(),
    }
}

fn decode_legacy_result(
    map: &serde_json::Map<String, Value>,
) -> Result<LegacyResult, ProtocolError> {
    let node = match map.get("syskey") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(legacy_field("`syskey` must be a non-empty string")),
    };
    let format = match map.get("format") {
        Some(Value::String(s)) => s.clone(),
        None => "output".to_string(),
        Some(_) => return Err(legacy_field("`format` must be a string")),
    };
    if let Some(err) = map.get("last_error") {
        let obj = err
            .as_object()
            .ok_or_else(|| legacy_field("`last_error` must be an object"))?;
        let message = match obj.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => return Err(legacy_field("`last_error.message` must be a string")),
        };
        let timestamp = obj
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(parse_legacy_time);
        return Ok(LegacyResult {
            node,
            plugin: None,
            format,
            raw: None,
            error: Some(LegacyError { timestamp, message }),
        });
    }
    let extra: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| k.as_str() != "syskey" && k.as_str() != "format")
        .collect();
    match extra.as_slice() {
        [(plugin, value)] => {
            let raw = match value {
                Value::String(s) => s.clone(),
                // pylist/pydict results arrive as JSON already; keep them as JSON text.
                other => other.to_string(),
            };
            Ok(LegacyResult {
                node,
                plugin: Some((*plugin).clone()),
                format,
                raw: Some(raw),
                error: None,
            })
        }
        [] => Err(legacy_field("no plugin key beside `syskey` and `format`")),
        many => Err(legacy_field(format!(
            "expected one plugin key, found {}: {}",
            many.len(),
            many.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn parse_legacy_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .map(|n| n.and_utc())
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| d.with_timezone(&Utc))
        })
}

/// Encodes a v1 message (`v` first, then `kind`, then the fields).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = serde_json::Map::new();
    out.insert("v".into(), Value::from(VERSION));
    if let Ok(Value::Object(fields)) = serde_json::to_value(msg) {
        for (k, v) in fields {
            out.insert(k, v);
        }
    }
    serde_json::to_vec(&Value::Object(out)).unwrap_or_default()
}

/// Python `json.dumps` of a string: `"…"` with non-ASCII escaped as `\uXXXX`.
fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A 2010 request: `json.dumps(command)`.
pub fn encode_legacy_request(command: &str) -> Vec<u8> {
    py_str(command).into_bytes()
}

/// A 2010 result: `{"syskey": node, "<plugin>": raw, "format": format}`.
pub fn encode_legacy_result(node: &str, plugin: &str, raw: &str, format: &str) -> Vec<u8> {
    format!(
        "{{\"syskey\": {}, {}: {}, \"format\": {}}}",
        py_str(node),
        py_str(plugin),
        py_str(raw),
        py_str(format)
    )
    .into_bytes()
}

/// A 2010 error result, `format` `pydict` as the 2010 client sent it.
pub fn encode_legacy_error(node: &str, message: &str, at: DateTime<Utc>) -> Vec<u8> {
    format!(
        "{{\"syskey\": {}, \"last_error\": {{\"timestamp\": {}, \"message\": {}}}, \"format\": \"pydict\"}}",
        py_str(node),
        py_str(&at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
        py_str(message)
    )
    .into_bytes()
}
