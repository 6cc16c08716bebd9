//! Time as the engine and its store read it: through a [`Clock`], so that tests can drive
//! stage timeouts, pauses and alarm windows with a [`ManualClock`] instead of waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A source of the current time, in Unix milliseconds.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The machine's clock ([`crate::now_ms`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::now_ms()
    }
}

/// The system clock, shared: what [`crate::EngineParts::clock`] is in production.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Move the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Move the time forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Set the time (it may go backwards: a stepped system clock does too).
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// 2024-01-01T00:00:00Z: far from 0, so that "ms ago" arithmetic does not saturate.
    fn default() -> ManualClock {
        ManualClock::new(1_704_067_200_000)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = ManualClock::new(1000);
        let shared = c.clone();
        assert_eq!(c.now_ms(), 1000);
        c.advance(Duration::from_secs(2));
        assert_eq!(shared.now_ms(), 3000);
        shared.advance_ms(5);
        assert_eq!(c.now_ms(), 3005);
        c.set_ms(10);
        assert_eq!(shared.now_ms(), 10);
    }

    #[test]
    fn system_clock_is_now() {
        let a = crate::now_ms();
        let b = SystemClock.now_ms();
        assert!(b >= a && b - a < 60_000, "{a} {b}");
    }
}
