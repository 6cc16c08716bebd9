use super::*;
use crate::simulate::{first_failure, one_window, Rng};
use crate::stats::{normal_cdf, normal_quantile, two_proportion_z};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn failure_ratio() -> AlarmSpec {
    AlarmSpec::FailureRatio {
        min_sample: 20,
        confidence: 0.99,
        consecutive_failures: 3,
    }
}

fn sample(succeeded: u64, failed: u64) -> RevisionSample {
    RevisionSample {
        revision: "r".into(),
        received: succeeded + failed,
        succeeded,
        failed,
        ..RevisionSample::default()
    }
}

fn obs(canary: RevisionSample, primary: RevisionSample) -> Observation {
    Observation {
        now_ms: 1_000,
        window_ms: 60_000,
        canary,
        primary,
        dlq_depth_max: 0,
    }
}

#[test]
fn normal_distribution_known_values() {
    assert!(close(normal_cdf(0.0), 0.5, 1e-7));
    assert!(close(normal_cdf(1.0), 0.841_344_746, 1e-7));
    assert!(close(normal_cdf(-1.96), 0.024_997_895, 1e-7));
    assert!(close(normal_quantile(0.99), 2.326_347_874, 1e-7));
    assert!(close(normal_quantile(0.95), 1.644_853_627, 1e-7));
    assert!(close(normal_quantile(0.001), -3.090_232_306, 1e-7));
    assert!(normal_quantile(1.5).is_nan());
}

#[test]
fn z_test_hand_computed() {
    // 6/30 against 1/90: r1 = 0.2, r2 = 0.01111, pooled 7/120, c = (1/30 + 1/90)/2 = 0.02222,
    // se = sqrt(0.058333 * 0.941667 * 0.044444) = 0.049410, z = (0.188889 - 0.022222) / 0.049410.
    let t = two_proportion_z(6, 30, 1, 90);
    assert!(close(t.z, 3.373_129, 1e-5), "{t:?}");
    assert!(close(t.p_value, 3.716e-4, 2e-6), "{t:?}");
    // 3/100 against 1/300: z = 1.7408, p = 0.0409 — not significant at 0.99.
    let t = two_proportion_z(3, 100, 1, 300);
    assert!(close(t.z, 1.740_777, 1e-5), "{t:?}");
    assert!(close(t.p_value, 0.040_861, 1e-5), "{t:?}");
    // 10/200 against 6/600: z = 3.2077.
    assert!(close(two_proportion_z(10, 200, 6, 600).z, 3.207_665, 1e-5));
    // 2/100 against 3/300: the correction leaves z = 0.2598.
    assert!(close(two_proportion_z(2, 100, 3, 300).z, 0.259_828, 1e-5));
    // Equal ratios, no failures at all, empty samples: no evidence.
    assert_eq!(two_proportion_z(10, 100, 10, 100).z, 0.0);
    assert_eq!(two_proportion_z(0, 100, 0, 300).p_value, 0.5);
    assert_eq!(two_proportion_z(1, 0, 1, 10).p_value, 0.5);
    // The canary better than the primary: negative z, large p.
    let t = two_proportion_z(0, 100, 30, 300);
    assert!(t.z < -2.0 && t.p_value > 0.97, "{t:?}");
}

#[test]
fn always_valid_hand_computed() {
    // 12/60 against 2/180: d = 0.2 - 0.01111 - (1/60 + 1/180)/2 = 0.177778, pooled 14/240,
    // V = 0.058333 * 0.941667 * 0.022222 = 0.0012207, tau^2 = 0.01:
    // ln L = ln(sqrt(V / (V + 0.01))) + 0.01 d^2 / (2 V (V + 0.01)) = 10.4282, L = 33797.
    let t = stats::always_valid(12, 60, 2, 180, 0.1);
    assert!(close(t.likelihood_ratio, 33_797.04, 0.05), "{t:?}");
    assert!(close(t.p_value, 2.958_84e-5, 1e-9), "{t:?}");
    // 6/30 against 1/90: L = 42.88, p = 0.0233: strong, not yet 0.01.
    let t = stats::always_valid(6, 30, 1, 90, 0.1);
    assert!(close(t.likelihood_ratio, 42.880_5, 1e-3), "{t:?}");
    assert!(close(t.z, 3.373_129, 1e-5));
    // 3/100 against 1/300: L = 0.509, p capped at 1.
    let t = stats::always_valid(3, 100, 1, 300, 0.1);
    assert!(close(t.likelihood_ratio, 0.509_200, 1e-5), "{t:?}");
    assert_eq!(t.p_value, 1.0);
    // No difference, or the canary better: L = 1, p = 1.
    assert_eq!(stats::always_valid(10, 100, 30, 300, 0.1).p_value, 1.0);
    assert_eq!(
        stats::always_valid(0, 100, 30, 300, 0.1).likelihood_ratio,
        1.0
    );
    assert_eq!(stats::always_valid(0, 100, 0, 300, 0.1).p_value, 1.0);
}

#[test]
fn failure_ratio_fails_with_the_numbers() {
    let v = &evaluate(&[failure_ratio()], &obs(sample(48, 12), sample(178, 2)))[0];
    assert_eq!(v.outcome, Outcome::Fail, "{v:?}");
    assert_eq!(v.alarm, "failure-ratio");
    assert_eq!(v.numbers["canary_n"], 60.0);
    assert_eq!(v.numbers["canary_failures"], 12.0);
    assert_eq!(v.numbers["primary_n"], 180.0);
    assert!(close(v.numbers["canary_ratio"], 0.2, 1e-12));
    assert!(close(v.numbers["likelihood_ratio"], 33_797.04, 0.05));
    assert!(close(v.numbers["alpha"], 0.01, 1e-12));
    assert!(v.reason.contains("12 of 60 messages (20%)"), "{}", v.reason);
    assert!(v.reason.contains("2 of 180 (1.11%)"), "{}", v.reason);
    assert!(v.reason.contains("p = 3.0e-5 < 0.01"), "{}", v.reason);

    let v = &evaluate(&[failure_ratio()], &obs(sample(24, 6), sample(89, 1)))[0];
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert!(
        v.reason.contains("p = 0.023, not significant at 0.01"),
        "{}",
        v.reason
    );
}

#[test]
fn failure_ratio_passes_noise_and_waits_for_the_sample() {
    let v = &evaluate(&[failure_ratio()], &obs(sample(97, 3), sample(299, 1)))[0];
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert!(v.reason.contains("not significant"), "{}", v.reason);

    let v = &evaluate(&[failure_ratio()], &obs(sample(17, 2), sample(1000, 10)))[0];
    assert_eq!(v.outcome, Outcome::Inconclusive);
    assert!(
        v.reason
            .contains("completed 19 messages, the test needs 20"),
        "{}",
        v.reason
    );

    let v = &evaluate(&[failure_ratio()], &obs(sample(50, 10), sample(0, 0)))[0];
    assert_eq!(v.outcome, Outcome::Inconclusive);
    assert!(v.reason.contains("primary has completed no message"));
}

#[test]
fn consecutive_failures_fail_at_once() {
    let mut c = sample(0, 3);
    c.failures_since_last_success = 3;
    let v = &evaluate(&[failure_ratio()], &obs(c.clone(), sample(0, 0)))[0];
    assert_eq!(v.outcome, Outcome::Fail);
    assert!(v.reason.contains("3 messages in a row"), "{}", v.reason);
    assert_eq!(v.numbers["consecutive_failures"], 3.0);
    // Two in a row is not yet enough; 0 turns the fast path off.
    c.failures_since_last_success = 2;
    assert_eq!(
        evaluate(&[failure_ratio()], &obs(c.clone(), sample(0, 0)))[0].outcome,
        Outcome::Inconclusive
    );
    c.failures_since_last_success = 50;
    let off = AlarmSpec::FailureRatio {
        min_sample: 20,
        confidence: 0.99,
        consecutive_failures: 0,
    };
    assert_eq!(
        evaluate(&[off], &obs(c, sample(0, 0)))[0].outcome,
        Outcome::Inconclusive
    );
}

/// A healthy canary (1 % like the primary) judged once per window: at most 1 % false alarms.
#[test]
fn healthy_canary_false_positive_rate_single_look() {
    let mut rng = Rng::new(0xC0A1_0001);
    let alarms = [failure_ratio()];
    let windows = 1000;
    let mut fails = 0;
    for _ in 0..windows {
        let n = rng.range(100, 1000);
        if one_window(&mut rng, &alarms, n, 0.01, 3, 0.01) {
            fails += 1;
        }
    }
    assert!(
        fails <= windows / 100,
        "{fails} false alarms in {windows} windows"
    );
}

/// Judged again and again as the sample grows (as the pipeline does), the chance of one false
/// alarm over a whole run grows too; it must stay small.
#[test]
fn healthy_canary_false_positive_rate_repeated_looks() {
    let mut rng = Rng::new(0xC0A1_0002);
    let alarms = [failure_ratio()];
    let runs = 200;
    let mut fails = 0;
    for _ in 0..runs {
        // 2 minutes at 12.5 canary messages/s, judged every second.
        if first_failure(&mut rng, &alarms, 1500, 12, 0.01, 3, 0.01).is_some() {
            fails += 1;
        }
    }
    assert!(
        fails * 100 <= runs,
        "{fails} of {runs} healthy runs rolled back"
    );
}

/// A canary failing 20 % against the primary's 1 % is caught within ~30-60 messages.
#[test]
fn bad_canary_is_caught_quickly() {
    let mut rng = Rng::new(0xC0A1_0003);
    let alarms = [failure_ratio()];
    let mut caught_at: Vec<u64> = (0..500)
        .map(|_| first_failure(&mut rng, &alarms, 1000, 1, 0.20, 3, 0.01).unwrap_or(u64::MAX))
        .collect();
    caught_at.sort();
    let median = caught_at[caught_at.len() / 2];
    let p90 = caught_at[caught_at.len() * 9 / 10];
    assert!(median <= 45, "median {median}");
    assert!(p90 <= 70, "p90 {p90}");
    assert!(caught_at.iter().all(|&n| n < 1000), "some never caught");

    // A canary failing everything: its 3rd message.
    let n = first_failure(&mut rng, &alarms, 100, 1, 1.0, 3, 0.01);
    assert_eq!(n, Some(3));
}

#[test]
fn dlq_depth_is_the_guidance_alarm() {
    let a = [AlarmSpec::DlqDepth {
        threshold: 10,
        period: Duration::from_secs(300),
    }];
    let mut o = obs(sample(0, 0), sample(0, 0));
    o.dlq_depth_max = 10;
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Pass);
    assert_eq!(
        v.reason,
        "DLQ depth at most 10 over 5m, within the threshold of 10"
    );
    o.dlq_depth_max = 11;
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Fail);
    assert_eq!(v.numbers["dlq_depth_max"], 11.0);
    assert_eq!(v.numbers["period_s"], 300.0);
}

#[test]
fn crashes_at_threshold() {
    let a = [AlarmSpec::Crashes { threshold: 1 }];
    let mut o = obs(sample(0, 0), sample(0, 0));
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Pass);
    o.canary.task_exits = 1;
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Fail);
    assert_eq!(
        v.reason,
        "canary tasks exited once, at or above the threshold of 1"
    );
    // The primary's exits are not the canary's business.
    o.canary.task_exits = 0;
    o.primary.task_exits = 5;
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Pass);
}

#[test]
fn latency_compares_percentiles() {
    let a = [AlarmSpec::Latency {
        percentile: 95.0,
        factor: 2.0,
        min_sample: 20,
    }];
    let mut o = obs(sample(0, 0), sample(0, 0));
    o.primary.latencies_ms = (1..=100).map(|x| x as f64 * 10.0).collect(); // p95 = 950.5
    o.canary.latencies_ms = vec![1000.0; 19].into();
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Inconclusive);
    o.canary.latencies_ms = vec![1900.0; 20].into();
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert!(close(v.numbers["primary_ms"], 950.5, 1e-9));
    o.canary.latencies_ms = vec![1902.0; 20].into();
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Fail, "{v:?}");
    assert!(close(v.numbers["limit_ms"], 1901.0, 1e-9));
    assert!(
        v.reason
            .contains("p95 processing time 1902 ms is above 2 x the primary's 950.5 ms"),
        "{}",
        v.reason
    );
    // Sub-millisecond timings: never a failure.
    o.primary.latencies_ms = vec![0.2; 30].into();
    o.canary.latencies_ms = vec![0.9; 30].into();
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Pass);
}

#[test]
fn hung_compares_the_canary_with_the_primary() {
    let a = [AlarmSpec::Hung {
        factor: 10.0,
        min_ms: 30_000,
    }];
    let mut o = obs(sample(0, 0), sample(0, 0));
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Pass);
    // The canary holds a message past the limit and has deleted nothing for as long, while
    // the primary keeps deleting: stuck.
    o.canary.held_ms = vec![30_001, 200];
    o.canary.last_success_ago_ms = Some(40_000);
    o.primary.last_success_ago_ms = Some(50);
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Fail, "{v:?}");
    assert_eq!(v.numbers["limit_ms"], 30_000.0);
    assert!(v.reason.contains("the canary is stuck"), "{}", v.reason);
    // An old held message alone is no evidence: a worker that leaves failed messages holds
    // them for the whole visibility timeout, the primary just the same.
    o.canary.last_success_ago_ms = Some(100);
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Pass);
    // The queue went quiet: both stopped deleting about together (the benchmark's settle phase
    // after its traffic stops), and the canary still holds an old left message. Idle, not stuck.
    o.canary.held_ms = vec![142_387];
    o.canary.last_success_ago_ms = Some(30_144);
    o.primary.last_success_ago_ms = Some(29_144);
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert!(v.reason.contains("the queue went quiet"), "{}", v.reason);
    // The primary kept deleting for half the limit after the canary stopped: stuck.
    o.primary.last_success_ago_ms = Some(15_144);
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Fail);
    o.canary.held_ms = vec![30_001, 200];
    // Neither side deletes anything: nothing to compare with.
    o.canary.last_success_ago_ms = None;
    o.primary.last_success_ago_ms = None;
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Pass);
    // A slow primary (p99 5 s) raises the limit to 50 s.
    o.primary.last_success_ago_ms = Some(50);
    o.primary.latencies_ms = vec![5_000.0; 50].into();
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert_eq!(v.numbers["limit_ms"], 50_000.0);
    o.canary.held_ms = vec![50_001];
    o.canary.last_success_ago_ms = Some(60_000);
    assert_eq!(evaluate(&a, &o)[0].outcome, Outcome::Fail);
}

#[test]
fn held_messages_count_as_failures_on_both_sides() {
    let a = [failure_ratio()];
    // Primary: 100 ms per message, 1000 successes, and 10 messages left (held 60 s, past the
    // 5 s floor). Canary: 300 successes and 3 left: the same 1 %.
    let mut primary = sample(1000, 0);
    primary.latencies_ms = vec![100.0; 1000].into();
    primary.held_ms = vec![60_000; 10];
    primary.last_success_ago_ms = Some(10);
    let mut canary = sample(300, 0);
    canary.held_ms = vec![60_000, 60_000, 60_000, 50];
    canary.last_success_ago_ms = Some(10);
    let o = obs(canary.clone(), primary.clone());
    let v = &evaluate(&a, &o)[0];
    assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
    assert_eq!(v.numbers["canary_failures"], 3.0, "held past the limit, the one in progress not");
    assert_eq!(v.numbers["primary_failures"], 10.0);
    assert_eq!(v.numbers["hold_limit_ms"], 5_000.0);
    // A canary that leaves one message in five is seen at once, not after the visibility timeout.
    let mut bad = sample(80, 0);
    bad.held_ms = vec![6_000; 20];
    bad.last_success_ago_ms = Some(10);
    let v = &evaluate(&a, &obs(bad.clone(), primary.clone()))[0];
    assert_eq!(v.outcome, Outcome::Fail, "{v:?}");
    assert!(v.reason.contains("20 of them held past 5000 ms"), "{}", v.reason);
    // Deleted after all: a success from then on.
    bad.held_ms.clear();
    bad.succeeded += 20;
    assert_eq!(evaluate(&a, &obs(bad, primary.clone()))[0].outcome, Outcome::Pass);
    // Leaving everything: 20 held past the limit against the primary's 1 % fail the test.
    let mut leaves_all = sample(0, 0);
    leaves_all.held_ms = vec![5_600; 20];
    let v = &evaluate(&a, &obs(leaves_all, primary))[0];
    assert_eq!(v.outcome, Outcome::Fail, "{v:?}");
    assert!(v.reason.contains("20 of them held past 5000 ms"), "{}", v.reason);
}

#[test]
fn hold_limit_follows_the_primary() {
    assert_eq!(hold_limit(&Timings::default()), HoldLimit { ms: HOLD_FLOOR_MS, established: false });
    assert_eq!(hold_limit(&Timings::from([100.0; 19].to_vec())).established, false);
    assert_eq!(hold_limit(&Timings::from([100.0; 20].to_vec())), HoldLimit { ms: HOLD_FLOOR_MS, established: true });
    assert_eq!(hold_limit(&Timings::from([2_000.0; 50].to_vec())).ms, 10_000.0);
    // Held messages are failures on both sides, never a run of consecutive failures.
    let mut c = sample(0, 0);
    c.held_ms = vec![6_000; 5];
    let k = c.censored(hold_limit(&Timings::from([100.0; 20].to_vec())));
    assert_eq!((k.failed, k.consecutive), (5, 0));
}

#[test]
fn mann_whitney_hand_computed() {
    use crate::stats::mann_whitney;
    // a = {3, 4}, b = {1, 2}: every pair has a > b: U = 4, superiority 1.
    // n = 4, mean 2, variance 2*2*5/12 = 5/3, z = (4 - 2 - 0.5)/sqrt(5/3) = 1.161895.
    let t = mann_whitney(&[30.0, 40.0], &[10.0, 20.0]);
    assert_eq!(t.u, 4.0);
    assert_eq!(t.superiority, 1.0);
    assert!(close(t.z, 1.161_895, 1e-6), "{t:?}");
    assert!(close(t.p_value, 0.122_646, 1e-5), "{t:?}");
    // Values within 9 % are ties: no evidence.
    let t = mann_whitney(&[100.0; 50], &[103.0; 50]);
    assert_eq!(t.superiority, 0.5);
    assert!(t.p_value >= 0.5);
    // Clearly slower on 20 against 300 timings: far below the alarm's alpha.
    let slow: Vec<f64> = (0..20).map(|i| 1000.0 + i as f64).collect();
    let fast: Vec<f64> = (0..300).map(|i| 90.0 + (i % 20) as f64).collect();
    assert!(mann_whitney(&slow, &fast).p_value < 1e-10);
    assert_eq!(mann_whitney(&[], &fast).p_value, 1.0);
}

#[test]
fn percentile_interpolates() {
    assert_eq!(percentile(&[], 50.0), None);
    assert_eq!(percentile(&[1.0], 95.0), Some(1.0));
    assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), Some(2.5));
    assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), Some(1.0));
    assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), Some(5.0));
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert!(close(percentile(&v, 95.0).unwrap(), 95.05, 1e-9));
    assert_eq!(percentile(&[1.0, f64::NAN, 3.0], 50.0), Some(2.0));
    assert_eq!(percentile(&[1.0], 101.0), None);
}

#[test]
fn overall_folds_verdicts() {
    let v = |o| Verdict {
        outcome: o,
        alarm: "x".into(),
        reason: String::new(),
        numbers: BTreeMap::new(),
    };
    assert_eq!(overall(&[]), Outcome::Pass);
    assert_eq!(
        overall(&[v(Outcome::Pass), v(Outcome::Pass)]),
        Outcome::Pass
    );
    assert_eq!(
        overall(&[v(Outcome::Pass), v(Outcome::Inconclusive)]),
        Outcome::Inconclusive
    );
    assert_eq!(
        overall(&[v(Outcome::Inconclusive), v(Outcome::Fail)]),
        Outcome::Fail
    );
}

#[test]
fn defaults_evaluate_one_verdict_each_in_order() {
    let alarms = default_alarms();
    let vs = evaluate(&alarms, &obs(sample(0, 0), sample(0, 0)));
    let kinds: Vec<&str> = vs.iter().map(|v| v.alarm.as_str()).collect();
    assert_eq!(kinds, AlarmSpec::KINDS[1..]);
    assert_eq!(overall(&vs), Outcome::Inconclusive);
}

#[test]
fn alarm_specs_serialize_with_a_kind_tag() {
    let j = serde_json::to_string(&AlarmSpec::all_defaults()).unwrap();
    assert!(
        j.starts_with(r#"[{"kind":"dlq-depth","threshold":10,"period":"5m"}"#),
        "{j}"
    );
    let back: Vec<AlarmSpec> = serde_json::from_str(&j).unwrap();
    assert_eq!(back, AlarmSpec::all_defaults());
    let v: Verdict = evaluate(
        &[AlarmSpec::Crashes { threshold: 1 }],
        &Observation::default(),
    )
    .remove(0);
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["outcome"], "Pass", "one spelling: as stored and served");
    assert_eq!(j["numbers"]["threshold"], 1.0);
}

mod simulated_styles {
    use super::*;
    use crate::simulate::{simulate_run, FailureStyle, Rng, Scenario, Worker};

    const STYLES: [FailureStyle; 2] = [FailureStyle::HandBack, FailureStyle::Leave];

    /// Healthy canaries (1 % failures on both sides), judged twice a second for two minutes
    /// with the default alarms: the share of runs that roll back stays below 1 %, in both
    /// failure styles.
    #[test]
    fn healthy_canary_false_rollbacks_below_one_percent() {
        let alarms = default_alarms();
        for style in STYLES {
            let sc = Scenario::reference(style);
            let runs = 300;
            let mut rng = Rng::new(0xC0A1 + style as u64);
            let false_alarms: Vec<u64> = (0..runs).filter_map(|_| simulate_run(&mut rng, &alarms, &sc)).collect();
            eprintln!("{style:?}: {} false rollbacks in {runs} healthy runs", false_alarms.len());
            assert!(
                (false_alarms.len() as f64) < 0.01 * runs as f64,
                "{style:?}: {} of {runs} healthy canaries rolled back (at {false_alarms:?} ms)",
                false_alarms.len()
            );
        }
    }

    fn decision_ms(style: FailureStyle, canary: Worker, seed: u64) -> Vec<Option<u64>> {
        let alarms = default_alarms();
        let mut sc = Scenario::reference(style);
        sc.canary = canary;
        let mut rng = Rng::new(seed);
        (0..20).map(|_| simulate_run(&mut rng, &alarms, &sc)).collect()
    }

    fn assert_decided_within(what: &str, canary: Worker, within_ms: u64) {
        for style in STYLES {
            let times = decision_ms(style, canary, 7 + style as u64);
            let worst = times.iter().map(|t| t.unwrap_or(u64::MAX)).max().unwrap();
            eprintln!("{what} ({style:?}): decisions at {times:?} ms");
            assert!(worst <= within_ms, "{what} ({style:?}): decisions at {times:?} ms, goal {within_ms} ms");
        }
    }

    #[test]
    fn failing_every_message_is_decided_within_10_s() {
        assert_decided_within("fail all", Worker { fail: 1.0, ..Worker::HEALTHY }, 10_000);
    }

    #[test]
    fn failing_a_fifth_is_decided_within_60_s() {
        assert_decided_within("fail 20 %", Worker { fail: 0.2, ..Worker::HEALTHY }, 60_000);
    }

    #[test]
    fn failing_one_in_twenty_is_decided_within_180_s() {
        let alarms = default_alarms();
        for style in STYLES {
            let mut sc = Scenario::reference(style);
            sc.duration_ms = 180_000;
            sc.canary = Worker { fail: 0.05 + 0.01, ..Worker::HEALTHY };
            let mut rng = Rng::new(11);
            let times: Vec<Option<u64>> = (0..20).map(|_| simulate_run(&mut rng, &alarms, &sc)).collect();
            eprintln!("fail 5 % ({style:?}): decisions at {times:?} ms");
            assert!(times.iter().all(Option::is_some), "fail 5 % ({style:?}) not always caught in 180 s: {times:?}");
        }
    }

    #[test]
    fn ten_times_slower_is_decided_within_30_s() {
        assert_decided_within("slow x10", Worker { slow: 10.0, ..Worker::HEALTHY }, 30_000);
    }

    #[test]
    fn a_hung_canary_is_decided_within_35_s() {
        assert_decided_within("hang", Worker { hang: true, ..Worker::HEALTHY }, 35_000);
    }
}

/// Each kind's list of settings is its fields, as the file writes them, and its defaults make
/// sense; settings that do not are named with the fix.
#[test]
fn each_alarm_kind_knows_its_settings_and_their_sense() {
    for a in AlarmSpec::all_defaults() {
        let v = serde_json::to_value(&a).unwrap();
        let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).filter(|k| *k != "kind").collect();
        let mut settings = a.settings().to_vec();
        fields.sort_unstable();
        settings.sort_unstable();
        assert_eq!(fields, settings, "{}", a.kind());
        assert!(a.problems().is_empty(), "{}: {:?}", a.kind(), a.problems());
    }
    let bad = AlarmSpec::Latency { percentile: 0.0, factor: 0.5, min_sample: 0 };
    let named: Vec<&str> = bad.problems().iter().map(|(k, _, _)| *k).collect();
    assert_eq!(named, ["percentile", "factor", "min_sample"]);
    assert!(bad.problems().iter().all(|(_, _, fix)| fix.starts_with("use")));
    assert!(AlarmSpec::Latency { percentile: 95.0, factor: 2.0, min_sample: 20 }.repeatable());
    assert!(!AlarmSpec::Crashes { threshold: 1 }.repeatable());
}
