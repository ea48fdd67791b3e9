//! The web UI in a real headless Chromium (Debian's `chromium` driven through
//! `chromedriver`), against a server filled with the fixture data. Pages are
//! checked with JavaScript off; screenshots land in `target/screenshots/`, or in the
//! directory `VOGELER_SCREENSHOTS` names (`docs/screenshots` to refresh the
//! committed ones; a relative path is taken from the repository root).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let bin =
        std::env::var("VOGELER_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    if !std::path::Path::new(&bin).exists() || !std::path::Path::new("/usr/bin/chromium").exists() {
        panic!("chromium and chromedriver are needed for the web UI tests ({bin}): run `scripts/services.sh ensure-chromium`");
    }
    let port = common::free_port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: tempfile::tempdir().expect("profile dir"),
    }
}

/// A headless Chromium session; `javascript` off unless asked.
async fn browser(d: &Driver, javascript: bool) -> Client {
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--no-first-run".into(),
        "--window-size=1280,1024".into(),
        format!(
            "--user-data-dir={}",
            d._profile
                .path()
                .join(if javascript { "js" } else { "nojs" })
                .display()
        ),
    ];
    if !javascript {
        args.push("--blink-settings=scriptEnabled=false".into());
    }
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .unwrap_or_else(|e| panic!("chromium did not start through chromedriver: {e}"))
}

fn screenshots() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = match std::env::var_os("VOGELER_SCREENSHOTS") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target/screenshots"),
    };
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn save(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(screenshots().join(name), png).expect("write screenshot");
}

async fn rows(c: &Client) -> usize {
    c.find_all(Locator::Css("table.nodes tbody tr"))
        .await
        .expect("rows")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_work_with_javascript_off() {
    let w = common::web::start(&[], vec![]).await;
    let d = driver();
    let c = browser(&d, false).await;

    // The filter form narrows the list.
    c.goto(&format!("{}/nodes", w.base))
        .await
        .expect("goto /nodes");
    assert_eq!(rows(&c).await, 6);
    let field = c
        .find(Locator::Css("form#filter input[name=where]"))
        .await
        .expect("where field");
    field
        .send_keys("facter.os.family = RedHat")
        .await
        .expect("type");
    c.find(Locator::Css("form#filter button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows(&c).await != 2 {
        assert!(
            Instant::now() < deadline,
            "the filter did not narrow the list: {}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = {
        let mut v = Vec::new();
        for a in c
            .find_all(Locator::Css("table.nodes tbody tr td:first-child a"))
            .await
            .expect("links")
        {
            v.push(a.text().await.expect("text"));
        }
        v
    };
    assert_eq!(names, ["fx-web05", "fx-web06"]);
    save(&c, "nodes-filtered.png").await;

    // The node page shows facter's os.family inside a <details> tree.
    c.goto(&format!("{}/nodes/fx-web01", w.base))
        .await
        .expect("goto node");
    let facter = c
        .find(Locator::Css("details#plugin-facter"))
        .await
        .expect("facter tree");
    let os = facter
        .find(Locator::XPath(
            ".//details[summary/span[@class='k' and text()='os']]",
        ))
        .await
        .expect("os subtree");
    let text = os.text().await.expect("text");
    assert!(text.contains("family: Debian"), "{text}");

    // The chart's counts equal /api/stats.
    c.goto(&format!("{}/", w.base))
        .await
        .expect("goto overview");
    let mut drawn = Vec::new();
    for bar in c
        .find_all(Locator::Css("#chart-os-family g.bar"))
        .await
        .expect("bars")
    {
        let label = bar
            .attr("data-label")
            .await
            .expect("label")
            .unwrap_or_default();
        let count: u64 = bar
            .attr("data-count")
            .await
            .expect("count")
            .unwrap_or_default()
            .parse()
            .expect("number");
        drawn.push(json!({"value": label, "count": count}));
    }
    let stats: Value = reqwest::get(format!("{}/api/stats", w.base))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(Value::Array(drawn), stats["os_family"]);
    let nodes = c
        .find(Locator::Css("#node-count"))
        .await
        .expect("count")
        .text()
        .await
        .expect("text");
    assert_eq!(nodes, stats["nodes"].to_string());

    c.goto(&format!("{}/search?q=package%20openssl", w.base))
        .await
        .expect("goto search");
    let hits = c
        .find_all(Locator::Css("table.results tbody tr"))
        .await
        .expect("rows")
        .len();
    assert_eq!(hits, 4);
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugin_output_stays_text_with_javascript_on() {
    let w = common::web::start(&[], vec![common::fleet::hostile()]).await;
    let d = driver();
    let c = browser(&d, true).await;
    c.goto(&format!("{}/nodes/fx-evil", w.base))
        .await
        .expect("goto");
    // Our own script ran (progressive enhancement), the injected ones did not.
    c.find(Locator::Css("button.expand"))
        .await
        .expect("app.js ran");
    assert!(
        c.get_alert_text().await.is_err(),
        "an injected script raised an alert"
    );
    assert!(
        c.find_all(Locator::Css("main img, main b"))
            .await
            .expect("query")
            .is_empty(),
        "injected markup became elements"
    );
    let text = c
        .find(Locator::Css("#plugins"))
        .await
        .expect("plugins")
        .text()
        .await
        .expect("text");
    assert!(text.contains("<script>alert(1)</script>"), "{text}");
    save(&c, "hostile.png").await;
    c.close().await.expect("close");
}

/// The text of every element `css` finds, in page order.
async fn texts(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.expect("find") {
        out.push(e.text().await.expect("text"));
    }
    out
}

/// Node names of the list's rows, in order.
async fn listed(c: &Client) -> Vec<String> {
    texts(c, "table.nodes tbody tr td:first-child a").await
}

/// The list's `#page-of` line: "page 2 of 9 · 256 node(s)".
async fn page_of(c: &Client) -> String {
    c.find(Locator::Css("#page-of"))
        .await
        .expect("pager")
        .text()
        .await
        .expect("text")
}

/// Waits until the browser's address contains `part` (a click or a submitted form
/// navigated), then returns it.
async fn landed(c: &Client, part: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = c.current_url().await.expect("url").to_string();
        if url.contains(part) {
            // The new document is there once its main element is.
            c.wait()
                .for_element(Locator::Css("main"))
                .await
                .expect("page");
            return url;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {part:?}: at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The main element's text: what a page shows, to compare a view with its reload.
async fn shown(c: &Client) -> String {
    c.find(Locator::Css("main"))
        .await
        .expect("main")
        .text()
        .await
        .expect("text")
}

/// Opens `url` afresh (as a bookmark or a shared link would) and checks it shows what
/// `before` showed: the page's whole state is in its URL.
async fn reopens_the_same(c: &Client, url: &str, before: &str) {
    c.goto("about:blank").await.expect("blank");
    c.goto(url).await.expect("reopen");
    assert_eq!(
        shown(c).await,
        before,
        "{url} shows something else when reopened"
    );
}

/// Types into a form field (emptied first) and submits its form.
async fn submit(c: &Client, field: &str, text: &str) {
    let f = c.find(Locator::Css(field)).await.expect("field");
    f.clear().await.expect("clear");
    f.send_keys(text).await.expect("type");
    let form = c
        .find(Locator::XPath(&format!(
            "//input[@name='{}']/ancestor::form",
            f.attr("name").await.expect("name").unwrap_or_default()
        )))
        .await
        .expect("its form");
    form.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
}

/// A few ledger entries, so the requests page has rows to show.
fn ledger() -> (
    Vec<vogeler_store::LedgerRequest>,
    Vec<vogeler_store::LedgerAnswer>,
) {
    let now = chrono::Utc::now();
    let nodes: Vec<String> = (1..=6).map(|i| format!("fx-web0{i}")).collect();
    let requests = vec![
        vogeler_store::LedgerRequest {
            id: "5f0c3a1e-facter".into(),
            command: "facter".into(),
            sender: "ops@admin01".into(),
            sent_at: now - chrono::Duration::minutes(30),
            ttl: 600,
            expected: nodes.clone(),
        },
        vogeler_store::LedgerRequest {
            id: "7b21d9c4-dpkg".into(),
            command: "dpkg".into(),
            sender: "ops@admin01".into(),
            sent_at: now - chrono::Duration::minutes(5),
            ttl: 600,
            expected: nodes[..4].to_vec(),
        },
    ];
    let mut answers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if i == 2 {
            continue; // silent
        }
        answers.push(vogeler_store::LedgerAnswer {
            request_id: requests[0].id.clone(),
            node: n.clone(),
            plugin: "facter".into(),
            error: (i == 5).then(|| "facter: exit status 1".into()),
            stale: false,
            at: requests[0].sent_at + chrono::Duration::seconds(2 + i as i64),
        });
    }
    for n in &nodes[..4] {
        answers.push(vogeler_store::LedgerAnswer {
            request_id: requests[1].id.clone(),
            node: n.clone(),
            plugin: "dpkg".into(),
            error: None,
            stale: false,
            at: requests[1].sent_at + chrono::Duration::seconds(1),
        });
    }
    (requests, answers)
}

/// Issue #20's browser checks, JavaScript off, on the fixture fleet plus 250 small
/// nodes (so the list pages): sort by a column and read the order, filter with an
/// expression, page, click a chart bar on the overview and on a fact page and land on
/// exactly the nodes it counts, filter the node page's keys; every view, reopened
/// from its URL, shows the same. Screenshots of each page on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_filter_page_and_chart_clicks_land_on_the_matching_nodes() {
    let mut extra = common::fleet::bulk(250);
    extra.push(common::fleet::ps("fx-web01"));
    let (requests, answers) = ledger();
    let w = common::web::start_with_ledger(&[], extra, &requests, &answers).await;
    let d = driver();
    let c = browser(&d, false).await;
    let b = &w.base;

    // Sort by the OS family column, then the other way round.
    c.goto(&format!("{b}/nodes?per_page=50"))
        .await
        .expect("goto /nodes");
    assert_eq!(rows(&c).await, 50);
    assert_eq!(page_of(&c).await, "page 1 of 6 · 256 node(s)");
    c.find(Locator::LinkText("facter.os.family"))
        .await
        .expect("the column header")
        .click()
        .await
        .expect("sort");
    landed(&c, "sort=facter.os.family").await;
    let families = texts(&c, "table.nodes tbody tr td:nth-child(5)").await;
    assert_eq!(families.len(), 50, "the page size stays");
    assert!(families.iter().all(|f| f == "Debian"), "{families:?}");
    c.find(Locator::LinkText("facter.os.family ▲"))
        .await
        .expect("the sorted header")
        .click()
        .await
        .expect("sort the other way");
    let url = landed(&c, "order=desc").await;
    let families = texts(&c, "table.nodes tbody tr td:nth-child(5)").await;
    assert!(families.iter().all(|f| f == "RedHat"), "{families:?}");
    let names = listed(&c).await;
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "ties in name order");
    assert_eq!(names[0], "fx-bulk000");
    reopens_the_same(&c, &url, &shown(&c).await).await;

    // Sort by last seen: the newest last in ascending order, read from the rows' times.
    c.goto(&format!("{b}/nodes?per_page=50&sort=last_seen"))
        .await
        .expect("goto");
    let mut seen = Vec::new();
    for t in c
        .find_all(Locator::Css("table.nodes tbody tr td:nth-child(2) time"))
        .await
        .expect("times")
    {
        seen.push(t.attr("datetime").await.expect("attr").unwrap_or_default());
    }
    let mut ordered = seen.clone();
    ordered.sort();
    assert_eq!(seen, ordered, "oldest first");
    save(&c, "nodes.png").await;

    // A filter expression typed in the box.
    c.goto(&format!("{b}/nodes")).await.expect("goto");
    submit(
        &c,
        "form#filter input[name=where]",
        "(facter.os.family = RedHat or facter.os.family = Suse) and facter.networking.ip ~ ^10\\.",
    )
    .await;
    let url = landed(&c, "where=").await;
    assert_eq!(page_of(&c).await, "page 1 of 1 · 84 node(s)");
    let names = listed(&c).await;
    let want: Vec<String> = (0..250)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("fx-bulk{i:03}"))
        .collect();
    assert_eq!(names, want);
    reopens_the_same(&c, &url, &shown(&c).await).await;

    // Paging: next, and the page in the address.
    c.goto(&format!("{b}/nodes?per_page=100&sort=name&order=desc"))
        .await
        .expect("goto");
    let first = listed(&c).await;
    c.find(Locator::Css("a[rel=next]"))
        .await
        .expect("next")
        .click()
        .await
        .expect("next page");
    let url = landed(&c, "page=2").await;
    let second = listed(&c).await;
    assert_eq!(second.len(), 100);
    assert!(
        first.last() > second.first(),
        "page 2 goes on where page 1 ended"
    );
    assert_eq!(page_of(&c).await, "page 2 of 3 · 256 node(s)");
    reopens_the_same(&c, &url, &shown(&c).await).await;
    c.find(Locator::Css("a.last"))
        .await
        .expect("last")
        .click()
        .await
        .expect("last page");
    landed(&c, "page=3").await;
    assert_eq!(rows(&c).await, 56);
    assert_eq!(
        listed(&c).await.last().map(String::as_str),
        Some("fx-bulk000")
    );

    // A bar on the overview: the nodes it counts, no more, no fewer.
    c.goto(&format!("{b}/")).await.expect("goto /");
    save(&c, "overview.png").await;
    let bar = c
        .find(Locator::Css("#chart-os-family g.bar[data-label=RedHat]"))
        .await
        .expect("the RedHat bar");
    let count = bar
        .attr("data-count")
        .await
        .expect("attr")
        .unwrap_or_default();
    assert_eq!(count, "86");
    bar.find(Locator::Css("rect"))
        .await
        .expect("its rect")
        .click()
        .await
        .expect("click the bar");
    landed(&c, "/nodes?where=").await;
    assert_eq!(page_of(&c).await, format!("page 1 of 1 · {count} node(s)"));
    let families = texts(&c, "table.nodes tbody tr td:nth-child(5)").await;
    assert!(families.iter().all(|f| f == "RedHat") && families.len() == 86);

    // A bar on a fact page, and a value in its table.
    c.goto(&format!("{b}/facts/facter.os.family"))
        .await
        .expect("goto fact page");
    save(&c, "fact.png").await;
    let bar = c
        .find(Locator::Css("#chart-fact g.bar[data-label=Debian]"))
        .await
        .expect("the Debian bar");
    let count: usize = bar
        .attr("data-count")
        .await
        .expect("attr")
        .unwrap_or_default()
        .parse()
        .expect("a count");
    assert_eq!(count, 170);
    bar.find(Locator::Css("rect"))
        .await
        .expect("rect")
        .click()
        .await
        .expect("click the bar");
    let url = landed(&c, "/nodes?where=").await;
    assert_eq!(page_of(&c).await, format!("page 1 of 2 · {count} node(s)"));
    reopens_the_same(&c, &url, &shown(&c).await).await;
    c.goto(&format!("{b}/facts/facter.os.family"))
        .await
        .expect("goto fact page");
    c.find(Locator::LinkText("RedHat"))
        .await
        .expect("the value")
        .click()
        .await
        .expect("click the value");
    landed(&c, "/nodes?where=").await;
    assert_eq!(page_of(&c).await, "page 1 of 1 · 86 node(s)");
    // A narrowed fact page keeps its filter in the URL.
    let url = format!("{b}/facts/facter.os.family?name=fx-web*");
    c.goto(&url).await.expect("goto");
    let before = shown(&c).await;
    assert!(before.contains("6 node(s) have it"), "{before}");
    reopens_the_same(&c, &url, &before).await;

    // The node page: summary first, long sections closed, a key filter.
    c.goto(&format!("{b}/nodes/fx-web01"))
        .await
        .expect("goto node");
    save(&c, "node.png").await;
    let ohai = c
        .find(Locator::Css("details#plugin-ohai"))
        .await
        .expect("ohai");
    assert_eq!(
        ohai.attr("open").await.expect("attr"),
        None,
        "ohai is collapsed"
    );
    let ps = c
        .find(Locator::Css("details#plugin-ps table.command"))
        .await
        .expect("the ps table");
    let header = texts(&c, "details#plugin-ps table.command th").await;
    assert_eq!(
        header,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    assert!(ps
        .text()
        .await
        .expect("text")
        .contains("nginx: worker process"));
    submit(&c, "form#keys input[name=key]", "kernelrelease").await;
    let url = landed(&c, "key=kernelrelease").await;
    let facter = c
        .find(Locator::Css("details#plugin-facter"))
        .await
        .expect("facter");
    let text = facter.text().await.expect("text");
    assert!(text.contains("kernelrelease: 5.10.0-26-amd64"), "{text}");
    assert!(!text.contains("timezone"), "{text}");
    assert!(
        c.find_all(Locator::Css("details#plugin-dpkg"))
            .await
            .expect("query")
            .is_empty(),
        "dpkg has no such key"
    );
    reopens_the_same(&c, &url, &shown(&c).await).await;
    // A key's history, from its link.
    c.find(Locator::LinkText("kernelrelease"))
        .await
        .expect("the key's link")
        .click()
        .await
        .expect("history");
    let url = landed(&c, "/history?path=").await;
    assert!(shown(&c).await.contains("5.10.0-26-amd64"));
    reopens_the_same(&c, &url, &shown(&c).await).await;
    c.goto(&format!("{b}/nodes/fx-web01/history?path=dpkg.openssl"))
        .await
        .expect("goto");
    save(&c, "history.png").await;
    c.goto(&format!("{b}/nodes/fx-web01?key=kernel"))
        .await
        .expect("goto");
    save(&c, "node-keys.png").await;
    c.goto(&format!("{b}/nodes/fx-web01#plugin-ps"))
        .await
        .expect("goto");
    save(&c, "node-ps.png").await;

    // Diff, changes, requests: each reopens the same from its URL (a fixed `since`:
    // a relative one moves with the clock).
    let since = (chrono::Utc::now() - chrono::Duration::days(5)).format("%Y-%m-%d");
    let changes = format!("/changes?since={since}&name=fx-web0*");
    for (path, name, want) in [
        (
            "/diff?a=fx-web01&b=fx-web05&path=facter",
            "diff.png",
            "facter.os.family",
        ),
        (changes.as_str(), "changes.png", "3.0.99-1"),
        ("/requests", "requests.png", "7b21d9c4-dpkg"),
        ("/requests/5f0c3a1e-facter", "request.png", "fx-web03"),
        ("/search?q=package%20openssl", "search.png", "fx-web01"),
    ] {
        let url = format!("{b}{path}");
        c.goto(&url).await.expect("goto");
        let before = shown(&c).await;
        assert!(!before.contains("Bad Request"), "{path}: {before}");
        assert!(before.contains(want), "{path}: {before}");
        save(&c, name).await;
        reopens_the_same(&c, &url, &before).await;
    }
    c.close().await.expect("close");
}
