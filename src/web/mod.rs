//! `vogeler-server --http ADDR`: a read-only web UI, JSON API and Prometheus metrics
//! over the stored records.
//!
//! Every answer comes from the store's shared queries (`vogeler_store::Store` and
//! [`crate::report`]), so the terminal, the API and the pages agree. Nothing here
//! writes. Plugin output is untrusted: pages are rendered with `maud`, which escapes
//! every interpolated string, and served under a CSP that allows no inline script.
//!
//! - [`api`]: `/api/...` JSON, errors as `{"error": ...}` with a 4xx status.
//! - [`pages`]: server-rendered HTML that works with JavaScript off.
//! - [`metrics`]: `/metrics` in the Prometheus text format.

pub mod api;
pub mod cache;
pub mod metrics;
pub mod pages;
pub mod tree;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use vogeler_store::{Condition, DynStore, Query};

use crate::server::Stats;
use crate::shutdown::Shutdown;

/// Rows per page of the node list, API and HTML alike (at most).
pub const PAGE_SIZE: usize = 100;

/// What the web server needs to answer.
#[derive(Clone)]
pub struct WebState {
    /// The store the server writes; read here.
    pub store: DynStore,
    /// The server's ingest counters (for `/metrics` and `/api/stats`).
    pub stats: Arc<Stats>,
    /// Broker and queue names, for queue depths in `/metrics` (None: not reported).
    pub queues: Option<(vogeler_transport::Connector, vogeler_transport::Topology)>,
    /// Required bearer token or basic-auth password, when set.
    pub token: Option<String>,
    /// Time limit of one request's queries (`[server] query_timeout_ms`): past it the
    /// answer is a 503 naming the limit, and the async workers are free again.
    pub query_timeout: std::time::Duration,
    /// The read cache `router` puts in front of `store` (None before it does): the
    /// node list keeps its sorted orders there.
    pub cache: Option<Arc<cache::CachedStore>>,
}

/// Where to listen: `8080` and `:8080` mean 127.0.0.1:8080 (loopback unless told
/// otherwise); `0.0.0.0:8080` or `[::]:8080` listen on every address.
pub fn parse_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let t = text.trim();
    let port_only = t.strip_prefix(':').unwrap_or(t);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    t.parse::<SocketAddr>().map_err(|e| {
        anyhow::anyhow!(
            "bad --http address {text:?}: {e} (examples: 8080, 127.0.0.1:8080, 0.0.0.0:8080)"
        )
    })
}

/// The whole application: pages, API, metrics, static assets, headers and auth.
/// Reads go through a [`cache::CachedStore`] in front of the store.
pub fn router(mut state: WebState) -> Router {
    let cache = Arc::new(cache::CachedStore::new(
        state.store.clone(),
        state.stats.clone(),
        std::time::Duration::from_secs(5),
    ));
    state.store = cache.clone();
    state.cache = Some(cache);
    Router::new()
        .route("/", get(pages::overview))
        .route("/nodes", get(pages::node_list))
        .route("/nodes.csv", get(pages::node_csv))
        .route("/nodes/{name}", get(pages::node_page))
        .route("/nodes/{name}/history", get(pages::history_page))
        .route("/search", get(pages::search))
        .route("/facts/{path}", get(pages::fact_page))
        .route("/changes", get(pages::changes_page))
        .route("/diff", get(pages::diff_page))
        .route("/requests", get(pages::requests_page))
        .route("/requests/{id}", get(pages::request_page))
        .route("/static/style.css", get(pages::style))
        .route("/static/app.js", get(pages::script))
        .route("/api/nodes", get(api::nodes))
        .route("/api/nodes/{name}", get(api::node))
        .route("/api/nodes/{name}/history", get(api::history))
        .route("/api/values", get(api::values))
        .route("/api/search", get(api::search))
        .route("/api/changes", get(api::changes))
        .route("/api/stats", get(api::stats))
        .route("/api/v1/sd/prometheus", get(api::prometheus_sd))
        .route("/metrics", get(metrics::metrics))
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Binds the listening socket; the error names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for --http: {e}"))
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() && state.token.is_none() {
        tracing::warn!(%bound, "the web UI listens beyond loopback without --http-token: anyone who can reach it can read the inventory");
    }
    tracing::info!(address = %bound, "web UI and API listening on http://{bound}/");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await?;
    Ok(())
}

/// Security headers on every response, and the optional token check.
async fn guard(State(state): State<WebState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        if !authorized(req.headers(), token) {
            let mut r = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "this Vogeler web UI needs a token: Authorization: Bearer <token>, or basic auth with the token as password"})),
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"vogeler\""),
            );
            return secure(r);
        }
    }
    let api = req.uri().path().starts_with("/api/");
    let limit = state.query_timeout;
    let answer = vogeler_store::within(limit, "this request's queries", async {
        Ok::<_, vogeler_store::StoreError>(next.run(req).await)
    })
    .await;
    secure(match answer {
        Ok(r) => r,
        Err(e) if api => api::ApiError::from(e).into_response(),
        Err(e) => pages::error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    })
}

fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Bearer token, or basic auth with the token as password (any user name), compared
/// in constant time.
fn authorized(headers: &axum::http::HeaderMap, token: &str) -> bool {
    use base64::Engine as _;
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110 §11.1): `bearer`, `BASIC` are fine.
    let (scheme, rest) = value.trim_start().split_once(' ').unwrap_or((value, ""));
    let given = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
            return false;
        };
        let text = String::from_utf8_lossy(&decoded).to_string();
        match text.split_once(':') {
            Some((_, password)) => password.to_string(),
            None => return false,
        }
    } else {
        return false;
    };
    // An empty token is refused at start; never let one match an empty credential.
    !token.is_empty() && constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request's query string as pairs, repeated keys kept (`where=a&where=b`).
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `key`, when present and not blank.
pub fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.trim().is_empty())
        .map(|(_, v)| v.trim())
}

/// The node-list filters shared by `/nodes` and `/api/nodes`: `name` (globs, comma
/// list), `where` (repeatable conditions) and `stale` (an age: not seen since).
pub fn node_query(pairs: &[(String, String)], now: DateTime<Utc>) -> Result<Query, String> {
    let mut q = Query::default();
    for (k, v) in pairs {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        match k.as_str() {
            "name" => {
                q.names.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(|n| {
                            if n.contains(['*', '?', '[']) {
                                n.to_string()
                            } else {
                                format!("*{n}*")
                            }
                        }),
                )
            }
            "where" => q.add_filter(v).map_err(|e| e.to_string())?,
            "stale" => {
                q.not_seen_since =
                    Some(crate::report::parse_when(v, now).map_err(|e| e.to_string())?)
            }
            _ => {}
        }
    }
    Ok(q)
}

/// A condition as people type it in a form: spaces around the operator allowed
/// (`facter.os.family = Debian`); the same parser as the CLI's `-W`.
pub fn parse_condition(text: &str) -> Result<Condition, vogeler_store::StoreError> {
    Condition::parse(text)
}

/// The page number (1-based) from `page`; junk reads as 1.
pub fn page_of(pairs: &[(String, String)]) -> Result<usize, api::ApiError> {
    match param(pairs, "page") {
        None | Some("") => Ok(1),
        // Refused like a bad per_page: a mistyped page is said, not turned into page 1.
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                api::ApiError::bad(format!(
                    "page must be a whole number from 1 to {MAX_PAGE}, not {p:?}"
                ))
            }),
    }
}

/// The highest page number a list takes (100,000,000 rows at 100 a page, far past
/// any fleet): a larger one is a mistake, not an empty page.
pub const MAX_PAGE: usize = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(
            parse_addr("8080").expect("port").to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(parse_addr(":9").expect("port").to_string(), "127.0.0.1:9");
        assert_eq!(
            parse_addr("0.0.0.0:80").expect("any").to_string(),
            "0.0.0.0:80"
        );
        assert!(parse_addr("localhost:x").is_err());
    }

    #[test]
    fn typed_conditions_allow_spaces() {
        let c = parse_condition("facter.os.family = Debian").expect("condition");
        assert_eq!(c.to_string(), "facter.os.family=Debian");
        let c = parse_condition(" facter.kernelrelease ~ ^6\\. ").expect("condition");
        assert_eq!(c.to_string(), "facter.kernelrelease~^6\\.");
        let c = parse_condition("facter.processorcount >= 4").expect("condition");
        assert_eq!(c.to_string(), "facter.processorcount>=4");
        assert!(parse_condition("facter").is_err());
    }

    #[test]
    fn node_queries_from_pairs() {
        let p = pairs(Some(
            "name=web&where=facter.os.family%3DDebian&stale=&page=2",
        ));
        let q = node_query(&p, Utc::now()).expect("query");
        assert_eq!(q.names, ["*web*"]);
        assert_eq!(q.conditions.len(), 1);
        assert!(q.not_seen_since.is_none());
        assert_eq!(page_of(&p).expect("page"), 2);
        assert!(page_of(&pairs(Some("page=abc"))).is_err());
        assert!(page_of(&pairs(Some("page=0"))).is_err());
        assert_eq!(page_of(&pairs(Some("page="))).expect("empty"), 1);
        assert!(node_query(&pairs(Some("where=nonsense")), Utc::now()).is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
        // "admin:s3cret"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWRtaW46czNjcmV0"),
        );
        assert!(authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert!(!authorized(&h, "s3cret"));
        // Schemes are case-insensitive.
        for v in ["bearer s3cret", "BEARER s3cret", "basic YWRtaW46czNjcmV0"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            assert!(authorized(&h, "s3cret"), "{v}");
        }
        for v in ["Bearers3cret", "Token s3cret", "Bearer", ""] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            assert!(!authorized(&h, "s3cret"), "{v}");
            assert!(!authorized(&h, ""), "{v}");
        }
    }
}
