//! coalmine-analysis: the canary-versus-primary judgement.
//!
//! Pure: numbers in, verdicts out. The pipeline gathers an [`Observation`] (per-revision
//! telemetry from the queue and task exits from the runtime) and calls [`evaluate`] with the
//! app's alarms; each alarm yields one [`Verdict`] that carries the numbers that decided it.
//! [`overall`] folds them into one [`Outcome`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod consumer;
pub mod duration;
pub mod simulate;
pub mod stats;
pub mod timings;

pub use timings::Timings;

/// One alarm, as written in `[[alarms]]` of `coalmine.toml` (`kind = "dlq-depth"`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AlarmSpec {
    /// The guidance's alarm: the DLQ's depth (maximum over `period`) above `threshold`.
    DlqDepth {
        threshold: u64,
        #[serde(with = "duration::serde_str")]
        period: Duration,
    },
    /// The canary's failure ratio significantly above the primary's (see [`stats::always_valid`]),
    /// judged once the canary has completed `min_sample` messages; or, at once,
    /// `consecutive_failures` failures in a row with no success (0 turns the fast path off).
    FailureRatio {
        min_sample: u64,
        confidence: f64,
        consecutive_failures: u64,
    },
    /// The canary's tasks exited `threshold` times or more.
    Crashes { threshold: u64 },
    /// The canary's processing times longer than the primary's: a one-sided Mann-Whitney test
    /// on the two distributions significant at [`LATENCY_ALPHA`] *and* the canary's time at
    /// `percentile` above `factor` times the primary's (the effect must matter), with at least
    /// `min_sample` timings on both sides (each task's first messages are left out: warm-up).
    Latency {
        percentile: f64,
        factor: f64,
        min_sample: u64,
    },
    /// The canary is stuck: it holds a message longer than `factor` times the primary's p99
    /// processing time (at least `min_ms`) and has deleted nothing for that long, while the
    /// primary has. Never an age alone: a primary that holds messages just as long (a worker
    /// that leaves failed messages) does not make a canary hung.
    Hung { factor: f64, min_ms: u64 },
}

impl AlarmSpec {
    /// The `kind` as written in `coalmine.toml`: `"dlq-depth"`, `"failure-ratio"`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            AlarmSpec::DlqDepth { .. } => "dlq-depth",
            AlarmSpec::FailureRatio { .. } => "failure-ratio",
            AlarmSpec::Crashes { .. } => "crashes",
            AlarmSpec::Latency { .. } => "latency",
            AlarmSpec::Hung { .. } => "hung",
        }
    }

    /// Every kind, in the order of [`AlarmSpec::all_defaults`].
    pub const KINDS: [&'static str; 5] =
        ["dlq-depth", "failure-ratio", "crashes", "latency", "hung"];

    /// The default alarm of a kind, or `None` for an unknown kind.
    pub fn default_of(kind: &str) -> Option<AlarmSpec> {
        Self::all_defaults().into_iter().find(|a| a.kind() == kind)
    }

    /// Every kind with its default parameters:
    ///
    /// - `dlq-depth`: threshold 10, period 300 s (the guidance's alarm);
    /// - `failure-ratio`: min sample 20, confidence 0.99, 3 consecutive failures;
    /// - `crashes`: threshold 1;
    /// - `latency`: p95, factor 2, min sample 20;
    /// - `hung`: factor 10, at least 30 s.
    pub fn all_defaults() -> Vec<AlarmSpec> {
        vec![
            AlarmSpec::DlqDepth {
                threshold: 10,
                period: Duration::from_secs(300),
            },
            AlarmSpec::FailureRatio {
                min_sample: 20,
                confidence: 0.99,
                consecutive_failures: 3,
            },
            AlarmSpec::Crashes { threshold: 1 },
            AlarmSpec::Latency {
                percentile: 95.0,
                factor: 2.0,
                min_sample: 20,
            },
            AlarmSpec::Hung {
                factor: 10.0,
                min_ms: 30_000,
            },
        ]
    }

    /// The settings this kind takes, as `[[alarms]]` names them.
    pub fn settings(&self) -> &'static [&'static str] {
        match self {
            AlarmSpec::DlqDepth { .. } => &["threshold", "period"],
            AlarmSpec::FailureRatio { .. } => &["min_sample", "confidence", "consecutive_failures"],
            AlarmSpec::Crashes { .. } => &["threshold"],
            AlarmSpec::Latency { .. } => &["percentile", "factor", "min_sample"],
            AlarmSpec::Hung { .. } => &["factor", "min_ms"],
        }
    }

    /// Whether an app may have several alarms of this kind (with different settings); the
    /// others judge the one canary once.
    pub fn repeatable(&self) -> bool {
        matches!(self, AlarmSpec::DlqDepth { .. } | AlarmSpec::Latency { .. })
    }

    /// What is wrong with these settings, as (setting, problem, how to fix it); empty when
    /// they make sense.
    pub fn problems(&self) -> Vec<(&'static str, String, String)> {
        let no_data = || "a minimum sample of 0 would judge the canary on no data".to_string();
        let mut out = Vec::new();
        match *self {
            AlarmSpec::DlqDepth { .. } => {}
            AlarmSpec::FailureRatio { min_sample, confidence, .. } => {
                if !(confidence > 0.5 && confidence < 1.0) {
                    out.push(("confidence", format!("a confidence of {confidence} is outside 0.5 to 1 (both excluded)"), "use e.g. 0.99 (1 % chance of rolling back a healthy canary per look)".into()));
                }
                if min_sample == 0 {
                    out.push(("min_sample", no_data(), "use 20 or more".into()));
                }
            }
            AlarmSpec::Crashes { threshold } => {
                if threshold == 0 {
                    out.push(("threshold", "a threshold of 0 fails every canary, even one that never crashes".into(), "use 1 (any crash) or more".into()));
                }
            }
            AlarmSpec::Latency { percentile, factor, min_sample } => {
                if !(percentile > 0.0 && percentile <= 100.0) {
                    out.push(("percentile", format!("percentile {percentile} is outside 0 to 100"), "use e.g. 95 for the p95".into()));
                }
                if !(factor >= 1.0 && factor.is_finite()) {
                    out.push(("factor", format!("a factor of {factor} would flag a canary as fast as the primary"), "use 1 or more, e.g. 2.0".into()));
                }
                if min_sample == 0 {
                    out.push(("min_sample", no_data(), "use 20 or more".into()));
                }
            }
            AlarmSpec::Hung { factor, .. } => {
                if !(factor >= 1.0 && factor.is_finite()) {
                    out.push(("factor", format!("a factor of {factor} would call a canary hung before the primary's own processing time"), "use 1 or more, e.g. 10".into()));
                }
            }
        }
        out
    }
}

/// The alarms in force when `coalmine.toml` has no `[[alarms]]`: every kind but `dlq-depth`.
///
/// The guidance's DLQ alarm counts dead letters in absolute numbers: at a steady rate even a
/// healthy canary with the app's usual 1 % failures passes 10 dead letters in 300 s, so it
/// would roll good releases back. `failure-ratio` judges the same failures against the
/// primary's; `dlq-depth` stays available for who wants the guidance's behaviour.
pub fn default_alarms() -> Vec<AlarmSpec> {
    AlarmSpec::all_defaults()
        .into_iter()
        .filter(|a| a.kind() != "dlq-depth")
        .collect()
}

/// What one revision did over the observation window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RevisionSample {
    pub revision: String,
    /// Messages received.
    pub received: u64,
    /// Messages deleted (processed successfully).
    pub succeeded: u64,
    /// Messages handed back (visibility 0) or expired (visibility timeout ran out): failed
    /// attempts the queue has seen end. Messages still held are in `held_ms`.
    pub failed: u64,
    /// Messages this revision's receives sent to the DLQ.
    pub dead_lettered: u64,
    /// Returns and expiries since this revision's last success (the current run of failures).
    pub failures_since_last_success: u64,
    /// Receive-to-delete times of the successful messages, in milliseconds (each task's first
    /// messages left out: warm-up).
    pub latencies_ms: Timings,
    /// How long ago (ms) each message this revision holds in flight now was received.
    pub held_ms: Vec<u64>,
    /// How long ago (ms) this revision last deleted a message; `None`: not in the window.
    pub last_success_ago_ms: Option<u64>,
    /// Task exits (crashes and restarts) of this revision's tasks.
    pub task_exits: u64,
}

/// A message held longer than this without being deleted counts as a failed attempt *now*
/// (a censored outcome), for the canary and the primary alike: workers that fail by leaving
/// the message (not deleting it) would otherwise show their failures only when the
/// visibility timeout lapses, minutes later. If it is deleted after all, it counts as a
/// success from then on. The limit is `HOLD_FACTOR` times the primary's p99 processing time,
/// at least `HOLD_FLOOR_MS`.
pub const HOLD_FACTOR: f64 = 5.0;
/// See [`HOLD_FACTOR`].
pub const HOLD_FLOOR_MS: f64 = 5_000.0;
/// The primary timings [`hold_limit`] needs before it trusts the primary's p99; with fewer,
/// held messages still count as failures on both sides (like with like), but not toward the
/// failure-ratio alarm's run of consecutive failures.
pub const HOLD_MIN_PRIMARY_SAMPLE: usize = 20;

/// How long a message may be held before it counts as a failed attempt (see [`HOLD_FACTOR`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldLimit {
    pub ms: f64,
    /// Derived from enough of the primary's own timings.
    pub established: bool,
}

/// The hold limit from the primary's processing times (ms).
pub fn hold_limit(primary_latencies_ms: &Timings) -> HoldLimit {
    match primary_latencies_ms.percentile(99.0) {
        Some(p99) if primary_latencies_ms.len() >= HOLD_MIN_PRIMARY_SAMPLE as u64 => {
            HoldLimit { ms: (HOLD_FACTOR * p99).max(HOLD_FLOOR_MS), established: true }
        }
        _ => HoldLimit { ms: HOLD_FLOOR_MS, established: false },
    }
}

/// A revision's counts with the censored outcomes of [`HOLD_FACTOR`] folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Censored {
    /// Messages held now for longer than the limit.
    pub held_past_limit: u64,
    /// Failed attempts: returned + expired + held past the limit.
    pub failed: u64,
    /// Completed attempts: succeeded + failed.
    pub completed: u64,
    /// Returns and expiries since the last success.
    pub consecutive: u64,
}

impl RevisionSample {
    /// The counts with messages held past `limit` counted as failures. Held messages do not
    /// join the run of consecutive failures (the fast path): in a healthy worker that leaves
    /// its failed messages, held ones sit beside steady successes, and a run built from them
    /// rolled healthy canaries back; the ratio test judges them against the primary instead.
    pub fn censored(&self, limit: HoldLimit) -> Censored {
        let held_past_limit = self.held_ms.iter().filter(|a| **a as f64 > limit.ms).count() as u64;
        let failed = self.failed + held_past_limit;
        Censored {
            held_past_limit,
            failed,
            completed: self.succeeded + failed,
            consecutive: self.failures_since_last_success,
        }
    }

    /// The longest this revision has held a message it still holds.
    pub fn oldest_held_ms(&self) -> Option<u64> {
        self.held_ms.iter().copied().max()
    }
}

/// Everything the alarms look at, for one window.
///
/// The counts should be cumulative from the canary's deploy (the window grows), judged as
/// often as wanted: the failure-ratio test is built to be looked at repeatedly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub now_ms: u64,
    pub window_ms: u64,
    pub canary: RevisionSample,
    pub primary: RevisionSample,
    /// The DLQ's maximum depth over the DLQ alarm's period.
    pub dlq_depth_max: u64,
}

/// The conclusion of one alarm, or of all of them.
/// One spelling everywhere data goes (`Pass`, `Fail`, `Inconclusive`: serde, the store, the
/// API); `Display` is the word in sentences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not enough data yet.
    Inconclusive,
}

impl Outcome {
    /// The spelling in data: as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "Pass",
            Outcome::Fail => "Fail",
            Outcome::Inconclusive => "Inconclusive",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        })
    }
}

/// One alarm's conclusion with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The alarm's kind (`"failure-ratio"`, ...).
    pub alarm: String,
    /// One sentence, with the numbers, for people.
    pub reason: String,
    /// What decided it: sample sizes, counts, ratios, statistics, thresholds.
    pub numbers: BTreeMap<String, f64>,
}

/// Evaluate every alarm against one observation: one verdict per alarm, in order.
pub fn evaluate(alarms: &[AlarmSpec], obs: &Observation) -> Vec<Verdict> {
    alarms.iter().map(|a| evaluate_one(a, obs)).collect()
}

/// Any `Fail` gives `Fail`; all `Pass` (or no verdict at all) gives `Pass`; otherwise `Inconclusive`.
pub fn overall(verdicts: &[Verdict]) -> Outcome {
    if verdicts.iter().any(|v| v.outcome == Outcome::Fail) {
        Outcome::Fail
    } else if verdicts.iter().all(|v| v.outcome == Outcome::Pass) {
        Outcome::Pass
    } else {
        Outcome::Inconclusive
    }
}

/// The `p`-th percentile (0..=100) of `values`, interpolating linearly between the closest
/// ranks (the method of numpy's default and Excel's `PERCENTILE.INC`). NaNs are ignored.
/// `None` for no values or `p` outside 0..=100.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    // Two selections instead of a sort: linear time (the engine asks twice a second).
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let frac = rank - lo as f64;
    let (_, &mut a, above) = v.select_nth_unstable_by(lo, |a, b| a.total_cmp(b));
    let b = if frac > 0.0 { above.iter().copied().fold(f64::INFINITY, f64::min) } else { a };
    Some(a + (b - a) * frac)
}

/// Below this difference (ms) processing times are never called slower: timer noise.
pub const LATENCY_MIN_DIFFERENCE_MS: f64 = 1.0;

fn verdict(outcome: Outcome, alarm: &str, reason: String, numbers: &[(&str, f64)]) -> Verdict {
    Verdict {
        outcome,
        alarm: alarm.to_string(),
        reason,
        numbers: numbers.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

fn evaluate_one(alarm: &AlarmSpec, obs: &Observation) -> Verdict {
    let kind = alarm.kind();
    match *alarm {
        AlarmSpec::DlqDepth { threshold, period } => {
            let depth = obs.dlq_depth_max;
            let numbers = [
                ("dlq_depth_max", depth as f64),
                ("threshold", threshold as f64),
                ("period_s", period.as_secs_f64()),
            ];
            let p = duration::format(period);
            if depth > threshold {
                verdict(
                    Outcome::Fail,
                    kind,
                    format!(
                        "DLQ depth reached {depth} over {p}, above the threshold of {threshold}"
                    ),
                    &numbers,
                )
            } else {
                verdict(
                    Outcome::Pass,
                    kind,
                    format!(
                        "DLQ depth at most {depth} over {p}, within the threshold of {threshold}"
                    ),
                    &numbers,
                )
            }
        }
        AlarmSpec::FailureRatio {
            min_sample,
            confidence,
            consecutive_failures,
        } => failure_ratio(kind, min_sample, confidence, consecutive_failures, obs),
        AlarmSpec::Crashes { threshold } => {
            let exits = obs.canary.task_exits;
            let numbers = [
                ("task_exits", exits as f64),
                ("threshold", threshold as f64),
            ];
            if exits >= threshold {
                verdict(
                    Outcome::Fail,
                    kind,
                    format!("canary tasks exited {}, at or above the threshold of {threshold}", times(exits)),
                    &numbers,
                )
            } else {
                verdict(
                    Outcome::Pass,
                    kind,
                    format!(
                        "canary tasks exited {}, below the threshold of {threshold}",
                        times(exits)
                    ),
                    &numbers,
                )
            }
        }
        AlarmSpec::Latency {
            percentile: pct,
            factor,
            min_sample,
        } => latency(kind, pct, factor, min_sample, obs),
        AlarmSpec::Hung { factor, min_ms } => hung(kind, factor, min_ms, obs),
    }
}

/// Significance the latency alarm's Mann-Whitney test needs. Far stricter than a one-off
/// test's 0.01: the alarm looks twice a second, and the test is not sequential. An effect of
/// the size the alarm's `factor` asks for reaches it within a few dozen timings.
pub const LATENCY_ALPHA: f64 = 1e-4;

fn latency(kind: &str, pct: f64, factor: f64, min_sample: u64, obs: &Observation) -> Verdict {
    let nc = obs.canary.latencies_ms.len();
    let np = obs.primary.latencies_ms.len();
    let mut numbers = vec![
        ("canary_n", nc as f64),
        ("primary_n", np as f64),
        ("percentile", pct),
        ("factor", factor),
        ("min_sample", min_sample as f64),
        ("alpha", LATENCY_ALPHA),
    ];
    if nc < min_sample.max(1) || np < min_sample.max(1) {
        return verdict(
            Outcome::Inconclusive,
            kind,
            format!("not enough timings yet: canary {nc}, primary {np}, need {min_sample} on each side"),
            &numbers,
        );
    }
    let c = obs.canary.latencies_ms.percentile(pct).unwrap_or(0.0);
    let p = obs.primary.latencies_ms.percentile(pct).unwrap_or(0.0);
    let limit = factor * p;
    let test = stats::mann_whitney_timings(&obs.canary.latencies_ms, &obs.primary.latencies_ms);
    numbers.extend([
        ("canary_ms", c),
        ("primary_ms", p),
        ("limit_ms", limit),
        ("min_difference_ms", LATENCY_MIN_DIFFERENCE_MS),
        ("superiority", test.superiority),
        ("z", test.z),
        ("p_value", test.p_value),
    ]);
    let label = format!("p{}", fmt_num(pct));
    let (c_s, p_s) = (fmt_num(c), fmt_num(p));
    let test_s = format!("Mann-Whitney p = {}, P(canary slower) = {:.2}", fmt_p(test.p_value), test.superiority);
    let large = c > limit && c - p > LATENCY_MIN_DIFFERENCE_MS;
    let significant = test.p_value < LATENCY_ALPHA;
    if large && significant {
        verdict(
            Outcome::Fail,
            kind,
            format!("canary {label} processing time {c_s} ms is above {} x the primary's {p_s} ms ({} ms); {test_s}", fmt_num(factor), fmt_num(limit)),
            &numbers,
        )
    } else if large {
        verdict(
            Outcome::Pass,
            kind,
            format!("canary {label} processing time {c_s} ms against the primary's {p_s} ms, but not significantly slower ({test_s})"),
            &numbers,
        )
    } else {
        verdict(
            Outcome::Pass,
            kind,
            format!("canary {label} processing time {c_s} ms is within {} x the primary's {p_s} ms", fmt_num(factor)),
            &numbers,
        )
    }
}

fn hung(kind: &str, factor: f64, min_ms: u64, obs: &Observation) -> Verdict {
    let (c, p) = (&obs.canary, &obs.primary);
    let p99 = p.latencies_ms.percentile(99.0);
    let limit = p99.map_or(min_ms as f64, |x| (factor * x).max(min_ms as f64));
    let oldest = c.oldest_held_ms();
    // How long the canary has gone without a success: since its last one, or since the window
    // began when it has none.
    let canary_idle = c.last_success_ago_ms.unwrap_or(obs.window_ms);
    let mut numbers = vec![("factor", factor), ("min_ms", min_ms as f64), ("limit_ms", limit), ("canary_idle_ms", canary_idle as f64)];
    if let Some(x) = p99 {
        numbers.push(("primary_p99_ms", x));
    }
    if let Some(x) = p.last_success_ago_ms {
        numbers.push(("primary_idle_ms", x as f64));
    }
    if let Some(x) = oldest {
        numbers.push(("oldest_held_ms", x as f64));
    }
    let lim = fmt_num(limit);
    let Some(age) = oldest.filter(|a| *a as f64 > limit) else {
        return verdict(
            Outcome::Pass,
            kind,
            match oldest {
                Some(a) => format!("the canary's oldest held message is {a} ms old, within the limit of {lim} ms"),
                None => format!("the canary holds no message (limit {lim} ms)"),
            },
            &numbers,
        );
    };
    if (canary_idle as f64) <= limit {
        return verdict(
            Outcome::Pass,
            kind,
            format!("the canary holds a message for {age} ms but deleted one {canary_idle} ms ago: working, not stuck (limit {lim} ms)"),
            &numbers,
        );
    }
    // The primary must have kept deleting after the canary stopped — for half the limit at
    // least: when the queue goes quiet both stop together, and a canary then holding an old
    // left message is idle, not stuck.
    match p.last_success_ago_ms {
        Some(pi) if (pi as f64) <= limit && (pi as f64) + limit / 2.0 <= canary_idle as f64 => verdict(
            Outcome::Fail,
            kind,
            format!("the canary is stuck: it holds a message for {age} ms and deleted none for {canary_idle} ms, while the primary deleted one {pi} ms ago (limit {lim} ms)"),
            &numbers,
        ),
        Some(pi) if (pi as f64) <= limit => verdict(
            Outcome::Pass,
            kind,
            format!(
                "the canary deleted none for {canary_idle} ms, but the primary stopped deleting soon after it (its last {pi} ms ago): the queue went quiet, nothing to compare with (limit {lim} ms)"
            ),
            &numbers,
        ),
        _ => verdict(
            Outcome::Pass,
            kind,
            format!("the canary deleted none for {canary_idle} ms, but neither did the primary: nothing to compare with (limit {lim} ms)"),
            &numbers,
        ),
    }
}

/// The failure-ratio alarm.
///
/// The test is a one-sided two-proportion test that stays valid under continuous monitoring:
/// a mixture sequential probability ratio test on the continuity-corrected difference of the
/// failure ratios (see [`stats::always_valid`]). The pipeline judges the canary again and again
/// as messages arrive; a fixed-sample z-test at 99 % would then roll back a healthy canary in
/// about 1 run of 20 (measured: 5.5 % over 2-minute runs judged every second), whereas this
/// test keeps the chance of one false alarm over the *whole run* at `1 - confidence`.
/// It fails when the always-valid p-value `1/Λ` is below `1 - confidence`. The plain z of
/// [`stats::two_proportion_z`] is reported beside it for people.
///
/// The sample is the messages each revision completed in the window: succeeded, failed
/// (returned or expired), and held longer than the [`hold_limit`] (censored: a worker that
/// leaves a failed message shows it only when the visibility timeout lapses; see
/// [`HOLD_FACTOR`]). The canary needs `min_sample` of them, the primary at least one. The
/// fast path fails at once when the canary has `consecutive_failures` failures in a row with
/// no success.
fn failure_ratio(
    kind: &str,
    min_sample: u64,
    confidence: f64,
    consecutive_failures: u64,
    obs: &Observation,
) -> Verdict {
    let limit = hold_limit(&obs.primary.latencies_ms);
    let c = obs.canary.censored(limit);
    let p = obs.primary.censored(limit);
    let (nc, np) = (c.completed, p.completed);
    let mut numbers = vec![
        ("canary_n", nc as f64),
        ("canary_failures", c.failed as f64),
        ("canary_held_past_limit", c.held_past_limit as f64),
        ("primary_n", np as f64),
        ("primary_failures", p.failed as f64),
        ("primary_held_past_limit", p.held_past_limit as f64),
        ("hold_limit_ms", limit.ms),
        ("min_sample", min_sample as f64),
        ("confidence", confidence),
        ("consecutive_failures", c.consecutive as f64),
        ("consecutive_failures_limit", consecutive_failures as f64),
    ];
    let held = |h: u64| if h > 0 { format!(", {h} of them held past {} ms", fmt_num(limit.ms)) } else { String::new() };
    if consecutive_failures > 0 && c.consecutive >= consecutive_failures {
        return verdict(
            Outcome::Fail,
            kind,
            format!(
                "the canary failed {} messages in a row with no success, the limit being {consecutive_failures}{}",
                c.consecutive,
                held(c.held_past_limit.min(c.consecutive))
            ),
            &numbers,
        );
    }
    if nc < min_sample.max(1) {
        return verdict(
            Outcome::Inconclusive,
            kind,
            format!("the canary has completed {nc} messages, the test needs {min_sample}"),
            &numbers,
        );
    }
    if np == 0 {
        return verdict(
            Outcome::Inconclusive,
            kind,
            "the primary has completed no message in the window, nothing to compare with"
                .to_string(),
            &numbers,
        );
    }
    let rc = c.failed as f64 / nc as f64;
    let rp = p.failed as f64 / np as f64;
    let test = stats::always_valid(c.failed, nc, p.failed, np, stats::MSPRT_TAU);
    let alpha = 1.0 - confidence;
    numbers.extend([
        ("canary_ratio", rc),
        ("primary_ratio", rp),
        ("z", test.z),
        ("likelihood_ratio", test.likelihood_ratio),
        ("p_value", test.p_value),
        ("alpha", alpha),
        ("tau", stats::MSPRT_TAU),
    ]);
    let pct = |r: f64| format!("{}%", fmt_num(r * 100.0));
    let head = format!(
        "the canary failed {} of {nc} messages ({}{}) against the primary's {} of {np} ({}): z = {:.2}, p = {}",
        c.failed,
        pct(rc),
        held(c.held_past_limit),
        p.failed,
        pct(rp),
        test.z,
        fmt_p(test.p_value),
    );
    if test.p_value < alpha {
        verdict(
            Outcome::Fail,
            kind,
            format!("{head} < {}", fmt_num(alpha)),
            &numbers,
        )
    } else {
        verdict(
            Outcome::Pass,
            kind,
            format!("{head}, not significant at {}", fmt_num(alpha)),
            &numbers,
        )
    }
}

/// "once", "2 times".
fn times(n: u64) -> String {
    if n == 1 {
        "once".to_string()
    } else {
        format!("{n} times")
    }
}

fn fmt_p(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

/// A number for a sentence: integers without decimals, others with up to 2.
fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests;
