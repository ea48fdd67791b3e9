//! The client's own clock: scheduled inventory (MCollective's "registration") and
//! heartbeats.
//!
//! Each available plugin with an interval (its own `interval`, else `[client] interval`)
//! runs first at a random offset within the interval, so a fleet started together
//! does not fire at once, then every interval ±10%. Its result is an ordinary result
//! with no request id, published (confirmed) to the master exchange. A plugin still
//! running when it is due again is skipped, not queued. Heartbeats move the node's
//! `last_seen` between runs. Both run in their own tasks beside the request loop, so
//! a slow plugin never delays a heartbeat or a request, and neither takes one of the
//! request slots.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::time::Instant;
use vogeler_protocol::{Heartbeat, Message};
use vogeler_transport::{Outgoing, Transport};

use crate::client::{ClientOptions, SharedRegistry, Wire};

/// When each plugin is next due, kept across broker reconnects so a reconnect does not
/// restart the schedule.
#[derive(Debug, Default)]
pub struct ScheduleState {
    due: Mutex<HashMap<String, Instant>>,
    running: Mutex<HashSet<String>>,
}

/// The first run's delay: a random point within one interval (`r` in `[0, 1)`).
pub fn first_delay(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(r.clamp(0.0, 1.0))
}

/// The delay between runs: the interval ±10% (`r` in `[0, 1)` maps to 0.9 … 1.1).
pub fn next_delay(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * r.clamp(0.0, 1.0))
}

/// A spawned task that ends when this handle is dropped (with its session).
pub struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the scheduler and the heartbeat for one broker session; a publish failure is
/// sent to `failed` (the session is then replaced). Nothing starts when neither is set.
/// `beat_sent`: the session already sent its first heartbeat (NATS, before taking
/// requests), so the next one is due a period later, not at once.
pub fn start(
    opts: &ClientOptions,
    session: &Arc<dyn Transport>,
    registry: &SharedRegistry,
    state: &Arc<ScheduleState>,
    failed: &tokio::sync::mpsc::Sender<anyhow::Error>,
    beat_sent: bool,
) -> Vec<TaskGuard> {
    let mut tasks = Vec::new();
    let has_schedule = opts.interval.is_some()
        || crate::client::current(registry)
            .plugins()
            .any(|p| p.interval.is_some());
    if has_schedule {
        tasks.push(TaskGuard(tokio::spawn(schedule_loop(
            opts.clone(),
            session.clone(),
            registry.clone(),
            state.clone(),
            failed.clone(),
        ))));
    }
    // A 2010 server does not know heartbeats: it would dead-letter them.
    if let (Some(every), Wire::V1) = (opts.heartbeat, opts.wire) {
        tasks.push(TaskGuard(tokio::spawn(heartbeat_loop(
            opts.clone(),
            session.clone(),
            every,
            beat_sent,
            failed.clone(),
        ))));
    }
    tasks
}

async fn heartbeat_loop(
    opts: ClientOptions,
    session: Arc<dyn Transport>,
    every: Duration,
    beat_sent: bool,
    failed: tokio::sync::mpsc::Sender<anyhow::Error>,
) {
    // The first beat goes out at once (unless the session sent it already): a client
    // that just started (or reconnected) is in the registry before anyone broadcasts,
    // so `-n all --wait` expects it.
    let first = if beat_sent {
        tokio::time::Instant::now() + every
    } else {
        tokio::time::Instant::now()
    };
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let body = vogeler_protocol::encode(&Message::Heartbeat(Heartbeat {
            node: opts.node.clone(),
            sent_at: Utc::now(),
        }));
        match session.publish_result(Outgoing::new(body)).await {
            Ok(_) => tracing::debug!("heartbeat sent"),
            Err(e) => {
                let _ = failed.try_send(anyhow::Error::from(e).context("sending a heartbeat"));
                return;
            }
        }
    }
}

async fn schedule_loop(
    opts: ClientOptions,
    session: Arc<dyn Transport>,
    registry: SharedRegistry,
    state: Arc<ScheduleState>,
    failed: tokio::sync::mpsc::Sender<anyhow::Error>,
) {
    loop {
        let now = Instant::now();
        let reg = crate::client::current(&registry);
        let mut next_wake = now + Duration::from_secs(1);
        let mut to_run = Vec::new();
        {
            let Ok(mut due) = state.due.lock() else {
                return;
            };
            let mut seen = HashSet::new();
            for p in reg.plugins().filter(|p| p.available) {
                let Some(interval) = p.interval.or(opts.interval) else {
                    continue;
                };
                seen.insert(p.name.clone());
                let at = *due.entry(p.name.clone()).or_insert_with(|| {
                    let first = first_delay(interval, rand::rng().random::<f64>());
                    tracing::info!(plugin = %p.name, interval_s = interval.as_secs_f64(), first_in_s = first.as_secs_f64(), "scheduled");
                    now + first
                });
                if at <= now {
                    due.insert(
                        p.name.clone(),
                        now + next_delay(interval, rand::rng().random::<f64>()),
                    );
                    to_run.push(p.clone());
                } else {
                    next_wake = next_wake.min(at);
                }
            }
            // A plugin removed (or unscheduled) by a reload leaves the schedule.
            due.retain(|name, _| seen.contains(name));
        }
        for p in to_run {
            let fresh = state
                .running
                .lock()
                .map(|mut r| r.insert(p.name.clone()))
                .unwrap_or(false);
            if !fresh {
                tracing::warn!(plugin = %p.name, "scheduled run skipped: the previous one is still running");
                continue;
            }
            let (opts, session, state, failed) =
                (opts.clone(), session.clone(), state.clone(), failed.clone());
            tokio::spawn(async move {
                let answer =
                    crate::client::finish(vogeler_plugins::run_plugin(&p, &opts.limits).await);
                let body = crate::client::encode_answer(&opts, None, &answer);
                let sent = session.publish_result(Outgoing::new(body)).await;
                if let Ok(mut r) = state.running.lock() {
                    r.remove(&p.name);
                }
                match sent {
                    Ok(_) => {
                        tracing::info!(plugin = %p.name, ok = answer.outcome.is_ok(), "scheduled result sent")
                    }
                    Err(e) => {
                        let _ = failed.try_send(
                            anyhow::Error::from(e).context("publishing a scheduled result"),
                        );
                    }
                }
            });
        }
        tokio::time::sleep_until(next_wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        let i = Duration::from_secs(100);
        assert_eq!(first_delay(i, 0.0), Duration::ZERO);
        assert!(first_delay(i, 0.999) < i);
        assert_eq!(next_delay(i, 0.0), Duration::from_secs(90));
        assert_eq!(next_delay(i, 0.5), Duration::from_secs(100));
        assert!(next_delay(i, 0.999) <= Duration::from_secs(110));
        assert!(next_delay(i, 7.0) <= Duration::from_secs(110));
    }
}
