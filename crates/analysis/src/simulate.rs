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
