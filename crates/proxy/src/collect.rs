//! The controller's side of the telemetry: the proxies' reports, read from the telemetry queue,
//! turned into per-task counts over a window — what the embedded queue's own telemetry gives
//! for its consumers.
//!
//! Reports are cumulative per proxy, so a window's counts are the newest report minus the last
//! one at or before the window's start (nothing, when the proxy started inside the window). A
//! task restarted gets a new proxy; its counts add up under the task's identity.

use std::collections::{BTreeMap, HashMap, VecDeque};

use coalmine_analysis::consumer::{failure_run, Interval, WARMUP_MESSAGES, WARMUP_MS};
use coalmine_analysis::Timings;

use crate::observe::BUCKETS_MS;
use crate::telemetry::{Kind, Report};

/// Reports kept per proxy (one a second: half an hour).
const HISTORY: usize = 1_800;
/// Held messages of a report older than this are not trusted as held now (its proxy was
/// killed without a final report; the messages come back when their visibility lapses).
const STALE_MS: u64 = 5_000;
/// Message ids whose last receiver is remembered (for the DLQ's attribution), oldest
/// forgotten first.
const RECEIVER_IDS: usize = 100_000;

/// What one task did in a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskCounts {
    pub service: String,
    pub revision: String,
    pub task: String,
    pub received: u64,
    pub deleted: u64,
    pub returned: u64,
    pub expired: u64,
    /// Held when its proxy stopped, made visible again by it.
    pub released: u64,
    /// Processing times of the deleted messages, in ms (each at its bucket's upper bound).
    pub latencies_ms: Timings,
    /// The same without the task's warm-up.
    pub warm_latencies_ms: Timings,
    /// Failed attempts since the task's last success (bounded by what it received since).
    pub failures_since_success: u64,
    /// When the task last deleted a message (Unix ms, to the report), inside the window.
    pub last_success_ms: Option<u64>,
    /// Ages (ms, now) of the messages it holds, as its newest fresh report says.
    pub held_ms: Vec<u64>,
}

/// The reports of every proxy seen, and who failed which message.
#[derive(Debug, Default)]
pub struct Collector {
    proxies: HashMap<String, VecDeque<Report>>,
    /// Message id -> the last task seen holding or failing it: its last receiver, as far as
    /// the reports tell.
    receivers: HashMap<String, Receiver>,
    receiver_order: VecDeque<String>,
    /// Reports refused (not coalmine's, other versions), for the log.
    pub refused: u64,
}

/// Who held or failed a message last, when the report said so, and whether that task let go of
/// it only because it stopped (handed back unprocessed by its proxy: not a failure of the app).
#[derive(Clone, Debug)]
struct Receiver {
    time_ms: u64,
    who: (String, String, String),
    released: bool,
}

fn zero_like(r: &Report) -> Report {
    let mut z = r.clone();
    z.time_ms = r.started_ms;
    (z.received, z.deleted, z.returned, z.expired, z.handed_back) = (0, 0, 0, 0, 0);
    z.processing_ms.counts = vec![0; z.processing_ms.counts.len()];
    z
}

fn histogram_delta(new: &Report, old: &Report, out: &mut Timings) {
    for (i, n) in new.processing_ms.counts.iter().enumerate() {
        let before = old.processing_ms.counts.get(i).copied().unwrap_or(0);
        let ms = new.processing_ms.le_ms.get(i).copied().or_else(|| BUCKETS_MS.last().map(|b| b * 2)).unwrap_or(0) as f64;
        out.add(ms, n.saturating_sub(before));
    }
}

impl Collector {
    /// Take one report in (any order; duplicates are ignored).
    pub fn add(&mut self, r: Report) {
        // Failed ids, and ids held now: a task the runtime kills before its final report has
        // said in its last tick what it held. A newer report wins (reports arrive in any order).
        let who = (r.service.clone(), r.revision.clone(), r.task.clone());
        let seen_now = r.failed.iter().map(|f| (&f.id, f.how == "released")).chain(r.held_ids.iter().map(|id| (id, false)));
        for (id, released) in seen_now {
            let now = Receiver { time_ms: r.time_ms, who: who.clone(), released };
            match self.receivers.get_mut(id) {
                Some(seen) if seen.time_ms > r.time_ms => {}
                // A final report names a message both as held (its last tick) and released.
                Some(seen) if seen.time_ms == r.time_ms && seen.who == now.who => seen.released |= released,
                Some(seen) => *seen = now,
                None => {
                    self.receivers.insert(id.clone(), now);
                    self.receiver_order.push_back(id.clone());
                    if self.receiver_order.len() > RECEIVER_IDS {
                        if let Some(old) = self.receiver_order.pop_front() {
                            self.receivers.remove(&old);
                        }
                    }
                }
            }
        }
        let history = self.proxies.entry(r.proxy.clone()).or_default();
        let at = history.partition_point(|x| x.seq < r.seq);
        if history.get(at).is_some_and(|x| x.seq == r.seq) {
            return;
        }
        history.insert(at, r);
        if history.len() > HISTORY {
            history.pop_front();
        }
    }

    /// The task that held or failed this message last, as (service, revision, task).
    pub fn last_receiver(&self, message_id: &str) -> Option<&(String, String, String)> {
        self.receivers.get(message_id).map(|r| &r.who)
    }

    /// Whether the message's last receiver handed it back unprocessed when its task stopped
    /// (its proxy's hand-back), rather than failing it.
    pub fn released_at_stop(&self, message_id: &str) -> bool {
        self.receivers.get(message_id).is_some_and(|r| r.released)
    }

    /// Per task, what it did since `since_ms`, as of `now_ms`.
    pub fn window(&self, since_ms: u64, now_ms: u64) -> Vec<TaskCounts> {
        let mut out: BTreeMap<(String, String, String), TaskCounts> = BTreeMap::new();
        for history in self.proxies.values() {
            let Some(last) = history.back() else { continue };
            if last.time_ms < since_ms {
                continue;
            }
            let key = (last.service.clone(), last.revision.clone(), last.task.clone());
            let t = out.entry(key).or_insert_with(|| TaskCounts {
                service: last.service.clone(),
                revision: last.revision.clone(),
                task: last.task.clone(),
                ..TaskCounts::default()
            });
            // The window's base: the last report at or before its start, or nothing.
            let zero = zero_like(last);
            let start = history.partition_point(|r| r.time_ms <= since_ms);
            let base = if start == 0 { &zero } else { &history[start - 1] };
            t.received += last.received.saturating_sub(base.received);
            t.deleted += last.deleted.saturating_sub(base.deleted);
            t.returned += last.returned.saturating_sub(base.returned);
            t.expired += last.expired.saturating_sub(base.expired);
            t.released += last.handed_back.saturating_sub(base.handed_back);
            histogram_delta(last, base, &mut t.latencies_ms);
            // Warm: from the first report at least WARMUP_MS into the window (or the proxy's
            // life) with WARMUP_MESSAGES deleted in it.
            let warm_from = since_ms.max(last.started_ms) + WARMUP_MS;
            if let Some(warm) = history.range(start..).find(|r| r.time_ms >= warm_from && r.deleted.saturating_sub(base.deleted) >= WARMUP_MESSAGES) {
                histogram_delta(last, warm, &mut t.warm_latencies_ms);
            }
            // The run of failures since the last success, between consecutive reports.
            let inside: Vec<&Report> = std::iter::once(base).chain(history.range(start..)).collect();
            let intervals: Vec<Interval> = inside
                .windows(2)
                .map(|pair| {
                    let (old, new) = (pair[0], pair[1]);
                    Interval {
                        received: new.received.saturating_sub(old.received),
                        deleted: new.deleted.saturating_sub(old.deleted),
                        failed: (new.returned + new.expired + new.handed_back).saturating_sub(old.returned + old.expired + old.handed_back),
                    }
                })
                .collect();
            let run = failure_run(&intervals);
            t.failures_since_success += run.failures;
            t.last_success_ms = t.last_success_ms.max(run.last_success.map(|i| inside[i + 1].time_ms));
            if last.kind != Kind::Final && now_ms.saturating_sub(last.time_ms) <= STALE_MS {
                let lag = now_ms.saturating_sub(last.time_ms);
                t.held_ms.extend(last.held_ages_ms.iter().map(|a| a + lag));
            }
        }
        out.into_values().collect()
    }

    /// Forget proxies whose last report is older than `before_ms`.
    pub fn forget_before(&mut self, before_ms: u64) {
        self.proxies.retain(|_, h| h.back().is_some_and(|r| r.time_ms >= before_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{FailedReport, HistogramReport};

    fn report(proxy: &str, seq: u64, time_ms: u64, received: u64, deleted: u64, returned: u64) -> Report {
        let mut counts = vec![0; BUCKETS_MS.len() + 1];
        counts[BUCKETS_MS.iter().position(|b| *b == 100).unwrap()] = deleted; // 100 ms each
        Report {
            v: crate::telemetry::VERSION,
            kind: Kind::Tick,
            app: Some("app".into()),
            service: "canary".into(),
            revision: "r2".into(),
            task: "canary-1".into(),
            identity_source: "env".into(),
            proxy: proxy.into(),
            seq,
            time_ms,
            started_ms: 1_000,
            received,
            redelivered: 0,
            deleted,
            deleted_unknown: 0,
            returned,
            extended: 0,
            expired: 0,
            over_limit: 0,
            refused: 0,
            requests: 0,
            upstream_errors: 0,
            unreachable: 0,
            handed_back: 0,
            held: 0,
            oldest_held_ms: 0,
            held_ages_ms: Vec::new(),
            held_ids: Vec::new(),
            hold_limit_ms: 60_000,
            processing_ms: HistogramReport { le_ms: BUCKETS_MS.to_vec(), counts, sum_ms: deleted * 100, count: deleted },
            failed: Vec::new(),
            failed_dropped: 0,
            telemetry_lost: 0,
        }
    }

    #[test]
    fn a_window_is_the_newest_report_minus_the_one_before_it_began() {
        let mut c = Collector::default();
        // Out of order and duplicated, as a standard queue may deliver them.
        for (seq, t, rec, del) in [(3, 4_000, 30, 28), (1, 2_000, 10, 10), (2, 3_000, 20, 19), (2, 3_000, 20, 19)] {
            c.add(report("p1", seq, t, rec, del, rec - del));
        }
        let w = c.window(2_500, 4_000);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].received, w[0].deleted, w[0].returned), (20, 18, 2));
        assert_eq!(w[0].latencies_ms, Timings::from(vec![100.0; 18]));
        // From before the proxy started: everything.
        let all = c.window(0, 4_000);
        assert_eq!((all[0].received, all[0].deleted), (30, 28));
    }

    #[test]
    fn a_run_of_failures_ends_at_the_last_success_and_is_bounded_by_what_was_received() {
        let mut c = Collector::default();
        c.add(report("p1", 1, 2_000, 10, 10, 0));
        c.add(report("p1", 2, 3_000, 15, 10, 5));
        c.add(report("p1", 3, 4_000, 20, 10, 10));
        let w = c.window(0, 4_000);
        assert_eq!(w[0].failures_since_success, 10);
        assert_eq!(w[0].last_success_ms, Some(2_000));
        // Expiries of messages received long ago, nothing received since: no run.
        let mut c = Collector::default();
        c.add(report("p1", 1, 2_000, 10, 10, 0));
        let mut quiet = report("p1", 2, 300_000, 10, 10, 0);
        quiet.expired = 3;
        c.add(quiet);
        assert_eq!(c.window(0, 300_000)[0].failures_since_success, 0);
    }

    #[test]
    fn restarted_tasks_add_up_and_failed_ids_name_their_task() {
        let mut c = Collector::default();
        c.add(report("p1", 1, 2_000, 5, 5, 0));
        let mut r = report("p2", 1, 3_000, 4, 3, 1);
        r.failed = vec![FailedReport { id: "m-1".into(), how: "returned".into() }];
        c.add(r);
        let w = c.window(0, 3_000);
        assert_eq!((w.len(), w[0].received, w[0].deleted), (1, 9, 8));
        assert_eq!(c.last_receiver("m-1").map(|f| f.1.as_str()), Some("r2"));
        assert!(c.last_receiver("m-2").is_none());
    }

    #[test]
    fn what_a_task_held_in_its_last_report_is_its_own_and_a_newer_report_wins() {
        let mut c = Collector::default();
        // The canary held m-9 when it was killed (no final report).
        let mut held = report("p1", 5, 5_000, 10, 0, 0);
        held.held_ids = vec!["m-9".into()];
        c.add(held);
        assert_eq!(c.last_receiver("m-9").map(|f| f.2.as_str()), Some("canary-1"));
        // Received later by the primary (a newer report), whatever order the reports come in.
        let mut later = report("p2", 1, 9_000, 1, 0, 0);
        later.service = "primary".into();
        later.task = "primary-2".into();
        later.held_ids = vec!["m-9".into()];
        let mut older = report("p1", 4, 4_000, 9, 0, 0);
        older.held_ids = vec!["m-9".into()];
        c.add(later);
        c.add(older);
        assert_eq!(c.last_receiver("m-9").map(|f| f.2.as_str()), Some("primary-2"));
    }

    #[test]
    fn a_message_handed_back_at_the_stop_is_released_until_someone_holds_it_again() {
        let mut c = Collector::default();
        let mut tick = report("p1", 1, 2_000, 2, 0, 0);
        tick.held_ids = vec!["m-1".into(), "m-2".into()];
        c.add(tick);
        // The final report: m-1 handed back at the stop, m-2 returned by the app (a failure).
        let mut last = report("p1", 2, 3_000, 2, 0, 1);
        last.kind = Kind::Final;
        last.failed = vec![FailedReport { id: "m-1".into(), how: "released".into() }, FailedReport { id: "m-2".into(), how: "returned".into() }];
        c.add(last);
        assert!(c.released_at_stop("m-1"));
        assert!(!c.released_at_stop("m-2"));
        assert!(!c.released_at_stop("m-3"), "never seen");
        // Received again by another task: its own now, and not released.
        let mut again = report("p2", 1, 4_000, 1, 0, 0);
        again.held_ids = vec!["m-1".into()];
        c.add(again);
        assert!(!c.released_at_stop("m-1"));
    }

    #[test]
    fn held_ages_are_trusted_only_from_a_fresh_report_of_a_running_proxy() {
        let mut c = Collector::default();
        let mut r = report("p1", 1, 2_000, 3, 0, 0);
        r.held_ages_ms = vec![900, 100];
        c.add(r.clone());
        assert_eq!(c.window(0, 2_500)[0].held_ms, vec![1_400, 600]);
        assert!(c.window(0, 60_000)[0].held_ms.is_empty(), "stale");
        r.seq = 2;
        r.kind = Kind::Final;
        c.add(r);
        assert!(c.window(0, 2_000)[0].held_ms.is_empty(), "stopped");
    }

    #[test]
    fn the_warm_up_leaves_out_a_tasks_first_seconds() {
        let mut c = Collector::default();
        c.add(report("p1", 1, 5_000, 10, 10, 0));
        c.add(report("p1", 2, 12_000, 20, 20, 0));
        c.add(report("p1", 3, 20_000, 30, 30, 0));
        let w = c.window(0, 20_000);
        assert_eq!(w[0].latencies_ms.len(), 30);
        assert_eq!(w[0].warm_latencies_ms.len(), 10, "from the first report 10 s after the start");
    }
}
