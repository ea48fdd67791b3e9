//! Broker-neutral acts on a deployment's broker, through the transport seam the programs
//! use, so one test body runs on RabbitMQ and on NATS: publish requests as a runner (or an
//! attacker, or a 2010 program) would, and take the dead letters.

use std::time::Duration;

use vogeler_transport::{Audience, Delivered, Message, Outgoing};

use super::{rt, Deployment};

impl Deployment {
    /// Publishes requests, confirmed, to node `to` (its full name) or, with `None`, to
    /// every node; each must be routed (a node whose client never declared anything is
    /// unroutable on RabbitMQ: a test error).
    pub fn publish_requests(&self, to: Option<&str>, msgs: Vec<Outgoing>) {
        let c = self.connector();
        rt().block_on(async {
            let t = c.connect().await.expect("connect to the test broker");
            t.declare().await.expect("declare");
            let audience = to.map_or(Audience::Everyone, Audience::Node);
            for m in msgs {
                let delivered = t
                    .publish_request(audience, m)
                    .await
                    .expect("publish a request");
                assert_eq!(delivered, Delivered::Routed, "request to {to:?} unroutable");
            }
            t.close().await;
        });
    }

    /// [`Deployment::publish_requests`] of one body with headers (signatures).
    pub fn publish_request(&self, to: Option<&str>, body: Vec<u8>, headers: Vec<(String, String)>) {
        self.publish_requests(
            to,
            vec![Outgoing {
                body,
                headers,
                ..Default::default()
            }],
        );
    }

    /// [`Deployment::write_conf`] keeping what [`Deployment::on`] wrote for the broker
    /// (a NATS deployment's short `[nats] ack_wait`).
    pub fn write_conf_on_bus(&self, extra: &str) {
        if self.is_nats() {
            self.write_conf(&format!(
                "[nats]\nack_wait = {}\n{extra}",
                super::NATS_TEST_ACK_WAIT.as_secs()
            ));
        } else {
            self.write_conf(extra);
        }
    }

    /// Every dead letter waiting (taken and acked), once none came for `quiet`.
    pub fn take_dead_letters(&self, quiet: Duration) -> Vec<Message> {
        let c = self.connector();
        rt().block_on(async {
            let t = c.connect().await.expect("connect to the test broker");
            t.declare().await.expect("declare");
            let mut sub = t.consume_dead(1000).await.expect("consume dead letters");
            let mut out = Vec::new();
            while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next()).await {
                let m = m.expect("a dead letter");
                t.ack(&m.ack).await.expect("ack a dead letter");
                out.push(m);
            }
            drop(sub);
            t.close().await;
            out
        })
    }
}
