//! The pipeline's `QueueAdmin` over the embedded queue, in the same process.

use coalmine_pipeline::queue_admin::{ConsumerCounts, DeadLetter, InFlight, QueueAdmin, QueueAdminError, QueueDepth};
use coalmine_queue::{Broker, ConsumerTelemetry, LatencyHistogram};

pub struct EmbeddedQueue {
    pub broker: Broker,
    pub queue: String,
    pub dlq: String,
}

/// Timings of a consumer's first deletes in the window that the latency alarm leaves out
/// (whole seconds of them, at least this many).
const WARMUP_MESSAGES: u64 = 5;

fn latencies_ms(h: &LatencyHistogram, out: &mut Vec<f64>) {
    for (i, n) in h.counts.iter().enumerate() {
        let ms = LatencyHistogram::upper_bound_us(i) / 1000.0;
        out.extend(std::iter::repeat_n(ms, *n as usize));
    }
}

/// Sum a consumer's per-second buckets.
fn counts(c: ConsumerTelemetry) -> ConsumerCounts {
    let mut out = ConsumerCounts { access_key_id: c.access_key_id, ..Default::default() };
    let mut latency = LatencyHistogram::default();
    let mut warm = LatencyHistogram::default();
    for b in &c.buckets {
        if out.deleted >= WARMUP_MESSAGES {
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
    // Failures in the trailing seconds that saw no success (per-second resolution).
    for b in c.buckets.iter().rev() {
        if b.deleted > 0 {
            break;
        }
        out.failures_since_success += b.returned + b.expired;
    }
    latencies_ms(&latency, &mut out.latencies_ms);
    latencies_ms(&warm, &mut out.warm_latencies_ms);
    out
}

fn err(e: impl std::fmt::Display) -> QueueAdminError {
    QueueAdminError(e.to_string())
}

impl QueueAdmin for EmbeddedQueue {
    fn telemetry(&self, since_ms: u64) -> Result<Vec<ConsumerCounts>, QueueAdminError> {
        let series = self.broker.telemetry(&self.queue, since_ms).map_err(err)?;
        Ok(series.into_iter().map(counts).collect())
    }

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
        })
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

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueAdminError> {
        Ok(self
            .broker
            .dead_letters(&self.dlq)
            .map_err(err)?
            .into_iter()
            .map(|d| DeadLetter { message_id: d.message_id, last_receiver: d.last_receiver })
            .collect())
    }

    fn redrive(&self, message_ids: &[String]) -> Result<usize, QueueAdminError> {
        self.broker.redrive(&self.dlq, message_ids).map_err(err)
    }

    fn release_in_flight(&self, access_key_ids: &[String]) -> Result<usize, QueueAdminError> {
        self.broker.release_in_flight(&self.queue, access_key_ids).map_err(err)
    }
}
