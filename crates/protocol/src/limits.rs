//! The limits every message meets before any program uses it: one validation at the
//! protocol boundary, the same whichever store the server writes to.
//!
//! [`crate::decode`] and [`crate::decode_raw_result`] apply all of it, so a message that
//! passes can be stored by SQLite, PostgreSQL and CouchDB alike and reads back as the
//! same JSON from each. The rules (`docs/PROTOCOL.md`, "Limits and reason codes"):
//!
//! - a message is at most [`MAX_MESSAGE_BYTES`] long and nests at most [`MAX_DEPTH`]
//!   arrays and objects deep;
//! - numbers are those the stores hold exactly: integers within the 64-bit range
//!   (i64 or u64; beyond it they are refused), other numbers finite IEEE doubles
//!   (`1e400` is refused). A number written in a form a backend would rewrite is
//!   canonicalised: a whole number within 64 bits becomes that integer (`1e2` → `100`,
//!   `1.0` → `1`, `-0` → `0`, `1.5e18` → `1500000000000000000`), any other float what
//!   `serde_json` writes for it (`0.10` → `0.1`), so SQLite, PostgreSQL and CouchDB read
//!   back the same JSON (CouchDB's JavaScript servers still round integers beyond 2^53,
//!   see `docs/COUCHDB.md`);
//! - strings hold Unicode scalar values only: a lone surrogate escape (`"\ud800"`) is
//!   refused;
//! - `\u0000` is refused everywhere (keys, values and envelope fields): PostgreSQL's
//!   `jsonb` cannot hold it;
//! - object keys are at most [`MAX_KEY_BYTES`]; node names are host names
//!   ([`check_node_name`]); plugin names are `[A-Za-z0-9_.-]`, at most [`MAX_NAME_BYTES`];
//!   every other envelope string has its own bound (ids, `reply_to`, sender, filters,
//!   command).
//!
//! Each refusal is a [`Limit`], whose [`Limit::reason`] is the dead-letter code.

use std::borrow::Cow;

/// Largest message accepted by any program (bytes). The server's `max_message_bytes`
/// and the client's pre-send check default to it, so both sides agree.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// Deepest nesting of arrays and objects (the envelope counts as one level): far
/// above any real inventory and far below any parser's recursion limit.
pub const MAX_DEPTH: usize = 64;
/// Longest node name: a DNS host name.
pub const MAX_NODE_NAME_BYTES: usize = 253;
/// Longest label (dot-separated part) of a node name.
pub const MAX_LABEL_BYTES: usize = 63;
/// Longest id, plugin name, format, sender and `reply_to` (an AMQP short string is at
/// most 255 bytes).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest object key anywhere in a message.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest request command (a plugin name, or an unsafe command line).
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Longest discovery filter or node-name glob, and longest target.
pub const MAX_FILTER_BYTES: usize = 1024;
/// Longest error message or raw output a record's `last_error` keeps; longer ones are
/// cut at a character boundary and marked (see [`bounded`]).
pub const MAX_LAST_ERROR_BYTES: usize = 4096;
/// Largest stored value (compact JSON text) a `stored` confirmation carries back to a
/// runner that asked for it (`want_value`): enough for a plugin's facts or a path in
/// them, small enough that a fleet's confirmations stay light. A larger value is left
/// out and the confirmation says `value_truncated`.
pub const MAX_STORED_VALUE_BYTES: usize = 64 * 1024;

/// Which limit a message broke; each has a stable dead-letter reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// The message is longer than [`MAX_MESSAGE_BYTES`].
    TooLarge,
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A number out of the exactly-stored range (or not a finite double).
    BadNumber,
    /// A lone UTF-16 surrogate escape: not a Unicode scalar value.
    LoneSurrogate,
    /// A `\u0000` escape.
    Nul,
    /// A node name that is not a host name.
    BadNodeName,
    /// A plugin name outside `[A-Za-z0-9_.-]` or empty.
    BadPluginName,
    /// A string field longer than its bound.
    FieldTooLong,
    /// An object key longer than [`MAX_KEY_BYTES`].
    KeyTooLong,
}

impl Limit {
    /// Every limit, for documentation and for metrics that list each reason.
    pub const ALL: [Limit; 9] = [
        Limit::TooLarge,
        Limit::TooDeep,
        Limit::BadNumber,
        Limit::LoneSurrogate,
        Limit::Nul,
        Limit::BadNodeName,
        Limit::BadPluginName,
        Limit::FieldTooLong,
        Limit::KeyTooLong,
    ];

    /// The stable reason code (dead-letter header, metrics label, record note).
    pub fn reason(self) -> &'static str {
        match self {
            Limit::TooLarge => "too-large",
            Limit::TooDeep => "too-deep",
            Limit::BadNumber => "bad-number",
            Limit::LoneSurrogate => "lone-surrogate",
            Limit::Nul => "nul-character",
            Limit::BadNodeName => "bad-node-name",
            Limit::BadPluginName => "bad-plugin-name",
            Limit::FieldTooLong => "field-too-long",
            Limit::KeyTooLong => "key-too-long",
        }
    }
}

/// A refused message: the limit, the field (a path such as `data.disks[2].size`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refusal {
    /// Which limit.
    pub limit: Limit,
    /// Where in the message.
    pub field: String,
    /// What was wrong, in a few words.
    pub message: String,
}

fn refuse(limit: Limit, field: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal {
        limit,
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a node name: 1 to [`MAX_NODE_NAME_BYTES`] bytes of dot-separated labels,
/// each 1 to [`MAX_LABEL_BYTES`] bytes of `[A-Za-z0-9_-]` (a host name; `_` is
/// allowed because real fleets use it). The name is a queue name, a file name and a
/// document id, so nothing else is let through.
pub fn check_node_name(field: &str, name: &str) -> Result<(), Refusal> {
    let bad = |message: String| Err(refuse(Limit::BadNodeName, field, message));
    if name.is_empty() {
        return bad("a node name cannot be empty".into());
    }
    if name.len() > MAX_NODE_NAME_BYTES {
        return bad(format!(
            "a node name of {} bytes exceeds {MAX_NODE_NAME_BYTES}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad(format!(
                "{name:?} has an empty label (two dots, or a leading or trailing dot)"
            ));
        }
        if label.len() > MAX_LABEL_BYTES {
            return bad(format!(
                "a label of {} bytes exceeds {MAX_LABEL_BYTES}",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return bad(format!(
                "{c:?} is not allowed in a node name (letters, digits, `-`, `_` and `.`)"
            ));
        }
    }
    Ok(())
}

/// Checks a plugin name: 1 to [`MAX_NAME_BYTES`] bytes of `[A-Za-z0-9_.-]`, the
/// characters a plugin file may use, so no store sees a quote, backslash or NUL in a key.
pub fn check_plugin_name(field: &str, name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err(refuse(
            Limit::BadPluginName,
            field,
            "a plugin name cannot be empty",
        ));
    }
    check_len(field, name, MAX_NAME_BYTES)?;
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        Some(c) => Err(refuse(
            Limit::BadPluginName,
            field,
            format!("{c:?} is not allowed in a plugin name (letters, digits, `_`, `-` and `.`)"),
        )),
        None => Ok(()),
    }
}

/// Checks that a string field is at most `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), Refusal> {
    if value.len() > max {
        return Err(refuse(
            Limit::FieldTooLong,
            field,
            format!("{} bytes exceed the limit of {max}", value.len()),
        ));
    }
    Ok(())
}

/// Checks every item of a list field against [`check_len`].
pub fn check_each(field: &str, values: &[String], max: usize) -> Result<(), Refusal> {
    for (i, v) in values.iter().enumerate() {
        check_len(&format!("{field}[{i}]"), v, max)?;
    }
    Ok(())
}

/// The length of `value` written as compact JSON, counted without building the text:
/// how [`MAX_STORED_VALUE_BYTES`] is measured.
pub fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// `s` cut to at most `max` bytes at a character boundary, with a marker saying how
/// much was cut: what `last_error` keeps of a long message or raw output.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let marker = format!("… [{} bytes cut]", s.len());
    let mut end = max.saturating_sub(marker.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{marker}", &s[..end]))
}

/// The structural checks of a whole JSON text: size, depth, numbers, strings and keys.
/// Returns the text with its numbers canonicalised when any needed it (`None`: the
/// text is canonical as it is). The text need not be valid JSON: what this scan does
/// not understand it leaves to the parser, which words the syntax error.
pub fn scan(text: &str) -> Result<Option<String>, Refusal> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(refuse(
            Limit::TooLarge,
            "message",
            format!(
                "{} bytes exceed the limit of {MAX_MESSAGE_BYTES} bytes",
                text.len()
            ),
        ));
    }
    Scanner {
        text,
        bytes: text.as_bytes(),
        frames: Vec::new(),
        out: None,
        copied: 0,
    }
    .run()
}

/// One open array or object while scanning.
struct Frame {
    /// An object (keys) rather than an array (indexes).
    object: bool,
    /// The byte span of the current key's text (objects).
    key: (usize, usize),
    /// The current element's index (arrays).
    index: usize,
    /// The next string in this object is a key.
    expect_key: bool,
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    frames: Vec<Frame>,
    /// The canonical text so far, once a number needed rewriting.
    out: Option<String>,
    /// How much of `text` has been copied into `out`.
    copied: usize,
}

impl Scanner<'_> {
    fn run(mut self) -> Result<Option<String>, Refusal> {
        let mut i = 0;
        while i < self.bytes.len() {
            match self.bytes[i] {
                b'"' => i = self.string(i)?,
                b'{' | b'[' => {
                    if self.frames.len() >= MAX_DEPTH {
                        return Err(refuse(
                            Limit::TooDeep,
                            self.path(),
                            format!("arrays and objects nest deeper than {MAX_DEPTH} levels"),
                        ));
                    }
                    let object = self.bytes[i] == b'{';
                    self.frames.push(Frame {
                        object,
                        key: (0, 0),
                        index: 0,
                        expect_key: object,
                    });
                    i += 1;
                }
                b'}' | b']' => {
                    self.frames.pop();
                    i += 1;
                }
                b',' => {
                    if let Some(f) = self.frames.last_mut() {
                        if f.object {
                            f.expect_key = true;
                        } else {
                            f.index += 1;
                        }
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => i = self.number(i)?,
                _ => i += 1,
            }
        }
        Ok(self.out.map(|mut out| {
            out.push_str(&self.text[self.copied..]);
            out
        }))
    }

    /// Scans the string starting at the quote at `start`; returns the index after it.
    fn string(&mut self, start: usize) -> Result<usize, Refusal> {
        let mut i = start + 1;
        let end = loop {
            // Most of a result is string bytes none of which matter here: jump to the
            // next quote, backslash or NUL (SIMD), the hottest loop of ingest otherwise.
            i = match memchr::memchr3(b'"', b'\\', 0, &self.bytes[i.min(self.bytes.len())..]) {
                Some(at) => i + at,
                None => self.bytes.len(),
            };
            match self.bytes.get(i) {
                None => break self.bytes.len(),
                Some(b'"') => break i,
                Some(b'\\') => {
                    if self.bytes.get(i + 1) == Some(&b'u') {
                        let unit = self.hex4(i + 2);
                        match unit {
                            Some(0) => {
                                return Err(self.string_refusal(
                                    start,
                                    Limit::Nul,
                                    "\\u0000 is not allowed (PostgreSQL cannot store it)",
                                ))
                            }
                            Some(0xD800..=0xDBFF) => {
                                let low = (self.bytes.get(i + 6) == Some(&b'\\')
                                    && self.bytes.get(i + 7) == Some(&b'u'))
                                .then(|| self.hex4(i + 8))
                                .flatten();
                                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                                    return Err(self.string_refusal(
                                        start,
                                        Limit::LoneSurrogate,
                                        "a lone high surrogate escape is not a Unicode character",
                                    ));
                                }
                                i += 12;
                            }
                            Some(0xDC00..=0xDFFF) => {
                                return Err(self.string_refusal(
                                    start,
                                    Limit::LoneSurrogate,
                                    "a lone low surrogate escape is not a Unicode character",
                                ))
                            }
                            _ => i += 6,
                        }
                    } else {
                        i += 2;
                    }
                }
                Some(0) => {
                    return Err(self.string_refusal(
                        start,
                        Limit::Nul,
                        "a NUL character is not allowed",
                    ))
                }
                Some(_) => i += 1,
            }
        };
        let is_key = match self.frames.last_mut() {
            Some(f) if f.object && f.expect_key => {
                f.expect_key = false;
                f.key = (start + 1, end);
                true
            }
            _ => false,
        };
        if is_key && end - (start + 1) > MAX_KEY_BYTES {
            return Err(refuse(
                Limit::KeyTooLong,
                self.path(),
                format!(
                    "a key of {} bytes exceeds the limit of {MAX_KEY_BYTES}",
                    end - (start + 1)
                ),
            ));
        }
        Ok(end + 1)
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.text.get(at..at + 4)?;
        u32::from_str_radix(digits, 16).ok()
    }

    /// A refusal for the string at `start`, naming the key it is (or the field it is in).
    fn string_refusal(&self, start: usize, limit: Limit, message: &str) -> Refusal {
        let in_key = self.frames.last().is_some_and(|f| f.object && f.expect_key);
        let mut path = self.path();
        if in_key {
            path.push_str(" (a key)");
        }
        let _ = start;
        refuse(limit, path, message)
    }

    /// Checks (and canonicalises) the number starting at `start`.
    fn number(&mut self, start: usize) -> Result<usize, Refusal> {
        let mut end = start;
        while end < self.bytes.len()
            && matches!(
                self.bytes[end],
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
            )
        {
            end += 1;
        }
        let token = &self.text[start..end];
        match canonical_number(token) {
            Ok(None) => {}
            Ok(Some(canonical)) => {
                let out = self
                    .out
                    .get_or_insert_with(|| String::with_capacity(self.text.len()));
                out.push_str(&self.text[self.copied..start]);
                out.push_str(&canonical);
                self.copied = end;
            }
            Err(message) => {
                return Err(refuse(
                    Limit::BadNumber,
                    self.path(),
                    format!("{}: {message}", cut(token, 40)),
                ))
            }
        }
        Ok(end)
    }

    /// Where the scan is: `data.disks[2].size` (keys as written, cut short).
    fn path(&self) -> String {
        let mut p = String::new();
        for f in &self.frames {
            if f.object {
                if f.key.1 > f.key.0 {
                    if !p.is_empty() {
                        p.push('.');
                    }
                    p.push_str(&cut(self.text.get(f.key.0..f.key.1).unwrap_or(""), 40));
                }
            } else {
                p.push_str(&format!("[{}]", f.index));
            }
        }
        if p.is_empty() {
            p.push_str("message");
        }
        p
    }
}

/// Who a refused result says it comes from: its node, when that is a valid node name,
/// and its plugin, when that is a valid plugin name (a v1 `node`/`plugin` or a 2010
/// `syskey`). Read from the top level of the body only, without parsing the rest, so it
/// answers for any body however deep, malformed or large its data is: the server notes
/// the refusal in that node's record.
pub fn result_origin(body: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(body).ok()?;
    let b = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    let (mut node, mut plugin, mut kind) = (None, None, None);
    // The key just read at depth 1, waiting for its value.
    let mut key: Option<&str> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let raw = text.get(start..(i + 1).min(text.len()))?;
                i += 1;
                if depth != 1 {
                    continue;
                }
                let after = text.get(i..)?.trim_start();
                if after.starts_with(':') {
                    key = Some(raw);
                } else if let Some(k) = key.take() {
                    let value: Option<String> = serde_json::from_str(raw).ok();
                    match k {
                        "\"node\"" | "\"syskey\"" => node = value,
                        "\"plugin\"" => plugin = value,
                        "\"kind\"" => kind = value,
                        _ => {}
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                key = None;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                key = None;
                i += 1;
            }
            _ => i += 1,
        }
    }
    if kind.as_deref().is_some_and(|k| k != "result") {
        return None;
    }
    let node = node.filter(|n| check_node_name("node", n).is_ok())?;
    Some((
        node,
        plugin.filter(|p| check_plugin_name("plugin", p).is_ok()),
    ))
}

/// At most `max` bytes of `s` (cut at a character boundary), with `…` when cut.
fn cut(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// The canonical text of a JSON number token: `Ok(None)` when it already is canonical
/// (or not a number at all: the parser reports that), `Ok(Some(text))` to rewrite it,
/// `Err` when it cannot be stored exactly.
fn canonical_number(token: &str) -> Result<Option<String>, &'static str> {
    const BEYOND: &str = "an integer beyond the 64-bit range (i64 or u64) is not stored exactly";
    if !is_json_number(token) {
        return Ok(None);
    }
    if !token.contains(['.', 'e', 'E']) {
        return match token.strip_prefix('-') {
            Some("0") => Ok(Some("0".into())),
            Some(_) if token.parse::<i64>().is_err() => Err(BEYOND),
            None if token.parse::<u64>().is_err() => Err(BEYOND),
            _ => Ok(None),
        };
    }
    let Ok(x) = token.parse::<f64>() else {
        return Ok(None);
    };
    if !x.is_finite() {
        return Err("out of the range of a double");
    }
    // A whole number within 64 bits is written as the integer its shortest digits
    // spell: PostgreSQL (numeric) and CouchDB hand `1.0`, `1e2` and `1.5e18` back as
    // integers, so SQLite must hold them as those integers too.
    if x.fract() == 0.0 {
        if let Some(int) = whole_number(x) {
            return Ok((int != token).then_some(int));
        }
    }
    match serde_json::Number::from_f64(x) {
        Some(n) => {
            let canonical = n.to_string();
            Ok((canonical != token).then_some(canonical))
        }
        None => Err("out of the range of a double"),
    }
}

/// The integer a whole-valued double's shortest digits spell (`1.5e18` →
/// `1500000000000000000`), when it fits an i64 or u64.
fn whole_number(x: f64) -> Option<String> {
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let zeros = usize::try_from(exp - i32::try_from(frac.len()).ok()?).ok()?;
    let mut digits = format!("{int}{frac}{}", "0".repeat(zeros.min(40)));
    if x < 0.0 && digits != "0" {
        digits.insert(0, '-');
        digits.parse::<i64>().ok()?;
    } else {
        digits.parse::<u64>().ok()?;
    }
    Some(digits)
}

/// Whether `t` is a number in JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
/// Only those are canonicalised, so a rewrite never turns bad JSON into good JSON.
fn is_json_number(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> Option<&'static str> {
        scan(text).err().map(|r| r.limit.reason())
    }

    #[test]
    fn numbers_are_canonical_or_refused() {
        let canon = |t: &str| scan(t).expect("accepted").unwrap_or_else(|| t.to_string());
        assert_eq!(
            canon(r#"{"a":1e2,"b":1.0,"c":-0,"d":0.10,"e":1.5e-7,"f":-2.0}"#),
            r#"{"a":100,"b":1,"c":0,"d":0.1,"e":1.5e-7,"f":-2}"#
        );
        let exact =
            r#"{"a":[1,2.5,-3,9007199254740993,18446744073709551615,-9223372036854775808]}"#;
        assert_eq!(scan(exact), Ok(None));
        assert_eq!(canon("1.5e18"), "1500000000000000000");
        assert_eq!(canon("-1e18"), "-1000000000000000000");
        assert_eq!(canon("1152921504606846976.0"), "1152921504606847000");
        // Beyond 64 bits a whole float stays a float (every backend reads a double).
        assert_eq!(canon("1e20"), "1e+20");
        assert_eq!(canon("1e300"), "1e+300");
        assert_eq!(canon("1e+300"), "1e+300");
        for bad in [
            "1e400",
            "-1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
        ] {
            assert_eq!(reason(bad), Some("bad-number"), "{bad}");
        }
        // Not numbers: left for the parser to word.
        for not_json in ["01", "-00", "1.", "-.5", "1e", "1.5.5", "--1"] {
            assert_eq!(scan(not_json), Ok(None), "{not_json}");
        }
    }

    #[test]
    fn strings_are_unicode_scalar_values_without_nul() {
        assert_eq!(reason(r#"{"a":"\ud800"}"#), Some("lone-surrogate"));
        assert_eq!(reason(r#"{"a":"\udc00x"}"#), Some("lone-surrogate"));
        assert_eq!(reason(r#"{"a":"\ud800\u0041"}"#), Some("lone-surrogate"));
        assert_eq!(scan(r#"{"a":"\ud83d\ude00 \\u0000 \\"}"#), Ok(None));
        assert_eq!(reason(r#"{"a":"x\u0000"}"#), Some("nul-character"));
        assert_eq!(reason(r#"{"\u0000":1}"#), Some("nul-character"));
        let key = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(reason(&format!("{{\"{key}\":1}}")), Some("key-too-long"));
        assert_eq!(reason(&format!("{{\"a\":\"{key}\"}}")), None);
    }

    #[test]
    fn depth_is_bounded_and_named() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(scan(&ok), Ok(None));
        let deep = "[".repeat(10_000);
        let r = scan(&deep).expect_err("too deep");
        assert_eq!(r.limit, Limit::TooDeep);
        let r = scan(r#"{"data":{"disks":[1,{"size":1e999}]}}"#).expect_err("bad number");
        assert_eq!(r.field, "data.disks[1].size");
    }

    #[test]
    fn node_names_are_host_names() {
        for good in ["web01", "web-01.example.com", "a_b", "A"] {
            assert_eq!(check_node_name("node", good), Ok(()), "{good}");
        }
        let long = format!("{}.x", "a".repeat(MAX_NODE_NAME_BYTES));
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "web 01",
            "a/b",
            "a*",
            "é",
            "a\\b",
            &long,
            &"a".repeat(64),
        ] {
            assert_eq!(
                check_node_name("node", bad).map_err(|r| r.limit),
                Err(Limit::BadNodeName),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_origin_of_a_refused_result_is_read_from_its_top_level() {
        let deep = format!(
            "{{\"v\":1,\"kind\":\"result\",\"data\":{}1{},\"node\":\"web01\",\"plugin\":\"facter\"}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(
            result_origin(deep.as_bytes()),
            Some(("web01".into(), Some("facter".into())))
        );
        let nested = r#"{"data":{"node":"evil","plugin":"x"},"node":"db\u0031","plugin":"a b","kind":"result"}"#;
        assert_eq!(result_origin(nested.as_bytes()), Some(("db1".into(), None)));
        assert_eq!(result_origin(br#"{"node":"a\u0000"}"#), None);
        assert_eq!(
            result_origin(br#"{"kind":"heartbeat","node":"web01"}"#),
            None
        );
        assert_eq!(
            result_origin(br#"{"syskey":"old01","uptime":"1"}"#),
            Some(("old01".into(), None))
        );
    }

    #[test]
    fn bounded_cuts_at_a_character_boundary_with_a_marker() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(5000);
        let b = bounded(&long, MAX_LAST_ERROR_BYTES);
        assert!(b.len() <= MAX_LAST_ERROR_BYTES, "{}", b.len());
        assert!(b.ends_with("… [10000 bytes cut]"), "{b}");
    }
}
