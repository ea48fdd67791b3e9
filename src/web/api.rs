//! `/api/...`: the JSON API (documented in `docs/openapi.yaml`).
//!
//! A bad query is a 400 with `{"error": "..."}` naming what was wrong, an unknown
//! node a 404, an unreachable store a 503: never a 500 for anything a caller sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use vogeler_store::{query, rfc3339, KeyPath, NodeSummary, Query, Rows, StoreError};

use super::{node_query, page_of, pairs, param, parse_condition, WebState, PAGE_SIZE};

/// An error answer: status and message, rendered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// A 400 for a bad request.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            StoreError::Unavailable { .. } | StoreError::TimedOut { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        match e.downcast::<StoreError>() {
            Ok(s) => s.into(),
            Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// One page of a list, with where it sits.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// Rows matching, over all pages.
    pub total: usize,
    /// This page (1-based).
    pub page: usize,
    /// Rows per page.
    pub per_page: usize,
    /// This page's rows.
    pub items: Vec<T>,
    /// Stored rows that did not read back and were left out (`vogeler-admin check`).
    pub skipped: usize,
}

/// The filtered node list and its page, shared with the HTML list.
pub async fn node_page(
    state: &WebState,
    p: &[(String, String)],
) -> Result<(Query, Page<NodeSummary>), ApiError> {
    let q = node_query(p, Utc::now()).map_err(ApiError::bad)?;
    let per_page = match param(p, "per_page") {
        None => PAGE_SIZE,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::bad(format!("per_page must be 1 to {PAGE_SIZE}, not {n:?}"))
            })?,
    };
    let view = sorted_view(state, &q, p).await?;
    let page = page_at(
        &view.nodes,
        &view.order,
        page_of(p)?,
        per_page,
        view.skipped.len(),
    );
    Ok((q, page))
}

/// Page `page_no` of the nodes at positions `order` in `nodes`: only its rows copied.
pub fn page_at(
    nodes: &[NodeSummary],
    order: &[usize],
    page_no: usize,
    per_page: usize,
    skipped: usize,
) -> Page<NodeSummary> {
    Page {
        total: order.len(),
        page: page_no,
        per_page,
        items: order
            .iter()
            .skip((page_no - 1).saturating_mul(per_page))
            .take(per_page)
            .map(|&i| nodes[i].clone())
            .collect(),
        skipped,
    }
}

/// The columns the node list shows when the query names none (no `columns` at all):
/// the OS family and the main address.
pub const DEFAULT_COLUMNS: &[&str] = &["facter.os.family", "facter.networking.ip"];

/// The built-in sort keys of a node list, besides its columns.
pub const SORT_KEYS: &[&str] = &["name", "last_seen", "errors"];

/// A node list view: the selected nodes as positions in the shared list, in the
/// view's order, and the rows that did not read back.
pub struct View {
    /// The list `order` points into.
    pub nodes: Arc<Vec<NodeSummary>>,
    /// Positions of the selected nodes, in view order.
    pub order: Vec<usize>,
    /// Stored rows that did not read back while selecting.
    pub skipped: Vec<vogeler_store::Unreadable>,
}

/// Selects `q` and orders it as `sort` (`name`, the default; `last_seen`; `errors`:
/// nodes with a last error first; or one of the list's columns, such as
/// `facter.os.family`: in the filters' comparison order, nodes without a value last)
/// and `order` (`asc`, the default, or `desc`) say, so a sorted view pages through the
/// whole selection. The whole fleet's order per sort key is made once per node list
/// and kept by the read cache; a selection takes its nodes out of it in one pass.
pub async fn sorted_view(
    state: &WebState,
    q: &Query,
    p: &[(String, String)],
) -> Result<View, ApiError> {
    let by = param(p, "sort").unwrap_or("name");
    let desc = match param(p, "order").unwrap_or("asc") {
        "asc" => false,
        "desc" => true,
        other => {
            return Err(ApiError::bad(format!(
                "order must be asc or desc, not {other:?}"
            )))
        }
    };
    let column = match by {
        "name" | "last_seen" | "errors" => None,
        other => {
            let columns = view_columns(p)?;
            let Some(path) = KeyPath::parse(other).ok().filter(|k| columns.contains(k)) else {
                let shown: Vec<String> = columns.iter().map(ToString::to_string).collect();
                return Err(ApiError::bad(format!(
                    "sort must be name, last_seen, errors or a shown column ({}), not {other:?}",
                    shown.join(", ")
                )));
            };
            Some(path)
        }
    };
    let selection = state.store.select_shared(q).await?;
    let nodes = selection.nodes.clone();
    let values = match &column {
        Some(path) => Some(state.store.values_shared(path).await?),
        None => None,
    };
    let make = || full_order(&nodes, values.as_deref(), by, desc);
    let full = match &state.cache {
        Some(cache) => cache.order(&format!("{by} {desc}"), &nodes, values.as_ref(), make),
        None => Arc::new(make()),
    };
    let order = if selection.picked.len() == nodes.len() {
        full.as_ref().clone()
    } else {
        let mut chosen = vec![false; nodes.len()];
        for &i in &selection.picked {
            chosen[i] = true;
        }
        full.iter().copied().filter(|&i| chosen[i]).collect()
    };
    Ok(View {
        nodes,
        order,
        skipped: selection.skipped,
    })
}

/// Every node's position in the order `by` (a built-in key, or a column whose values
/// are `values`) and direction; ties by name, ascending.
fn full_order(
    nodes: &[NodeSummary],
    values: Option<&Rows<(String, Value)>>,
    by: &str,
    desc: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    match (by, values) {
        ("last_seen", _) => order.sort_by(|&a, &b| {
            let (a, b) = (&nodes[a], &nodes[b]);
            a.last_seen.cmp(&b.last_seen).then(a.name.cmp(&b.name))
        }),
        ("errors", _) => order.sort_by(|&a, &b| {
            let (a, b) = (&nodes[a], &nodes[b]);
            b.last_error
                .is_some()
                .cmp(&a.last_error.is_some())
                .then(a.name.cmp(&b.name))
        }),
        (_, Some(values)) => {
            // Each node's value turned into text once (not twice per comparison).
            let text: std::collections::HashMap<&str, String> = values
                .rows
                .iter()
                .map(|(n, v)| (n.as_str(), crate::report::cell_text(v)))
                .collect();
            let keyed: Vec<Option<&String>> =
                nodes.iter().map(|n| text.get(n.name.as_str())).collect();
            // Missing values go last in either order; ties by name, ascending.
            order.sort_by(|&a, &b| {
                let by_value = match (keyed[a], keyed[b]) {
                    (Some(x), Some(y)) => {
                        let o = query::compare(x, y);
                        if desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                };
                by_value.then_with(|| nodes[a].name.cmp(&nodes[b].name))
            });
            return order;
        }
        _ => order.sort_by(|&a, &b| nodes[a].name.cmp(&nodes[b].name)),
    }
    if desc {
        order.reverse();
    }
    order
}

/// The `columns=` paths of a node list (comma-separated or repeated), parsed.
pub fn columns_of(p: &[(String, String)]) -> Result<Vec<KeyPath>, ApiError> {
    p.iter()
        .filter(|(k, _)| k == "columns")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| KeyPath::parse(c).map_err(|e| ApiError::bad(e.to_string())))
        .collect()
}

/// The columns a node list view shows: `columns=` when the query has it (an empty one
/// shows none), [`DEFAULT_COLUMNS`] otherwise.
pub fn view_columns(p: &[(String, String)]) -> Result<Vec<KeyPath>, ApiError> {
    if p.iter().any(|(k, _)| k == "columns") {
        return columns_of(p);
    }
    DEFAULT_COLUMNS
        .iter()
        .map(|c| KeyPath::parse(c).map_err(ApiError::from))
        .collect()
}

/// `GET /api/nodes?name=&where=&stale=&page=&per_page=`.
pub async fn nodes(State(state): State<WebState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, page) = node_page(&state, &pairs(raw.as_deref())).await?;
    Ok(Json(serde_json::to_value(page).map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    })?))
}

/// `GET /api/nodes/{name}[?at=WHEN]`: the document (as it was at `at`).
pub async fn node(
    State(state): State<WebState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let p = pairs(raw.as_deref());
    let record = match param(&p, "at") {
        None => state.store.node(&name).await?,
        Some(at) => {
            let at = crate::report::parse_when(at, Utc::now())
                .map_err(|e| ApiError::bad(e.to_string()))?;
            state.store.record_at(&name, at).await?
        }
    };
    match record {
        Some(r) => {
            let mut doc = r.document();
            // `_` names are reserved, so this cannot clash with a plugin key.
            if let (false, Value::Object(m)) = (r.unreadable.is_empty(), &mut doc) {
                m.insert("_unreadable".into(), json!(r.unreadable));
            }
            Ok(Json(doc))
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no node named {name:?} (at that time)"),
        )),
    }
}

/// One change of a node's key with its leaf differences.
#[derive(Debug, Serialize)]
pub struct Change {
    /// When it was observed.
    pub at: String,
    /// Node name.
    pub node: String,
    /// Plugin key (or `last_error`).
    pub key: String,
    /// What changed inside it.
    pub differences: Vec<query::Difference>,
}

/// History entries as changes with their differences.
pub fn changes_of(entries: &[vogeler_store::HistoryEntry]) -> Vec<Change> {
    entries
        .iter()
        .map(|h| Change {
            at: rfc3339(h.at),
            node: h.node.clone(),
            key: h.key.clone(),
            differences: query::report_diff(h.old.as_ref(), h.new.as_ref()),
        })
        .collect()
}

/// `GET /api/nodes/{name}/history[?path=]`: every change, or one path's timeline.
pub async fn history(
    State(state): State<WebState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    if state.store.node(&name).await?.is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no node named {name:?}"),
        ));
    }
    let p = pairs(raw.as_deref());
    match param(&p, "path") {
        Some(path) => {
            let path = KeyPath::parse(path)?;
            let spans = state.store.timeline(&name, &path).await?;
            Ok(Json(
                json!({"node": name, "path": path.to_string(), "timeline": spans.rows, "skipped": spans.skipped.len()}),
            ))
        }
        None => {
            let entries = state.store.history(&name, None).await?;
            Ok(Json(
                json!({"node": name, "changes": changes_of(&entries.rows), "skipped": entries.skipped.len()}),
            ))
        }
    }
}

/// `GET /api/values?path=facter.os.family[&where=&name=]`: each value, its count and nodes.
pub async fn values(State(state): State<WebState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = pairs(raw.as_deref());
    let path = param(&p, "path")
        .ok_or_else(|| ApiError::bad("give a path: /api/values?path=facter.os.family"))?;
    let path = KeyPath::parse(path)?;
    let q = node_query(&p, Utc::now()).map_err(ApiError::bad)?;
    let groups = crate::report::value_groups(&state.store, &path, &q).await?;
    Ok(Json(json!({
        "path": path.to_string(),
        "values": groups.rows.into_iter().map(|(v, n)| json!({"value": v, "count": n.len(), "nodes": n})).collect::<Vec<_>>(),
        "skipped": groups.skipped.len(),
    })))
}

/// What a search box query means.
#[derive(Debug)]
pub enum Search {
    /// `package openssl`: which nodes have it, which version.
    Package(String),
    /// `facter.os.family = Debian`: the nodes where it holds.
    Filter(vogeler_store::Condition),
    /// Anything else: node names containing it.
    Name(String),
}

/// Reads a search box query; a malformed filter is an error naming the problem.
pub fn parse_search(q: &str) -> Result<Search, ApiError> {
    let q = q.trim();
    if q.is_empty() {
        return Err(ApiError::bad("empty search: try `facter.os.family = Debian`, `package openssl` or part of a node name"));
    }
    if let Some(p) = q
        .strip_prefix("package ")
        .or_else(|| q.strip_prefix("pkg "))
    {
        return Ok(Search::Package(p.trim().to_string()));
    }
    if q.contains(|c: char| "=!*~<>?".contains(c)) {
        return Ok(Search::Filter(parse_condition(q)?));
    }
    Ok(Search::Name(q.to_string()))
}

/// What a search found, for the JSON API and the search page alike.
pub enum Found {
    /// Every node with the package: node, plugin and version.
    Packages {
        /// The package asked for.
        package: String,
        /// One row per node and plugin that lists it, and the rows that did not read back.
        rows: Rows<(String, String, Value)>,
    },
    /// One page of nodes, and what selected them: `("filter", text)` or `("name", text)`.
    Nodes {
        /// The field naming the selection in JSON, and its text.
        by: (&'static str, String),
        /// The page of nodes.
        page: Page<NodeSummary>,
    },
}

impl Found {
    /// The `GET /api/search` body.
    pub fn to_json(&self) -> Value {
        match self {
            Found::Packages { package, rows } => {
                let list: Vec<Value> = rows
                    .rows
                    .iter()
                    .map(|(node, plugin, version)| json!({"node": node, "plugin": plugin, "version": version}))
                    .collect();
                json!({"kind": "package", "package": package, "rows": list, "skipped": rows.skipped.len()})
            }
            Found::Nodes { by, page } => {
                json!({"kind": "nodes", by.0: by.1, "total": page.total, "page": page.page, "per_page": page.per_page, "nodes": page.items, "skipped": page.skipped})
            }
        }
    }
}

/// Runs a search: one page (`page_no`, 1-based) of nodes, or every package row.
pub async fn run_search(
    state: &WebState,
    search: &Search,
    page_no: usize,
) -> Result<Found, ApiError> {
    let (by, q) = match search {
        Search::Package(name) => {
            return Ok(Found::Packages {
                package: name.clone(),
                rows: state.store.packages(name).await?,
            })
        }
        Search::Filter(c) => (
            ("filter", c.to_string()),
            Query {
                conditions: vec![c.clone()],
                ..Query::default()
            },
        ),
        Search::Name(n) => (
            ("name", n.clone()),
            Query {
                names: vec![format!("*{n}*")],
                ..Query::default()
            },
        ),
    };
    let s = state.store.select_shared(&q).await?;
    let page = page_at(&s.nodes, &s.picked, page_no, PAGE_SIZE, s.skipped.len());
    Ok(Found::Nodes { by, page })
}

/// `GET /api/search?q=`.
pub async fn search(State(state): State<WebState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = pairs(raw.as_deref());
    let search = parse_search(param(&p, "q").unwrap_or_default())?;
    Ok(Json(
        run_search(&state, &search, page_of(&p)?).await?.to_json(),
    ))
}

/// `GET /api/changes?since=1d&limit=1000&name=&where=`: changes across the fleet, of
/// the nodes the filters select (the node list's `name`, `where` and `stale`).
pub async fn changes(State(state): State<WebState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = pairs(raw.as_deref());
    let since = crate::report::parse_when(param(&p, "since").unwrap_or("1d"), Utc::now())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let limit = match param(&p, "limit") {
        None => 1000,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100_000).contains(l))
            .ok_or_else(|| ApiError::bad(format!("limit must be 1 to 100000, not {l:?}")))?,
    };
    // The same `name`/`where`/`stale` selection as the node list and the changes page.
    let q = node_query(&p, Utc::now()).map_err(ApiError::bad)?;
    let mut skipped = Vec::new();
    let selected = crate::report::selected_names(&state.store, &q, &mut skipped).await?;
    let mut entries = state.store.change_outlines(since, limit).await?;
    if let Some(names) = selected {
        entries.rows.retain(|h| names.contains(&h.node));
    }
    Ok(Json(
        json!({"since": rfc3339(since), "changes": changes_of(&entries.rows), "skipped": entries.skipped.len() + skipped.len()}),
    ))
}

/// Last-seen age buckets, in order.
pub const AGE_BUCKETS: &[(&str, i64)] = &[
    ("under 1 hour", 3600),
    ("under 1 day", 86_400),
    ("under 1 week", 7 * 86_400),
    ("1 week or more", i64::MAX),
];

/// The fleet at a glance: node count, nodes per OS family and per kernel, last-seen
/// ages and ingest counters. The overview's charts draw exactly these numbers.
pub async fn fleet_stats(state: &WebState, now: DateTime<Utc>) -> Result<Value, ApiError> {
    // The active fleet: deactivated nodes are left out of the counts.
    let all = state.store.nodes_shared().await?;
    let nodes: Vec<&NodeSummary> = all.iter().filter(|n| n.deactivated_at.is_none()).collect();
    let counts = |groups: &Rows<(Value, Vec<String>)>| -> Vec<Value> {
        groups
            .rows
            .iter()
            .map(|(v, n)| json!({"value": crate::report::cell_text(v), "count": n.len()}))
            .collect()
    };
    let fleet = Query::default();
    let family =
        crate::report::value_groups(&state.store, &KeyPath::parse("facter.os.family")?, &fleet)
            .await?;
    let kernel = crate::report::value_groups(
        &state.store,
        &KeyPath::parse("facter.kernelrelease")?,
        &fleet,
    )
    .await?;
    let mut ages: BTreeMap<usize, usize> = BTreeMap::new();
    for n in &nodes {
        let age = (now - n.last_seen).num_seconds().max(0);
        let i = AGE_BUCKETS
            .iter()
            .position(|(_, limit)| age < *limit)
            .unwrap_or(AGE_BUCKETS.len() - 1);
        *ages.entry(i).or_default() += 1;
    }
    use std::sync::atomic::Ordering::Relaxed;
    Ok(json!({
        "nodes": nodes.len(),
        "with_errors": nodes.iter().filter(|n| n.last_error.is_some()).count(),
        "os_family": counts(&family),
        "kernel": counts(&kernel),
        "skipped": family.skipped.len() + kernel.skipped.len(),
        "last_seen": AGE_BUCKETS.iter().enumerate().map(|(i, (label, _))| json!({"value": label, "count": ages.get(&i).copied().unwrap_or(0)})).collect::<Vec<_>>(),
        "ingest": {
            "stored": state.stats.stored.load(Relaxed),
            "dead_lettered": state.stats.dead_lettered.load(Relaxed),
            "commits": state.stats.commits.load(Relaxed),
        },
    }))
}

/// `GET /api/stats`.
pub async fn stats(State(state): State<WebState>) -> ApiResult {
    Ok(Json(fleet_stats(&state, Utc::now()).await?))
}

/// Anything else: a 404 (JSON under /api, a short page elsewhere).
pub async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no API endpoint {}", uri.path()),
        )
        .into_response()
    } else {
        super::pages::error_page(StatusCode::NOT_FOUND, &format!("no page {}", uri.path()))
    }
}

/// `GET /api/v1/sd/prometheus?where=&name=&port=9100&label=PATH`: Prometheus HTTP
/// service discovery over the same selection as `/api/nodes` (point
/// `http_sd_configs` here; `label` is repeatable or comma-separated).
pub async fn prometheus_sd(State(state): State<WebState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = pairs(raw.as_deref());
    let q = node_query(&p, Utc::now()).map_err(ApiError::bad)?;
    let port = match param(&p, "port") {
        None => 9100,
        Some(n) => n
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::bad(format!("port must be 1 to 65535, not {n:?}")))?,
    };
    let labels = p
        .iter()
        .filter(|(k, _)| k == "label")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| KeyPath::parse(l).map_err(|e| ApiError::bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(
        crate::export::prometheus(&state.store, &q, port, &labels).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_lists() {
        let nodes: Vec<NodeSummary> = (0..250)
            .map(|i| NodeSummary {
                name: format!("n{i:03}"),
                last_seen: Utc::now(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
                plugins: Vec::new(),
                last_error: None,
                deactivated_at: None,
            })
            .collect();
        let order: Vec<usize> = (0..250).rev().collect();
        let p = page_at(&nodes, &order, 3, 100, 0);
        assert_eq!((p.total, p.items.len()), (250, 50));
        assert_eq!(p.items[0].name, "n049");
        assert!(page_at(&nodes, &order[..5], 9, 100, 0).items.is_empty());
    }

    #[test]
    fn searches_read_as_people_type_them() {
        assert!(
            matches!(parse_search("package openssl"), Ok(Search::Package(p)) if p == "openssl")
        );
        assert!(matches!(
            parse_search("facter.os.family = Debian"),
            Ok(Search::Filter(_))
        ));
        assert!(matches!(parse_search("web"), Ok(Search::Name(n)) if n == "web"));
        assert!(parse_search("  ").is_err());
        assert_eq!(
            parse_search("facter.x ~ (").err().map(|e| e.0),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
