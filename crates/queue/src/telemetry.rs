//! Per-queue, per-consumer (access key id) counts in one-second buckets.

use std::collections::VecDeque;

// (foldhash: these maps are looked up for every message received and deleted)
use foldhash::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// How long recent buckets are kept (in memory and in the store).
pub const KEEP_SECONDS: u64 = 30 * 60;

const HIST_BUCKETS: usize = 96;

/// Receive-to-delete latencies: logarithmic buckets, 4 per power of two, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// `counts[i]` counts latencies in `[bound(i-1), bound(i))` µs; see [`LatencyHistogram::upper_bound_us`].
    pub counts: Vec<u64>,
}

impl LatencyHistogram {
    fn index(us: u64) -> usize {
        let us = us.max(1) as f64;
        ((us.log2() * 4.0).floor() as usize + 1).min(HIST_BUCKETS - 1)
    }

    /// Upper bound (µs) of bucket `i`.
    pub fn upper_bound_us(i: usize) -> f64 {
        2f64.powf(i as f64 / 4.0)
    }

    pub fn record_us(&mut self, us: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; HIST_BUCKETS];
        }
        self.counts[Self::index(us)] += 1;
    }

    /// Take back one [`LatencyHistogram::record_us`] of `us`.
    pub fn unrecord_us(&mut self, us: u64) {
        if let Some(n) = self.counts.get_mut(Self::index(us)) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; HIST_BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The latency (ms) below which a fraction `q` (0..=1) of the samples fall; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let target = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::upper_bound_us(i) / 1000.0);
            }
        }
        None
    }
}

/// One second of one consumer's activity on one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryBucket {
    /// Unix time, seconds.
    pub second: u64,
    pub received: u64,
    pub deleted: u64,
    /// Visibility set to 0 by the consumer.
    pub returned: u64,
    /// Made visible again by the admin API ([`crate::Broker::release_in_flight`]): not the
    /// consumer's doing.
    #[serde(default)]
    pub released: u64,
    /// Visibility timeout ran out.
    pub expired: u64,
    pub dead_lettered: u64,
    pub latency: LatencyHistogram,
}

/// One consumer's (access key id's) recent buckets on one queue, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerTelemetry {
    pub access_key_id: String,
    pub buckets: Vec<TelemetryBucket>,
}

#[derive(Clone, Copy)]
pub(crate) enum Event {
    /// `n` messages handed out by one receive.
    Received { n: u64 },
    Deleted { latency_us: u64 },
    Returned,
    Released,
    Expired,
    DeadLettered,
}

/// Most consumers (access key ids) with series of their own per queue; events of further ones
/// are counted under [`OTHER_CONSUMERS`], so that clients inventing ids cannot grow memory.
pub const MAX_CONSUMERS_PER_QUEUE: usize = 1024;
/// The series that counts the consumers beyond [`MAX_CONSUMERS_PER_QUEUE`].
pub const OTHER_CONSUMERS: &str = "(other consumers)";

#[derive(Default)]
pub(crate) struct Telemetry {
    /// queue -> key -> buckets (oldest first)
    pub(crate) series: HashMap<String, HashMap<Arc<str>, VecDeque<TelemetryBucket>>>,
    /// (queue, key, second) changed since the last flush to the store.
    pub(crate) dirty: HashMap<String, HashSet<(Arc<str>, u64)>>,
    dirty_n: usize,
    /// The store's last issued ticket (see [`crate::store::Store::issued`]): an event recorded
    /// with the state lock held belongs to the change submitted next, ticket `issued + 1`.
    /// `None`: events count at once (no store).
    pub(crate) tickets: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// queue -> events whose change the store has not yet committed, with its ticket; undone
    /// by [`Telemetry::settle`] when the store refused the change.
    unsettled: HashMap<String, Vec<Unsettled>>,
}

/// An event counted before its change was committed.
struct Unsettled {
    ticket: u64,
    key: Arc<str>,
    second: u64,
    ev: Event,
}

impl Telemetry {
    pub(crate) fn record(&mut self, queue: &str, key: &Arc<str>, now_ms: u64, ev: Event) {
        let sec = now_ms / 1000;
        let counted = self.count(queue, key, sec, ev, 1);
        // (an expiry is no change of its own: it follows from the time and what is stored)
        if let (Some(t), Some((key, second))) = (&self.tickets, counted.filter(|_| !matches!(ev, Event::Expired))) {
            let ticket = t.load(std::sync::atomic::Ordering::SeqCst) + 1;
            let list = match self.unsettled.get_mut(queue) {
                Some(l) => l,
                None => self.unsettled.entry(queue.to_string()).or_default(),
            };
            list.push(Unsettled { ticket, key, second, ev });
        }
    }

    /// Forget the events of changes the store has dealt with (tickets up to `done`), undoing
    /// those whose change it refused: telemetry counts only what was committed.
    pub(crate) fn settle(&mut self, done: u64, refused: impl Fn(u64) -> bool) {
        let mut undo = Vec::new();
        for (queue, list) in self.unsettled.iter_mut() {
            list.retain(|u| {
                if u.ticket > done {
                    return true;
                }
                if refused(u.ticket) {
                    undo.push((queue.clone(), u.key.clone(), u.second, u.ev));
                }
                false
            });
        }
        self.unsettled.retain(|_, l| !l.is_empty());
        if !undo.is_empty() {
            tracing::debug!(events = undo.len(), "telemetry: uncounting the events of refused changes");
        }
        for (queue, key, second, ev) in undo {
            self.count(&queue, &key, second, ev, -1);
        }
    }

    /// Add `delta` (1, or -1 to undo) to the bucket of `sec`; returns the series key and the
    /// bucket's second it went to, `None` when it went nowhere (an undo of a bucket gone).
    fn count(&mut self, queue: &str, key: &Arc<str>, sec: u64, ev: Event, delta: i64) -> Option<(Arc<str>, u64)> {
        let per_q = match self.series.get_mut(queue) {
            Some(s) => s,
            None if delta < 0 => return None,
            None => self.series.entry(queue.to_string()).or_default(),
        };
        let key = if per_q.contains_key(key) || per_q.len() < MAX_CONSUMERS_PER_QUEUE {
            key.clone()
        } else {
            static OTHER: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
            OTHER.get_or_init(|| Arc::from(OTHER_CONSUMERS)).clone()
        };
        let key = &key;
        let series = match per_q.get_mut(key) {
            Some(s) => s,
            None if delta < 0 => return None,
            None => per_q.entry(key.clone()).or_default(),
        };
        let b = if delta < 0 {
            series.iter_mut().rev().find(|b| b.second == sec)?
        } else {
            match series.back_mut() {
                Some(b) if b.second == sec => b,
                Some(b) if b.second > sec => {
                    // clock went backwards: record in the newest bucket
                    b
                }
                _ => {
                    series.push_back(TelemetryBucket { second: sec, ..Default::default() });
                    while series.front().is_some_and(|f| f.second + KEEP_SECONDS < sec) {
                        series.pop_front();
                    }
                    series.back_mut().unwrap()
                }
            }
        };
        let add = |n: &mut u64| *n = n.saturating_add_signed(delta);
        match ev {
            Event::Received { n } => b.received = b.received.saturating_add_signed(delta.saturating_mul(n as i64)),
            Event::Deleted { latency_us } => {
                add(&mut b.deleted);
                if delta > 0 {
                    b.latency.record_us(latency_us);
                } else {
                    b.latency.unrecord_us(latency_us);
                }
            }
            Event::Returned => add(&mut b.returned),
            Event::Released => add(&mut b.released),
            Event::Expired => add(&mut b.expired),
            Event::DeadLettered => add(&mut b.dead_lettered),
        }
        let second = b.second;
        if self.dirty_n < 100_000 {
            let set = match self.dirty.get_mut(queue) {
                Some(set) => set,
                None => self.dirty.entry(queue.to_string()).or_default(),
            };
            if set.insert((key.clone(), second)) {
                self.dirty_n += 1;
            }
        }
        Some((key.clone(), second))
    }

    /// Mark every bucket changed, so that the next flush writes them all again (after the
    /// store refused writes, flushes among them).
    pub(crate) fn mark_all_dirty(&mut self) {
        for (queue, per_q) in &self.series {
            for (key, s) in per_q {
                for b in s {
                    if self.dirty_n >= 100_000 {
                        return;
                    }
                    if self.dirty.entry(queue.clone()).or_default().insert((key.clone(), b.second)) {
                        self.dirty_n += 1;
                    }
                }
            }
        }
    }

    /// Drop the buckets older than [`KEEP_SECONDS`] of every series, and the series left empty
    /// (consumers gone for that long), so that telemetry of past consumers does not pile up.
    pub(crate) fn forget_stale(&mut self, now_s: u64) {
        for per_q in self.series.values_mut() {
            per_q.retain(|_, s| {
                while s.front().is_some_and(|f| f.second + KEEP_SECONDS < now_s) {
                    s.pop_front();
                }
                !s.is_empty()
            });
        }
        self.series.retain(|_, per_q| !per_q.is_empty());
    }

    pub(crate) fn query(&self, queue: &str, since_ms: u64) -> Vec<ConsumerTelemetry> {
        let since = since_ms / 1000;
        let mut out: Vec<ConsumerTelemetry> = self
            .series
            .get(queue)
            .map(|m| {
                m.iter()
                    .map(|(k, s)| ConsumerTelemetry {
                        access_key_id: k.to_string(),
                        buckets: s.iter().filter(|b| b.second >= since).cloned().collect(),
                    })
                    .filter(|c| !c.buckets.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.access_key_id.cmp(&b.access_key_id));
        out
    }

    pub(crate) fn take_dirty(&mut self) -> Vec<crate::store::TelemetryRow> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut rows = Vec::with_capacity(self.dirty_n);
        self.dirty_n = 0;
        for (q, k, sec) in dirty.into_iter().flat_map(|(q, set)| set.into_iter().map(move |(k, s)| (q.clone(), k, s))) {
            if let Some(b) = self.series.get(&q).and_then(|m| m.get(&k)).and_then(|s| s.iter().rev().find(|b| b.second == sec)) {
                if let Ok(data) = serde_json::to_string(b) {
                    rows.push(crate::store::TelemetryRow { queue: q, key: k.to_string(), second: sec, data });
                }
            }
        }
        rows
    }

    pub(crate) fn restore(&mut self, rows: Vec<crate::store::TelemetryRow>) {
        for r in rows {
            if let Ok(b) = serde_json::from_str::<TelemetryBucket>(&r.data) {
                let key: Arc<str> = Arc::from(r.key.as_str());
                let s = self.series.entry(r.queue).or_default().entry(key).or_default();
                s.push_back(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=100u64 {
            h.record_us(ms * 1000);
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((50.0..=60.0).contains(&p50), "p50 {p50}");
        assert!((99.0..=120.0).contains(&p99), "p99 {p99}");
        assert_eq!(LatencyHistogram::default().quantile_ms(0.5), None);
    }
}
