//! A node's stored values as HTML on its page: collapsible trees whose leaf keys link
//! to their history, lists as tables, command output with a header line (`ps -ef`)
//! as a real table, and the key filter that cuts a tree down to the keys matching a
//! substring, server-side, so it works with JavaScript off.

use maud::{html, Markup};
use serde_json::{Map, Value};
use vogeler_store::KeyPath;

/// Rows of command output shown at most (a `ps` of a busy host); the rest is counted.
pub const MAX_TABLE_ROWS: usize = 2000;

/// Characters of one cell shown at most (a long command line).
pub const MAX_CELL_CHARS: usize = 300;

/// Columns a command output header may have; more, and it is not taken for a header.
const MAX_HEADER_COLUMNS: usize = 24;

/// A section with more leaves than this starts collapsed (ohai's 2,800, dpkg's 770).
pub const OPEN_LEAVES: usize = 250;

/// What every link of a tree needs: whose page it is on.
pub struct Tree<'a> {
    /// The node, for the history links.
    pub node: &'a str,
    /// A key filter is on: every subtree of what is left is shown open.
    pub filtered: bool,
}

/// How many scalar leaves a value has (an empty object or list counts as one).
pub fn leaves(v: &Value) -> usize {
    match v {
        Value::Object(m) if !m.is_empty() => m.values().map(leaves).sum(),
        Value::Array(a) if !a.is_empty() => a.iter().map(leaves).sum(),
        _ => 1,
    }
}

/// The parts of `v` whose dotted path (starting with `path`, the plugin key) contains
/// `needle` (already lower case), with the keys above them; a key that matches keeps
/// its whole value. Kept list items become an object keyed by their index, so the
/// index (and the history link) stays right. `None` when nothing matches.
pub fn filter_keys(v: &Value, path: &str, needle: &str) -> Option<Value> {
    if path.to_lowercase().contains(needle) {
        return Some(v.clone());
    }
    let kept: Map<String, Value> = match v {
        Value::Object(m) => m
            .iter()
            .filter_map(|(k, v)| {
                filter_keys(v, &format!("{path}.{k}"), needle).map(|v| (k.clone(), v))
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                filter_keys(v, &format!("{path}.{i}"), needle).map(|v| (i.to_string(), v))
            })
            .collect(),
        _ => return None,
    };
    (!kept.is_empty()).then_some(Value::Object(kept))
}

/// The history page of the value at `segments`, when they make a path that reads back
/// (a key holding `"` cannot be written as one).
fn history_link(node: &str, segments: &[String]) -> Option<String> {
    let path = KeyPath::from_segments(segments.to_vec()).ok()?;
    let text = path.to_string();
    (KeyPath::parse(&text).ok()? == path).then(|| {
        format!(
            "/nodes/{}/history?path={}",
            super::pages::enc(node),
            super::pages::enc(&text)
        )
    })
}

/// The history link of a whole plugin key (its changes over time).
pub fn key_history_link(node: &str, key: &str) -> Option<String> {
    history_link(node, &[key.to_string()])
}

pub(crate) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{12 keys}`, `[3 items]` or the scalar itself: what a collapsed subtree says.
pub fn summary_of(v: &Value) -> String {
    match v {
        Value::Object(m) => format!("{{{} keys}}", m.len()),
        Value::Array(a) => format!("[{} items]", a.len()),
        other => scalar(other),
    }
}

pub(crate) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

impl Tree<'_> {
    /// `v`, found at `path` (plugin key first), as a collapsible tree: objects as
    /// nested `<details>`, lists as tables, each leaf's key a link to its history.
    pub fn render(&self, v: &Value, path: &mut Vec<String>) -> Markup {
        match v {
            Value::Object(m) => html! {
                ul.tree {
                    @for (k, v) in m {
                        li {
                            @let nested = v.is_object() || v.as_array().is_some_and(|a| !a.is_empty());
                            @if nested {
                                details open[self.filtered || (path.len() == 1 && m.len() <= 40)] {
                                    summary { span.k { (k) } " " span.muted { (summary_of(v)) } }
                                    (self.descend(v, path, k))
                                }
                            } @else {
                                (self.leaf_key(path, k)) ": " span.v { (scalar(v)) }
                            }
                        }
                    }
                }
            },
            Value::Array(items) => self.list(items, path),
            other => html! { span.v { (scalar(other)) } },
        }
    }

    fn descend(&self, v: &Value, path: &mut Vec<String>, step: &str) -> Markup {
        path.push(step.to_string());
        let out = self.render(v, path);
        path.pop();
        out
    }

    fn leaf_key(&self, path: &mut Vec<String>, k: &str) -> Markup {
        path.push(k.to_string());
        let link = history_link(self.node, path);
        path.pop();
        match link {
            Some(href) => html! { a.k href=(href) title="history of this value" { (k) } },
            None => html! { span.k { (k) } },
        }
    }

    /// Command output with a header line as a table of its columns; lists of scalars as
    /// one column, lists of flat objects as a table of their keys.
    fn list(&self, items: &[Value], path: &mut Vec<String>) -> Markup {
        if let Some(columns) = header_columns(items) {
            return command_table(&columns, &items[1..]);
        }
        let flat_objects = !items.is_empty()
            && items.iter().all(|i| {
                i.as_object()
                    .is_some_and(|m| m.values().all(|v| !v.is_object() && !v.is_array()))
            });
        if flat_objects {
            let mut cols: Vec<&String> = Vec::new();
            for i in items {
                for k in i.as_object().into_iter().flat_map(|m| m.keys()) {
                    if !cols.contains(&k) {
                        cols.push(k);
                    }
                }
            }
            return html! {
                table.list {
                    thead { tr { @for c in &cols { th { (c) } } } }
                    tbody { @for i in items { tr { @for c in &cols { td { (i.get(c.as_str()).map(scalar).unwrap_or_default()) } } } } }
                }
            };
        }
        html! {
            table.list {
                tbody {
                    @for (n, i) in items.iter().enumerate() {
                        tr {
                            td.muted { (n) }
                            td {
                                @if i.is_object() || i.is_array() {
                                    (self.descend(i, path, &n.to_string()))
                                } @else {
                                    (scalar(i))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The column names of command output stored as lines (`result_format = output`)
/// whose first line is a header of upper-case names, as `ps -ef` prints
/// (`UID PID PPID C STIME TTY TIME CMD`); `None` for any other list.
pub fn header_columns(items: &[Value]) -> Option<Vec<String>> {
    let first = items.first()?.as_str()?;
    if items.len() < 2 || !items.iter().all(Value::is_string) {
        return None;
    }
    let columns: Vec<String> = first.split_whitespace().map(String::from).collect();
    let header_like = |c: &String| {
        c.chars().any(|ch| ch.is_ascii_uppercase())
            && c.chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || "%_-+:".contains(ch))
    };
    ((2..=MAX_HEADER_COLUMNS).contains(&columns.len()) && columns.iter().all(header_like))
        .then_some(columns)
}

/// A line cut into `n` fields at runs of white space, the last field taking the rest
/// (a command line with its spaces); missing fields are empty.
pub fn split_row(line: &str, n: usize) -> Vec<&str> {
    let mut fields = Vec::with_capacity(n);
    let mut rest = line.trim();
    while fields.len() + 1 < n && !rest.is_empty() {
        match rest.find(char::is_whitespace) {
            Some(end) => {
                fields.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            None => {
                fields.push(rest);
                rest = "";
            }
        }
    }
    fields.push(rest);
    fields.resize(n.max(1), "");
    fields
}

/// Lines under a header as a table: at most [`MAX_TABLE_ROWS`] rows, each cell cut to
/// [`MAX_CELL_CHARS`].
fn command_table(columns: &[String], lines: &[Value]) -> Markup {
    html! {
        table.command {
            thead { tr { @for c in columns { th { (c) } } } }
            tbody {
                @for line in lines.iter().take(MAX_TABLE_ROWS) {
                    tr {
                        @for cell in split_row(line.as_str().unwrap_or_default(), columns.len()) {
                            td { (truncate(cell, MAX_CELL_CHARS)) }
                        }
                    }
                }
            }
        }
        p.muted {
            (lines.len()) " row(s)"
            @if lines.len() > MAX_TABLE_ROWS { ", the first " (MAX_TABLE_ROWS) " shown" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ps_output_reads_as_a_table() {
        let ps = json!([
            "UID          PID    PPID  C STIME TTY          TIME CMD",
            "root           1       0  0 Nov30 ?        00:00:04 /sbin/init splash",
            "www-data    1234       1  0 10:02 ?        00:00:00 nginx: worker process",
        ]);
        let items = ps.as_array().expect("list");
        let cols = header_columns(items).expect("a header");
        assert_eq!(
            cols,
            ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        );
        let row = split_row(items[2].as_str().expect("line"), cols.len());
        assert_eq!(
            row,
            [
                "www-data",
                "1234",
                "1",
                "0",
                "10:02",
                "?",
                "00:00:00",
                "nginx: worker process"
            ]
        );
        assert_eq!(split_row("a b", 4), ["a", "b", "", ""]);
        assert_eq!(split_row("", 2), ["", ""]);
        // Package lists and other line output are not tables.
        assert!(
            header_columns(json!(["openssl 3.0", "libc6 2.36"]).as_array().expect("l")).is_none()
        );
        assert!(header_columns(json!(["PID CMD"]).as_array().expect("l")).is_none());
        assert!(header_columns(json!(["PID CMD", 3]).as_array().expect("l")).is_none());
        let html = command_table(&cols, &items[1..]).into_string();
        assert!(html.contains("<td>/sbin/init splash</td>"), "{html}");
        assert!(html.contains("<th>CMD</th>"), "{html}");
    }

    #[test]
    fn command_tables_are_bounded_and_escaped() {
        let mut lines = vec![json!("PID CMD")];
        lines.extend(
            (0..MAX_TABLE_ROWS + 5).map(|i| json!(format!("{i} <script>{}", "x".repeat(1000)))),
        );
        let html = command_table(&["PID".into(), "CMD".into()], &lines[1..]).into_string();
        assert_eq!(html.matches("<tr>").count(), MAX_TABLE_ROWS + 1);
        assert!(!html.contains("<script>"));
        assert!(html.contains(&format!("the first {MAX_TABLE_ROWS} shown")));
        assert!(!html.contains(&"x".repeat(MAX_CELL_CHARS)));
    }

    #[test]
    fn the_key_filter_keeps_matching_keys_and_their_parents() {
        let v = json!({"os": {"family": "Debian", "name": "Debian"}, "kernel": "6.1", "disks": [{"size": 1}, {"name": "sda"}]});
        assert_eq!(
            filter_keys(&v, "facter", "family"),
            Some(json!({"os": {"family": "Debian"}}))
        );
        assert_eq!(
            filter_keys(&v, "facter", "facter.os"),
            Some(json!({"os": {"family": "Debian", "name": "Debian"}}))
        );
        assert_eq!(
            filter_keys(&v, "facter", "name"),
            Some(json!({"os": {"name": "Debian"}, "disks": {"1": {"name": "sda"}}}))
        );
        assert_eq!(filter_keys(&v, "facter", "nothing"), None);
        assert_eq!(filter_keys(&v, "facter", "facter"), Some(v.clone()));
        assert_eq!(leaves(&v), 5);
    }

    #[test]
    fn leaves_link_to_their_history() {
        let t = Tree {
            node: "web-1",
            filtered: false,
        };
        let html = t
            .render(
                &json!({"os": {"family": "Debian"}, "a.b": 1, "q\"x": 2}),
                &mut vec!["facter".into()],
            )
            .into_string();
        assert!(
            html.contains("href=\"/nodes/web%2D1/history?path=facter%2Eos%2Efamily\""),
            "{html}"
        );
        assert!(
            html.contains("path=facter%2E%22a%2Eb%22"),
            "a dotted key is quoted: {html}"
        );
        assert!(
            !html.contains("path=facter%2Eq"),
            "no link for a key with a quote: {html}"
        );
    }
}
