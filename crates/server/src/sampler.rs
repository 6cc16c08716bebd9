//! Once a second: the queue's depth and what every revision did in the second that just
//! ended (from the queue's per-consumer telemetry), kept in a ring buffer for the charts and
//! summed into counters for `/metrics`; and, while someone follows the event stream, a
//! snapshot of the pipeline's status.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use coalmine_pipeline::queue_admin::{ConsumerCounts, QueueDepth, Timings};
use coalmine_runtime::TaskIdentity;
use serde::Serialize;
use utoipa::ToSchema;

use crate::Shared;

/// Samples kept: 15 minutes at one a second.
pub const KEEP_SAMPLES: usize = 900;

/// Upper bounds (seconds) of the processing-time histogram buckets of `/metrics`.
pub const LATENCY_BUCKETS_S: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The queue's depth at one moment.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct DepthSample {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub oldest_age_ms: u64,
    pub dlq_visible: u64,
    pub dlq_in_flight: u64,
}

impl From<QueueDepth> for DepthSample {
    fn from(d: QueueDepth) -> Self {
        DepthSample {
            visible: d.visible,
            in_flight: d.in_flight,
            delayed: d.delayed,
            oldest_age_ms: d.oldest_age_ms,
            dlq_visible: d.dlq_visible,
            dlq_in_flight: d.dlq_in_flight,
        }
    }
}

/// What the tasks of one revision did in one second.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RevisionSample {
    /// The services whose tasks ran this revision in that second (`primary`, `canary`).
    pub services: Vec<String>,
    pub received: u64,
    /// Deleted: processed successfully.
    pub processed: u64,
    /// Returned to the queue or let expire.
    pub failed: u64,
    pub dead_lettered: u64,
    /// Median receive-to-delete time of the processed messages, milliseconds.
    pub p50_ms: Option<f64>,
}

/// One second of the app's life.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Sample {
    /// Unix milliseconds at the end of the second the counts cover (when the depth was read).
    pub t_ms: u64,
    /// `null` when the queue could not be read.
    pub queue: Option<DepthSample>,
    /// Per revision.
    pub revisions: BTreeMap<String, RevisionSample>,
}

/// Counters since the server started, per (service, revision), for `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    pub received: u64,
    pub processed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_S`] (plus +Inf last).
    pub buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    pub latency_sum_s: f64,
}

pub(crate) struct Series {
    pub samples: VecDeque<Sample>,
    cap: usize,
    pub totals: BTreeMap<(String, String), Totals>,
}

impl Series {
    pub fn new(cap: usize) -> Series {
        Series { samples: VecDeque::with_capacity(cap), cap, totals: BTreeMap::new() }
    }

    fn push(&mut self, s: Sample) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Samples newer than `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Sample> {
        self.samples.iter().filter(|s| s.t_ms > since_ms).cloned().collect()
    }
}

/// What one consumer did in the second covered by `wide` (that second and the current one)
/// but not by `narrow` (the current one only).
pub(crate) fn second_of(wide: &ConsumerCounts, narrow: Option<&ConsumerCounts>) -> (ConsumerCounts, Timings) {
    let zero = ConsumerCounts::default();
    let n = narrow.unwrap_or(&zero);
    let lat = wide.latencies_ms.minus(&n.latencies_ms);
    let c = ConsumerCounts {
        access_key_id: wide.access_key_id.clone(),
        received: wide.received.saturating_sub(n.received),
        deleted: wide.deleted.saturating_sub(n.deleted),
        returned: wide.returned.saturating_sub(n.returned),
        released: wide.released.saturating_sub(n.released),
        expired: wide.expired.saturating_sub(n.expired),
        dead_lettered: wide.dead_lettered.saturating_sub(n.dead_lettered),
        ..ConsumerCounts::default()
    };
    (c, lat)
}

/// Fold one second of per-consumer counts into a sample and the totals.
pub(crate) fn fold(
    t_ms: u64,
    queue: Option<DepthSample>,
    wide: &[ConsumerCounts],
    narrow: &[ConsumerCounts],
    totals: &mut BTreeMap<(String, String), Totals>,
) -> Sample {
    let mut sample = Sample { t_ms, queue, revisions: BTreeMap::new() };
    let mut latencies: BTreeMap<String, Timings> = BTreeMap::new();
    for w in wide {
        let (c, lat) = second_of(w, narrow.iter().find(|n| n.access_key_id == w.access_key_id));
        let (service, revision) = match TaskIdentity::parse(&c.access_key_id) {
            Some(id) => (id.service, id.revision),
            None => ("other".to_string(), c.access_key_id.clone()),
        };
        let failed = c.returned + c.expired;
        if c.received + c.deleted + failed + c.dead_lettered == 0 {
            continue;
        }
        let r = sample.revisions.entry(revision.clone()).or_default();
        if !r.services.contains(&service) {
            r.services.push(service.clone());
            r.services.sort();
        }
        r.received += c.received;
        r.processed += c.deleted;
        r.failed += failed;
        r.dead_lettered += c.dead_lettered;
        latencies.entry(revision.clone()).or_default().merge(&lat);

        let t = totals.entry((service, revision)).or_default();
        t.received += c.received;
        t.processed += c.deleted;
        t.failed += failed;
        t.dead_lettered += c.dead_lettered;
        for (ms, n) in lat.iter() {
            let s = ms / 1000.0;
            t.latency_sum_s += s * n as f64;
            let i = LATENCY_BUCKETS_S.iter().position(|le| s <= *le).unwrap_or(LATENCY_BUCKETS_S.len());
            t.buckets[i] += n;
        }
    }
    for (rev, lat) in latencies {
        if let Some(r) = sample.revisions.get_mut(&rev) {
            // The upper median, as the dashboard has always shown it.
            r.p50_ms = lat.nth(lat.len() / 2);
        }
    }
    sample
}

/// Sample every complete second after `last` (at most the last 10), up to the one that just
/// ended; returns the newest second sampled.
fn sample_once(shared: &Shared, last: Option<u64>) -> u64 {
    let engine = &shared.engine;
    let now = coalmine_pipeline::now_ms();
    let sec = now / 1000;
    let first = match last {
        Some(l) if l + 1 < sec => (l + 1).max(sec.saturating_sub(10)),
        Some(_) => return sec - 1,
        None => sec.saturating_sub(1),
    };
    let queue = match engine.queue().depth() {
        Ok(d) => Some(DepthSample::from(d)),
        Err(e) => {
            tracing::debug!("sampler: queue depth: {e}");
            None
        }
    };
    // windows[i]: everything since second first+i; second k is windows[k] minus windows[k+1].
    let mut windows = Vec::new();
    for k in first..=sec {
        match engine.telemetry().consumers(k * 1000) {
            Ok(w) => windows.push(w),
            Err(e) => {
                tracing::debug!("sampler: queue telemetry: {e}");
                windows.clear();
                break;
            }
        }
    }
    let mut newest = None;
    {
        let mut series = shared.series.lock().unwrap();
        for (i, k) in (first..sec).enumerate() {
            let (wide, narrow) = match (windows.get(i), windows.get(i + 1)) {
                (Some(w), Some(n)) => (w.as_slice(), n.as_slice()),
                _ => (&[][..], &[][..]),
            };
            let s = fold((k + 1) * 1000, queue.clone(), wide, narrow, &mut series.totals);
            series.push(s.clone());
            newest = Some(s);
        }
    }
    if let Some(sample) = newest {
        if shared.snapshot.receiver_count() > 0 {
            let status = match engine.status() {
                Ok(s) => serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
            let json = serde_json::json!({"status": status, "sample": sample}).to_string();
            shared.snapshot.send_replace(Arc::from(json));
        }
    }
    sec - 1
}

/// Sample just after every second boundary for as long as the server exists.
pub(crate) fn spawn(weak: Weak<Shared>) {
    let r = std::thread::Builder::new().name("coalmine-sampler".into()).spawn(move || {
        let mut last = None;
        loop {
            let now = coalmine_pipeline::now_ms();
            let next = (now / 1000 + 1) * 1000 + 20;
            std::thread::sleep(Duration::from_millis(next - now));
            let Some(shared) = weak.upgrade() else { return };
            last = Some(sample_once(&shared, last));
        }
    });
    if let Err(e) = r {
        tracing::error!("cannot start the metrics sampler thread: {e}; charts and /metrics counters stay empty");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(key: &str, received: u64, deleted: u64, returned: u64, lat: &[f64]) -> ConsumerCounts {
        ConsumerCounts {
            access_key_id: key.into(),
            received,
            deleted,
            returned,
            latencies_ms: lat.iter().copied().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_second_is_the_wide_window_minus_the_current_second() {
        let wide = vec![
            counts("CM.canary.abc.1", 10, 6, 3, &[4.0, 8.0, 8.0, 16.0, 16.0, 2000.0]),
            counts("CM.primary.old.1", 5, 5, 0, &[4.0, 4.0, 4.0, 4.0, 4.0]),
            counts("CM.primary.old.2", 2, 2, 0, &[4.0, 4.0]),
        ];
        let narrow = vec![counts("CM.canary.abc.1", 2, 1, 1, &[8.0]), counts("CM.primary.old.2", 2, 2, 0, &[4.0, 4.0])];
        let mut totals = BTreeMap::new();
        let s = fold(5000, None, &wide, &narrow, &mut totals);
        let abc = &s.revisions["abc"];
        assert_eq!((abc.received, abc.processed, abc.failed), (8, 5, 2));
        assert_eq!(abc.services, vec!["canary"]);
        assert_eq!(abc.p50_ms, Some(16.0));
        let old = &s.revisions["old"];
        assert_eq!((old.received, old.processed, old.failed), (5, 5, 0));
        // primary.old.2 did nothing in that second: no entry in the totals for it beyond old.1
        let t = &totals[&("canary".to_string(), "abc".to_string())];
        assert_eq!(t.processed, 5);
        // 4, 8, 16, 16 ms <= 25 ms; 2000 ms <= 2.5 s
        assert_eq!(t.buckets[2] + t.buckets[1] + t.buckets[0], 4);
        assert_eq!(t.buckets[8], 1);
        assert!((t.latency_sum_s - 2.044).abs() < 1e-9);
    }

    #[test]
    fn the_ring_buffer_keeps_the_newest() {
        let mut s = Series::new(3);
        for t in 1..=5 {
            s.push(Sample { t_ms: t, ..Default::default() });
        }
        let ts: Vec<u64> = s.since(0).iter().map(|x| x.t_ms).collect();
        assert_eq!(ts, vec![3, 4, 5]);
        assert_eq!(s.since(4).len(), 1);
    }
}
