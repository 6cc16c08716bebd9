//! Prints the analysis figures: evaluation cost, false alarms on a healthy canary, and how
//! many messages a bad canary needs before it is caught. `cargo bench -p coalmine-analysis`.

use std::time::Instant;

use coalmine_analysis::simulate::{first_failure, one_window, Rng};
use coalmine_analysis::{
    default_alarms, evaluate, percentile, AlarmSpec, Observation, RevisionSample,
};

fn main() {
    let alarms = default_alarms();
    let mut rng = Rng::new(42);
    let sample = |rng: &mut Rng, n: usize| RevisionSample {
        revision: "r".into(),
        received: n as u64,
        succeeded: n as u64 - n as u64 / 100,
        failed: n as u64 / 100,
        latencies_ms: (0..n).map(|_| 900.0 + rng.next_f64() * 200.0).collect(),
        held_ms: vec![1_200],
        ..RevisionSample::default()
    };
    for n in [100usize, 1_000, 10_000] {
        let obs = Observation {
            now_ms: 0,
            window_ms: 120_000,
            canary: sample(&mut rng, n / 3),
            primary: sample(&mut rng, n),
            dlq_depth_max: 0,
        };
        let iters = 2_000_000 / n.max(1) as u32;
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(evaluate(&alarms, std::hint::black_box(&obs)));
        }
        let per = t.elapsed() / iters;
        println!(
            "evaluate (5 default alarms, {n} primary + {} canary timings): {per:?} per call",
            n / 3
        );
    }
    let v: Vec<f64> = (0..100_000).map(|_| rng.next_f64()).collect();
    let t = Instant::now();
    std::hint::black_box(percentile(&v, 95.0));
    println!("percentile of 100000 values: {:?}", t.elapsed());

    let fr = [AlarmSpec::FailureRatio {
        min_sample: 20,
        confidence: 0.99,
        consecutive_failures: 3,
    }];
    let mut rng = Rng::new(7);
    let windows = 5_000;
    let fp = (0..windows)
        .filter(|_| {
            let n = rng.range(100, 1000);
            one_window(&mut rng, &fr, n, 0.01, 3, 0.01)
        })
        .count();
    println!("healthy canary (1 % vs 1 %), one look per window of 100..1000 canary messages: {fp} false alarms in {windows} ({:.2} %)", fp as f64 * 100.0 / windows as f64);
    let runs = 2_000;
    let fp = (0..runs)
        .filter(|_| first_failure(&mut rng, &fr, 1500, 12, 0.01, 3, 0.01).is_some())
        .count();
    println!("healthy canary, 2-minute runs at 12.5 canary msg/s judged every second: {fp} of {runs} runs rolled back ({:.2} %)", fp as f64 * 100.0 / runs as f64);
    for (rate, max) in [
        (1.0, 100u64),
        (0.5, 1000),
        (0.2, 1000),
        (0.1, 3000),
        (0.05, 10_000),
    ] {
        let mut at: Vec<u64> = (0..1000)
            .map(|_| first_failure(&mut rng, &fr, max, 1, rate, 3, 0.01).unwrap_or(u64::MAX))
            .collect();
        at.sort();
        let missed = at.iter().filter(|&&x| x == u64::MAX).count();
        println!(
            "canary failing {:>3} % vs primary 1 %: caught after a median of {} canary messages (p90 {}, max {}), {missed} of 1000 missed within {max}; at 12.5 msg/s: median {:.1} s",
            rate * 100.0,
            at[500],
            at[900],
            at.iter().filter(|&&x| x != u64::MAX).max().copied().unwrap_or(0),
            at[500] as f64 / 12.5
        );
    }
}
