//! The web UI in a real headless Chromium (Debian's `chromium` driven through
//! `chromedriver`), against a server filled with the fixture data. Pages are
//! checked with JavaScript off; screenshots land in `target/screenshots/`.

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
    let port = common::web::free_port();
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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
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
    save(&c, "node.png").await;

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
    save(&c, "overview.png").await;

    c.goto(&format!("{}/search?q=package%20openssl", w.base))
        .await
        .expect("goto search");
    let hits = c
        .find_all(Locator::Css("table.results tbody tr"))
        .await
        .expect("rows")
        .len();
    assert_eq!(hits, 4);
    save(&c, "search.png").await;
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
