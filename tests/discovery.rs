//! Runner discovery over AMQP: `-W` filters on stored facts and node-name globs are
//! answered by the server from its store; the request goes only to matching nodes.

mod common;

use common::*;
use serde_json::{json, Value};

/// Three nodes with stored facts (two Debian, one RedHat), each with a running client.
async fn fleet() -> (Deployment, Vec<Proc>, [String; 3]) {
    let d = Deployment::new(&[("hello.cfg", plugin("hello", "echo hello", "output").1)]);
    let names = [d.node("web1"), d.node("web2"), d.node("db1")];
    {
        let store = d.open_store().await;
        let facts = [
            ("Debian", "6.1.0"),
            ("Debian", "5.10.0"),
            ("RedHat", "6.4.0"),
        ];
        let batch: Vec<_> = names
            .iter()
            .zip(facts)
            .map(|(n, (family, kernel))| {
                fleet::plugin(
                    n,
                    fleet::t(0),
                    "facter",
                    json!({"os": {"family": family}, "kernelrelease": kernel}),
                )
            })
            .collect();
        store.apply(batch.into()).await.expect("facts");
    }
    let mut procs = vec![d.server(&[])];
    for n in &names {
        procs.push(d.client(n, &[]));
    }
    (d, procs, names)
}

fn summary(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {}", text(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_globs_select_the_nodes_asked() {
    let (d, _procs, [web1, web2, db1]) = fleet().await;

    let out = d.runner(&[
        "-x",
        "hello",
        "-W",
        "facter.os.family=Debian",
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = summary(&out);
    assert_eq!(s["discovered"], json!([web1.clone(), web2.clone()]));
    assert_eq!(s["answered"], json!([web1.clone(), web2.clone()]));
    assert_eq!(s["unexpected"], json!([]));

    // Several -W combine with AND.
    let out = d.runner(&[
        "-x",
        "hello",
        "-W",
        "facter.os.family=Debian",
        "-W",
        "facter.kernelrelease~^6\\.",
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(summary(&out)["answered"], json!([web1.clone()]));

    // A glob expands against the registry.
    let glob = format!("{}-web*", d.id);
    let out = d.runner(&[
        "-x",
        "hello",
        "-n",
        &glob,
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        summary(&out)["answered"],
        json!([web1.clone(), web2.clone()])
    );

    // A glob plus a filter.
    let out = d.runner(&[
        "-x",
        "hello",
        "-n",
        &format!("{}-*", d.id),
        "-W",
        "facter.os.family=RedHat",
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ]);
    assert_eq!(summary(&out)["answered"], json!([db1.clone()]));

    // Nothing matches: nothing sent, said so, exit 3 (incomplete), with and without --json.
    let out = d.runner(&["-x", "hello", "-W", "facter.os.family=Suse", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(summary(&out)["discovered"], json!([]));
    assert_eq!(summary(&out)["no_match"], json!(true));
    let out = d.runner(&["-x", "hello", "-n", &format!("{}-nobody-*", d.id)]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("no node matches"), "{}", text(&out));

    // Without --wait the runner says where the request went and how to follow it.
    let out = d.runner(&["-x", "hello", "-n", &format!("{}-*", d.id)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("sent to 3 node(s)"), "{}", text(&out));
    assert!(
        text(&out).contains("follow with: vogeler-admin requests "),
        "{}",
        text(&out)
    );

    // A bad filter is refused with the reason.
    let out = d.runner(&["-x", "hello", "-W", "facter.os.family"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("no operator"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_without_a_server_fails_naming_the_queue() {
    let d = Deployment::new(&[]);
    let out = d.runner(&[
        "-x",
        "hello",
        "-W",
        "facter.os.family=Debian",
        "--discovery-timeout",
        "1s",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let t = text(&out);
    assert!(
        t.contains("no vogeler-server answered the discovery request"),
        "{t}"
    );
    assert!(t.contains(&format!("{}.master.in", d.id)), "{t}");
}
