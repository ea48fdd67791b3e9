//! `vogeler-server --http`: the JSON API, pages, headers, token and metrics, on a
//! real server process with a store filled from the fixtures.

mod common;

use common::web::start;

use reqwest::StatusCode;
use serde_json::{json, Value};

async fn get(url: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

async fn json(url: &str, want: StatusCode) -> Value {
    let (status, headers, body) = get(url).await;
    assert_eq!(status, want, "GET {url}: {body}");
    assert!(
        headers[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/json"),
        "GET {url} is not JSON"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_and_refuses_bad_queries_with_400() {
    let w = start(&[], vec![]).await;
    let b = &w.base;
    let nodes = json(&format!("{b}/api/nodes"), StatusCode::OK).await;
    assert_eq!(nodes["total"], 6);
    assert_eq!(nodes["items"][0]["name"], "fx-web01");
    let page = json(&format!("{b}/api/nodes?per_page=4&page=2"), StatusCode::OK).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let debian = json(
        &format!("{b}/api/nodes?where=facter.os.family%3DDebian&name=web0"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(debian["total"], 4);
    let node = json(&format!("{b}/api/nodes/fx-web01"), StatusCode::OK).await;
    assert_eq!(node["facter"]["os"]["family"], "Debian");
    assert_eq!(node["system_name"], "fx-web01");
    let values = json(
        &format!("{b}/api/values?path=facter.os.family"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        values["values"][0],
        json!({"value": "Debian", "count": 4, "nodes": ["fx-web01", "fx-web02", "fx-web03", "fx-web04"]})
    );
    let pkg = json(
        &format!("{b}/api/search?q=package%20openssl"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(pkg["rows"].as_array().map(Vec::len), Some(4));
    let found = json(
        &format!("{b}/api/search?q=facter.os.family%20%3D%20RedHat"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(found["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(found["kind"], "nodes");
    assert!(
        found["filter"]
            .as_str()
            .is_some_and(|f| f.contains("facter.os.family") && f.contains("RedHat")),
        "{found}"
    );
    let history = json(
        &format!("{b}/api/nodes/fx-web01/history?path=dpkg.openssl"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(history["timeline"].as_array().map(Vec::len), Some(2));
    let changes = json(&format!("{b}/api/changes?since=5d"), StatusCode::OK).await;
    assert!(changes["changes"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["key"] == "dpkg")));
    let stats = json(&format!("{b}/api/stats"), StatusCode::OK).await;
    assert_eq!(stats["nodes"], 6);
    assert_eq!(
        stats["os_family"],
        json!([{"value": "Debian", "count": 4}, {"value": "RedHat", "count": 2}])
    );

    for (url, status, needle) in [
        (
            "/api/nodes?where=facter.os.family",
            StatusCode::BAD_REQUEST,
            "no operator",
        ),
        (
            "/api/nodes?where=facter.x~(",
            StatusCode::BAD_REQUEST,
            "regular expression",
        ),
        (
            "/api/nodes?where=facter.processorcount%20%3E%3D%204%20cores",
            StatusCode::BAD_REQUEST,
            "neither a number nor a version",
        ),
        (
            "/api/nodes?per_page=100000",
            StatusCode::BAD_REQUEST,
            "per_page",
        ),
        (
            "/api/nodes?page=abc",
            StatusCode::BAD_REQUEST,
            "page must be",
        ),
        ("/api/nodes?page=0", StatusCode::BAD_REQUEST, "page must be"),
        (
            "/api/nodes?stale=whenever",
            StatusCode::BAD_REQUEST,
            "bad time",
        ),
        // Ages past what a date holds: a 400, never a panic (the connection closed).
        (
            "/api/nodes?stale=99999999999d",
            StatusCode::BAD_REQUEST,
            "too far back",
        ),
        (
            "/api/changes?since=99999999999d",
            StatusCode::BAD_REQUEST,
            "too far back",
        ),
        (
            "/api/nodes/fx-web01?at=300000y",
            StatusCode::BAD_REQUEST,
            "too far back",
        ),
        (
            "/api/nodes?name=%5B",
            StatusCode::BAD_REQUEST,
            "bad node name pattern",
        ),
        ("/api/values", StatusCode::BAD_REQUEST, "give a path"),
        (
            "/api/values?path=facter..x",
            StatusCode::BAD_REQUEST,
            "bad key path",
        ),
        ("/api/search?q=", StatusCode::BAD_REQUEST, "empty search"),
        ("/api/changes?limit=0", StatusCode::BAD_REQUEST, "limit"),
        (
            "/api/nodes/fx-nobody",
            StatusCode::NOT_FOUND,
            "no node named",
        ),
        (
            "/api/nodes/fx-nobody/history",
            StatusCode::NOT_FOUND,
            "no node named",
        ),
        ("/api/nothing", StatusCode::NOT_FOUND, "no API endpoint"),
    ] {
        let v = json(&format!("{b}{url}"), status).await;
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{url}: {msg}");
    }
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_escape_hostile_plugin_output_and_send_strict_headers() {
    let w = start(&[], vec![common::fleet::hostile()]).await;
    let b = &w.base;
    for path in [
        "/",
        "/nodes",
        "/nodes/fx-evil",
        "/nodes/fx-evil?key=img",
        "/nodes/fx-evil/history",
        "/nodes/fx-evil/history?path=motd.motd",
        "/nodes?columns=motd.motd&sort=motd.motd",
        "/search?q=evil",
        "/search?q=motd.motd%3D%3Cscript%3E",
    ] {
        let (status, headers, body) = get(&format!("{b}{path}")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let csp = headers["content-security-policy"]
            .to_str()
            .unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            !body.contains("<script>alert"),
            "{path} carries live script"
        );
        assert!(!body.contains("<img src=x"), "{path} carries a live tag");
        assert!(!body.contains("<b>x</b>"), "{path} carries a live tag");
    }
    let (_, _, page) = get(&format!("{b}/nodes/fx-evil")).await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    // Pages show facter's os.family inside a <details> tree.
    let (_, _, page) = get(&format!("{b}/nodes/fx-web01")).await;
    assert!(
        page.contains("<details class=\"plugin\" id=\"plugin-facter\""),
        "no facter tree"
    );
    // The summary card comes first: OS, kernel, address, packages, before the plugins.
    let card = page.find("id=\"summary\"").expect("a summary card");
    for want in [
        "Debian GNU/Linux 12 (bookworm)",
        "5.10.0-26-amd64",
        "192.0.2.2",
        "packages (dpkg)",
    ] {
        let at = page[card..].find(want).map(|i| i + card);
        assert!(
            at.is_some_and(|i| i < page.find("id=\"plugins\"").unwrap_or(0)),
            "{want} not in the summary card"
        );
    }
    let (status, _, page) = get(&format!("{b}/nodes/fx-nobody")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("no node named"));
    let (status, _, page) = get(&format!("{b}/nodes?where=nonsense")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("no operator"), "{page}");
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_and_metrics_count() {
    let w = start(&["--http-token", "s3cret-token"], vec![]).await;
    let b = &w.base;
    let (status, _, _) = get(&format!("{b}/api/nodes")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(&format!("{b}/")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{b}/api/nodes"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .get(format!("{b}/metrics"))
        .basic_auth("ops", Some("s3cret-token"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("metrics");
    assert!(text.contains("\nvogeler_nodes 6\n"), "{text}");
    assert!(
        text.contains("vogeler_node_last_seen_age_seconds_count 6"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "vogeler_queue_messages{{role=\"master\",queue=\"{}.master.in\"}} 0",
            w.d.id
        )),
        "{text}"
    );
    assert!(text.contains("vogeler_results_stored_total 0"), "{text}");
    let r = client
        .get(format!("{b}/api/nodes"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    drop(w);
}

/// Resolves a local `$ref` (`#/components/schemas/X`) against the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut cur = doc;
            for step in r.trim_start_matches("#/").split('/') {
                cur = &cur[step];
            }
            cur
        }
        None => schema,
    }
}

/// Checks `v` against the subset of JSON Schema the spec uses: type, nullable,
/// required, properties, items, enum.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if v.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    let ok = match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{at}: {v} is not {}", schema["type"]));
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(v) {
            return Err(format!("{at}: {v} not in {}", schema["enum"]));
        }
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let k = r.as_str().unwrap_or_default();
        if v.get(k).is_none() {
            return Err(format!("{at}: required {k} missing"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if let Some(x) = v.get(k) {
                conforms(doc, s, x, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            conforms(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// docs/openapi.yaml documents every API route, and every documented path answers
/// 200 with a body that conforms to its schema (examples used for parameters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_file_matches_the_api() {
    let text = std::fs::read_to_string(common::repo().join("docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let doc: Value = serde_yaml::from_str(&text).expect("openapi.yaml parses");
    let documented: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let router =
        std::fs::read_to_string(common::repo().join("src/web/mod.rs")).expect("router source");
    let served: Vec<String> = router
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".route(\"/api/"))
        .filter_map(|l| l.split('"').next())
        .map(|p| format!("/api/{}", p.replace("{name}", "{node}")))
        .collect();
    assert!(!served.is_empty());
    for p in &served {
        assert!(
            documented.contains(p),
            "{p} is served but not in docs/openapi.yaml"
        );
    }
    let w = start(&[], vec![]).await;
    for path in &documented {
        assert!(served.contains(path), "{path} is documented but not served");
        let op = &doc["paths"][path]["get"];
        let mut query = Vec::new();
        for param in op["parameters"].as_array().into_iter().flatten() {
            let param = resolve(&doc, param);
            if param["in"] == "query" && param["required"] == true {
                let example = param["example"]
                    .as_str()
                    .expect("required parameters have an example");
                query.push(format!(
                    "{}={}",
                    param["name"].as_str().unwrap_or_default(),
                    example.replace(' ', "%20")
                ));
            }
        }
        let url = format!(
            "{}{}?{}",
            w.base,
            path.replace("{node}", "fx-web01"),
            query.join("&")
        );
        let body = json(&url, StatusCode::OK).await;
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        conforms(&doc, schema, &body, path).unwrap_or_else(|e| panic!("{url}: {e}"));
        for code in op["responses"].as_object().expect("responses").keys() {
            assert!(
                ["200", "400", "404"].contains(&code.as_str()),
                "{path}: undocumented status {code}"
            );
        }
    }
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_from_a_file_guards_the_ui() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = tmp.path().join("token");
    std::fs::write(&token, "f1le-token\n").expect("token file");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let w = start(
        &["--http-token-file", token.to_str().expect("utf-8")],
        vec![],
    )
    .await;
    let b = &w.base;
    let (status, _, _) = get(&format!("{b}/api/nodes")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let client = reqwest::Client::new();
    // The trailing newline of the file is not part of the token.
    let r = client
        .get(format!("{b}/api/nodes"))
        .bearer_auth("f1le-token")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    drop(w);
}

/// Prometheus HTTP service discovery: one target group per selected node, the node's
/// address with the port, labels named as Prometheus requires; a bad port is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_service_discovery_lists_the_selected_nodes() {
    let w = start(&[], vec![]).await;
    let sd = json(
        &format!(
            "{}/api/v1/sd/prometheus?where=facter.os.family%3DDebian&port=9187&label=facter.os.family,facter.kernelrelease",
            w.base
        ),
        StatusCode::OK,
    )
    .await;
    let groups = sd.as_array().expect("an array of target groups");
    assert_eq!(groups.len(), 4, "{sd}");
    let label_name = |k: &str| {
        k.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for g in groups {
        let targets = g["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), 1, "{g}");
        assert!(
            targets[0].as_str().expect("a string").ends_with(":9187"),
            "{g}"
        );
        for (k, v) in g["labels"].as_object().expect("labels") {
            assert!(label_name(k), "{k} is not a Prometheus label name");
            assert!(v.is_string(), "{k}: label values are strings: {g}");
        }
        assert_eq!(g["labels"]["__meta_vogeler_facter_os_family"], "Debian");
    }
    assert_eq!(groups[0]["labels"]["__meta_vogeler_node"], "fx-web01");
    assert_eq!(groups[0]["targets"][0], "192.0.2.2:9187");
    assert_eq!(
        groups[1]["labels"]["__meta_vogeler_facter_kernelrelease"],
        "6.1.0-13-amd64"
    );
    json(
        &format!("{}/api/v1/sd/prometheus?port=99999", w.base),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

/// The node list sorts the whole selection, shows chosen columns and downloads as CSV
/// with the same query; a bad sort is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_list_sorts_shows_columns_and_downloads_csv() {
    let w = start(&[], vec![]).await;
    let b = &w.base;
    let names = |page: &str| -> Vec<String> {
        page.split("<a href=\"/nodes/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(|href| href.replace("%2D", "-"))
            .collect()
    };
    let (status, _, page) = get(&format!("{b}/nodes?sort=name&order=desc")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        names(&page),
        ["fx-web06", "fx-web05", "fx-web04", "fx-web03", "fx-web02", "fx-web01"]
    );
    let (_, _, page) = get(&format!("{b}/nodes?sort=errors")).await;
    assert_eq!(names(&page)[0], "fx-web06", "the node with an error first");
    let (_, _, page) = get(&format!("{b}/nodes?columns=facter.os.family,dpkg.openssl")).await;
    assert!(
        page.contains("sort=facter.os.family&amp;order=asc\">facter.os.family</a>"),
        "a chosen column's header sorts by it: {page}"
    );
    assert!(
        page.contains("<td>RedHat</td>") && page.contains("<td>3.0.99-1</td>"),
        "{page}"
    );
    assert!(
        page.contains("href=\"/nodes.csv?columns="),
        "a CSV link with the view's query"
    );

    let (status, headers, csv) = get(&format!(
        "{b}/nodes.csv?where=facter.os.family%3DDebian&columns=facter.kernelrelease&sort=name&order=desc"
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "node,last_seen,plugins,last_error,facter.kernelrelease"
    );
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[1].starts_with("fx-web04,") && lines[1].ends_with(",6.1.0-13-amd64"),
        "{csv}"
    );

    let (status, _, _) = get(&format!("{b}/nodes?sort=size")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Without `columns`, the list shows the OS family and address, sortable; a sort by a
    // column puts its values in order (ties by name) and honours `order`.
    let (_, _, page) = get(&format!("{b}/nodes")).await;
    assert!(page.contains("sort=facter.networking.ip"), "{page}");
    let (_, _, page) = get(&format!("{b}/nodes?sort=facter.os.family&order=desc")).await;
    assert_eq!(
        names(&page),
        ["fx-web05", "fx-web06", "fx-web01", "fx-web02", "fx-web03", "fx-web04"]
    );
    let (status, _, page) = get(&format!(
        "{b}/nodes?columns=facter.kernelrelease&sort=facter.os.family"
    ))
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "only a shown column sorts: {page}"
    );
    // A page size from the query; the pager keeps the rest of the view.
    let (_, _, page) = get(&format!("{b}/nodes?sort=name&order=desc&per_page=4&page=2")).await;
    assert_eq!(names(&page), ["fx-web02", "fx-web01"]);
    assert!(page.contains("page 2 of 2"), "{page}");
    assert!(
        page.contains("href=\"/nodes?sort=name&amp;order=desc&amp;per_page=4&amp;page=1\""),
        "{page}"
    );
}

/// The node page: the summary card before the plugins; long sections collapsed; a key
/// filter (a plain GET form) that keeps the matching keys; each leaf linking to its
/// history, whose page lists the values it took and links to the record as it was;
/// `ps` output as a table of its own columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_page_filters_keys_links_history_and_tables_ps() {
    let w = start(&[], vec![common::fleet::ps("fx-web01")]).await;
    let b = &w.base;
    let (status, _, page) = get(&format!("{b}/nodes/fx-web01")).await;
    assert_eq!(status, StatusCode::OK);
    let summary = page.find("id=\"summary\"").expect("a summary card");
    let plugins = page.find("id=\"plugins\"").expect("plugins");
    assert!(summary < plugins, "the summary card comes first");
    assert!(
        page.contains("<details class=\"plugin\" id=\"plugin-ohai\">"),
        "ohai (2,800 values) starts collapsed"
    );
    assert!(
        page.contains("<details class=\"plugin\" id=\"plugin-facter\" open>"),
        "facter is short and open"
    );
    assert!(
        page.contains("<th>PPID</th>") && page.contains("<td>/usr/sbin/cron -f</td>"),
        "ps is a table of its columns"
    );
    assert!(page.contains("<form id=\"keys\" method=\"get\" action=\"/nodes/fx%2Dweb01\">"));
    let history = "/nodes/fx%2Dweb01/history?path=dpkg%2Eopenssl";
    assert!(
        page.contains(&format!("href=\"{history}\"")),
        "a leaf links to its history"
    );

    let (status, _, page) = get(&format!("{b}/nodes/fx-web01?key=KERNELRELEASE")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("value=\"KERNELRELEASE\""),
        "the filter stays in the form"
    );
    assert!(page.contains("id=\"plugin-facter\" open"), "{page}");
    assert!(page.contains("5.10.0-26-amd64"), "{page}");
    assert!(!page.contains("id=\"plugin-dpkg\""), "dpkg has no such key");
    assert!(
        !page.contains(">facterversion<"),
        "other facter keys are left out"
    );

    let (status, _, page) = get(&format!("{b}{history}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("3.0.99-1"), "{page}");
    let at = page
        .split("href=\"/nodes/fx%2Dweb01?at=")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a link to the record as it was");
    let (status, _, then) = get(&format!("{b}/nodes/fx-web01?at={at}&key=openssl")).await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert!(then.contains("as it was at"), "{then}");
    let (status, _, all) = get(&format!("{b}/nodes/fx-web01/history")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(all.contains(&format!("href=\"{history}\"")), "{all}");
    for (url, want) in [
        ("/nodes/fx-nobody/history", StatusCode::NOT_FOUND),
        (
            "/nodes/fx-web01/history?path=dpkg..x",
            StatusCode::BAD_REQUEST,
        ),
        ("/nodes/fx-web01?at=someday", StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(get(&format!("{b}{url}")).await.0, want, "{url}");
    }
    let long = "k".repeat(300);
    assert_eq!(
        get(&format!("{b}/nodes/fx-web01?key={long}")).await.0,
        StatusCode::BAD_REQUEST
    );
}

/// A fact page charts a fact's values; each bar and each value links to the node list
/// of the nodes with it, and that list holds exactly them. The overview's bars link too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fact_pages_chart_values_that_lead_to_their_nodes() {
    let w = start(&[], vec![]).await;
    let b = &w.base;
    let (status, _, page) = get(&format!("{b}/facts/facter.os.family")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(r#"data-label="Debian" data-count="4""#),
        "{page}"
    );
    // The value quoted, so any value (spaces, parentheses, quotes, `and`) leads back.
    let link = "/nodes?where=facter%2Eos%2Efamily%20%3D%20%22RedHat%22";
    assert!(page.contains(&format!("<a href=\"{link}\">")), "{page}");
    let (status, _, list) = get(&format!("{b}{link}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.contains("fx-web05") && list.contains("fx-web06"),
        "{list}"
    );
    assert!(!list.contains("fx-web01"), "{list}");
    let (_, _, overview) = get(&format!("{b}/")).await;
    assert!(overview.contains(link), "overview bars link to their nodes");
    let (status, _, _) = get(&format!("{b}/facts/facter..os")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The changes page lists what changed across the fleet, filterable by name and
/// filter; the requests page lists the ledger; an unknown request is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_requests_pages() {
    let w = start(&[], vec![]).await;
    let b = &w.base;
    let (status, _, page) = get(&format!("{b}/changes?since=5d")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("3.0.99-1") && page.contains("openssl"),
        "{page}"
    );
    assert!(page.contains("href=\"/nodes/fx%2Dweb01\""), "{page}");
    let (_, _, page) = get(&format!("{b}/changes?since=5d&name=fx-web02")).await;
    assert!(!page.contains("3.0.99-1"), "{page}");
    let (status, _, _) = get(&format!("{b}/changes?since=last%20tuesday")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, page) = get(&format!("{b}/requests")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<th>expected</th>"), "{page}");
    let (status, _, _) = get(&format!("{b}/requests/0123abcd")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Two nodes compared, from the node page's form.
    let (_, _, node) = get(&format!("{b}/nodes/fx-web01")).await;
    assert!(node.contains("action=\"/diff\""), "a compare form");
    let (status, _, page) = get(&format!("{b}/diff?a=fx-web01&b=fx-web05&path=facter.os")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("facter.os.family") && page.contains("changed") && page.contains("RedHat"),
        "{page}"
    );
    let (status, _, _) = get(&format!("{b}/diff?a=fx-web01&b=fx-nobody")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(&format!("{b}/diff?a=fx-web01")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
