//! TLS everywhere a secret travels: `amqps://` to a private RabbitMQ node with a TLS
//! listener (certificates made by the test with the `openssl` CLI; the shared broker is
//! never reconfigured), PostgreSQL `sslmode` against the shared server's own certificate,
//! and `couchs://` through a TLS terminator (`socat`) in front of the test pouchdb-server.
//! Also the client's `plugin_user`: the other half of keeping an agent's privileges small.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use vogeler_config::StoreDsn;
use vogeler_store::{Change, Observation};

/// A private CA, a server certificate for 127.0.0.1/localhost, a client certificate, and
/// an unrelated CA that signed nothing here.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki { dir };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "Vogeler test CA"), ("other-ca", "Unrelated CA")] {
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            pki.openssl(&args);
        }
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "vogeler-client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(
                pki.path(&extfile),
                format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n{ext}"),
            )
            .expect("ext file");
            let subj = format!("/CN={cn}");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            pki.openssl(&args);
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ]);
        }
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl ({e}): install it with `scripts/services.sh ensure-tls-tools`")
            });
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn wait_port(port: u16, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if Instant::now() > deadline {
            panic!(
                "{what} did not listen on 127.0.0.1:{port} within 60 s:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A private RabbitMQ node with a TLS listener signed by `pki`'s CA; with
/// `require_client_cert`, it refuses peers without a certificate from that CA.
fn tls_node(pki: &Pki, require_client_cert: bool) -> (RabbitNode, u16) {
    let tls_port = free_port();
    let (verify, fail) = if require_client_cert {
        ("verify_peer", "true")
    } else {
        ("verify_none", "false")
    };
    let node = RabbitNode::start_with(NodeSetup {
        conf: vec![
            format!("listeners.ssl.1 = 127.0.0.1:{tls_port}"),
            format!("ssl_options.cacertfile = {}", pki.file("ca.pem")),
            format!("ssl_options.certfile = {}", pki.file("server.pem")),
            format!("ssl_options.keyfile = {}", pki.file("server.key")),
            format!("ssl_options.verify = {verify}"),
            format!("ssl_options.fail_if_no_peer_cert = {fail}"),
        ],
        ..Default::default()
    });
    wait_port(tls_port, "the private node's TLS listener", || {
        node.log_text()
    });
    (node, tls_port)
}

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// Server, client and runner over `amqps://`: the request goes out, the result is stored.
fn run_hello_over(d: &Deployment) {
    let _server = d.server(&[]);
    let node = d.node("tls01");
    let _client = d.client(&node, &[]);
    let out = d.runner(&["-x", "hello", "-n", &node, "--wait", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let doc = d.wait_document(&node, 30, |doc| doc.get("hello").is_some());
    assert_eq!(doc["hello"], json!(["hello over tls"]));
}

#[test]
fn amqps_end_to_end_with_a_private_ca_and_a_wrong_ca_is_refused() {
    let pki = Pki::new();
    let (_node, tls_port) = tls_node(&pki, false);
    let d = Deployment::new(&[(
        "hello.cfg",
        plugin("hello", "echo hello over tls", "output").1,
    )])
    .with_broker(&format!("amqps://guest:guest@127.0.0.1:{tls_port}/"));
    d.write_conf(&format!("ca_file = {}\n", pki.file("ca.pem")));
    run_hello_over(&d);

    // The flag overrides the file: a CA that did not sign the broker's certificate is
    // refused, and the error names the CA file it checked against.
    let out = d.admin(&[
        "--amqp-ca-file",
        &pki.file("other-ca.pem"),
        "queue",
        "--exists",
        "x",
    ]);
    let text = out_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&pki.file("other-ca.pem")), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // An unreadable CA file is a start-up error naming the setting and the file.
    let out = d.admin(&[
        "--amqp-ca-file",
        "/nonexistent/ca.pem",
        "queue",
        "--exists",
        "x",
    ]);
    let text = out_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("--amqp-ca-file") && text.contains("/nonexistent/ca.pem"),
        "{text}"
    );
}

#[test]
fn amqps_client_certificate_required_by_the_broker() {
    let pki = Pki::new();
    let (_node, tls_port) = tls_node(&pki, true);
    let d = Deployment::new(&[(
        "hello.cfg",
        plugin("hello", "echo hello over tls", "output").1,
    )])
    .with_broker(&format!("amqps://guest:guest@127.0.0.1:{tls_port}/"));

    // Without a client certificate the broker ends the handshake.
    d.write_conf(&format!("ca_file = {}\n", pki.file("ca.pem")));
    let out = d.admin(&["queue", "--exists", "x"]);
    let text = out_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("TLS"), "{text}");

    d.write_conf(&format!(
        "ca_file = {}\ncert_file = {}\nkey_file = {}\n",
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key")
    ));
    run_hello_over(&d);
}

// ---- PostgreSQL: the shared server's own certificate (Debian's snakeoil, CN localhost).

/// The shared server's certificate file, which its self-signed certificate is its own CA.
async fn pg_server_cert() -> PathBuf {
    let url = vogeler_store::testing::postgres_admin_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e}"));
    tokio::spawn(conn);
    let ssl: String = client
        .query_one("SHOW ssl", &[])
        .await
        .expect("SHOW ssl")
        .get(0);
    assert_eq!(
        ssl, "on",
        "PostgreSQL at {url} has ssl = off; these tests need its TLS (Debian's default, with the snakeoil certificate)"
    );
    let file: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .expect("SHOW ssl_cert_file")
        .get(0);
    PathBuf::from(file)
}

/// Whether every server connection to `db` uses TLS (`None` when there is none).
async fn pg_connections_use_tls(db: &str) -> Option<bool> {
    let url = vogeler_store::testing::postgres_admin_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
            &[&db],
        )
        .await
        .expect("pg_stat_ssl");
    if rows.is_empty() {
        return None;
    }
    Some(rows.iter().all(|r| r.get::<_, bool>(0)))
}

async fn open_pg(url: &str) -> Result<vogeler_store::DynStore, String> {
    let dsn = StoreDsn::parse(url, Path::new("/")).map_err(|e| e.to_string())?;
    vogeler_store::open(&dsn).await.map_err(|e| e.to_string())
}

async fn store_one(store: &vogeler_store::DynStore, node: &str) {
    let batch: vogeler_store::Batch = Arc::from(vec![Observation {
        node: node.into(),
        at: chrono::Utc::now(),
        change: Change::Plugin {
            name: "hello".into(),
            value: json!("over tls").into(),
            history: true,
        },
    }]);
    store.apply(batch).await.expect("apply");
    let record = store.node(node).await.expect("node").expect("stored");
    assert_eq!(record.keys.get("hello"), Some(&json!("over tls")));
}

#[test]
fn postgres_sslmode_against_the_shared_server() {
    let pki = Pki::new();
    rt().block_on(async {
        let root = pg_server_cert().await;
        let url = vogeler_store::testing::fresh_postgres().await;
        let db = url.rsplit('/').next().expect("database name").to_string();
        let localhost = url.replace("@127.0.0.1:", "@localhost:");
        assert_ne!(localhost, url, "the test server URL names 127.0.0.1: {url}");

        // require: encrypted, the certificate not checked (libpq's meaning).
        let store = open_pg(&format!("{url}?sslmode=require"))
            .await
            .expect("sslmode=require");
        store_one(&store, "pg-require").await;
        assert_eq!(pg_connections_use_tls(&db).await, Some(true));
        drop(store);

        // verify-full: the chain and the host name (the certificate names localhost).
        let store = open_pg(&format!(
            "{localhost}?sslmode=verify-full&sslrootcert={}",
            root.display()
        ))
        .await
        .expect("verify-full as localhost");
        store_one(&store, "pg-verify-full").await;
        drop(store);
        let e = open_pg(&format!(
            "{url}?sslmode=verify-full&sslrootcert={}",
            root.display()
        ))
        .await
        .err()
        .expect("127.0.0.1 is not a name in the certificate");
        assert!(e.to_lowercase().contains("certificate"), "{e}");

        // verify-ca: the chain only, so 127.0.0.1 is fine; a CA that signed nothing is not.
        let store = open_pg(&format!(
            "{url}?sslmode=verify-ca&sslrootcert={}",
            root.display()
        ))
        .await
        .expect("verify-ca");
        store_one(&store, "pg-verify-ca").await;
        drop(store);
        let e = open_pg(&format!(
            "{url}?sslmode=verify-ca&sslrootcert={}",
            pki.file("other-ca.pem")
        ))
        .await
        .err()
        .expect("a wrong CA is refused");
        assert!(e.to_lowercase().contains("certificate"), "{e}");
        let e = open_pg(&format!(
            "{url}?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"
        ))
        .await
        .err()
        .expect("a missing root certificate is an error");
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
    });
}

// ---- CouchDB: couchs:// through socat terminating TLS in front of pouchdb-server.

struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn couchs_with_a_private_ca() {
    let pki = Pki::new();
    let couch = vogeler_store::testing::pouchdb();
    let couch_port = couch.rsplit(':').next().expect("port").to_string();
    let port = free_port();
    let child = Command::new("socat")
        .args([
            format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                pki.file("server.pem"),
                pki.file("server.key")
            ),
            format!("TCP:127.0.0.1:{couch_port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run socat ({e}): install it with `scripts/services.sh ensure-tls-tools`")
        });
    let _socat = Socat(child);
    wait_port(port, "socat (TLS in front of pouchdb-server)", String::new);
    let db = vogeler_store::testing::unique("vt_couchs_");
    rt().block_on(async {
        let dsn = StoreDsn::parse(
            &format!(
                "couchs://127.0.0.1:{port}/{db}?ca_file={}",
                pki.file("ca.pem")
            ),
            Path::new("/"),
        )
        .expect("dsn");
        let store = vogeler_store::open(&dsn)
            .await
            .expect("couchs with ca_file");
        store_one(&store, "couch-tls").await;

        let dsn = StoreDsn::parse(&format!("couchs://127.0.0.1:{port}/{db}"), Path::new("/"))
            .expect("dsn");
        let e = vogeler_store::open(&dsn)
            .await
            .err()
            .expect("without the CA the certificate is refused")
            .to_string();
        assert!(
            e.contains("couch") && e.to_lowercase().contains("certificate"),
            "{e}"
        );
    });
}

// ---- The client's plugin user.

#[test]
fn plugins_run_as_the_configured_user() {
    let nobody = Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .expect("id -u nobody");
    let nobody = String::from_utf8_lossy(&nobody.stdout).trim().to_string();
    assert!(!nobody.is_empty(), "the nobody user exists");
    let d = Deployment::new(&[("whoami.cfg", plugin("whoami", "id -u", "string").1)]);
    d.write_conf("\n[client]\nplugin_user = nobody\n");
    let _server = d.server(&[]);
    let node = d.node("nobody01");
    let _client = d.client(&node, &[]);
    let out = d.runner(&["-x", "whoami", "-n", &node, "--wait", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let doc = d.wait_document(&node, 30, |doc| doc.get("whoami").is_some());
    assert_eq!(doc["whoami"], json!(nobody));

    // An unknown user stops the client at start, naming the setting.
    d.write_conf("\n[client]\nplugin_user = no-such-user-vogeler\n");
    let out = d.run("client", &["list"]);
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("plugin_user") && text.contains("no-such-user-vogeler"),
        "{text}"
    );
}
