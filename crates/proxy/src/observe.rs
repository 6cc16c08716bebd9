//! What the task did with its messages, as the proxy saw it: the receipts it holds, counts since
//! the proxy started, a histogram of processing times and the ids of the messages it failed.
//! Memory is bounded by the receipts held (plus a fixed cap on failed ids not yet reported).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sqs::{Action, BatchResult, Received, Request};

/// Upper bounds (milliseconds) of the processing-time histogram's buckets; a last, unbounded
/// bucket follows.
/// At most a third apart (a quarter from 4 ms on), so that the latency alarm's comparison (the
/// canary's percentile against 2 × the primary's) does not vanish inside one bucket.
pub const BUCKETS_MS: [u64; 52] = [
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500, 600, 800, 1_000, 1_200, 1_500, 2_000,
    2_500, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 12_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000,
    120_000, 150_000, 200_000, 300_000,
];

/// Failed message ids kept for the next report at most; more are counted as dropped.
pub const MAX_PENDING_FAILED: usize = 1_000;

/// One message the task holds.
#[derive(Clone, Debug)]
pub struct Held {
    pub message_id: String,
    /// Shared by every message received from the queue in one receive.
    pub queue_url: std::sync::Arc<str>,
    pub received: Instant,
    pub receive_count: Option<u32>,
    /// When its visibility timeout lapses, once known (from the request or the queue).
    pub deadline: Option<Instant>,
    /// Counted as held past the limit already.
    pub over_limit: bool,
}

/// Counts since the proxy started. Cumulative, so a lost report loses nothing.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Messages received.
    pub received: u64,
    /// Received with `ApproximateReceiveCount` > 1.
    pub redelivered: u64,
    /// Deleted successfully (processing time recorded).
    pub deleted: u64,
    /// Deleted successfully, but received before this proxy saw it (no processing time).
    pub deleted_unknown: u64,
    /// Handed back: ChangeMessageVisibility 0.
    pub returned: u64,
    /// Visibility extended (ChangeMessageVisibility > 0).
    pub extended: u64,
    /// Visibility timeout lapsed while held: the message is visible again (a failure).
    pub expired: u64,
    /// Held past the censoring limit (counted once per receipt).
    pub over_limit: u64,
    /// Delete or visibility changes the upstream refused.
    pub refused: u64,
    /// Requests forwarded.
    pub requests: u64,
    /// Requests the upstream answered with an error status.
    pub upstream_errors: u64,
    /// Requests that could not reach the upstream at all.
    pub unreachable: u64,
    /// Held messages made visible again when the proxy stopped.
    pub handed_back: u64,
}

/// A fixed-bucket histogram of processing times.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Histogram {
    /// Upper bounds in ms; the last count is for everything above the last bound.
    pub le_ms: &'static [u64],
    pub counts: Vec<u64>,
    pub sum_ms: u64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { le_ms: &BUCKETS_MS, counts: vec![0; BUCKETS_MS.len() + 1], sum_ms: 0, count: 0 }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS_MS.len());
        self.counts[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// How a failed message failed.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    Returned,
    Expired,
    /// Still held when the proxy stopped: made visible again by the proxy.
    Released,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Failed {
    pub id: String,
    pub how: FailKind,
}

/// The observer's state; one per proxy, behind a mutex.
#[derive(Debug, Default)]
pub struct Observer {
    pub held: HashMap<String, Held>,
    pub counts: Counts,
    pub processing: Histogram,
    pub failed: VecDeque<Failed>,
    pub failed_dropped: u64,
    /// Queue URL -> its visibility timeout (from GetQueueAttributes).
    pub visibility: HashMap<String, Duration>,
    /// Queue URLs whose visibility timeout is being looked up.
    pub lookups: HashSet<String>,
}

impl Observer {
    fn fail(&mut self, id: String, how: FailKind) {
        if self.failed.len() >= MAX_PENDING_FAILED {
            self.failed_dropped += 1;
        } else {
            self.failed.push_back(Failed { id, how });
        }
    }

    /// Record a forwarded request and its answer. `ok` is a 2xx status. Returns a queue URL
    /// whose visibility timeout is not known yet, for the caller to look up.
    pub fn record(&mut self, req: &Request, ok: bool, response: &[u8], now: Instant) -> Option<String> {
        self.counts.requests += 1;
        if !ok {
            self.counts.upstream_errors += 1;
            if matches!(req.action, Action::Delete | Action::DeleteBatch | Action::ChangeVisibility | Action::ChangeVisibilityBatch) {
                self.counts.refused += req.entries.len().max(1) as u64;
            }
            return None;
        }
        match req.action {
            Action::Receive => {
                let msgs = crate::sqs::parse_received(req.protocol, response)?;
                self.on_receive(req, msgs, now)
            }
            Action::Delete => {
                for e in &req.entries {
                    self.on_delete(&e.receipt, now);
                }
                None
            }
            Action::ChangeVisibility => {
                for e in &req.entries {
                    self.on_visibility(&e.receipt, e.visibility_timeout.unwrap_or(0), now);
                }
                None
            }
            Action::DeleteBatch | Action::ChangeVisibilityBatch => {
                let result = crate::sqs::parse_batch(req.protocol, response).unwrap_or_else(|| BatchResult {
                    successful: req.entries.iter().map(|e| e.id.clone()).collect(),
                    failed: Vec::new(),
                });
                self.counts.refused += result.failed.len() as u64;
                for id in &result.successful {
                    let Some(e) = req.entries.iter().find(|e| &e.id == id) else { continue };
                    if req.action == Action::DeleteBatch {
                        self.on_delete(&e.receipt, now);
                    } else {
                        self.on_visibility(&e.receipt, e.visibility_timeout.unwrap_or(0), now);
                    }
                }
                None
            }
            Action::Other => None,
        }
    }

    fn on_receive(&mut self, req: &Request, msgs: Vec<Received>, now: Instant) -> Option<String> {
        let queue_url = req.queue_url.clone().unwrap_or_default();
        let timeout = match req.visibility_timeout {
            Some(s) => Some(Duration::from_secs(s.max(0) as u64)),
            None => self.visibility.get(&queue_url).copied(),
        };
        let unknown = timeout.is_none() && !msgs.is_empty();
        let shared_url: std::sync::Arc<str> = queue_url.as_str().into();
        for m in msgs {
            self.counts.received += 1;
            if m.receive_count.is_some_and(|c| c > 1) {
                self.counts.redelivered += 1;
            }
            self.held.insert(
                m.receipt,
                Held {
                    message_id: m.message_id,
                    queue_url: shared_url.clone(),
                    received: now,
                    receive_count: m.receive_count,
                    deadline: timeout.map(|t| now + t),
                    over_limit: false,
                },
            );
        }
        (unknown && self.lookups.insert(queue_url.clone())).then_some(queue_url)
    }

    fn on_delete(&mut self, receipt: &str, now: Instant) {
        match self.held.remove(receipt) {
            Some(h) => {
                self.counts.deleted += 1;
                self.processing.record(now.saturating_duration_since(h.received));
            }
            None => self.counts.deleted_unknown += 1,
        }
    }

    fn on_visibility(&mut self, receipt: &str, timeout: i64, now: Instant) {
        if timeout <= 0 {
            if let Some(h) = self.held.remove(receipt) {
                self.counts.returned += 1;
                self.fail(h.message_id, FailKind::Returned);
            }
        } else if let Some(h) = self.held.get_mut(receipt) {
            self.counts.extended += 1;
            h.deadline = Some(now + Duration::from_secs(timeout as u64));
        }
    }

    /// A queue's visibility timeout became known: fill in the deadlines that waited for it.
    pub fn set_visibility(&mut self, queue_url: &str, timeout: Duration) {
        self.visibility.insert(queue_url.to_string(), timeout);
        self.lookups.remove(queue_url);
        for h in self.held.values_mut() {
            if h.deadline.is_none() && &*h.queue_url == queue_url {
                h.deadline = Some(h.received + timeout);
            }
        }
    }

    /// Expire receipts whose visibility lapsed and count holds past `limit`.
    pub fn sweep(&mut self, now: Instant, limit: Duration) {
        let mut expired = Vec::new();
        for (receipt, h) in self.held.iter_mut() {
            if h.deadline.is_some_and(|d| d <= now) {
                expired.push(receipt.clone());
            } else if !h.over_limit && now.saturating_duration_since(h.received) > limit {
                h.over_limit = true;
                self.counts.over_limit += 1;
            }
        }
        for receipt in expired {
            if let Some(h) = self.held.remove(&receipt) {
                self.counts.expired += 1;
                self.fail(h.message_id, FailKind::Expired);
            }
        }
    }

    /// How long each held message has been held, the longest first, at most `n` of them.
    pub fn held_ages(&self, now: Instant, n: usize) -> Vec<u64> {
        let mut ages: Vec<u64> = self.held.values().map(|h| now.saturating_duration_since(h.received).as_millis() as u64).collect();
        ages.sort_unstable_by(|a, b| b.cmp(a));
        ages.truncate(n);
        ages
    }

    /// The ids of the held messages, the longest held first, at most `n` of them.
    pub fn held_ids(&self, n: usize) -> Vec<String> {
        let mut held: Vec<&Held> = self.held.values().collect();
        held.sort_unstable_by_key(|h| h.received);
        held.into_iter().take(n).map(|h| h.message_id.clone()).collect()
    }

    /// A held message made visible again when the proxy stopped: a failed attempt of its task.
    pub fn released(&mut self, message_id: String) {
        self.fail(message_id, FailKind::Released);
    }

    /// How long the oldest held message has been held.
    pub fn oldest_held(&self, now: Instant) -> Duration {
        self.held.values().map(|h| now.saturating_duration_since(h.received)).max().unwrap_or_default()
    }

    /// Take up to `n` failed ids for a report.
    pub fn take_failed(&mut self, n: usize) -> Vec<Failed> {
        let n = n.min(self.failed.len());
        self.failed.drain(..n).collect()
    }

    /// Put back failed ids a report could not deliver (front, as far as there is room).
    pub fn restore_failed(&mut self, ids: Vec<Failed>) {
        for f in ids.into_iter().rev() {
            if self.failed.len() >= MAX_PENDING_FAILED {
                self.failed_dropped += 1;
            } else {
                self.failed.push_front(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::{parse_request, Protocol};

    fn receive(o: &mut Observer, now: Instant, vis: Option<i64>, msgs: &[(&str, &str)]) -> Option<String> {
        let body = match vis {
            Some(v) => format!(r#"{{"QueueUrl":"q","VisibilityTimeout":{v}}}"#),
            None => r#"{"QueueUrl":"q"}"#.to_string(),
        };
        let req = parse_request(Some("AmazonSQS.ReceiveMessage"), None, body.as_bytes()).unwrap();
        let msgs: Vec<String> = msgs
            .iter()
            .map(|(id, rh)| format!(r#"{{"MessageId":"{id}","ReceiptHandle":"{rh}","Attributes":{{"ApproximateReceiveCount":"2"}}}}"#))
            .collect();
        let resp = format!(r#"{{"Messages":[{}]}}"#, msgs.join(","));
        o.record(&req, true, resp.as_bytes(), now)
    }

    #[test]
    fn receive_delete_return_expire() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        assert_eq!(receive(&mut o, t0, Some(30), &[("m1", "r1"), ("m2", "r2"), ("m3", "r3")]), None);
        assert_eq!(o.counts.received, 3);
        assert_eq!(o.counts.redelivered, 3);
        let del = parse_request(Some("AmazonSQS.DeleteMessage"), None, br#"{"QueueUrl":"q","ReceiptHandle":"r1"}"#).unwrap();
        o.record(&del, true, b"{}", t0 + Duration::from_millis(40));
        assert_eq!(o.counts.deleted, 1);
        assert_eq!(o.processing.counts[BUCKETS_MS.iter().position(|b| *b == 40).unwrap()], 1);
        let back = parse_request(Some("AmazonSQS.ChangeMessageVisibility"), None, br#"{"QueueUrl":"q","ReceiptHandle":"r2","VisibilityTimeout":0}"#).unwrap();
        o.record(&back, true, b"{}", t0);
        assert_eq!(o.counts.returned, 1);
        o.sweep(t0 + Duration::from_secs(20), Duration::from_secs(10));
        assert_eq!((o.counts.over_limit, o.counts.expired), (1, 0));
        o.sweep(t0 + Duration::from_secs(25), Duration::from_secs(10));
        assert_eq!(o.counts.over_limit, 1, "counted once per receipt");
        o.sweep(t0 + Duration::from_secs(31), Duration::from_secs(10));
        assert_eq!(o.counts.expired, 1);
        assert!(o.held.is_empty());
        let failed = o.take_failed(10);
        assert_eq!(failed, vec![Failed { id: "m2".into(), how: FailKind::Returned }, Failed { id: "m3".into(), how: FailKind::Expired }]);
    }

    #[test]
    fn unknown_visibility_is_looked_up_then_applied() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        assert_eq!(receive(&mut o, t0, None, &[("m1", "r1")]).as_deref(), Some("q"));
        assert_eq!(receive(&mut o, t0, None, &[("m0", "r0")]), None, "one look-up at a time");
        o.sweep(t0 + Duration::from_secs(1000), Duration::from_secs(10_000));
        assert_eq!(o.counts.expired, 0, "no deadline yet");
        o.set_visibility("q", Duration::from_secs(5));
        o.sweep(t0 + Duration::from_secs(6), Duration::from_secs(10_000));
        assert_eq!(o.counts.expired, 2);
        assert_eq!(receive(&mut o, t0, None, &[("m2", "r2")]), None, "known now");
    }

    #[test]
    fn batch_results_count_only_successful_entries() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        receive(&mut o, t0, Some(30), &[("m1", "r1"), ("m2", "r2")]);
        let body = b"Action=DeleteMessageBatch&QueueUrl=q&DeleteMessageBatchRequestEntry.1.Id=a&DeleteMessageBatchRequestEntry.1.ReceiptHandle=r1&DeleteMessageBatchRequestEntry.2.Id=b&DeleteMessageBatchRequestEntry.2.ReceiptHandle=r2";
        let req = parse_request(None, None, body).unwrap();
        assert_eq!(req.protocol, Protocol::Query);
        let resp = b"<DeleteMessageBatchResponse><DeleteMessageBatchResult><DeleteMessageBatchResultEntry><Id>a</Id></DeleteMessageBatchResultEntry><BatchResultErrorEntry><Id>b</Id></BatchResultErrorEntry></DeleteMessageBatchResult></DeleteMessageBatchResponse>";
        o.record(&req, true, resp, t0);
        assert_eq!((o.counts.deleted, o.counts.refused, o.held.len()), (1, 1, 1));
    }

    #[test]
    fn failed_ids_are_bounded() {
        let mut o = Observer::default();
        for i in 0..MAX_PENDING_FAILED + 5 {
            o.fail(format!("m{i}"), FailKind::Returned);
        }
        assert_eq!(o.failed.len(), MAX_PENDING_FAILED);
        assert_eq!(o.failed_dropped, 5);
    }
}
