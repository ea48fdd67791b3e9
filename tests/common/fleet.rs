//! A small fleet filled from the fixtures (facter, ohai, dpkg-query), written
//! straight into a store for the query, report and web tests.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use vogeler_store::{Change, DynStore, Observation};

pub fn t(days_ago: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(days_ago)
}

pub fn plugin(node: &str, at: DateTime<Utc>, name: &str, value: Value) -> Observation {
    Observation {
        node: node.into(),
        at,
        change: Change::Plugin {
            name: name.into(),
            value: value.into(),
            history: true,
        },
    }
}

pub fn fixtures() -> (Value, Value, Value) {
    let facter: Value = serde_yaml::from_str(
        &std::fs::read_to_string(super::fixture("facter-y.yaml")).expect("facter fixture"),
    )
    .expect("facter yaml");
    let ohai: Value = serde_json::from_str(
        &std::fs::read_to_string(super::fixture("ohai.json")).expect("ohai fixture"),
    )
    .expect("ohai json");
    // What the shipped dpkg plugin stores: {"package": "version"}.
    let dpkg: serde_json::Map<String, Value> =
        std::fs::read_to_string(super::fixture("dpkg-query.txt"))
            .expect("dpkg fixture")
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .map(|(p, v)| (p.to_string(), json!(v.trim())))
            .collect();
    (facter, ohai, Value::Object(dpkg))
}

/// Six nodes: four Debian (dpkg, one of them upgraded openssl 3 days ago), two RedHat,
/// one of which last returned an error.
pub async fn fill(store: &DynStore) {
    let (facter, ohai, dpkg) = fixtures();
    let mut batch = Vec::new();
    for i in 1..=6 {
        let node = format!("fx-web0{i}");
        let mut f = facter.clone();
        let debian = i <= 4;
        f["os"]["family"] = json!(if debian { "Debian" } else { "RedHat" });
        f["kernelrelease"] = json!(if i % 2 == 0 {
            "6.1.0-13-amd64"
        } else {
            "5.10.0-26-amd64"
        });
        batch.push(plugin(&node, t(10), "facter", f));
        batch.push(plugin(&node, t(10), "ohai", ohai.clone()));
        if debian {
            batch.push(plugin(&node, t(10), "dpkg", dpkg.clone()));
        }
    }
    batch.push(Observation {
        node: "fx-web06".into(),
        at: t(1),
        change: Change::Error {
            plugin: Some("facter".into()),
            message: "facter: exit status 1".into(),
            raw: None,
        },
    });
    store.apply(batch.into()).await.expect("fill");
    let mut newer = dpkg.clone();
    newer["openssl"] = json!("3.0.99-1");
    store
        .apply(vec![plugin("fx-web01", t(3), "dpkg", newer)].into())
        .await
        .expect("upgrade");
}

/// A node whose plugin output is hostile markup, for the escaping tests.
pub fn hostile() -> Observation {
    plugin(
        "fx-evil",
        t(0),
        "motd",
        json!({"motd": "<script>alert(1)</script>", "<img src=x onerror=alert(2)>": "\"'><b>x</b>"}),
    )
}

/// `node`'s `ps` plugin value as the shipped plugin stores it: `ps -ef` (the fixture)
/// through `result_format = output`, one string per line, header first.
#[allow(dead_code)]
pub fn ps(node: &str) -> Observation {
    let raw = std::fs::read_to_string(super::fixture("ps-ef.txt")).expect("ps fixture");
    let value = vogeler_plugins::Format::Output
        .convert(&raw)
        .expect("ps output");
    plugin(node, t(0), "ps", value)
}

/// `n` more nodes (`fx-bulk000`…), seen a minute apart, alternating Debian and
/// RedHat, each with its own address: enough for the node list to page.
#[allow(dead_code)]
pub fn bulk(n: usize) -> Vec<Observation> {
    (0..n)
        .map(|i| {
            let family = if i % 3 == 0 { "RedHat" } else { "Debian" };
            plugin(
                &format!("fx-bulk{i:03}"),
                Utc::now() - Duration::minutes(i as i64),
                "facter",
                json!({"os": {"family": family}, "networking": {"ip": format!("10.0.{}.{}", i / 250, i % 250 + 1)}, "kernelrelease": "6.1.0-13-amd64"}),
            )
        })
        .collect()
}
