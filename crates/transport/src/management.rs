//! RabbitMQ's management HTTP API, when the plugin is enabled.
//!
//! One `GET /api/queues/{vhost}` lists every queue of the vhost with figures a passive
//! declare cannot give (unacknowledged messages, memory, rates), in one round trip
//! instead of one declare per node queue: at 10,000 nodes that is the difference
//! between a second and a few milliseconds. AMQP stays the only thing the programs
//! need; `vogeler-admin queue --status` falls back to passive declares when this API
//! does not answer.

use std::time::Duration;

use serde::Deserialize;

/// Why the management API could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// Nothing listens (the plugin is not enabled) or the request failed on the way.
    #[error("management API at {url} not reachable: {message}")]
    Unreachable {
        /// The base URL tried (no credentials).
        url: String,
        /// What failed.
        message: String,
    },
    /// It answered, but not with the queue list (wrong credentials, no permission).
    #[error("management API at {url} answered {status}: {message}")]
    Refused {
        /// The base URL tried (no credentials).
        url: String,
        /// HTTP status.
        status: u16,
        /// The body's `reason`, or the body.
        message: String,
    },
}

/// A management API endpoint with the credentials of the AMQP user.
#[derive(Debug, Clone)]
pub struct Management {
    base: String,
    user: String,
    password: String,
}

/// One queue as the management API lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Ready messages.
    #[serde(default)]
    pub messages_ready: u64,
    /// Delivered, not yet acknowledged.
    #[serde(default)]
    pub messages_unacknowledged: u64,
    /// Attached consumers.
    #[serde(default)]
    pub consumers: u64,
    /// Bytes the queue process uses.
    #[serde(default)]
    pub memory: Option<u64>,
    /// `classic` or `quorum` (absent on old brokers).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

impl Management {
    /// An endpoint at `base` (`http://host:15672`), logging in as `user`.
    pub fn new(base: &str, user: &str, password: &str) -> Management {
        Management {
            base: base.trim_end_matches('/').to_string(),
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// The base URL, for messages (never carries the password).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Every queue of `vhost`, with the figures `queue --status` shows.
    pub async fn queues(&self, vhost: &str) -> Result<Vec<QueueInfo>, ManagementError> {
        let url = format!(
            "{}/api/queues/{}?columns=name,messages_ready,messages_unacknowledged,consumers,memory,type",
            self.base,
            percent_encode(vhost)
        );
        let unreachable = |e: reqwest::Error| ManagementError::Unreachable {
            url: self.base.clone(),
            message: e.without_url().to_string(),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(unreachable)?;
        let response = client
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(String::from))
                .unwrap_or(body);
            return Err(ManagementError::Refused {
                url: self.base.clone(),
                status: status.as_u16(),
                message,
            });
        }
        response
            .json::<Vec<QueueInfo>>()
            .await
            .map_err(|e| ManagementError::Refused {
                url: self.base.clone(),
                status: status.as_u16(),
                message: format!("not a queue list: {}", e.without_url()),
            })
    }
}

/// Percent-encodes a vhost for a URL path segment (`/` is `%2F`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_are_one_path_segment() {
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("vogeler"), "vogeler");
        assert_eq!(percent_encode("/a b"), "%2Fa%20b");
    }

    #[test]
    fn queue_list_decodes_with_missing_figures() {
        let body = r#"[{"name":"master.in","messages_ready":3,"messages_unacknowledged":1,"consumers":2,"memory":55000,"type":"classic"},{"name":"n1"}]"#;
        let q: Vec<QueueInfo> = serde_json::from_str(body).expect("decodes");
        assert_eq!(q[0].messages_unacknowledged, 1);
        assert_eq!(q[1].consumers, 0);
        assert_eq!(q[1].memory, None);
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_and_names_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let m = Management::new(&format!("http://127.0.0.1:{port}/"), "guest", "secret");
        let e = m.queues("/").await.expect_err("no server");
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
