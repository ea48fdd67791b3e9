//! Reports: the questions operators ask of the fleet, as tables, JSON or CSV.
//!
//! Each report is a [`Table`] built from the store's shared queries
//! (`vogeler_store::Store::select`, `values`, `packages`, `changes`), so the terminal,
//! scripts and the web UI get the same answers. JSON is an array of objects keyed by
//! the column names and CSV has them as its header: both are stable for scripts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use vogeler_store::{query, rfc3339, skipped_notice, DynStore, KeyPath, Query, Rows, Unreadable};

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns that fit the terminal.
    Table,
    /// An array of objects, one per row.
    Json,
    /// RFC 4180 CSV with a header line.
    Csv,
}

/// A report's rows under named columns; cells are JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names (also the JSON keys and the CSV header).
    pub columns: Vec<String>,
    /// One cell per column.
    pub rows: Vec<Vec<Value>>,
    /// A closing line for the table form ("3 node(s)").
    pub footer: String,
    /// Stored rows that did not read back and were left out (see [`Table::notice`]).
    pub skipped: usize,
}

impl Table {
    fn new(columns: &[&str]) -> Table {
        Table {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            footer: String::new(),
            skipped: 0,
        }
    }

    /// "1 unreadable row skipped (run vogeler-admin check)" when rows were left out:
    /// the table form prints it under the footer, the programs print it to stderr for
    /// JSON and CSV (whose shape scripts rely on).
    pub fn notice(&self) -> Option<String> {
        skipped_notice(self.skipped)
    }

    /// Prints the table in `format`; `width` bounds the table form (None: no bound).
    pub fn render(&self, format: Format, width: Option<usize>) -> anyhow::Result<String> {
        match format {
            Format::Json => {
                let rows: Vec<Value> = self
                    .rows
                    .iter()
                    .map(|r| {
                        Value::Object(
                            self.columns
                                .iter()
                                .zip(r)
                                .map(|(c, v)| (c.to_string(), v.clone()))
                                .collect::<Map<String, Value>>(),
                        )
                    })
                    .collect();
                Ok(format!("{}\n", serde_json::to_string_pretty(&rows)?))
            }
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(&self.columns)?;
                for r in &self.rows {
                    w.write_record(r.iter().map(cell_text))?;
                }
                Ok(String::from_utf8(w.into_inner()?)?)
            }
            Format::Table => Ok(self.render_table(width)),
        }
    }

    fn render_table(&self, width: Option<usize>) -> String {
        let header: Vec<String> = self.columns.iter().map(|c| c.to_uppercase()).collect();
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|v| one_line(&cell_text(v))).collect())
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in &cells {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        if let Some(limit) = width {
            fit(&mut widths, limit);
        }
        let mut out = String::new();
        for line in std::iter::once(&header).chain(cells.iter()) {
            let mut text = String::new();
            for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let c = truncate(c, *w);
                let pad = w.saturating_sub(c.chars().count());
                text.push_str(&c);
                if i + 1 < line.len() {
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        }
        if !self.footer.is_empty() {
            let _ = writeln!(out, "{}", self.footer);
        }
        if let Some(notice) = self.notice() {
            let _ = writeln!(out, "{notice}");
        }
        out
    }
}

/// Shrinks the widest columns until the row (with two-space gaps) fits `limit`.
fn fit(widths: &mut [usize], limit: usize) {
    let gaps = 2 * widths.len().saturating_sub(1);
    while widths.iter().sum::<usize>() + gaps > limit {
        let Some((i, &w)) = widths.iter().enumerate().max_by_key(|(_, w)| **w) else {
            return;
        };
        if w <= 8 {
            return;
        }
        widths[i] = w - 1;
    }
}

fn truncate(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

/// A cell as text: strings bare, null empty, lists comma-joined, the rest as JSON.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(cell_text).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// The width a table may use: the terminal's when stdout is one, else `$COLUMNS`, else none.
pub fn terminal_width() -> Option<usize> {
    if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size() {
        return Some(usize::from(w));
    }
    std::env::var("COLUMNS").ok()?.parse().ok()
}

/// Parses a point in time: RFC 3339 (`2026-11-01T12:00:00Z`), a date (`2026-11-01`,
/// midnight UTC) or an age before now (`90m`, `2h`, `7d`, `1week`).
pub fn parse_when(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(dt) = d.and_hms_opt(0, 0, 0) {
            return Ok(dt.and_utc());
        }
    }
    let age = humantime::parse_duration(t).map_err(|e| {
        anyhow::anyhow!(
            "bad time {text:?}: {e} (use an age like 2h or 7d, a date like 2026-11-01, or RFC 3339)"
        )
    })?;
    // An age past what a date can hold (`99999999999d`) is an error, not a panic.
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .with_context(|| format!("time {text:?} is too far back (before the year -262143)"))
}

/// The node list, narrowed by a query: name, last seen, plugins, last error.
pub async fn nodes(store: &DynStore, q: &Query) -> anyhow::Result<Table> {
    let mut t = Table::new(&["node", "last_seen", "plugins", "last_error"]);
    let selected = store.select(q).await?;
    t.skipped = selected.skipped.len();
    for n in selected.rows {
        t.rows.push(vec![
            json!(n.name),
            json!(rfc3339(n.last_seen)),
            json!(n.plugins),
            json!(n.last_error),
        ]);
    }
    t.footer = format!("{} node(s)", t.rows.len());
    Ok(t)
}

/// One row per selected node, one column per path (`report inventory --columns`):
/// the table people build by hand from several `report facts`. A node without a value
/// at a path has an empty cell; rows that did not read back are counted.
pub async fn inventory(store: &DynStore, columns: &[KeyPath], q: &Query) -> anyhow::Result<Table> {
    let mut header = vec!["node".to_string()];
    header.extend(columns.iter().map(|c| c.to_string()));
    let mut t = Table {
        columns: header,
        rows: Vec::new(),
        footer: String::new(),
        skipped: 0,
    };
    let selected = store.select(q).await?;
    let mut skipped = selected.skipped.len();
    let mut by_column = Vec::with_capacity(columns.len());
    for path in columns {
        let values = store.values(path).await?;
        skipped += values.skipped.len();
        by_column.push(values.rows.into_iter().collect::<HashMap<String, Value>>());
    }
    for n in selected.rows {
        let mut row = vec![json!(n.name)];
        row.extend(
            by_column
                .iter_mut()
                .map(|values| values.remove(&n.name).unwrap_or(Value::Null)),
        );
        t.rows.push(row);
    }
    t.skipped = skipped;
    t.footer = format!("{} node(s), {} column(s)", t.rows.len(), columns.len());
    Ok(t)
}

/// What differs between two nodes' documents (`vogeler-admin diff A B [PATH]`): each
/// leaf path with A's and B's value, `added` (only B has it), `removed` (only A) or
/// `changed`. Plugin keys only: times and `last_error` differ between any two nodes.
pub async fn diff_nodes(
    store: &DynStore,
    a: &str,
    b: &str,
    path: Option<&KeyPath>,
) -> anyhow::Result<Table> {
    let read = |name: &str| {
        let name = name.to_string();
        async move {
            store
                .node(&name)
                .await?
                .ok_or_else(|| crate::cli::no_such_node(&name))
        }
    };
    let (ra, rb) = (read(a).await?, read(b).await?);
    let keys = |r: &vogeler_store::NodeRecord| {
        Value::Object(r.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    };
    let (da, db) = (keys(&ra), keys(&rb));
    let (va, vb) = match path {
        None => (Some(&da), Some(&db)),
        Some(p) => (p.find(&da), p.find(&db)),
    };
    if path.is_some() && va.is_none() && vb.is_none() {
        return Err(crate::cli::not_found(format!(
            "neither {a} nor {b} has {}",
            path.map(|p| p.to_string()).unwrap_or_default()
        )));
    }
    let mut t = Table::new(&["path", "change", a, b]);
    let prefix = path.map(|p| p.to_string());
    for d in query::diff(va, vb) {
        let full = match (&prefix, d.path.is_empty()) {
            (Some(p), true) => p.clone(),
            (Some(p), false) => format!("{p}.{}", d.path),
            (None, _) => d.path.clone(),
        };
        let change = match (&d.old, &d.new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        t.rows.push(vec![
            json!(full),
            json!(change),
            d.old.unwrap_or(Value::Null),
            d.new.unwrap_or(Value::Null),
        ]);
    }
    t.footer = if t.rows.is_empty() {
        format!("{a} and {b} have the same values")
    } else {
        format!("{} difference(s) between {a} and {b}", t.rows.len())
    };
    Ok(t)
}

/// The values at `path` across the selected nodes, each with its nodes, most
/// common first: the data behind `report facts`, the API's stats and the web charts.
/// Rows that did not read back are counted in `skipped`.
pub async fn value_groups(
    store: &DynStore,
    path: &KeyPath,
    q: &Query,
) -> anyhow::Result<Rows<(Value, Vec<String>)>> {
    let mut out = Rows::default();
    let selected = selected_names(store, q, &mut out.skipped).await?;
    let mut groups: BTreeMap<String, (Value, Vec<String>)> = BTreeMap::new();
    // Read shared (the web cache's one copy); only group members are copied.
    let values = store.values_shared(path).await?;
    out.skipped.extend(values.skipped.iter().cloned());
    for (node, v) in &values.rows {
        if selected.as_ref().is_some_and(|s| !s.contains(node)) {
            continue;
        }
        groups
            .entry(v.to_string())
            .or_insert_with(|| (v.clone(), Vec::new()))
            .1
            .push(node.clone());
    }
    let mut groups: Vec<(Value, Vec<String>)> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(a.0.to_string().cmp(&b.0.to_string()))
    });
    out.rows = groups;
    Ok(out)
}

/// Nodes grouped by the value at `path`: each value with its count and members,
/// most common first.
pub async fn facts(store: &DynStore, path: &KeyPath, q: &Query) -> anyhow::Result<Table> {
    let groups = value_groups(store, path, q).await?;
    let mut t = Table::new(&["value", "count", "nodes"]);
    t.skipped = groups.skipped.len();
    let total: usize = groups.rows.iter().map(|g| g.1.len()).sum();
    for (v, members) in groups.rows {
        t.rows.push(vec![v, json!(members.len()), json!(members)]);
    }
    t.footer = format!(
        "{total} node(s) have {path}; {} distinct value(s)",
        t.rows.len()
    );
    Ok(t)
}

/// Which nodes have a package, with the version and the plugin that reported it.
pub async fn package(store: &DynStore, name: &str, q: &Query) -> anyhow::Result<Table> {
    let mut skipped = Vec::new();
    let selected = selected_names(store, q, &mut skipped).await?;
    let mut t = Table::new(&["node", "version", "plugin"]);
    let found = store.packages(name).await?;
    t.skipped = skipped.len() + found.skipped.len();
    for (node, plugin, version) in found.rows {
        if selected.as_ref().is_some_and(|s| !s.contains(&node)) {
            continue;
        }
        t.rows.push(vec![json!(node), version, json!(plugin)]);
    }
    t.footer = format!("{} node(s) have {name}", t.rows.len());
    Ok(t)
}

/// Nodes not seen since `since`, oldest first, with how long ago.
pub async fn stale(
    store: &DynStore,
    since: DateTime<Utc>,
    q: &Query,
    now: DateTime<Utc>,
) -> anyhow::Result<Table> {
    let mut q = q.clone();
    q.not_seen_since = Some(since);
    let selected = store.select(&q).await?;
    let mut nodes = selected.rows;
    nodes.sort_by_key(|n| n.last_seen);
    let mut t = Table::new(&["node", "last_seen", "age"]);
    t.skipped = selected.skipped.len();
    for n in nodes {
        let age = (now - n.last_seen).to_std().unwrap_or_default();
        let age = humantime::format_duration(std::time::Duration::from_secs(age.as_secs()));
        t.rows.push(vec![
            json!(n.name),
            json!(rfc3339(n.last_seen)),
            json!(age.to_string()),
        ]);
    }
    t.footer = format!("{} node(s) not seen since {}", t.rows.len(), rfc3339(since));
    Ok(t)
}

/// Nodes whose last result was an error: the plugin, the message and when.
pub async fn errors(store: &DynStore, q: &Query) -> anyhow::Result<Table> {
    let mut skipped = Vec::new();
    let selected = selected_names(store, q, &mut skipped).await?;
    let path = KeyPath::parse("last_error")?;
    let mut t = Table::new(&["node", "plugin", "message", "at"]);
    let found = store.values(&path).await?;
    t.skipped = skipped.len() + found.skipped.len();
    for (node, e) in found.rows {
        if selected.as_ref().is_some_and(|s| !s.contains(&node)) {
            continue;
        }
        t.rows.push(vec![
            json!(node),
            e.get("plugin").cloned().unwrap_or(Value::Null),
            e.get("message").cloned().unwrap_or(Value::Null),
            e.get("at").cloned().unwrap_or(Value::Null),
        ]);
    }
    t.footer = format!("{} node(s) with an error", t.rows.len());
    Ok(t)
}

/// The request ledger: the most recent requests (newest first) with how many of
/// their expected nodes stored a result, answered with a stale one (older than the
/// value stored), answered with an error, or are missing.
pub async fn requests(store: &DynStore, limit: usize, now: DateTime<Utc>) -> anyhow::Result<Table> {
    use vogeler_store::NodeOutcome;
    let mut t = Table::new(&[
        "id", "sent_at", "command", "expected", "stored", "stale", "errors", "missing", "state",
    ]);
    for l in store.ledgers(limit, now).await? {
        t.rows.push(vec![
            json!(l.request.id),
            json!(rfc3339(l.request.sent_at)),
            json!(l.request.command),
            json!(l.expected),
            json!(l.count(NodeOutcome::Stored)),
            json!(l.count(NodeOutcome::Stale)),
            json!(l.count(NodeOutcome::Error)),
            json!(l.count(NodeOutcome::Missing)),
            json!(l.state.as_str()),
        ]);
    }
    t.footer = format!("{} request(s)", t.rows.len());
    Ok(t)
}

/// One request's ledger: each expected or answering node and what became of it
/// (stored, error with its message, pending, missing, unexpected).
pub async fn request(store: &DynStore, id: &str, now: DateTime<Utc>) -> anyhow::Result<Table> {
    let id = resolve_request_id(store, id).await?;
    let Some(l) = store.ledger(&id, now).await? else {
        return Err(crate::cli::not_found(format!(
            "no request with id {id:?} is recorded (see `vogeler-admin requests` for the list)"
        )));
    };
    let mut t = Table::new(&["node", "outcome", "error", "at"]);
    for n in &l.nodes {
        t.rows.push(vec![
            json!(n.node),
            json!(n.outcome.as_str()),
            n.error.as_ref().map(|e| json!(e)).unwrap_or(Value::Null),
            n.at.map(|a| json!(rfc3339(a))).unwrap_or(Value::Null),
        ]);
    }
    let r = &l.request;
    t.footer = format!(
        "request {} ({}) sent {} by {}, ttl {} s: {}",
        r.id,
        r.command,
        rfc3339(r.sent_at),
        r.sender,
        r.ttl,
        l.state.as_str()
    );
    Ok(t)
}

/// Most recent requests searched for an id prefix.
const PREFIX_SEARCH: usize = 100_000;

/// The request id `id` names: itself when recorded, else the one recorded id it is a
/// prefix of (`5f0c`, as people copy it). Several matches are a usage error listing
/// them; none is an error naming the id.
pub async fn resolve_request_id(store: &DynStore, id: &str) -> anyhow::Result<String> {
    if id.is_empty() || store.ledger_request(id).await?.is_some() {
        return Ok(id.to_string());
    }
    let matches: Vec<String> = store
        .ledger_requests(PREFIX_SEARCH)
        .await?
        .into_iter()
        .map(|r| r.id)
        .filter(|r| r.starts_with(id))
        .collect();
    match matches.as_slice() {
        [] => Err(crate::cli::not_found(format!(
            "no request with id {id:?} is recorded (see `vogeler-admin requests` for the list)"
        ))),
        [one] => Ok(one.clone()),
        many => Err(crate::cli::usage(format!(
            "request id prefix {id:?} is ambiguous; it starts {} requests: {}",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// What changed across the fleet since `since`: one row per changed leaf value.
pub async fn changes(
    store: &DynStore,
    since: DateTime<Utc>,
    limit: usize,
    q: &Query,
) -> anyhow::Result<Table> {
    let mut skipped = Vec::new();
    let selected = selected_names(store, q, &mut skipped).await?;
    let mut t = Table::new(&["at", "node", "key", "path", "old", "new"]);
    let entries = store.change_outlines(since, limit).await?;
    t.skipped = skipped.len() + entries.skipped.len();
    // The limit is on changed keys read; the footer counts what is shown.
    let limit_reached = entries.rows.len() + entries.skipped.len() == limit;
    let mut keys = 0;
    for h in entries.rows {
        if selected.as_ref().is_some_and(|s| !s.contains(&h.node)) {
            continue;
        }
        keys += 1;
        for d in query::report_diff(h.old.as_ref(), h.new.as_ref()) {
            t.rows.push(vec![
                json!(rfc3339(h.at)),
                json!(h.node),
                json!(h.key),
                json!(d.path),
                d.old.unwrap_or(Value::Null),
                d.new.unwrap_or(Value::Null),
            ]);
        }
    }
    t.footer = format!(
        "{} changed value(s) in {keys} changed key(s) since {}{}",
        t.rows.len(),
        rfc3339(since),
        if limit_reached {
            " (limit reached: raise --limit)"
        } else {
            ""
        }
    );
    Ok(t)
}

/// What `report changes --follow` has shown: the newest change's time, and the rows
/// at that time (the next question starts there, so they come back and are skipped).
pub struct Follow {
    since: DateTime<Utc>,
    at_since: std::collections::HashSet<Vec<Value>>,
}

impl Follow {
    /// Starts at `since`: every row from then on is new once.
    pub fn new(since: DateTime<Utc>) -> Follow {
        Follow {
            since,
            at_since: Default::default(),
        }
    }

    /// Where the next question starts.
    pub fn since(&self) -> DateTime<Utc> {
        self.since
    }

    fn absorb(&mut self, t: &Table) -> Vec<Vec<Value>> {
        let mut fresh = Vec::new();
        for row in &t.rows {
            let Some(at) = row
                .first()
                .and_then(Value::as_str)
                .and_then(|a| DateTime::parse_from_rfc3339(a).ok())
                .map(|a| a.with_timezone(&Utc))
            else {
                continue;
            };
            if at < self.since || (at == self.since && self.at_since.contains(row)) {
                continue;
            }
            if at > self.since {
                self.since = at;
                self.at_since.clear();
            }
            self.at_since.insert(row.clone());
            fresh.push(row.clone());
        }
        fresh
    }

    /// The rows of `t` not shown yet, one line each in `format` (table: cells
    /// separated by two spaces; JSON: one object a line; CSV: one record).
    pub fn new_lines(&mut self, t: &Table, format: Format) -> anyhow::Result<Vec<String>> {
        let fresh = self.absorb(t);
        let mut out = Vec::with_capacity(fresh.len());
        for row in fresh {
            out.push(match format {
                Format::Json => Value::Object(
                    t.columns
                        .iter()
                        .cloned()
                        .zip(row.iter().cloned())
                        .collect::<Map<String, Value>>(),
                )
                .to_string(),
                Format::Csv => {
                    let mut w = csv::Writer::from_writer(Vec::new());
                    w.write_record(row.iter().map(cell_text))?;
                    String::from_utf8(w.into_inner()?)?.trim_end().to_string()
                }
                Format::Table => row
                    .iter()
                    .map(|v| one_line(&cell_text(v)))
                    .collect::<Vec<_>>()
                    .join("  "),
            });
        }
        Ok(out)
    }
}

/// One node's history: every change with its leaf differences, or with a path, the
/// values it took and when each appeared and went away.
pub async fn history(
    store: &DynStore,
    node: &str,
    path: Option<&KeyPath>,
) -> anyhow::Result<Table> {
    if store.node(node).await?.is_none() {
        return Err(crate::cli::no_such_node(node));
    }
    if let Some(path) = path {
        let mut t = Table::new(&["value", "from", "until"]);
        let spans = store.timeline(node, path).await?;
        t.skipped = spans.skipped.len();
        for s in spans.rows {
            t.rows.push(vec![
                s.value.unwrap_or(Value::Null),
                s.from
                    .map(|t| json!(rfc3339(t)))
                    .unwrap_or(json!("(before history)")),
                s.until.map(|t| json!(rfc3339(t))).unwrap_or(json!("(now)")),
            ]);
        }
        t.footer = format!("{} value(s) of {path} on {node}", t.rows.len());
        return Ok(t);
    }
    let mut t = Table::new(&["at", "key", "path", "old", "new"]);
    let entries = store.history(node, None).await?;
    t.skipped = entries.skipped.len();
    let entries = entries.rows;
    for h in &entries {
        for d in query::report_diff(h.old.as_ref(), h.new.as_ref()) {
            t.rows.push(vec![
                json!(rfc3339(h.at)),
                json!(h.key),
                json!(d.path),
                d.old.unwrap_or(Value::Null),
                d.new.unwrap_or(Value::Null),
            ]);
        }
    }
    t.footer = format!("{} change(s) of {node}", entries.len());
    Ok(t)
}

/// The names a query selects, or `None` when it selects every node (no filtering
/// needed: no filter, no name or time bound, and every node active); rows the
/// selection could not read are added to `skipped`.
pub(crate) async fn selected_names(
    store: &DynStore,
    q: &Query,
    skipped: &mut Vec<Unreadable>,
) -> anyhow::Result<Option<std::collections::HashSet<String>>> {
    let unbounded = !q.has_filters()
        && q.names.is_empty()
        && q.seen_since.is_none()
        && q.not_seen_since.is_none();
    // Deactivated nodes are out of every report unless the query lets them in.
    if unbounded && (q.include_inactive || !store.any_deactivated().await?) {
        return Ok(None);
    }
    let selected = store.select_shared(q).await?;
    skipped.extend(selected.skipped);
    Ok(Some(
        selected
            .picked
            .iter()
            .map(|&i| selected.nodes[i].name.clone())
            .collect(),
    ))
}

/// Builds a query from `-W` filters and `-n` node globs (repeated or comma lists).
pub fn query(filters: &[String], names: &[String]) -> anyhow::Result<Query> {
    Ok(Query::parse(filters, names)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            columns: vec!["node".into(), "value".into()],
            rows: vec![
                vec![json!("web01"), json!("Debian, \"stable\"")],
                vec![json!("db01"), json!(["a", "b"])],
                vec![json!("x"), Value::Null],
            ],
            footer: "3 node(s)".into(),
            skipped: 0,
        }
    }

    #[test]
    fn json_rows_are_objects_keyed_by_column() {
        let out = table().render(Format::Json, None).expect("json");
        let v: Value = serde_json::from_str(&out).expect("parses");
        assert_eq!(v[0]["node"], "web01");
        assert_eq!(v[1]["value"], json!(["a", "b"]));
        assert!(v[2]["value"].is_null());
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let out = table().render(Format::Csv, None).expect("csv");
        assert_eq!(
            out,
            "node,value\nweb01,\"Debian, \"\"stable\"\"\"\ndb01,\"a,b\"\nx,\n"
        );
    }

    #[test]
    fn tables_fit_the_width_given() {
        let mut t = table();
        t.rows[0][1] = json!("x".repeat(200));
        let out = t.render(Format::Table, Some(40)).expect("table");
        for line in out.lines() {
            assert!(line.chars().count() <= 40, "{line:?}");
        }
        assert!(out.contains('…'));
        let wide = t.render(Format::Table, None).expect("table");
        assert!(wide.lines().any(|l| l.len() > 200));
        assert!(out.starts_with("NODE"));
        assert!(out.ends_with("3 node(s)\n"));
    }

    #[test]
    fn times_parse_as_ages_dates_and_rfc3339() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let at = |s: &str| rfc3339(parse_when(s, now).expect(s));
        assert_eq!(at("2h"), "2026-11-25T10:00:00.000000Z");
        assert_eq!(at("7d"), "2026-11-18T12:00:00.000000Z");
        assert_eq!(at("2026-11-01"), "2026-11-01T00:00:00.000000Z");
        assert_eq!(
            at("2026-11-01T08:00:00+01:00"),
            "2026-11-01T07:00:00.000000Z"
        );
        let e = parse_when("yesterdayish", now)
            .expect_err("bad")
            .to_string();
        assert!(e.contains("bad time \"yesterdayish\""), "{e}");
        // Ages past what a date holds are errors, never a panic.
        for far in ["99999999999d", "300000y", "18446744073709551615s"] {
            let e = parse_when(far, now).expect_err(far).to_string();
            assert!(
                e.contains("too far back") || e.contains("bad time"),
                "{far}: {e}"
            );
        }
    }

    #[test]
    fn filters_and_name_lists_build_a_query() {
        let q = query(
            &["facter.os.family=Debian".into()],
            &["web*,db01".into(), "x".into()],
        )
        .expect("query");
        assert_eq!(q.conditions.len(), 1);
        assert_eq!(q.names, ["web*", "db01", "x"]);
        assert!(query(&["nonsense".into()], &[]).is_err());
    }
}
