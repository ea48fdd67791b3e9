//! Server-rendered pages: overview, node list, node, search. They work with
//! JavaScript off; `app.js` only adds "expand all" buttons. Every string from the
//! store goes through maud's escaping.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use vogeler_store::{rfc3339, NodeSummary};

use super::api::{self, ApiError, Page};
use super::{pairs, param, WebState};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// `GET /static/style.css`.
pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// `GET /static/app.js`.
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Vogeler" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    nav {
                        a.brand href="/" { "Vogeler" }
                        a href="/" { "Overview" }
                        a href="/nodes" { "Nodes" }
                        a href="/changes" { "Changes" }
                        a href="/requests" { "Requests" }
                        a href="/search" { "Search" }
                        form.quick method="get" action="/search" {
                            input type="search" name="q" placeholder="facter.os.family = Debian" aria-label="Search";
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn respond(status: StatusCode, title: &str, body: Markup) -> Response {
    (status, Html(layout(title, body).into_string())).into_response()
}

/// A page saying what went wrong.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    respond(
        status,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error { (message) }
        },
    )
}

fn failed(e: ApiError) -> Response {
    error_page(e.0, &e.1)
}

fn time(t: chrono::DateTime<Utc>) -> Markup {
    html! { time datetime=(rfc3339(t)) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// The node list of the nodes whose value at `path` is `value`: where a chart's bar
/// or a fact page's value leads.
fn nodes_with(path: &str, value: &str) -> String {
    format!("/nodes?where={}", enc(&format!("{path}={value}")))
}

/// A horizontal bar chart; each bar carries `data-label` and `data-count` so tests
/// (and scripts) read the exact numbers drawn. With `path`, each bar links to the
/// nodes that have its value there.
fn bar_chart(id: &str, title: &str, rows: &[(String, u64)]) -> Markup {
    bar_chart_of(id, title, rows, None)
}

fn bar_chart_of(id: &str, title: &str, rows: &[(String, u64)], path: Option<&str>) -> Markup {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let row_h = 24u64;
    let height = row_h * rows.len().max(1) as u64 + 8;
    html! {
        figure.chart id=(id) {
            figcaption { (title) }
            @if rows.is_empty() {
                p.muted { "no data yet" }
            } @else {
                svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(title) viewBox=(format!("0 0 600 {height}")) width="600" height=(height) {
                    @for (i, (label, count)) in rows.iter().enumerate() {
                        @let y = 4 + row_h * i as u64;
                        @let w = (380 * count / max).max(1);
                        @let bar = html! {
                            g.bar data-label=(label) data-count=(count) {
                                title { (label) ": " (count) }
                                text x="0" y=(y + 16) { (truncate(label, 28)) }
                                rect x="200" y=(y + 3) width=(w) height="18" {}
                                text x=(205 + w) y=(y + 16) { (count) }
                            }
                        };
                        @if let Some(path) = path {
                            a href=(nodes_with(path, label)) { (bar) }
                        } @else {
                            (bar)
                        }
                    }
                }
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn chart_rows(v: &Value) -> Vec<(String, u64)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["value"].as_str().unwrap_or_default().to_string(),
                r["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `GET /`: counts and charts.
pub async fn overview(State(state): State<WebState>) -> Response {
    let stats = match api::fleet_stats(&state, Utc::now()).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    respond(
        StatusCode::OK,
        "Overview",
        html! {
            h1 { "Fleet overview" }
            p.summary {
                strong #node-count { (stats["nodes"]) } " nodes, "
                a href="/nodes?where=last_error%3F" { (stats["with_errors"]) " with an error" } ", "
                (stats["ingest"]["stored"]) " results stored since this server started."
            }
            (skipped(stats["skipped"].as_u64().unwrap_or(0) as usize))
            div.charts {
                (bar_chart_of("chart-os-family", "Nodes per OS family (facter.os.family)", &chart_rows(&stats["os_family"]), Some("facter.os.family")))
                (bar_chart_of("chart-kernel", "Nodes per kernel (facter.kernelrelease)", &chart_rows(&stats["kernel"]), Some("facter.kernelrelease")))
                (bar_chart("chart-last-seen", "Last seen", &chart_rows(&stats["last_seen"])))
            }
        },
    )
}

/// `GET /facts/PATH[?where=&name=]`: the distribution of a fact's values as a chart
/// and a table, each value linking to the nodes that have it.
pub async fn fact_page(
    State(state): State<WebState>,
    Path(path): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = pairs(raw.as_deref());
    let answer = async {
        let key =
            vogeler_store::KeyPath::parse(&path).map_err(|e| api::ApiError::bad(e.to_string()))?;
        let q = super::node_query(&p, Utc::now()).map_err(api::ApiError::bad)?;
        Ok::<_, api::ApiError>(crate::report::value_groups(&state.store, &key, &q).await?)
    };
    let groups = match answer.await {
        Ok(g) => g,
        Err(e) => return failed(e),
    };
    let rows: Vec<(String, u64)> = groups
        .rows
        .iter()
        .map(|(v, nodes)| (scalar(v), nodes.len() as u64))
        .collect();
    let total: usize = groups.rows.iter().map(|g| g.1.len()).sum();
    respond(
        StatusCode::OK,
        &path,
        html! {
            h1 { (path) }
            p.summary { (total) " node(s) have it; " (groups.rows.len()) " distinct value(s)." }
            (skipped(groups.skipped.len()))
            (bar_chart_of("chart-fact", &format!("Nodes per {path}"), &rows, Some(&path)))
            table.facts {
                thead { tr { th { "Value" } th { "Nodes" } th { "Some of them" } } }
                tbody {
                    @for (v, nodes) in &groups.rows {
                        tr {
                            td { a href=(nodes_with(&path, &scalar(v))) { (scalar(v)) } }
                            td { (nodes.len()) }
                            td {
                                @for n in nodes.iter().take(10) {
                                    a href=(format!("/nodes/{}", enc(n))) { (n) } " "
                                }
                                @if nodes.len() > 10 { span.muted { "… " (nodes.len() - 10) " more" } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A report's table as HTML: the same rows the CLI prints; a `node` column links to
/// the node's page and an `id` column to the request's page.
fn report_table(t: &crate::report::Table) -> Markup {
    html! {
        table.report {
            thead { tr { @for c in &t.columns { th { (c) } } } }
            tbody {
                @for row in &t.rows {
                    tr {
                        @for (c, v) in t.columns.iter().zip(row) {
                            @let text = crate::report::cell_text(v);
                            @if c == "node" && !text.is_empty() && text != "*" {
                                td { a href=(format!("/nodes/{}", enc(&text))) { (text) } }
                            } @else if c == "id" {
                                td { a href=(format!("/requests/{}", enc(&text))) { (text) } }
                            } @else {
                                td { (truncate(&text, 200)) }
                            }
                        }
                    }
                }
            }
        }
        p.muted { (t.footer) }
    }
}

/// `GET /changes?since=1d&where=&name=`: recent changes across the fleet, as
/// `vogeler-admin report changes` lists them, filterable like the node list.
pub async fn changes_page(State(state): State<WebState>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(raw.as_deref());
    let now = Utc::now();
    let since_text = param(&p, "since").unwrap_or("1d").to_string();
    let answer = async {
        let since = crate::report::parse_when(&since_text, now)
            .map_err(|e| api::ApiError::bad(e.to_string()))?;
        let q = super::node_query(&p, now).map_err(api::ApiError::bad)?;
        Ok::<_, api::ApiError>(crate::report::changes(&state.store, since, 2000, &q).await?)
    };
    let table = match answer.await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let value = |k: &str| param(&p, k).unwrap_or_default().to_string();
    respond(
        StatusCode::OK,
        "Changes",
        html! {
            h1 { "Changes" }
            form #filter method="get" action="/changes" {
                label { "Since " input type="text" name="since" value=(since_text) placeholder="1d"; }
                label { "Name " input type="text" name="name" value=(value("name")) placeholder="web*"; }
                label { "Where " input type="text" name="where" value=(value("where")) placeholder="facter.os.family = Debian"; }
                button type="submit" { "Filter" }
            }
            (skipped(table.skipped))
            (report_table(&table))
        },
    )
}

/// `GET /diff?a=NODE&b=NODE[&path=PATH]`: what differs between two nodes, as
/// `vogeler-admin diff` lists it (added, removed, changed, with both values).
pub async fn diff_page(State(state): State<WebState>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(raw.as_deref());
    let (a, b) = (
        param(&p, "a").unwrap_or_default().to_string(),
        param(&p, "b").unwrap_or_default().to_string(),
    );
    let path_text = param(&p, "path").unwrap_or_default().to_string();
    if a.is_empty() || b.is_empty() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "name two nodes: /diff?a=NODE&b=NODE (and path=PATH to narrow it)",
        );
    }
    let path = if path_text.is_empty() {
        None
    } else {
        match vogeler_store::KeyPath::parse(&path_text) {
            Ok(k) => Some(k),
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
    match crate::report::diff_nodes(&state.store, &a, &b, path.as_ref()).await {
        Ok(t) => respond(
            StatusCode::OK,
            &format!("{a} and {b}"),
            html! {
                h1 { a href=(format!("/nodes/{}", enc(&a))) { (a) } " and " a href=(format!("/nodes/{}", enc(&b))) { (b) } }
                form #filter method="get" action="/diff" {
                    input type="hidden" name="a" value=(a);
                    input type="hidden" name="b" value=(b);
                    label { "Below " input type="text" name="path" value=(path_text) placeholder="dpkg"; }
                    button type="submit" { "Compare" }
                }
                (report_table(&t))
            },
        ),
        Err(e) if e.chain().any(|c| c.is::<crate::cli::NotFound>()) => {
            error_page(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => failed(e.into()),
    }
}

/// `GET /requests`: the request ledger, newest first (expected, stored, errors, silent).
pub async fn requests_page(State(state): State<WebState>) -> Response {
    match crate::report::requests(&state.store, 100, Utc::now()).await {
        Ok(t) => respond(
            StatusCode::OK,
            "Requests",
            html! { h1 { "Requests" } (report_table(&t)) },
        ),
        Err(e) => failed(e.into()),
    }
}

/// `GET /requests/ID`: one request's nodes and what became of each.
pub async fn request_page(State(state): State<WebState>, Path(id): Path<String>) -> Response {
    match crate::report::request(&state.store, &id, Utc::now()).await {
        Ok(t) => respond(
            StatusCode::OK,
            &format!("Request {id}"),
            html! { h1 { "Request " (id) } (report_table(&t)) },
        ),
        Err(e) if e.chain().any(|c| c.is::<crate::cli::NotFound>()) => {
            error_page(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) if e.chain().any(|c| c.is::<crate::cli::UsageError>()) => {
            error_page(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e) => failed(e.into()),
    }
}

/// The notice a page shows when its reads skipped unreadable stored rows (nothing
/// when none were).
fn skipped(count: usize) -> Markup {
    html! {
        @if let Some(text) = vogeler_store::skipped_notice(count) {
            p.notice.skipped { (text) }
        }
    }
}

fn node_table(nodes: &[NodeSummary]) -> Markup {
    node_table_with(nodes, None, &[], &[])
}

/// The node list, with sortable headers when `view` is the list page's query (kept in
/// each header link), and one extra column per chosen path, valued from `extra`.
fn node_table_with(
    nodes: &[NodeSummary],
    view: Option<&[(String, String)]>,
    columns: &[vogeler_store::KeyPath],
    extra: &[std::collections::HashMap<String, Value>],
) -> Markup {
    let p = view.unwrap_or_default();
    let sorted = param(p, "sort").unwrap_or("name");
    let desc = param(p, "order") == Some("desc");
    let head = |label: &str, key: &str| {
        if view.is_none() {
            return html! { th { (label) } };
        }
        let order = if sorted == key && !desc {
            "desc"
        } else {
            "asc"
        };
        let mut q: Vec<(String, String)> = p
            .iter()
            .filter(|(k, _)| k != "sort" && k != "order" && k != "page")
            .cloned()
            .collect();
        q.push(("sort".into(), key.into()));
        q.push(("order".into(), order.into()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        let mark = match (sorted == key, desc) {
            (true, false) => " ▲",
            (true, true) => " ▼",
            _ => "",
        };
        html! { th { a.sort href=(format!("/nodes?{qs}")) { (label) (mark) } } }
    };
    html! {
        table.nodes {
            thead { tr {
                (head("Node", "name")) (head("Last seen", "last_seen")) th { "Plugins" } (head("Last error", "errors"))
                @for c in columns { th { (c.to_string()) } }
            } }
            tbody {
                @for n in nodes {
                    tr {
                        td { a href=(format!("/nodes/{}", enc(&n.name))) { (n.name) } }
                        td { (time(n.last_seen)) }
                        td { (n.plugins.join(", ")) }
                        td.error { (n.last_error.as_deref().unwrap_or("")) }
                        @for values in extra {
                            td { (values.get(&n.name).map(scalar).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    }
}

/// The values at each chosen path for the nodes shown (one map per column).
async fn column_values(
    state: &WebState,
    columns: &[vogeler_store::KeyPath],
) -> Result<Vec<std::collections::HashMap<String, Value>>, api::ApiError> {
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        out.push(state.store.values(c).await?.rows.into_iter().collect());
    }
    Ok(out)
}

/// `GET /nodes.csv?name=&where=&stale=&sort=&order=&columns=`: the node list view as
/// CSV, every selected node (not one page), with the chosen columns.
pub async fn node_csv(State(state): State<WebState>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(raw.as_deref());
    let answer = async {
        let columns = api::columns_of(&p)?;
        let q = super::node_query(&p, chrono::Utc::now()).map_err(api::ApiError::bad)?;
        let mut all = state.store.select(&q).await?;
        api::sort_nodes(&mut all.rows, &p)?;
        let extra = column_values(&state, &columns).await?;
        let mut header = vec!["node", "last_seen", "plugins", "last_error"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        header.extend(columns.iter().map(|c| c.to_string()));
        let table = crate::report::Table {
            columns: header,
            rows: all
                .rows
                .iter()
                .map(|n| {
                    let mut row = vec![
                        serde_json::json!(n.name),
                        serde_json::json!(vogeler_store::rfc3339(n.last_seen)),
                        serde_json::json!(n.plugins),
                        serde_json::json!(n.last_error),
                    ];
                    row.extend(
                        extra
                            .iter()
                            .map(|v| v.get(&n.name).cloned().unwrap_or(Value::Null)),
                    );
                    row
                })
                .collect(),
            footer: String::new(),
            skipped: all.skipped.len(),
        };
        table
            .render(crate::report::Format::Csv, None)
            .map_err(api::ApiError::from)
    };
    match answer.await {
        Ok(csv) => (
            StatusCode::OK,
            [
                (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    "attachment; filename=\"nodes.csv\"",
                ),
            ],
            csv,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn pager(p: &[(String, String)], page: &Page<NodeSummary>) -> Markup {
    let pages = page.total.div_ceil(page.per_page.max(1)).max(1);
    let link = |to: usize| {
        let mut q: Vec<(String, String)> = p.iter().filter(|(k, _)| k != "page").cloned().collect();
        q.push(("page".into(), to.to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        format!("/nodes?{qs}")
    };
    html! {
        nav.pager {
            @if page.page > 1 { a rel="prev" href=(link(page.page - 1)) { "← previous" } }
            span { "page " (page.page) " of " (pages) " · " (page.total) " node(s)" }
            @if page.page < pages { a rel="next" href=(link(page.page + 1)) { "next →" } }
        }
    }
}

/// `GET /nodes?name=&where=&stale=&page=`: the filterable node list.
pub async fn node_list(State(state): State<WebState>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(raw.as_deref());
    let (_, page) = match api::node_page(&state, &p).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let columns = match api::columns_of(&p) {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let extra = match column_values(&state, &columns).await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let csv_link = format!(
        "/nodes.csv?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(p.iter().filter(|(k, _)| k != "page"))
            .finish()
    );
    let value = |k: &str| param(&p, k).unwrap_or_default().to_string();
    let stale = value("stale");
    respond(
        StatusCode::OK,
        "Nodes",
        html! {
            h1 { "Nodes" }
            form #filter method="get" action="/nodes" {
                label { "Name " input type="text" name="name" value=(value("name")) placeholder="web*"; }
                label { "Where " input type="text" name="where" value=(value("where")) placeholder="facter.os.family = Debian"; }
                label { "Columns " input type="text" name="columns" value=(value("columns")) placeholder="facter.os.family,facter.networking.ip"; }
                label { "Not seen for "
                    select name="stale" {
                        @for (v, label) in [("", "any time"), ("1h", "1 hour"), ("1d", "1 day"), ("7d", "1 week")] {
                            option value=(v) selected[stale == v] { (label) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            (skipped(page.skipped))
            (node_table_with(&page.items, Some(&p), &columns, &extra))
            (pager(&p, &page))
            p.tools { a href=(csv_link) { "Download CSV" } }
        },
    )
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn summary_of(v: &Value) -> String {
    match v {
        Value::Object(m) => format!("{{{} keys}}", m.len()),
        Value::Array(a) => format!("[{} items]", a.len()),
        other => scalar(other),
    }
}

/// A value as a collapsible tree: objects as nested `<details>`, lists as tables.
fn tree(v: &Value, depth: usize) -> Markup {
    match v {
        Value::Object(m) => html! {
            ul.tree {
                @for (k, v) in m {
                    li {
                        @if v.is_object() || (v.is_array() && v.as_array().is_some_and(|a| !a.is_empty())) {
                            details open[depth == 0 && m.len() <= 40] {
                                summary { span.k { (k) } " " span.muted { (summary_of(v)) } }
                                (tree(v, depth + 1))
                            }
                        } @else {
                            span.k { (k) } ": " span.v { (scalar(v)) }
                        }
                    }
                }
            }
        },
        Value::Array(items) => list_table(items, depth),
        other => html! { span.v { (scalar(other)) } },
    }
}

/// Lists of scalars as one column, lists of flat objects as a table of their keys.
fn list_table(items: &[Value], depth: usize) -> Markup {
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
                    tr { td.muted { (n) } td { @if i.is_object() || i.is_array() { (tree(i, depth + 1)) } @else { (scalar(i)) } } }
                }
            }
        }
    }
}

/// `GET /nodes/{name}`: each plugin's data as a tree, the raw document, the history.
pub async fn node_page(State(state): State<WebState>, Path(name): Path<String>) -> Response {
    let record = match state.store.node(&name).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("no node named {name:?} is stored"),
            )
        }
        Err(e) => return failed(e.into()),
    };
    let history = match state.store.history(&name, None).await {
        Ok(h) => h,
        Err(e) => return failed(e.into()),
    };
    let unreadable = record.unreadable.len() + history.skipped.len();
    let changes = api::changes_of(&history.rows);
    let raw = serde_json::to_string_pretty(&record.document()).unwrap_or_default();
    respond(
        StatusCode::OK,
        &name,
        html! {
            h1 { (name) }
            (skipped(unreadable))
            // The summary card first: what `vogeler-admin node NAME --summary` prints.
            section #summary {
                dl.meta {
                    @for (label, value) in crate::admin::summary_lines(&record).into_iter().skip(1) {
                        dt { (label) }
                        @if label == "last error" && record.last_error.is_some() {
                            dd.error { (value) }
                        } @else {
                            dd { (value) }
                        }
                    }
                    dt { "changed" } dd { (time(record.updated_at)) }
                }
            }
            p.tools { a href=(format!("/api/nodes/{}", enc(&name))) { "JSON" } }
            form #compare method="get" action="/diff" {
                input type="hidden" name="a" value=(name);
                label { "Compare with " input type="text" name="b" placeholder="another node"; }
                button type="submit" { "Compare" }
            }
            section #plugins {
                h2 { "Plugins" }
                @for (key, value) in &record.keys {
                    details.plugin id=(format!("plugin-{key}")) open[record.keys.len() <= 3] {
                        summary { (key) " " span.muted { (summary_of(value)) } }
                        (tree(value, 0))
                    }
                }
            }
            section #history {
                h2 { "History" }
                @if changes.is_empty() {
                    p.muted { "no changes recorded" }
                } @else {
                    ol.timeline {
                        @for c in changes.iter().rev() {
                            li {
                                time datetime=(c.at) { (c.at) } " "
                                strong { (c.key) } " "
                                span.muted { (c.differences.len()) " change(s)" }
                                ul {
                                    @for d in c.differences.iter().take(50) {
                                        li {
                                            code { (if d.path.is_empty() { c.key.as_str() } else { d.path.as_str() }) } ": "
                                            del { (d.old.as_ref().map(summary_of).unwrap_or_else(|| "(none)".into())) }
                                            " → "
                                            ins { (d.new.as_ref().map(summary_of).unwrap_or_else(|| "(none)".into())) }
                                        }
                                    }
                                    @if c.differences.len() > 50 { li.muted { "… " (c.differences.len() - 50) " more" } }
                                }
                            }
                        }
                    }
                }
            }
            details #raw {
                summary { "Raw document" }
                pre { (raw) }
            }
        },
    )
}

/// `GET /search?q=`: a filter (`facter.os.family = Debian`), a package
/// (`package openssl`) or part of a node name.
pub async fn search(State(state): State<WebState>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(raw.as_deref());
    let q = param(&p, "q").unwrap_or_default().to_string();
    let form = html! {
        form #search method="get" action="/search" {
            input type="search" name="q" value=(q) placeholder="facter.os.family = Debian" aria-label="Search";
            button type="submit" { "Search" }
        }
        p.muted { "Examples: " code { "facter.os.family = Debian" } ", " code { "facter.kernelrelease ~ ^6\\." } ", " code { "package openssl" } ", " code { "web" } }
    };
    if q.trim().is_empty() {
        return respond(StatusCode::OK, "Search", html! { h1 { "Search" } (form) });
    }
    let result = match api::parse_search(&q) {
        Ok(s) => api::run_search(&state, &s, super::page_of(&p)).await,
        Err(e) => Err(e),
    };
    let (status, body) = match result {
        Err(e) => (e.0, html! { p.error { (e.1) } }),
        Ok(api::Found::Packages { rows, .. }) => (
            StatusCode::OK,
            html! {
                table.results {
                    thead { tr { th { "Node" } th { "Version" } th { "Plugin" } } }
                    tbody {
                        @for (node, plugin, version) in &rows.rows {
                            tr { td { a href=(format!("/nodes/{}", enc(node))) { (node) } } td { (scalar(version)) } td { (plugin) } }
                        }
                    }
                }
                p.muted { (rows.rows.len()) " node(s)" }
                (skipped(rows.skipped.len()))
            },
        ),
        Ok(api::Found::Nodes { page, .. }) => (
            StatusCode::OK,
            html! { (node_table(&page.items)) p.muted { (page.items.len()) " node(s)" } (skipped(page.skipped)) },
        ),
    };
    respond(
        status,
        "Search",
        html! { h1 { "Search" } (form) section #results { (body) } },
    )
}
