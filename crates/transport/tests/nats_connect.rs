//! Connecting to NATS: errors are one line naming the server with its password masked,
//! and a refused login is reported as such (never retried). The refused login runs
//! against a `nats-server` of its own with a password (`VOGELER_NATS_SERVER`, default
//! the Debian package's `/usr/sbin/nats-server`), on a free loopback port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vogeler_transport::{NatsOptions, NatsTransport, TransportError};

fn options() -> NatsOptions {
    NatsOptions {
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// A nats-server child, killed when the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("its address").port()
}

async fn server_with_password(port: u16) -> Server {
    let bin = std::env::var("VOGELER_NATS_SERVER").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".into()
        } else {
            "nats-server".into()
        }
    });
    let child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", "vogeler", "--pass", "right-password"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} (scripts/services.sh ensure installs it): {e}")
        });
    let server = Server(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{bin} did not listen on 127.0.0.1:{port} within 10 s");
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_its_password_masked() {
    let port = free_port();
    let url = format!("nats://vogeler:s3cret@127.0.0.1:{port}");
    let err = match NatsTransport::connect(&url, options()).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, TransportError::Connect { .. }), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(!text.contains("s3cret"), "password shown: {text}");
    assert!(
        text.contains(&format!("nats://vogeler:****@127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!err.is_refused(), "a closed port may open: {text}");
}

#[tokio::test]
async fn a_refused_login_says_so_and_is_permanent() {
    let port = free_port();
    let _server = server_with_password(port).await;
    let url = format!("nats://vogeler:wrong-password@127.0.0.1:{port}");
    let err = match NatsTransport::connect(&url, options()).await {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(err.is_refused(), "{text}");
    assert!(err.is_permanent(), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(!text.contains("wrong-password"), "password shown: {text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");

    // The right password gets past the login, to the next check: JetStream is off here.
    let url = format!("nats://vogeler:right-password@127.0.0.1:{port}");
    let err = match NatsTransport::connect(&url, options()).await {
        Ok(_) => panic!("connected to a server without JetStream"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("without JetStream"), "{err}");
    assert!(!err.is_refused());
}
