//! The questions every backend answers the same way.
//!
//! Backends only fetch (a key's value across nodes, the node list, history); the
//! predicates, path lookups, diffs and history rewinds live here once, so SQLite,
//! PostgreSQL and CouchDB cannot drift apart in what a filter means.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::{HistoryEntry, NodeRecord, NodeSummary, StoreError};

/// One step of a [`KeyPath`]: an object member, or an array index when it is all digits.
pub type Segment = String;

/// A dotted path into a node document: `facter.os.family`, `dpkg."libc6.1"`.
///
/// The first segment names a plugin key (or a document field such as `last_error`);
/// the rest walk into its value. A segment holding dots is written in double quotes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPath {
    segments: Vec<Segment>,
}

impl KeyPath {
    /// Parses `a.b."c.d".0`; an empty path or segment is refused with the position.
    pub fn parse(text: &str) -> Result<KeyPath, StoreError> {
        let bad = |why: &str| StoreError::Invalid(format!("bad key path {text:?}: {why}"));
        let mut segments = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut seg = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    seg.push(c);
                }
                if !closed {
                    return Err(bad("unterminated quote"));
                }
                match chars.next() {
                    None => {
                        segments.push(seg);
                        break;
                    }
                    Some('.') => {}
                    Some(c) => return Err(bad(&format!("{c:?} after a quoted segment"))),
                }
            } else {
                let mut end = true;
                for c in chars.by_ref() {
                    if c == '.' {
                        end = false;
                        break;
                    }
                    seg.push(c);
                }
                if seg.is_empty() {
                    return Err(bad(&format!("empty segment {}", segments.len() + 1)));
                }
                segments.push(seg);
                if end {
                    break;
                }
                continue;
            }
            segments.push(seg);
        }
        Ok(KeyPath { segments })
    }

    /// A path of one plugin key and its inner segments.
    pub fn from_segments(segments: Vec<Segment>) -> Result<KeyPath, StoreError> {
        if segments.is_empty() || segments[0].is_empty() {
            return Err(StoreError::Invalid("empty key path".into()));
        }
        Ok(KeyPath { segments })
    }

    /// The document key the path starts at (a plugin name or a document field).
    pub fn root(&self) -> &str {
        &self.segments[0]
    }

    /// The steps inside the root key's value.
    pub fn rest(&self) -> &[Segment] {
        &self.segments[1..]
    }

    /// The value at the whole path in a node document (root key, then `rest()`).
    pub fn find<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.lookup(doc.get(self.root())?)
    }

    /// Walks `rest()` into a value (the root key's value); `None` when a step is missing.
    pub fn lookup<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        lookup(value, self.rest())
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if s.contains('.') || s.contains('"') {
                write!(f, "\"{s}\"")?;
            } else {
                f.write_str(s)?;
            }
        }
        Ok(())
    }
}

/// Walks object members (and array indexes for all-digit steps) into a value.
pub fn lookup<'v>(mut value: &'v Value, steps: &[Segment]) -> Option<&'v Value> {
    for step in steps {
        value = match value {
            Value::Object(m) => m.get(step)?,
            Value::Array(a) => a.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// A scalar's text as users type it in a filter: strings bare, numbers and booleans
/// as JSON writes them; arrays and objects have none.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

/// JSON equality that treats numbers equal as doubles as equal: JavaScript servers
/// (pouchdb-server, CouchDB views) hand `1.0` back as `1` and round integers beyond
/// 2^53, and such a value has not changed.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// Largest compiled size of a filter's regular expression (and of its lazy DFA's
/// cache), bytes: a filter is anyone's input (a `discover` message, a web form), and
/// `\w{200}c` compiles to megabytes that make every match slow. Typical filters
/// (`^6\.`, `web[0-9]+`) need a few kilobytes.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// How a [`Condition`] compares the value at its path.
#[derive(Debug, Clone)]
pub enum Op {
    /// `path?`: the path exists.
    Exists,
    /// `path=text`: the scalar (or an element of the array) equals `text`.
    Eq(String),
    /// `path!=text`: the path exists and [`Op::Eq`] does not hold.
    Ne(String),
    /// `path*=text`: a string containing `text`, an array holding it, an object with that key.
    Contains(String),
    /// `path~regex`: the scalar (or an element of the array) matches the regular expression.
    Matches(regex::Regex),
    /// `path!~regex`: the path exists and [`Op::Matches`] does not hold.
    NotMatches(regex::Regex),
    /// `path<x`, `path<=x`, `path>x`, `path>=x`, in the order [`compare`] defines:
    /// numbers numerically, package versions in Debian order, otherwise text.
    Cmp(std::cmp::Ordering, bool, String),
}

/// The one order of filter values (the CLI's `-W`, the web UI and discovery): numbers
/// numerically when both sides are numbers; Debian version order (epochs, `~`, as
/// `dpkg --compare-versions`) when both look like package versions (see
/// [`looks_like_version`]), so `3.0.7 < 3.0.20`; otherwise text (byte) order.
pub fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        if let Some(o) = x.partial_cmp(&y) {
            return o;
        }
    }
    if looks_like_version(a) && looks_like_version(b) {
        return compare_versions(a, b);
    }
    a.cmp(b)
}

/// A finite number as filters read one (`4`, `-2.5`, `1e3`); `None` otherwise.
fn number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Whether `s` has a Debian version's shape: an optional numeric epoch and `:`, an
/// upstream part that starts with a digit, an optional `-revision`; only letters,
/// digits and `. + ~ -` (`:` only after the epoch). `3.0.7`, `1:2.38-4`, `1.0~rc1`.
pub fn looks_like_version(s: &str) -> bool {
    let rest = match s.split_once(':') {
        Some((epoch, rest)) => {
            if epoch.is_empty() || !epoch.bytes().all(|c| c.is_ascii_digit()) {
                return false;
            }
            rest
        }
        None => s,
    };
    rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && !rest.ends_with('-')
        && rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".+~-".contains(&c))
}

/// Debian version order, dpkg's algorithm: epochs numerically, then upstream and
/// revision by `verrevcmp` (non-digit runs with letters before other characters and
/// `~` before everything, even the end; digit runs numerically).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let (ea, ua, ra) = split_version(a);
    let (eb, ub, rb) = split_version(b);
    // Compare epochs as digit strings of any length (no overflow): by numeric value.
    let ea = ea.trim_start_matches('0');
    let eb = eb.trim_start_matches('0');
    ea.len()
        .cmp(&eb.len())
        .then_with(|| ea.cmp(eb))
        .then_with(|| verrevcmp(ua, ub))
        .then_with(|| verrevcmp(ra, rb))
}

/// `(epoch, upstream, revision)`: the epoch before the first `:`, the revision after
/// the last `-` (empty when none, which dpkg orders as `0`).
fn split_version(v: &str) -> (&str, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => (e, r),
        _ => ("0", v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// dpkg's `verrevcmp`.
fn verrevcmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn order(c: u8) -> i32 {
        match c {
            0 => 0,
            c if c.is_ascii_digit() => 0,
            c if c.is_ascii_alphabetic() => i32::from(c),
            b'~' => -1,
            c => i32::from(c) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ac, bc) = (order(at(a, i)), order(at(b, j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == b'0' {
            i += 1;
        }
        while at(b, j) == b'0' {
            j += 1;
        }
        let mut first_diff = std::cmp::Ordering::Equal;
        while at(a, i).is_ascii_digit() && at(b, j).is_ascii_digit() {
            if first_diff.is_eq() {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if at(a, i).is_ascii_digit() {
            return std::cmp::Ordering::Greater;
        }
        if at(b, j).is_ascii_digit() {
            return std::cmp::Ordering::Less;
        }
        if !first_diff.is_eq() {
            return first_diff;
        }
    }
    std::cmp::Ordering::Equal
}

/// One filter on a node document: `facter.os.family=Debian`, `facter.kernelrelease~^6\.`.
#[derive(Debug, Clone)]
pub struct Condition {
    /// Where in the document.
    pub path: KeyPath,
    /// What must hold there.
    pub op: Op,
    text: String,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Condition {
    /// Parses `PATH=VALUE` (or `==`), `PATH!=VALUE`, `PATH*=VALUE`, `PATH~REGEX`, `PATH!~REGEX`,
    /// `PATH<VALUE`, `PATH<=VALUE`, `PATH>VALUE`, `PATH>=VALUE` or `PATH?`; spaces around
    /// the operator are allowed (`facter.os.family = Debian`, as the web form takes it).
    /// A comparison needs a value, and one that starts like a number must be a number
    /// or a version (`>=4 GB` is refused, not compared as text).
    ///
    /// A value in double quotes is taken without them, as in an expression
    /// (`facter.os.distro.description = "Debian GNU/Linux 12 (bookworm)"`; `\"` and
    /// `\\` inside), so a value reads the same whether or not the filter also has an
    /// `and`.
    pub fn parse(text: &str) -> Result<Condition, StoreError> {
        Condition::parse_with(text, true)
    }

    /// [`Condition::parse`]; `unquote` false for a condition inside an expression,
    /// whose tokens already took a quoted value's quotes off.
    fn parse_with(text: &str, unquote: bool) -> Result<Condition, StoreError> {
        let bad = |why: String| {
            StoreError::Invalid(format!(
                "bad filter {text:?}: {why} (examples: facter.os.family=Debian, facter.kernelrelease~^6\\., facter.processorcount>=4, dpkg.openssl<3.0.20, dpkg.openssl?)"
            ))
        };
        let trimmed = text.trim();
        // The path ends at the first operator character outside quotes.
        let mut in_quote = false;
        let mut split = None;
        for (i, c) in trimmed.char_indices() {
            match c {
                '"' => in_quote = !in_quote,
                '=' | '!' | '*' | '~' | '<' | '>' | '?' if !in_quote => {
                    split = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(at) = split else {
            return Err(bad("no operator".into()));
        };
        let path_text = trimmed[..at].trim_end();
        let path = KeyPath::parse(path_text).map_err(|e| bad(e.to_string()))?;
        let rest = &trimmed[at..];
        let (op, arg) = ["==", "!=", "!~", "*=", "<=", ">=", "=", "~", "<", ">", "?"]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|arg| (*op, arg)))
            .ok_or_else(|| bad(format!("unknown operator at {rest:?}")))?;
        let written = arg.trim_start();
        let arg = match unquote.then(|| unquoted(written)).flatten() {
            Some(inner) => inner,
            None => {
                // An unquoted value holding another comparison is a mistyped expression
                // (`a = x andd b = y`), which would match nothing without a word.
                let ops = ["=", "==", "!=", "<", "<=", ">", ">=", "~", "!~", "*="];
                if unquote && !matches!(op, "~" | "!~") {
                    if let Some(w) = written.split_whitespace().skip(1).find(|w| ops.contains(w)) {
                        return Err(bad(format!(
                            "the value {written:?} holds another comparison (`{w}`): join conditions with `and` or `or`, or quote the value"
                        )));
                    }
                }
                written.to_string()
            }
        };
        let op_text = if op == "==" { "=" } else { op };
        let compared = |arg: String| {
            if arg.is_empty() {
                return Err(bad(format!("nothing to compare with after `{op}`")));
            }
            let numeric_start = arg
                .trim_start_matches(['-', '+'])
                .starts_with(|c: char| c.is_ascii_digit() || c == '.');
            if numeric_start && number(&arg).is_none() && !looks_like_version(&arg) {
                return Err(bad(format!("{arg:?} is neither a number nor a version")));
            }
            Ok(arg)
        };
        use std::cmp::Ordering::*;
        let op = match op {
            "?" if arg.is_empty() => Op::Exists,
            "?" => return Err(bad("nothing may follow `?`".into())),
            "=" | "==" => Op::Eq(arg.clone()),
            "!=" => Op::Ne(arg.clone()),
            "*=" => Op::Contains(arg.clone()),
            "~" | "!~" => {
                let re = regex::RegexBuilder::new(&arg)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| bad(format!("bad regular expression: {e}")))?;
                if op == "~" {
                    Op::Matches(re)
                } else {
                    Op::NotMatches(re)
                }
            }
            "<" => Op::Cmp(Less, false, compared(arg.clone())?),
            "<=" => Op::Cmp(Less, true, compared(arg.clone())?),
            ">" => Op::Cmp(Greater, false, compared(arg.clone())?),
            ">=" => Op::Cmp(Greater, true, compared(arg.clone())?),
            _ => return Err(bad(format!("unknown operator {op:?}"))),
        };
        Ok(Condition {
            path,
            op,
            // As written (quotes kept), so it parses back the same.
            text: format!("{path_text}{op_text}{written}"),
        })
    }

    /// Whether a value found at the path (`None`: the path is missing) satisfies it.
    /// A missing path satisfies nothing, not even `!=`.
    pub fn test(&self, found: Option<&Value>) -> bool {
        let Some(v) = found else {
            return false;
        };
        let any = |f: &dyn Fn(&str) -> bool| match v {
            Value::Array(items) => items.iter().filter_map(scalar_text).any(|t| f(&t)),
            other => scalar_text(other).is_some_and(|t| f(&t)),
        };
        match &self.op {
            Op::Exists => true,
            Op::Eq(x) => any(&|t| t == x),
            Op::Ne(x) => !any(&|t| t == x),
            Op::Contains(x) => match v {
                Value::String(s) => s.contains(x.as_str()),
                Value::Array(items) => items.iter().filter_map(scalar_text).any(|t| &t == x),
                Value::Object(m) => m.contains_key(x),
                other => scalar_text(other).is_some_and(|t| t.contains(x.as_str())),
            },
            Op::Matches(re) => any(&|t| re.is_match(t)),
            Op::NotMatches(re) => !any(&|t| re.is_match(t)),
            Op::Cmp(want, or_equal, x) => any(&|t| {
                let o = compare(t, x);
                o == *want || (*or_equal && o.is_eq())
            }),
        }
    }
}

/// The text inside `text` when it is one double-quoted value as an expression writes it
/// (`"a \"b\""` is `a "b"`), else `None`.
fn unquoted(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().trim().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None
}

/// Writes `value` as a filter's quoted value: what [`Condition::parse`] and an
/// expression both read back as exactly `value` (links to the nodes with a value).
pub fn quote_value(value: &str) -> String {
    let mut out = String::from('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A filter with `and`, `or`, `not`, parentheses and `exists PATH` over conditions
/// (`(facter.os.family = Debian or facter.os.family = Ubuntu) and not dpkg.openssl < 3.0.20`):
/// `not` binds tightest, then `and`, then `or`. A value with spaces or parentheses is
/// quoted (`facter.os.distro.description = "Debian GNU/Linux 12 (bookworm)"`).
#[derive(Debug, Clone)]
pub enum Expr {
    /// One condition; a missing path satisfies none (so `not` of it holds).
    Cond(Condition),
    /// The inner filter does not hold.
    Not(Box<Expr>),
    /// Every one holds.
    All(Vec<Expr>),
    /// At least one holds.
    Any(Vec<Expr>),
}

/// A token of a filter expression and the column (1-based, in characters) it starts at.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open(usize),
    Close(usize),
    /// A word; `quoted` when it was written in double quotes (the quotes are gone).
    Word(String, bool, usize),
}

impl Token {
    fn column(&self) -> usize {
        match self {
            Token::Open(c) | Token::Close(c) | Token::Word(_, _, c) => *c,
        }
    }

    fn keyword(&self) -> Option<String> {
        match self {
            Token::Word(w, false, _) => {
                let k = w.to_ascii_lowercase();
                matches!(k.as_str(), "and" | "or" | "not" | "exists").then_some(k)
            }
            _ => None,
        }
    }
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open(col));
                i += 1;
            }
            ')' => {
                out.push(Token::Close(col));
                i += 1;
            }
            '"' => {
                let mut word = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!("a quote opened at column {col} is not closed"))
                        }
                        Some('\\') if chars.get(i + 1).is_some() => {
                            word.push(chars[i + 1]);
                            i += 2;
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            word.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Word(word, true, col));
            }
            _ => {
                // A bare word ends at a space outside quotes (a path may hold a quoted
                // segment: dpkg."libc6.1"), or at a `)` that closes nothing opened in it:
                // a regular expression's own parentheses stay in the word (`~^(5|6)\.`).
                let mut word = String::new();
                let mut in_quote = false;
                let mut depth = 0usize;
                while let Some(&ch) = chars.get(i) {
                    if !in_quote {
                        if ch.is_whitespace() || (ch == ')' && depth == 0) {
                            break;
                        }
                        if ch == '(' {
                            depth += 1;
                        } else if ch == ')' {
                            depth -= 1;
                        }
                    }
                    if ch == '"' {
                        in_quote = !in_quote;
                    }
                    word.push(ch);
                    i += 1;
                }
                out.push(Token::Word(word, false, col));
            }
        }
    }
    Ok(out)
}

impl Expr {
    /// Whether `text` is written in the expression syntax (a bare `and`, `or`, `not` or
    /// `exists`, or an opening parenthesis first) rather than as one condition, so a
    /// condition written before expressions existed (`facter.x~^(5|6)`) means the same.
    pub fn is_expression(text: &str) -> bool {
        text.trim_start().starts_with('(')
            || tokens(text).is_ok_and(|t| t.iter().any(|t| t.keyword().is_some()))
    }

    /// Parses an expression; an error names the column it is at.
    pub fn parse(text: &str) -> Result<Expr, StoreError> {
        let bad = |why: String| {
            StoreError::Invalid(format!(
                "bad filter {text:?}: {why} (example: (facter.os.family = Debian or facter.os.family = Ubuntu) and not exists facter.virtual)"
            ))
        };
        let toks = tokens(text).map_err(bad)?;
        let mut p = Parser {
            toks,
            at: 0,
            end: text.chars().count() + 1,
        };
        let e = p.any().map_err(&bad)?;
        if let Some(t) = p.toks.get(p.at) {
            return Err(bad(format!(
                "unexpected {} at column {}",
                describe(t),
                t.column()
            )));
        }
        Ok(e)
    }

    /// Every path the expression reads.
    pub fn paths(&self) -> Vec<&KeyPath> {
        match self {
            Expr::Cond(c) => vec![&c.path],
            Expr::Not(e) => e.paths(),
            Expr::All(v) | Expr::Any(v) => v.iter().flat_map(|e| e.paths()).collect(),
        }
    }

    /// Whether it holds, given the value found at each path (`None`: missing).
    pub fn eval(&self, value_at: &dyn Fn(&KeyPath) -> Option<Value>) -> bool {
        match self {
            Expr::Cond(c) => c.test(value_at(&c.path).as_ref()),
            Expr::Not(e) => !e.eval(value_at),
            Expr::All(v) => v.iter().all(|e| e.eval(value_at)),
            Expr::Any(v) => v.iter().any(|e| e.eval(value_at)),
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Open(_) => "`(`".into(),
        Token::Close(_) => "`)`".into(),
        Token::Word(w, _, _) => format!("{w:?}"),
    }
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
    /// The column just past the text, where a missing part is reported.
    end: usize,
}

impl Parser {
    fn peek_keyword(&self) -> Option<String> {
        self.toks.get(self.at).and_then(Token::keyword)
    }

    fn end_column(&self) -> usize {
        self.end
    }

    fn any(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.all()?];
        while self.peek_keyword().as_deref() == Some("or") {
            self.at += 1;
            parts.push(self.all()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Any(parts)
        })
    }

    fn all(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.unary()?];
        while self.peek_keyword().as_deref() == Some("and") {
            self.at += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::All(parts)
        })
    }

    fn unary(&mut self) -> Result<Expr, String> {
        let Some(t) = self.toks.get(self.at).cloned() else {
            return Err(format!(
                "a filter is missing at column {}",
                self.end_column()
            ));
        };
        match (t.keyword().as_deref(), &t) {
            (Some("not"), _) => {
                self.at += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            (Some("exists"), _) => {
                self.at += 1;
                match self.toks.get(self.at).cloned() {
                    Some(Token::Word(path, false, col))
                        if Token::Word(path.clone(), false, col).keyword().is_none() =>
                    {
                        self.at += 1;
                        Condition::parse(&format!("{path}?"))
                            .map(Expr::Cond)
                            .map_err(|e| format!("at column {col}: {e}"))
                    }
                    _ => Err(format!(
                        "`exists` at column {} needs a path after it",
                        t.column()
                    )),
                }
            }
            (Some(k), _) => Err(format!(
                "`{k}` at column {} needs a filter before it",
                t.column()
            )),
            (None, Token::Open(col)) => {
                self.at += 1;
                let e = self.any()?;
                match self.toks.get(self.at) {
                    Some(Token::Close(_)) => {
                        self.at += 1;
                        Ok(e)
                    }
                    _ => Err(format!("the `(` at column {col} is not closed")),
                }
            }
            (None, Token::Close(col)) => Err(format!("unexpected `)` at column {col}")),
            (None, Token::Word(..)) => self.condition(),
        }
    }

    /// Words up to the next keyword or parenthesis, as one condition.
    fn condition(&mut self) -> Result<Expr, String> {
        let col = self.toks[self.at].column();
        let mut text = String::new();
        while let Some(Token::Word(w, quoted, _)) = self.toks.get(self.at) {
            if self.toks[self.at].keyword().is_some() {
                break;
            }
            if !text.is_empty() {
                text.push(' ');
            }
            // A quoted value is taken as written, spaces and parentheses included.
            let _ = quoted;
            text.push_str(w);
            self.at += 1;
        }
        Condition::parse_with(&text, false)
            .map(Expr::Cond)
            .map_err(|e| format!("at column {col}: {e}"))
    }
}

/// Which nodes a question is about: all conditions hold (AND), the name matches one
/// of the globs (when any), and the last-seen bounds hold.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Filters on the document, all of which must hold.
    pub conditions: Vec<Condition>,
    /// Filters written with `and`, `or`, `not`, parentheses or `exists` (see
    /// [`Expr`]); each must hold, as the conditions do.
    pub expressions: Vec<Expr>,
    /// Node-name globs (`web*`, `db0?`); a node matching any of them is in.
    pub names: Vec<String>,
    /// Only nodes seen at or after this time.
    pub seen_since: Option<DateTime<Utc>>,
    /// Only nodes not seen since this time (stale nodes).
    pub not_seen_since: Option<DateTime<Utc>>,
    /// Deactivated nodes too (`node --names --all`); by default a query selects only
    /// the active fleet.
    pub include_inactive: bool,
}

impl Query {
    /// A query from filter texts (`facter.os.family=Debian`, see [`Condition::parse`])
    /// and node-name globs (repeated or comma-separated), as typed on command lines and
    /// sent in discovery requests; the first bad filter is the error.
    pub fn parse(filters: &[String], names: &[String]) -> Result<Query, StoreError> {
        let mut q = Query {
            names: names
                .iter()
                .flat_map(|n| n.split(','))
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
            ..Query::default()
        };
        for f in filters {
            q.add_filter(f)?;
        }
        Ok(q)
    }

    /// Adds one filter text: an expression ([`Expr`]) when it uses `and`, `or`, `not`,
    /// `exists` or parentheses, otherwise one condition ([`Condition::parse`]).
    pub fn add_filter(&mut self, text: &str) -> Result<(), StoreError> {
        if Expr::is_expression(text) {
            self.expressions.push(Expr::parse(text)?);
        } else {
            self.conditions.push(Condition::parse(text)?);
        }
        Ok(())
    }

    /// Whether any filter (condition or expression) narrows the nodes.
    pub fn has_filters(&self) -> bool {
        !(self.conditions.is_empty() && self.expressions.is_empty())
    }

    /// Compiles the name globs; a bad glob names itself.
    pub fn name_matcher(&self) -> Result<Option<globset::GlobSet>, StoreError> {
        if self.names.is_empty() {
            return Ok(None);
        }
        let mut b = globset::GlobSetBuilder::new();
        for n in &self.names {
            b.add(
                globset::GlobBuilder::new(n)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| {
                        StoreError::Invalid(format!("bad node name pattern {n:?}: {e}"))
                    })?,
            );
        }
        b.build()
            .map(Some)
            .map_err(|e| StoreError::Invalid(format!("bad node name patterns: {e}")))
    }

    /// Whether a node list line passes the name, activity and time bounds (not the
    /// conditions): a deactivated node only with `include_inactive`.
    pub fn admits(&self, n: &NodeSummary, names: Option<&globset::GlobSet>) -> bool {
        names.is_none_or(|g| g.is_match(&n.name))
            && (self.include_inactive || n.deactivated_at.is_none())
            && self.seen_since.is_none_or(|t| n.last_seen >= t)
            && self.not_seen_since.is_none_or(|t| n.last_seen < t)
    }
}

/// One leaf-level difference between two values, for change reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// Dotted path below the key (empty: the whole value).
    pub path: String,
    /// Value before; `None` when it was added.
    pub old: Option<Value>,
    /// Value after; `None` when it was removed.
    pub new: Option<Value>,
}

/// What changed between two values, member by member for objects (arrays and scalars
/// are compared whole), sorted by path.
pub fn diff(old: Option<&Value>, new: Option<&Value>) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_into(&mut String::new(), old, new, &mut out);
    out
}

/// A container's outline for reports (`"(added: 112 keys)"`, `"(added: 3 items)"`);
/// scalars stay themselves.
pub fn outline(v: &Value, what: &str) -> Value {
    match v {
        Value::Object(m) => Value::String(format!(
            "({what}: {} key{})",
            m.len(),
            if m.len() == 1 { "" } else { "s" }
        )),
        Value::Array(a) => Value::String(format!(
            "({what}: {} item{})",
            a.len(),
            if a.len() == 1 { "" } else { "s" }
        )),
        scalar => scalar.clone(),
    }
}

/// [`diff`] for change reports: a key that first appeared (or went away) whole is
/// one row saying so (`"(added: 112 keys)"`) instead of its whole value, which can be
/// tens of kilobytes (ohai); its value is one `vogeler-admin node NAME KEY` away.
pub fn report_diff(old: Option<&Value>, new: Option<&Value>) -> Vec<Difference> {
    let outline = |v: &Value, what: &str| Some(outline(v, what));
    match (old, new) {
        (None, Some(n)) => vec![Difference {
            path: String::new(),
            old: None,
            new: outline(n, "added"),
        }],
        (Some(o), None) => vec![Difference {
            path: String::new(),
            old: outline(o, "removed"),
            new: None,
        }],
        _ => diff(old, new),
    }
}

fn diff_into(
    path: &mut String,
    old: Option<&Value>,
    new: Option<&Value>,
    out: &mut Vec<Difference>,
) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                if k.contains('.') {
                    path.push('"');
                    path.push_str(k);
                    path.push('"');
                } else {
                    path.push_str(k);
                }
                diff_into(path, a.get(k), b.get(k), out);
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Difference {
            path: path.clone(),
            old: a.cloned(),
            new: b.cloned(),
        }),
    }
}

/// A stretch of time during which a path held one value on one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// The value (`None`: the path was absent).
    pub value: Option<Value>,
    /// When it appeared; `None` when it was there before the history begins.
    pub from: Option<DateTime<Utc>>,
    /// When it went away; `None` when it still holds.
    pub until: Option<DateTime<Utc>>,
}

/// The values a path took on one node over time, from the history of its root key
/// (oldest first): answers "when did openssl 3.0.11 first appear, when did it go".
pub fn timeline(path: &KeyPath, history: &[HistoryEntry]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for h in history.iter().filter(|h| h.key == path.root()) {
        let old = h.old.as_ref().and_then(|v| path.lookup(v)).cloned();
        let new = h.new.as_ref().and_then(|v| path.lookup(v)).cloned();
        if spans.is_empty() {
            spans.push(Span {
                value: old.clone(),
                from: None,
                until: None,
            });
        }
        if new == spans.last().and_then(|s| s.value.clone()) {
            continue;
        }
        if let Some(last) = spans.last_mut() {
            last.until = Some(h.at);
        }
        spans.push(Span {
            value: new,
            from: Some(h.at),
            until: None,
        });
    }
    // An absent value before history began says nothing: drop it.
    if spans
        .first()
        .is_some_and(|s| s.value.is_none() && s.from.is_none())
    {
        spans.remove(0);
    }
    spans
}

/// A node's record as it was at `at`, rewound from its current record through the
/// history entries after `at` (newest first). `None` when the node did not exist yet.
/// `last_seen` cannot be rewound and becomes the time of the record's last change.
pub fn rewind(
    current: NodeRecord,
    history: &[HistoryEntry],
    at: DateTime<Utc>,
) -> Option<NodeRecord> {
    let first = history
        .iter()
        .map(|h| h.at)
        .min()
        .unwrap_or(current.created_at);
    if current.created_at.min(first) > at {
        return None;
    }
    let mut rec = current;
    let mut keys: BTreeMap<String, Value> = std::mem::take(&mut rec.keys);
    let mut last_change = None;
    for h in history.iter().rev() {
        if h.at <= at {
            last_change = last_change.max(Some(h.at));
            continue;
        }
        if h.key == "last_error" {
            rec.last_error = h.old.clone();
        } else {
            match &h.old {
                Some(v) => keys.insert(h.key.clone(), v.clone()),
                None => keys.remove(&h.key),
            };
        }
    }
    rec.keys = keys;
    rec.keys_collected.retain(|k, _| rec.keys.contains_key(k));
    let updated = last_change.unwrap_or(rec.created_at).min(at);
    rec.updated_at = updated;
    rec.last_seen = updated;
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Evaluates `text` against one document.
    fn expr_holds(text: &str, doc: &Value) -> bool {
        let e = Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        e.eval(&|p: &KeyPath| p.find(doc).cloned())
    }

    /// Whether filter `text` (as `-W` or `where=` takes it) holds for `doc`.
    fn filter_holds(text: &str, doc: &Value) -> bool {
        let q = Query::parse(&[text.to_string()], &[]).unwrap_or_else(|e| panic!("{text}: {e}"));
        q.conditions.iter().all(|c| c.test(c.path.find(doc)))
            && q.expressions
                .iter()
                .all(|e| e.eval(&|p: &KeyPath| p.find(doc).cloned()))
    }

    #[test]
    fn a_quoted_value_reads_the_same_alone_and_in_an_expression() {
        let doc =
            json!({"os": {"family": "Debian", "d": "Debian GNU/Linux 12 (bookworm)"}, "k": "x"});
        for text in [
            r#"os.family = "Debian""#,
            r#"os.family="Debian""#,
            r#"os.d = "Debian GNU/Linux 12 (bookworm)""#,
            r#"os.d *= "GNU/Linux""#,
            r#"os.family = "Debian" and k = x"#,
            r#"os.d = "Debian GNU/Linux 12 (bookworm)" and exists k"#,
        ] {
            assert!(filter_holds(text, &doc), "{text}");
        }
        assert!(!filter_holds(r#"os.family = "Debia""#, &doc));
        // A mistyped keyword is an error, not a value that matches nothing.
        for text in [
            "os.family = Debian andd k = x",
            "os.family=Debian orr k != y",
        ] {
            let e = Query::parse(&[text.to_string()], &[])
                .expect_err(text)
                .to_string();
            assert!(e.contains("holds another comparison"), "{text}: {e}");
        }
        // Quoted, it is a value; a regular expression keeps its own `=`.
        assert!(Query::parse(&[r#"k = "a = b""#.to_string()], &[]).is_ok());
        assert!(Query::parse(&["k ~ ^a = b$".to_string()], &[]).is_ok());
        // A quote that does not close the value is part of it, as before.
        assert!(!filter_holds(r#"os.family = "Debian" x"#, &doc));
    }

    #[test]
    fn a_quoted_value_leads_back_to_exactly_that_value() {
        for value in [
            "plain",
            "with spaces",
            "dark \"red\" (x) and or",
            "back\\slash\\",
            "(",
            "not",
            "",
        ] {
            let doc = json!({"k": {"v": value}});
            let text = format!("k.v = {}", quote_value(value));
            assert!(filter_holds(&text, &doc), "{text}");
            let other = json!({"k": {"v": format!("{value}!")}});
            assert!(!filter_holds(&text, &other), "{text}");
        }
    }

    #[test]
    fn expressions_combine_conditions_with_and_or_not_and_parentheses() {
        let debian = json!({"facter": {"os": {"family": "Debian", "distro": {"description": "Debian GNU/Linux 12 (bookworm)"}}, "processorcount": 4}, "dpkg": {"openssl": "3.0.7-1"}});
        let redhat = json!({"facter": {"os": {"family": "RedHat"}, "processorcount": 16}});
        let e =
            "(facter.os.family = Debian or facter.os.family = Ubuntu) and dpkg.openssl < 3.0.20";
        assert!(expr_holds(e, &debian));
        assert!(!expr_holds(e, &redhat));
        // `not` of a missing path holds; `and` binds tighter than `or`.
        assert!(expr_holds("not exists dpkg", &redhat));
        assert!(!expr_holds("not exists dpkg", &debian));
        assert!(expr_holds(
            "facter.os.family = RedHat or facter.os.family = Debian and facter.processorcount > 8",
            &redhat
        ));
        assert!(!expr_holds(
            "facter.os.family = Debian and facter.processorcount > 8 or facter.os.family = Suse",
            &debian
        ));
        assert!(expr_holds("NOT facter.os.family ~ ^Red", &debian));
        assert!(expr_holds("facter.os.family !~ ^Red", &debian));
        assert!(!expr_holds("facter.os.family !~ ^Red", &redhat));
        // A quoted value keeps its spaces and parentheses.
        assert!(expr_holds(
            r#"facter.os.distro.description = "Debian GNU/Linux 12 (bookworm)" and exists dpkg"#,
            &debian
        ));
        // A condition alone is not an expression: a value may hold spaces as before.
        assert!(!Expr::is_expression(
            "facter.os.distro.description = Debian GNU/Linux 12"
        ));
        assert!(Expr::is_expression("not a=b"));
        assert!(!Expr::is_expression("facter.kernelrelease~^(5|6)\\."));
        // A regular expression's parentheses inside a condition stay its own.
        assert!(expr_holds(
            "(facter.os.family~^(Deb|Ubu) and exists dpkg)",
            &debian
        ));
        assert!(!expr_holds(
            "(facter.os.family~^(Red|Ubu)) or not exists dpkg",
            &debian
        ));
    }

    #[test]
    fn a_bad_expression_names_the_column() {
        for (text, want) in [
            ("(a=b or c=d", "column 1 is not closed"),
            ("a=b and", "missing at column 8"),
            ("a=b or or c=d", "`or` at column 8"),
            ("a=b ) or c=d", "unexpected `)` at column 5"),
            ("a=b and exists", "`exists` at column 9 needs a path"),
            ("a=b and c", "at column 9"),
            ("a=b and \"open", "column 9 is not closed"),
        ] {
            let err = Expr::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn paths_parse_with_quotes_and_name_their_errors() {
        let p = KeyPath::parse("dpkg.\"libc6.1\".x").expect("path");
        assert_eq!(p.root(), "dpkg");
        assert_eq!(p.rest(), ["libc6.1", "x"]);
        assert_eq!(p.to_string(), "dpkg.\"libc6.1\".x");
        for bad in ["", "a..b", "a.", "\"open", "\"a\"b"] {
            let e = KeyPath::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("bad key path"), "{e}");
        }
    }

    #[test]
    fn lookup_walks_objects_and_arrays() {
        let v = json!({"os": {"family": "Debian"}, "ips": ["10.0.0.1", "10.0.0.2"]});
        let p = KeyPath::parse("facter.os.family").expect("path");
        assert_eq!(p.lookup(&v), Some(&json!("Debian")));
        let p = KeyPath::parse("facter.ips.1").expect("path");
        assert_eq!(p.lookup(&v), Some(&json!("10.0.0.2")));
        let p = KeyPath::parse("facter.os.missing").expect("path");
        assert_eq!(p.lookup(&v), None);
    }

    fn holds(cond: &str, v: Value) -> bool {
        Condition::parse(cond).expect(cond).test(Some(&v))
    }

    #[test]
    fn conditions_compare_as_users_expect() {
        assert!(holds("f.x=Debian", json!("Debian")));
        assert!(!holds("f.x=Debian", json!("RedHat")));
        assert!(holds("f.x=4", json!(4)));
        assert!(holds("f.x=true", json!(true)));
        assert!(holds("f.x=b", json!(["a", "b"])));
        assert!(holds("f.x!=Debian", json!("RedHat")));
        assert!(holds("f.x*=bian", json!("Debian")));
        assert!(holds("f.x*=b", json!(["a", "b"])));
        assert!(holds("f.x*=os", json!({"os": 1})));
        assert!(holds("f.x~^6\\.", json!("6.1.0-13-amd64")));
        assert!(!holds("f.x~^6\\.", json!("5.10.0")));
        assert!(holds("f.x>=8", json!(16)));
        assert!(holds("f.x<10", json!("9")));
        assert!(!holds("f.x>9", json!(10.0 - 1.0)));
        assert!(holds("f.x?", json!(null)));
        assert!(!Condition::parse("f.x=1").expect("c").test(None));
        assert!(!Condition::parse("f.x!=1").expect("c").test(None));
    }

    #[test]
    fn heavy_regular_expressions_are_refused_by_size() {
        let e = Condition::parse(r"facter.x~\w{200}c")
            .expect_err("too big")
            .to_string();
        assert!(e.contains("bad regular expression"), "{e}");
        assert!(Condition::parse(r"facter.kernelrelease~^6\.[0-9]+-\w+$").is_ok());
    }

    #[test]
    fn one_comparison_rule_versions_numbers_text() {
        use std::cmp::Ordering::*;
        assert_eq!(compare("3.0.7", "3.0.20"), Less);
        assert_eq!(compare("1:1.0", "2.0"), Greater);
        assert_eq!(compare("1.0~rc1", "1.0"), Less);
        assert_eq!(compare("1.0-1", "1.0"), Greater);
        assert_eq!(compare("1.0-0", "1.0"), Equal);
        assert_eq!(compare("10", "9"), Greater);
        assert_eq!(compare("2.5", "10"), Less);
        assert_eq!(compare("Debian", "Alpine"), Greater);
        assert!(holds("dpkg.openssl<3.0.20", json!("3.0.7")));
        assert!(holds("dpkg.openssl>=3.0.11-1~deb12u2", json!("3.0.11-1")));
        assert!(!holds("dpkg.openssl>3.0.20", json!("3.0.7")));
        assert!(holds("f.x>=4", json!(16)));
    }

    #[test]
    fn spaces_and_double_equals_mean_the_same() {
        for text in ["a = b", "a==b", " a == b ", "a=b"] {
            let c = Condition::parse(text).expect(text);
            assert_eq!(c.to_string(), "a=b", "{text}");
            assert!(c.test(Some(&json!("b"))), "{text}");
        }
        let c = Condition::parse("facter.processorcount >= 4").expect("c");
        assert_eq!(c.to_string(), "facter.processorcount>=4");
        assert!(c.test(Some(&json!(8))));
    }

    #[test]
    fn a_comparison_with_a_bad_number_is_an_error() {
        for bad in ["f.x>=4 GB", "f.x<1,5", "f.x>", "f.x <= "] {
            let e = Condition::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("bad filter"), "{bad}: {e}");
        }
        assert!(Condition::parse("f.x>abc").is_ok());
    }

    #[test]
    fn bad_conditions_say_why() {
        for (bad, why) in [
            ("facter", "no operator"),
            ("f.x~(", "bad regular expression"),
            ("f.x?y", "nothing may follow"),
            (".x=1", "bad key path"),
        ] {
            let e = Condition::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn diffs_list_leaf_changes() {
        let d = diff(
            Some(&json!({"os": {"family": "Debian", "release": "11"}, "a": 1})),
            Some(&json!({"os": {"family": "Debian", "release": "12"}, "b": 2})),
        );
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["a", "b", "os.release"]);
        assert_eq!(d[2].old, Some(json!("11")));
        assert!(diff(None, None).is_empty());
        let added = report_diff(None, Some(&json!({"a": 1, "b": 2})));
        assert_eq!(added[0].new, Some(json!("(added: 2 keys)")));
        assert_eq!(
            report_diff(None, Some(&json!("x")))[0].new,
            Some(json!("x"))
        );
        assert_eq!(diff(None, Some(&json!(1)))[0].path, "");
    }

    fn entry(key: &str, old: Option<Value>, new: Option<Value>, t: i64) -> HistoryEntry {
        HistoryEntry {
            node: "n".into(),
            key: key.into(),
            old,
            new,
            at: DateTime::from_timestamp(t, 0).expect("time"),
        }
    }

    #[test]
    fn timelines_show_when_a_value_came_and_went() {
        let h = vec![
            entry("dpkg", None, Some(json!({"openssl": "3.0.1"})), 10),
            entry(
                "dpkg",
                Some(json!({"openssl": "3.0.1"})),
                Some(json!({"openssl": "3.0.1", "x": "1"})),
                20,
            ),
            entry(
                "dpkg",
                Some(json!({"openssl": "3.0.1"})),
                Some(json!({"openssl": "3.0.2"})),
                30,
            ),
            entry(
                "dpkg",
                Some(json!({"openssl": "3.0.2"})),
                Some(json!({})),
                40,
            ),
        ];
        let t = timeline(&KeyPath::parse("dpkg.openssl").expect("path"), &h);
        let at = |s| DateTime::from_timestamp(s, 0);
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(
            (t[0].value.clone(), t[0].from, t[0].until),
            (Some(json!("3.0.1")), at(10), at(30))
        );
        assert_eq!(
            (t[1].value.clone(), t[1].from, t[1].until),
            (Some(json!("3.0.2")), at(30), at(40))
        );
        assert_eq!(
            (t[2].value.clone(), t[2].from, t[2].until),
            (None, at(40), None)
        );
    }

    #[test]
    fn rewinding_restores_old_values() {
        let t = |s| DateTime::from_timestamp(s, 0).expect("time");
        let current = NodeRecord {
            name: "n".into(),
            created_at: t(10),
            updated_at: t(30),
            last_seen: t(50),
            last_error: Some(json!({"message": "boom"})),
            keys: [
                ("facter".to_string(), json!({"k": 2})),
                ("ps".to_string(), json!("p")),
            ]
            .into_iter()
            .collect(),
            keys_collected: BTreeMap::new(),
            unreadable: Vec::new(),
            deactivated_at: None,
        };
        let h = vec![
            entry("facter", None, Some(json!({"k": 1})), 10),
            entry("facter", Some(json!({"k": 1})), Some(json!({"k": 2})), 20),
            entry("ps", None, Some(json!("p")), 25),
            entry("last_error", None, Some(json!({"message": "boom"})), 30),
        ];
        assert!(rewind(current.clone(), &h, t(5)).is_none());
        let r = rewind(current.clone(), &h, t(15)).expect("existed");
        assert_eq!(r.keys.get("facter"), Some(&json!({"k": 1})));
        assert!(!r.keys.contains_key("ps"));
        assert_eq!(r.last_error, None);
        assert_eq!(r.updated_at, t(10));
        let r = rewind(current.clone(), &h, t(100)).expect("existed");
        assert_eq!(r.keys, current.keys);
    }
}
