//! What a consumer's telemetry means, the same for every source of it (the embedded queue's
//! per-second buckets, the queue proxies' reports): the run of failures since its last success,
//! and the warm-up left out of its timings.

/// A task's first seconds in a window are its warm-up: a task that just started is slower for
/// a while (a cold process, connections, caches; on a busy machine, more so), and the latency
/// test would otherwise compare a canary's start with the primary's steady state.
pub const WARMUP_MS: u64 = 10_000;
/// And its first deletes in the window (at least this many, whole intervals of them).
pub const WARMUP_MESSAGES: u64 = 5;

/// What a consumer did in one interval of its telemetry (a second's bucket, or what happened
/// between two reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interval {
    pub received: u64,
    pub deleted: u64,
    /// Failed attempts that ended in the interval: returned, expired, handed back.
    pub failed: u64,
}

/// The run of failures a consumer is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureRun {
    /// Failures since the last interval with a success, but no more than the messages received
    /// in those intervals.
    pub failures: u64,
    /// The index of that last interval with a success, if any.
    pub last_success: Option<usize>,
}

/// The failures in a row since the consumer's last success, from its intervals (oldest
/// first), at the intervals' resolution.
///
/// Bounded by what it received in the same trailing intervals: an expiry reports a message
/// received long before (a worker that leaves its failed messages sees them expire one
/// visibility timeout later), so when the queue goes quiet a healthy worker's old failures
/// expire one after another with no success between them, and without the bound they would
/// look like a run of fresh failures.
pub fn failure_run(intervals: &[Interval]) -> FailureRun {
    let (mut failed, mut received) = (0u64, 0u64);
    for (i, b) in intervals.iter().enumerate().rev() {
        if b.deleted > 0 {
            return FailureRun { failures: failed.min(received), last_success: Some(i) };
        }
        failed += b.failed;
        received += b.received;
    }
    FailureRun { failures: failed.min(received), last_success: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(received: u64, deleted: u64, failed: u64) -> Interval {
        Interval { received, deleted, failed }
    }

    #[test]
    fn a_run_counts_back_to_the_last_success() {
        let run = failure_run(&[iv(5, 5, 0), iv(3, 0, 2), iv(2, 0, 2)]);
        assert_eq!(run, FailureRun { failures: 4, last_success: Some(0) });
        assert_eq!(failure_run(&[iv(3, 0, 3), iv(2, 1, 1)]), FailureRun { failures: 0, last_success: Some(1) });
        assert_eq!(failure_run(&[]), FailureRun::default());
    }

    #[test]
    fn old_failures_expiring_on_a_quiet_queue_are_not_a_run() {
        // Expiries of messages received before the window's success, nothing received since.
        assert_eq!(failure_run(&[iv(10, 10, 0), iv(0, 0, 3), iv(0, 0, 4)]).failures, 0);
        assert_eq!(failure_run(&[iv(10, 10, 0), iv(1, 0, 3), iv(0, 0, 4)]).failures, 1);
    }
}
