//! Reconnect pacing: exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: each delay is uniform in `[0, min(max, base·2ⁿ)]`,
/// so thousands of agents that lost the same broker come back spread out, not in one herd.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

impl Backoff {
    /// A backoff starting near `base` and never waiting longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay to wait, and one step further up.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        // At least a few milliseconds so a failing loop never spins.
        Duration::from_millis(rand::rng().random_range(ms.min(10)..=ms.max(10)))
    }

    /// Back to the start after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = vec![];
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1));
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling().as_millis(), 100);
    }

    #[test]
    fn delays_are_spread() {
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            distinct.insert(b.next_delay().as_millis());
        }
        assert!(
            distinct.len() > 10,
            "jitter should spread delays: {distinct:?}"
        );
    }
}
