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
use super::tree::{scalar, summary_of, truncate, Tree};
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

/// Percent-encodes a path segment or query value (every byte but letters and digits).
pub(crate) fn enc(s: &str) -> String {
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
    // Quoted, so a value with spaces, parentheses, quotes or `and` leads to its nodes.
    let value = vogeler_store::query::quote_value(value);
    format!("/nodes?where={}", enc(&format!("{path} = {value}")))
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
                        @let w = (340 * count / max).max(1);
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
                @for c in columns { (head(&c.to_string(), &c.to_string())) }
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

/// The values at each chosen path for the nodes shown (one map per column); only
/// `shown`'s values are kept, so a page of 100 out of 100,000 builds small maps.
async fn column_values<N: std::borrow::Borrow<NodeSummary>>(
    state: &WebState,
    columns: &[vogeler_store::KeyPath],
    shown: &[N],
) -> Result<Vec<std::collections::HashMap<String, Value>>, api::ApiError> {
    let names: std::collections::HashSet<&str> =
        shown.iter().map(|n| n.borrow().name.as_str()).collect();
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        // Read shared; only the shown nodes' values are copied.
        let values = state.store.values_shared(c).await?;
        out.push(
            values
                .rows
                .iter()
                .filter(|(n, _)| names.contains(n.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        );
    }
    Ok(out)
}

/// `GET /nodes.csv?name=&where=&stale=&sort=&order=&columns=`: the node list view as
/// CSV, every selected node (not one page), with the chosen columns.
pub async fn node_csv(State(state): State<WebState>, RawQuery(raw): RawQuery) -> Response {
    let p = pairs(raw.as_deref());
    let answer = async {
        let columns = api::view_columns(&p)?;
        let q = super::node_query(&p, chrono::Utc::now()).map_err(api::ApiError::bad)?;
        let view = api::sorted_view(&state, &q, &p).await?;
        let rows: Vec<&NodeSummary> = view.order.iter().map(|&i| &view.nodes[i]).collect();
        let extra = column_values(&state, &columns, &rows).await?;
        let mut header = vec!["node", "last_seen", "plugins", "last_error"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        header.extend(columns.iter().map(|c| c.to_string()));
        let table = crate::report::Table {
            columns: header,
            rows: rows
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
            skipped: view.skipped.len(),
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
            @if page.page > 1 {
                a.first href=(link(1)) { "« first" }
                a rel="prev" href=(link(page.page - 1)) { "← previous" }
            }
            span #page-of { "page " (page.page) " of " (pages) " · " (page.total) " node(s)" }
            @if page.page < pages {
                a rel="next" href=(link(page.page + 1)) { "next →" }
                a.last href=(link(pages)) { "last »" }
            }
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
    let columns = match api::view_columns(&p) {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let extra = match column_values(&state, &columns, &page.items).await {
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
    let mut wheres: Vec<&str> = p
        .iter()
        .filter(|(k, v)| k == "where" && !v.trim().is_empty())
        .map(|(_, v)| v.as_str())
        .collect();
    if wheres.is_empty() {
        wheres.push("");
    }
    let shown_columns = columns
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    respond(
        StatusCode::OK,
        "Nodes",
        html! {
            h1 { "Nodes" }
            form #filter method="get" action="/nodes" {
                label { "Name " input type="text" name="name" value=(value("name")) placeholder="web*"; }
                @for w in &wheres {
                    label { "Where " input type="text" name="where" value=(w) placeholder="facter.os.family = Debian"; }
                }
                label { "Columns " input type="text" name="columns" value=(shown_columns) placeholder="facter.os.family,facter.networking.ip"; }
                label { "Per page " input.narrow type="number" name="per_page" min="1" max=(super::PAGE_SIZE) value=(page.per_page); }
                @if let Some(sort) = param(&p, "sort") { input type="hidden" name="sort" value=(sort); }
                @if let Some(order) = param(&p, "order") { input type="hidden" name="order" value=(order); }
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

/// Characters of a node page's key filter at most.
const MAX_KEY_FILTER: usize = 200;

/// `GET /nodes/{name}[?key=TEXT][&at=WHEN]`: the summary card, then each plugin's
/// data as a tree (long ones collapsed), its recent changes and the raw document.
/// `key` keeps only the keys whose dotted path contains TEXT (any case); `at` shows
/// the record as it was then.
pub async fn node_page(
    State(state): State<WebState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = pairs(raw.as_deref());
    let key = param(&p, "key").unwrap_or_default().to_string();
    if key.chars().count() > MAX_KEY_FILTER {
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!("the key filter is longer than {MAX_KEY_FILTER} characters"),
        );
    }
    let at_text = param(&p, "at").map(str::to_string);
    let at = match at_text
        .as_deref()
        .map(|t| crate::report::parse_when(t, Utc::now()))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let found = match at {
        None => state.store.node(&name).await,
        Some(t) => state.store.record_at(&name, t).await,
    };
    let record = match found {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &match at {
                    None => format!("no node named {name:?} is stored"),
                    Some(t) => format!("no node named {name:?} was stored at {}", rfc3339(t)),
                },
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
    let needle = key.to_lowercase();
    let sections: Vec<(&String, &Value, std::borrow::Cow<'_, Value>)> = record
        .keys
        .iter()
        .filter_map(|(k, v)| {
            if needle.is_empty() {
                Some((k, v, std::borrow::Cow::Borrowed(v)))
            } else {
                super::tree::filter_keys(v, k, &needle).map(|f| (k, v, std::borrow::Cow::Owned(f)))
            }
        })
        .collect();
    let matched: usize = sections.iter().map(|s| super::tree::leaves(&s.2)).sum();
    let node_href = format!("/nodes/{}", enc(&name));
    let tree = Tree {
        node: &name,
        filtered: !needle.is_empty(),
    };
    respond(
        StatusCode::OK,
        &name,
        html! {
            h1 {
                (name)
                @if let Some(t) = at { " " span.muted { "as it was at " (time(t)) } }
            }
            @if at.is_some() { p.notice { "An earlier state of this node. " a href=(node_href) { "See it now" } } }
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
            p.tools {
                a href=(format!("/api/nodes/{}", enc(&name))) { "JSON" } " · "
                a href=(format!("{node_href}/history")) { "All changes" }
            }
            form #compare method="get" action="/diff" {
                input type="hidden" name="a" value=(name);
                label { "Compare with " input type="text" name="b" placeholder="another node"; }
                button type="submit" { "Compare" }
            }
            section #plugins {
                h2 { "Plugins" }
                form #keys method="get" action=(node_href) {
                    @if let Some(a) = &at_text { input type="hidden" name="at" value=(a); }
                    label { "Keys containing " input type="search" name="key" value=(key) placeholder="kernel" maxlength=(MAX_KEY_FILTER); }
                    button type="submit" { "Filter keys" }
                    @if !key.is_empty() { " " a.clear href=(node_href) { "show all" } }
                }
                @if !needle.is_empty() {
                    p.summary #key-matches {
                        (matched) " value(s) under keys containing “" (key) "” in " (sections.len()) " plugin(s)"
                    }
                }
                @for (k, value, shown) in &sections {
                    details.plugin id=(format!("plugin-{k}")) open[tree.filtered || super::tree::leaves(value) <= super::tree::OPEN_LEAVES] {
                        summary {
                            (k) " " span.muted { (summary_of(value)) }
                            @if let Some(href) = super::tree::key_history_link(&name, k) {
                                " " a.history href=(href) { "history" }
                            }
                        }
                        (tree.render(shown, &mut vec![k.to_string()]))
                    }
                }
            }
            section #history {
                h2 { "Recent changes" }
                @if changes.is_empty() {
                    p.muted { "no changes recorded" }
                } @else {
                    ol.timeline {
                        @for c in changes.iter().rev().take(20) {
                            li {
                                time datetime=(c.at) { (c.at) } " "
                                strong { (c.key) } " "
                                span.muted { (c.differences.len()) " change(s)" }
                                ul {
                                    @for d in c.differences.iter().take(50) {
                                        li {
                                            code { (if d.path.is_empty() { c.key.clone() } else { format!("{}.{}", c.key, d.path) }) } ": "
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
                    @if changes.len() > 20 { p.muted { a href=(format!("{node_href}/history")) { "all " (changes.len()) " changes" } } }
                }
            }
            details #raw {
                summary { "Raw document" }
                pre { (raw) }
            }
        },
    )
}

/// `GET /nodes/{name}/history[?path=PATH]`: with a path, the values it took and when
/// each appeared and went (each start links to the node page as it was then); without,
/// every recorded change, each changed path linking to its own history.
pub async fn history_page(
    State(state): State<WebState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = pairs(raw.as_deref());
    let path_text = param(&p, "path").unwrap_or_default().to_string();
    let path = if path_text.is_empty() {
        None
    } else {
        match vogeler_store::KeyPath::parse(&path_text) {
            Ok(k) => Some(k),
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
    let table = match crate::report::history(&state.store, &name, path.as_ref()).await {
        Ok(t) => t,
        Err(e) if e.chain().any(|c| c.is::<crate::cli::NotFound>()) => {
            return error_page(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => return failed(e.into()),
    };
    let node_href = format!("/nodes/{}", enc(&name));
    let history_href = |path: &str| format!("{node_href}/history?path={}", enc(path));
    let cell = |v: &Value| truncate(&crate::report::cell_text(v), 200);
    respond(
        StatusCode::OK,
        &format!("{name} history"),
        html! {
            h1 {
                a href=(node_href) { (name) } ": "
                @if let Some(path) = &path { "history of " code { (path.to_string()) } } @else { "every change" }
            }
            form #filter method="get" action=(format!("{node_href}/history")) {
                label { "Path " input type="text" name="path" value=(path_text) placeholder="dpkg.openssl"; }
                button type="submit" { "Show" }
                @if path.is_some() { " " a href=(format!("{node_href}/history")) { "every change" } }
            }
            (skipped(table.skipped))
            @if path.is_some() {
                table.report #timeline {
                    thead { tr { th { "Value" } th { "From" } th { "Until" } } }
                    tbody {
                        @for row in &table.rows {
                            @let from = crate::report::cell_text(&row[1]);
                            tr {
                                td.v { (cell(&row[0])) }
                                td {
                                    @if from.starts_with('(') { (from) } @else {
                                        a href=(format!("{node_href}?at={}", enc(&from))) title="the node as it was then" { (from) }
                                    }
                                }
                                td { (cell(&row[2])) }
                            }
                        }
                    }
                }
            } @else {
                table.report #changes {
                    thead { tr { th { "At" } th { "Key" } th { "Path" } th { "Old" } th { "New" } } }
                    tbody {
                        @for row in table.rows.iter().rev() {
                            @let (key, sub) = (crate::report::cell_text(&row[1]), crate::report::cell_text(&row[2]));
                            @let full = if sub.is_empty() { key.clone() } else { format!("{key}.{sub}") };
                            tr {
                                td { (crate::report::cell_text(&row[0])) }
                                td { (key) }
                                td {
                                    @if vogeler_store::KeyPath::parse(&full).is_ok() {
                                        a href=(history_href(&full)) { (full) }
                                    } @else { (full) }
                                }
                                td { del { (cell(&row[3])) } }
                                td { ins { (cell(&row[4])) } }
                            }
                        }
                    }
                }
            }
            p.muted { (table.footer) }
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
        Ok(s) => match super::page_of(&p) {
            Ok(page) => api::run_search(&state, &s, page).await,
            Err(e) => Err(e),
        },
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
