//! A shutdown signal every long-running loop takes as an argument, so tests and
//! `main` decide when a program stops and in-flight work drains first.

use tokio::sync::watch;

/// Cloneable receiver of "stop now"; resolves for every clone once triggered.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending half: trigger it once to stop every [`Shutdown`] clone.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A new trigger and its signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Asks everything holding the signal to stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown was requested (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone: treat as a request to stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// An owned future resolving on shutdown, for APIs that take the future by value.
    pub async fn wait_owned(mut self) {
        self.wait().await
    }

    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// A signal that fires on SIGINT or SIGTERM.
    pub fn on_signals() -> Shutdown {
        let (trigger, shutdown) = channel();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; finishing in-flight work");
            trigger.trigger();
        });
        shutdown
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
