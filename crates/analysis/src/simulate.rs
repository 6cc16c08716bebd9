//! Seeded simulation of canary and primary traffic, for the false-positive and detection
//! figures in the tests and the benchmark. Deterministic: the same seed gives the same numbers.

use crate::{evaluate, AlarmSpec, Observation, Outcome, RevisionSample};

/// SplitMix64: a small, fast, well-mixed seeded generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A revision's running tally, fed one message outcome at a time.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub sample: RevisionSample,
}

impl Tally {
    /// One message completed: failed with probability `failure_rate`.
    pub fn step(&mut self, rng: &mut Rng, failure_rate: f64) {
        let s = &mut self.sample;
        s.received += 1;
        if rng.next_f64() < failure_rate {
            s.failed += 1;
            s.failures_since_last_success += 1;
        } else {
            s.succeeded += 1;
            s.failures_since_last_success = 0;
        }
    }
}

/// Observe `canary_n` canary messages and `primary_per_canary` times as many primary ones at the
/// given failure rates, judged once at the end. True when the alarms fail the canary.
pub fn one_window(
    rng: &mut Rng,
    alarms: &[AlarmSpec],
    canary_n: u64,
    canary_rate: f64,
    primary_per_canary: u64,
    primary_rate: f64,
) -> bool {
    let (mut c, mut p) = (Tally::default(), Tally::default());
    for _ in 0..canary_n {
        c.step(rng, canary_rate);
        for _ in 0..primary_per_canary {
            p.step(rng, primary_rate);
        }
    }
    judge(alarms, &c, &p) == Outcome::Fail
}

/// Feed messages one canary message at a time (with `primary_per_canary` primary messages each),
/// judging every `look_every` canary messages, up to `max_canary` canary messages. Returns the
/// number of canary messages seen when the alarms first failed the canary, or `None`.
pub fn first_failure(
    rng: &mut Rng,
    alarms: &[AlarmSpec],
    max_canary: u64,
    look_every: u64,
    canary_rate: f64,
    primary_per_canary: u64,
    primary_rate: f64,
) -> Option<u64> {
    let (mut c, mut p) = (Tally::default(), Tally::default());
    for i in 1..=max_canary {
        c.step(rng, canary_rate);
        for _ in 0..primary_per_canary {
            p.step(rng, primary_rate);
        }
        if i % look_every.max(1) == 0 && judge(alarms, &c, &p) == Outcome::Fail {
            return Some(i);
        }
    }
    None
}

fn judge(alarms: &[AlarmSpec], c: &Tally, p: &Tally) -> Outcome {
    let obs = Observation {
        canary: c.sample.clone(),
        primary: p.sample.clone(),
        ..Observation::default()
    };
    crate::overall(&evaluate(alarms, &obs))
}

impl Rng {
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).ln()
    }
}

/// How a worker fails a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureStyle {
    /// ChangeMessageVisibility 0 (or a crash): the queue sees the failure at once.
    HandBack,
    /// Not deleted: the message stays in flight until its visibility timeout lapses.
    Leave,
}

/// One revision's behaviour in [`simulate_run`].
#[derive(Debug, Clone, Copy)]
pub struct Worker {
    /// Share of messages failed.
    pub fail: f64,
    /// Processing time multiplier (1 = as the primary).
    pub slow: f64,
    /// Never answers: every message is held for good.
    pub hang: bool,
}

impl Worker {
    pub const HEALTHY: Worker = Worker { fail: 0.0, slow: 1.0, hang: false };
}

/// A queue with a primary and a canary consuming it, as the tests and the benchmark run them.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub style: FailureStyle,
    /// Messages a second, for both services together.
    pub rate: f64,
    /// The canary's share of the messages (its tasks over all tasks).
    pub canary_share: f64,
    /// Median processing time (ms) and its log-normal spread.
    pub work_ms: f64,
    pub spread: f64,
    pub primary: Worker,
    pub canary: Worker,
    pub visibility_ms: f64,
    pub duration_ms: u64,
    /// How often the alarms are judged (the engine: every 500 ms).
    pub look_every_ms: u64,
}

impl Scenario {
    /// The reference: 50 msg/s, primary 3 tasks and canary 1, 100 ms of work, 1 %
    /// background failures everywhere, 300 s visibility, judged twice a second for 2 minutes.
    pub fn reference(style: FailureStyle) -> Scenario {
        let noise = Worker { fail: 0.01, ..Worker::HEALTHY };
        Scenario {
            style,
            rate: 50.0,
            canary_share: 0.25,
            work_ms: 100.0,
            spread: 0.3,
            primary: noise,
            canary: noise,
            visibility_ms: 300_000.0,
            duration_ms: 120_000,
            look_every_ms: 500,
        }
    }
}

struct SimMessage {
    at: f64,
    canary: bool,
    /// When its outcome becomes known to the queue: deleted, returned or expired.
    ends: f64,
    success: bool,
    latency: f64,
}

/// Run one scenario; returns the time (ms from the start) at which the alarms first failed
/// the canary, or `None` if they never did. Deterministic for a given `rng` state.
pub fn simulate_run(rng: &mut Rng, alarms: &[AlarmSpec], sc: &Scenario) -> Option<u64> {
    let mut msgs = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.exponential(1000.0 / sc.rate);
        if t >= sc.duration_ms as f64 {
            break;
        }
        let canary = rng.next_f64() < sc.canary_share;
        let w = if canary { sc.canary } else { sc.primary };
        let latency = sc.work_ms * w.slow * (sc.spread * rng.normal()).exp();
        let fails = rng.next_f64() < w.fail;
        let ends = if w.hang {
            f64::INFINITY
        } else if fails && sc.style == FailureStyle::Leave {
            t + sc.visibility_ms
        } else {
            t + latency
        };
        msgs.push(SimMessage { at: t, canary, ends, success: !fails && !w.hang, latency });
    }
    // Incremental: arrivals in order, outcomes from a min-heap of end times, the samples
    // kept between looks (the latency lists only grow).
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut obs = Observation::default();
    let mut ends: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut held: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(), Default::default()];
    let mut last_success = [None::<f64>, None];
    let mut next = 0;
    let mut look = sc.look_every_ms;
    while look <= sc.duration_ms {
        let now = look as f64;
        while next < msgs.len() && msgs[next].at <= now {
            let m = &msgs[next];
            let s = if m.canary { &mut obs.canary } else { &mut obs.primary };
            s.received += 1;
            held[m.canary as usize].insert(next);
            if m.ends.is_finite() {
                ends.push(Reverse(((m.ends * 1000.0) as u64, next)));
            }
            next += 1;
        }
        while let Some(Reverse((at_us, i))) = ends.peek().copied() {
            if at_us as f64 / 1000.0 > now {
                break;
            }
            ends.pop();
            let m = &msgs[i];
            held[m.canary as usize].remove(&i);
            let s = if m.canary { &mut obs.canary } else { &mut obs.primary };
            if m.success {
                s.succeeded += 1;
                s.latencies_ms.add(m.latency, 1);
                s.failures_since_last_success = 0;
                let ls = &mut last_success[m.canary as usize];
                *ls = Some(ls.map_or(m.ends, |x: f64| x.max(m.ends)));
            } else {
                s.failed += 1;
                s.failures_since_last_success += 1;
            }
        }
        for (k, s) in [(0, &mut obs.primary), (1, &mut obs.canary)] {
            s.held_ms = held[k].iter().map(|i| (now - msgs[*i].at) as u64).collect();
            s.last_success_ago_ms = last_success[k].map(|x| (now - x) as u64);
        }
        obs.now_ms = look;
        obs.window_ms = look;
        if crate::overall(&evaluate(alarms, &obs)) == Outcome::Fail {
            return Some(look);
        }
        look += sc.look_every_ms;
    }
    None
}
