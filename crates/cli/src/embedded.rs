//! The pipeline's `QueueControl` and `TelemetrySource` over the embedded queue, in the same process.

use coalmine_pipeline::queue_admin::{ConsumerCounts, DeadLetter, InFlight, QueueAdminError, QueueControl, TelemetrySource, QueueDepth, RedriveAll};
use coalmine_analysis::consumer::{failure_run, Interval, WARMUP_MESSAGES, WARMUP_MS};
use coalmine_analysis::Timings;
use coalmine_queue::{Broker, ConsumerTelemetry, LatencyHistogram};

pub struct EmbeddedQueue {
    pub broker: Broker,
    pub queue: String,
    pub dlq: String,
}

/// The queue's histogram as timings (each at its bucket's upper bound).
fn timings(h: &LatencyHistogram) -> Timings {
    let mut out = Timings::default();
    for (i, n) in h.counts.iter().enumerate() {
        out.add(LatencyHistogram::upper_bound_us(i) / 1000.0, *n);
    }
    out
}

/// Sum a consumer's per-second buckets.
fn counts(c: ConsumerTelemetry) -> ConsumerCounts {
    let mut out = ConsumerCounts { access_key_id: c.access_key_id, ..Default::default() };
    let mut latency = LatencyHistogram::default();
    let mut warm = LatencyHistogram::default();
    let first_second = c.buckets.first().map_or(0, |b| b.second);
    for b in &c.buckets {
        if out.deleted >= WARMUP_MESSAGES && b.second >= first_second + WARMUP_MS / 1000 {
            warm.merge(&b.latency);
        }
        out.received += b.received;
        out.deleted += b.deleted;
        out.returned += b.returned;
        out.released += b.released;
        out.expired += b.expired;
        out.dead_lettered += b.dead_lettered;
        latency.merge(&b.latency);
        if b.deleted > 0 {
            out.last_success_ms = Some(b.second * 1000 + 999);
        }
    }
    let intervals: Vec<Interval> = c.buckets.iter().map(|b| Interval { received: b.received, deleted: b.deleted, failed: b.returned + b.expired }).collect();
    out.failures_since_success = failure_run(&intervals).failures;
    out.latencies_ms = timings(&latency);
    out.warm_latencies_ms = timings(&warm);
    out
}

fn err(e: impl std::fmt::Display) -> QueueAdminError {
    QueueAdminError(e.to_string())
}

impl QueueControl for EmbeddedQueue {
    fn depth(&self) -> Result<QueueDepth, QueueAdminError> {
        let q = self.broker.queue_stats(&self.queue).map_err(err)?;
        let d = self.broker.queue_stats(&self.dlq).map_err(err)?;
        Ok(QueueDepth {
            visible: q.visible,
            in_flight: q.in_flight,
            delayed: q.delayed,
            oldest_age_ms: q.oldest_age_ms,
            dlq_visible: d.visible,
            dlq_in_flight: d.in_flight,
            backend: "embedded".into(),
            lacks: Vec::new(),
        })
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueAdminError> {
        Ok(self
            .broker
            .dead_letters(&self.dlq)
            .map_err(err)?
            .into_iter()
            .map(|d| DeadLetter { message_id: d.message_id, last_receiver: d.last_receiver, released_at_stop: false })
            .collect())
    }

    fn redrive(&self, message_ids: &[String]) -> Result<usize, QueueAdminError> {
        self.broker.redrive(&self.dlq, message_ids).map_err(err)
    }

    fn redrive_all(&self) -> Result<RedriveAll, QueueAdminError> {
        let ids: Vec<String> = self.broker.dead_letters(&self.dlq).map_err(err)?.into_iter().map(|d| d.message_id).collect();
        let moved = self.broker.redrive(&self.dlq, &ids).map_err(err)?;
        Ok(RedriveAll { moved: Some(moved as u64), move_task: None, how: format!("moved {moved} message(s) from {} to {}", self.dlq, self.queue) })
    }

    fn release_in_flight(&self, access_key_ids: &[String]) -> Result<usize, QueueAdminError> {
        self.broker.release_in_flight(&self.queue, access_key_ids).map_err(err)
    }
}

impl TelemetrySource for EmbeddedQueue {
    fn consumers(&self, since_ms: u64) -> Result<Vec<ConsumerCounts>, QueueAdminError> {
        let series = self.broker.telemetry(&self.queue, since_ms).map_err(err)?;
        Ok(series.into_iter().map(counts).collect())
    }

    fn in_flight(&self) -> Result<Vec<InFlight>, QueueAdminError> {
        Ok(self
            .broker
            .in_flight(&self.queue)
            .map_err(err)?
            .into_iter()
            .map(|m| InFlight { message_id: m.message_id, access_key_id: m.access_key_id, received_at_ms: m.received_at_ms })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::counts;
    use coalmine_queue::{ConsumerTelemetry, LatencyHistogram, TelemetryBucket};

    #[test]
    fn a_consumers_first_seconds_and_messages_are_its_warm_up() {
        // 20 seconds of one delete a second, each taking 100 ms.
        let buckets = (1000..1020)
            .map(|second| {
                let mut latency = LatencyHistogram::default();
                latency.record_us(100_000);
                TelemetryBucket { second, received: 1, deleted: 1, latency, ..Default::default() }
            })
            .collect();
        let c = counts(ConsumerTelemetry { access_key_id: "CM.canary.r.1".into(), buckets });
        assert_eq!(c.latencies_ms.len(), 20);
        assert_eq!(c.warm_latencies_ms.len(), 10, "the first 10 seconds are left out");
    }

    /// The run of failures the adapter reports for these buckets.
    fn failures_since_success(buckets: &[TelemetryBucket]) -> u64 {
        counts(ConsumerTelemetry { access_key_id: "CM.canary.r.1".into(), buckets: buckets.to_vec() }).failures_since_success
    }

    fn b(second: u64, received: u64, deleted: u64, returned: u64, expired: u64) -> TelemetryBucket {
        TelemetryBucket { second, received, deleted, returned, expired, ..Default::default() }
    }

    #[test]
    fn old_failures_expiring_while_the_queue_is_quiet_are_not_a_run() {
        // A healthy worker that leaves its failed messages: steady successes, then the traffic
        // stops and its earlier failures expire one after another, nothing received since.
        let quiet = [b(1, 12, 11, 0, 0), b(2, 12, 12, 0, 0), b(300, 0, 0, 0, 1), b(301, 0, 0, 0, 1), b(305, 0, 0, 0, 1)];
        assert_eq!(failures_since_success(&quiet), 0);
    }

    #[test]
    fn fresh_failures_after_the_last_success_are_a_run() {
        // Handed back at once, every message received since the last success.
        let failing = [b(1, 10, 10, 0, 0), b(2, 10, 0, 10, 0), b(3, 10, 0, 10, 0)];
        assert_eq!(failures_since_success(&failing), 20);
        // Never a success: everything counts.
        assert_eq!(failures_since_success(&[b(1, 4, 0, 4, 0)]), 4);
        // Expiries count up to what was received since the last success.
        let mixed = [b(1, 5, 5, 0, 0), b(2, 4, 0, 4, 0), b(3, 0, 0, 0, 2)];
        assert_eq!(failures_since_success(&mixed), 4);
        // A success ends the run.
        assert_eq!(failures_since_success(&[b(1, 10, 0, 10, 0), b(2, 1, 1, 0, 0)]), 0);
    }
}
