//! The canary scenarios with their numbers: the real `coalmine up`, the real sample worker
//! (3 primary tasks failing 1 % of messages as noise, 1 canary task), a steady 50 messages/s
//! through the AWS SDK, the queue's default 300 s visibility timeout and DLQ after 1 receive,
//! in both failure styles: `return` (a failed message is handed back at once) and `leave` (it
//! is not deleted: it comes back when its visibility timeout lapses).
//!
//!     cargo run --release -p coalmine --example canary_bench -- [--runs N] [--minutes M] [--rate R]
//!         [--scenarios fail-all,fail-20,fail-word,slow,hang,crash,crash-after,healthy]
//!         [--styles return,leave] [--default-alarms]
//!
//! `--default-alarms` runs with coalmine's default alarms (which include the guidance's DLQ
//! alarm) instead of ours without it.
//!
//! Prints, per scenario: how it ended, the time from the canary's first failure to the
//! rollback decision and to the canary's tasks running the primary's revision again, the
//! rollback report (received, failed, dead-lettered, released, redriven, lost), what the
//! logs and the DLQ say about every message sent, and beside it what the guidance's alarm
//! (DLQ ApproximateNumberOfMessagesVisible > 10, Maximum over 300 s, 1 period) would have done
//! on the same run. The healthy scenario runs N times for M minutes each.

#[path = "../tests/support/sample.rs"]
mod sample;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sample::*;
use serde_json::Value;

const WORK_MS: u64 = 100;
const NOISE: f64 = 0.01;
const GUIDANCE_THRESHOLD: u64 = 10;
const GUIDANCE_PERIOD_S: u64 = 300;

struct Args {
    runs: u32,
    minutes: f64,
    rate: f64,
    scenarios: Vec<String>,
    styles: Vec<String>,
    default_alarms: bool,
}

fn args() -> Args {
    let mut a = Args {
        runs: 2,
        minutes: 0.5,
        rate: 50.0,
        scenarios: KINDS.map(|k| k.key().to_string()).to_vec(),
        styles: vec!["return".into(), "leave".into()],
        default_alarms: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--default-alarms" {
            a.default_alarms = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--runs" => a.runs = v.parse().expect("--runs takes a whole number"),
            "--minutes" => a.minutes = v.parse().expect("--minutes takes a number"),
            "--rate" => a.rate = v.parse().expect("--rate takes messages per second"),
            "--scenarios" => a.scenarios = v.split(',').map(|s| s.trim().to_string()).collect(),
            "--styles" => a.styles = v.split(',').map(|s| s.trim().to_string()).collect(),
            other => panic!("unknown argument {other}; use --runs N --minutes M --rate R --scenarios {} --styles return,leave --default-alarms", KINDS.map(|k| k.key()).join(",")),
        }
    }
    a
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    FailAll,
    Fail20,
    FailWord,
    Slow,
    Hang,
    CrashAtStart,
    CrashAfter,
    Healthy,
}

const KINDS: [Kind; 8] =
    [Kind::FailAll, Kind::Fail20, Kind::FailWord, Kind::Slow, Kind::Hang, Kind::CrashAtStart, Kind::CrashAfter, Kind::Healthy];

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::FailAll => "fail-all",
            Kind::Fail20 => "fail-20",
            Kind::FailWord => "fail-word",
            Kind::Slow => "slow",
            Kind::Hang => "hang",
            Kind::CrashAtStart => "crash",
            Kind::CrashAfter => "crash-after",
            Kind::Healthy => "healthy",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::FailAll => "canary fails every message",
            Kind::Fail20 => "canary fails 20 % of messages",
            Kind::FailWord => "canary fails the messages naming a rush order (5 %)",
            Kind::Slow => "canary ten times slower",
            Kind::Hang => "canary hangs (never answers)",
            Kind::CrashAtStart => "canary crashes at start-up",
            Kind::CrashAfter => "canary crashes after 5 messages",
            Kind::Healthy => "healthy canary (primary's 1 % noise)",
        }
    }
    /// Goal for the decision, from the first failure (or the canary's start when it logs none).
    fn goal(self) -> Option<Duration> {
        Some(Duration::from_secs(match self {
            Kind::FailAll => 10,
            Kind::Fail20 => 60,
            Kind::FailWord => 180,
            Kind::Slow => 30,
            Kind::Hang => 35,
            Kind::CrashAtStart | Kind::CrashAfter => 5,
            Kind::Healthy => return None,
        }))
    }
    fn run_sh(self, style: &str) -> String {
        let s = |k: &'static str, v: &str| (k, v.to_string());
        let style = s("FAILURE_STYLE", style);
        let noise = s("FAIL_RATE", &NOISE.to_string());
        match self {
            Kind::FailAll => run_sh_with(WORK_MS, &[style, s("FAIL_RATE", "1")]),
            Kind::Fail20 => run_sh_with(WORK_MS, &[style, s("FAIL_RATE", "0.2")]),
            Kind::FailWord => run_sh_with(WORK_MS, &[style, noise, s("FAIL_WORD", RUSH_WORD)]),
            Kind::Slow => run_sh_with(WORK_MS * 10, &[style, noise]),
            Kind::Hang => run_sh_with(600_000, &[style]),
            Kind::CrashAtStart => run_sh_with(WORK_MS, &[style, s("CRASH_AT_START", "1")]),
            Kind::CrashAfter => run_sh_with(WORK_MS, &[style, noise, s("CRASH_AFTER", "5")]),
            Kind::Healthy => run_sh_with(WORK_MS, &[style, noise]),
        }
    }
}

struct Outcome {
    status: String,
    reason: String,
    rolled_back: bool,
    /// Unix ms.
    commit_ms: u64,
    first_failure_ms: Option<u64>,
    decision_ms: Option<u64>,
    canary_back_ms: Option<u64>,
    report: Option<Value>,
    sent: usize,
    processed: usize,
    in_dlq: usize,
    dlq_canary_only: usize,
    lost: usize,
    /// (unix ms, DLQ depth as the guidance would see it: visible + what we redrove).
    dlq: Vec<(u64, u64)>,
    events: Vec<String>,
}

fn canary_first_failure(rig: &Rig, rev: &str) -> Option<()> {
    let dir = rig.path().join(".coalmine/logs/tasks/canary");
    let needle = format!("revision={rev} ");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if text.lines().any(|l| (l.starts_with("failed ") && l.contains(&needle)) || l.contains("CRASH_AT_START") || l.contains("CRASH_AFTER=")) {
            return Some(());
        }
    }
    None
}

fn redriven(v: &Value) -> u64 {
    v["execution"]["rollbacks"].as_array().map(|a| a.iter().map(|r| r["redriven"].as_u64().unwrap_or(0)).sum()).unwrap_or(0)
}

fn run(coalmine: &Path, sample_app: &Path, kind: Kind, style: &str, rate: f64, healthy_for: Duration, alarms: &str) -> Outcome {
    let mut rig = Rig::new(coalmine, sample_app, &coalmine_toml(3, 1, MANUAL_STEPS, alarms));
    let v1 = rig.bootstrap(&Kind::Healthy.run_sh(style));
    let traffic = Traffic::start(&rig, &rig.queue_url(APP), rate);
    // Warm up: five seconds of traffic on the primary's revision.
    let warm = (rate * 5.0) as usize;
    wait_for("warm-up traffic", Duration::from_secs(60), || (traffic.sent() >= warm).then_some(()), String::new);
    let commit_ms = now_ms();
    let v2 = rig.commit(&kind.run_sh(style), kind.name());
    let limit = match kind {
        Kind::Healthy => healthy_for,
        _ => Duration::from_secs(300),
    };
    let started = Instant::now();
    let (mut first_failure_ms, mut canary_back_ms, mut decision_ms) = (None, None, None);
    let mut canary_started_ms = None;
    let mut dlq = Vec::new();
    let mut last: Value = Value::Null;
    loop {
        if first_failure_ms.is_none() && canary_first_failure(&rig, &v2).is_some() {
            first_failure_ms = Some(now_ms());
        }
        if let Some(v) = rig.status_opt() {
            let t = now_ms();
            if canary_started_ms.is_none() && service(&v, "canary")["tasks"].as_array().is_some_and(|ts| ts.iter().any(|x| x["revision"] == v2.as_str() && x["state"] == "running")) {
                canary_started_ms = Some(t);
            }
            let depth = v["queue"]["dlq_visible"].as_u64().unwrap_or(0) + redriven(&v);
            dlq.push((t, depth));
            let ended = matches!(exec_status(&v), "RolledBack" | "Failed") && exec_id(&v) > 1;
            if ended && decision_ms.is_none() {
                decision_ms = Some(
                    rollback(&v).and_then(|r| r["at_ms"].as_u64()).unwrap_or(t),
                );
            }
            // Back: every canary task is a running task of the primary's revision.
            let back = ended
                && tasks_on(&v, "canary", &v1)
                && service(&v, "canary")["tasks"].as_array().is_some_and(|ts| ts.iter().all(|t| t["state"] == "running"));
            if back && canary_back_ms.is_none() {
                canary_back_ms = Some(t);
            }
            let done = match kind {
                Kind::Healthy => ended || started.elapsed() >= limit,
                _ => canary_back_ms.is_some(),
            };
            last = v;
            if done {
                break;
            }
        }
        if started.elapsed() > limit + Duration::from_secs(if kind == Kind::Healthy { 0 } else { 1 }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Five more seconds of traffic, then everything must settle.
    let more = traffic.sent() + (rate * 5.0) as usize;
    wait_for("more traffic", Duration::from_secs(60), || (traffic.sent() >= more).then_some(()), String::new);
    let (sent, errors) = traffic.finish();
    assert!(errors.is_empty(), "sends failed: {errors:?}");
    let kept: Vec<&str> = if matches!(kind, Kind::Healthy) { vec![&v1, &v2] } else { vec![&v1] };
    let out = rig.wait_settled(&sent, &kept, Duration::from_secs(300));
    let v = if last["execution"]["rollbacks"].as_array().is_some_and(|a| !a.is_empty()) {
        rig.wait_status("the rollback report complete", Duration::from_secs(120), |v| {
            rollback(v).is_some_and(|r| r["redriven"] == r["dead_lettered"])
        })
    } else {
        rig.status()
    };
    dlq.push((now_ms(), v["queue"]["dlq_visible"].as_u64().unwrap_or(0) + redriven(&v)));
    let ids = rig.dlq_ids();
    let lost = sent.iter().filter(|m| !out.processed.contains_key(*m) && !ids.contains(*m)).count();
    let dlq_canary_only = ids.iter().filter(|m| !kept.iter().any(|r| out.failed_by(m, r))).count();
    let events = v["execution"]["events"]
        .as_array()
        .map(|a| a.iter().map(|e| format!("{} {} {}", e["at_ms"], e["kind"].as_str().unwrap_or(""), e["reason"].as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    Outcome {
        status: exec_status(&v).to_string(),
        reason: v["execution"]["reason"].as_str().unwrap_or("").to_string(),
        rolled_back: rollback(&v).is_some(),
        commit_ms,
        first_failure_ms: first_failure_ms.or(canary_started_ms),
        decision_ms,
        canary_back_ms,
        report: rollback(&v).cloned(),
        sent: sent.len(),
        processed: sent.iter().filter(|m| out.processed.contains_key(*m)).count(),
        in_dlq: ids.len(),
        dlq_canary_only,
        lost,
        dlq,
        events,
    }
}

fn secs(a: u64, b: u64) -> String {
    format!("{:.2} s", (b as f64 - a as f64) / 1000.0)
}

fn print(o: &Outcome, kind: Kind) {
    println!("  execution        {} — {}", o.status, o.reason);
    match o.first_failure_ms {
        Some(f) => println!("  first failure    {} after the commit", secs(o.commit_ms, f)),
        None => println!("  first failure    none seen in the canary's log"),
    }
    if let (Some(f), Some(d)) = (o.first_failure_ms, o.decision_ms) {
        let goal = kind.goal().map(|g| {
            let met = d.saturating_sub(f) <= g.as_millis() as u64;
            format!(" (goal {} s: {})", g.as_secs(), if met { "met" } else { "MISSED" })
        });
        println!("  decision         {} after the first failure (or the canary's start){}", secs(f, d), goal.unwrap_or_default());
    }
    if let (Some(f), Some(b)) = (o.first_failure_ms, o.canary_back_ms) {
        println!("  canary back      {} after the first failure (every canary task RUNNING the primary's revision)", secs(f, b));
    }
    if let Some(r) = &o.report {
        println!(
            "  rollback report  received {} failed {} (handed back {}, expired {}, held when stopped {}) dead-lettered {} redriven {} lost {} (decision → no bad task: {} ms)",
            r["received"], r["failed"], r["returned"], r["expired"], r["released"], r["dead_lettered"], r["redriven"], r["lost"], r["canary_back_ms"]
        );
    } else {
        println!("  rollback report  no rollback");
    }
    println!(
        "  messages         sent {} processed {} in DLQ {} (of them failed by the canary only: {}) lost {}",
        o.sent, o.processed, o.in_dlq, o.dlq_canary_only, o.lost
    );
    // The guidance's alarm on the same run.
    let base = o.first_failure_ms.unwrap_or(o.commit_ms);
    let at_commit = o.dlq.iter().find(|(t, _)| *t >= o.commit_ms).map(|(_, d)| *d).unwrap_or(0);
    let max = o.dlq.iter().map(|(_, d)| *d).max().unwrap_or(0);
    let crossing = o.dlq.iter().find(|(_, d)| *d > GUIDANCE_THRESHOLD);
    print!("  guidance alarm   DLQ depth {at_commit} at the commit, max {max}; ");
    match crossing {
        Some((t, d)) if *t <= o.commit_ms => println!(
            "already above {GUIDANCE_THRESHOLD} ({d}) at the commit from the primary's noise alone: it would fire whatever the canary does{}",
            if kind == Kind::Healthy { " (a false alarm on this healthy canary)" } else { "" }
        ),
        Some((t, d)) => println!(
            "depth {d} > {GUIDANCE_THRESHOLD} first {} {}; the alarm (Maximum, {GUIDANCE_PERIOD_S} s period, 1 period) reports at that period's end, up to {GUIDANCE_PERIOD_S} s later; a consumer that does not hand failures back (the guidance's) adds the {GUIDANCE_PERIOD_S} s visibility timeout{}",
            if *t >= base { "at" } else { "before the first failure, at" },
            if *t >= base { format!("{} after the first failure", secs(base, *t)) } else { secs(o.commit_ms, *t) + " after the commit" },
            if kind == Kind::Healthy { " — it cannot tell the primary's noise from the canary: a false alarm" } else { "" }
        ),
        None => println!("never above {GUIDANCE_THRESHOLD}: it would not fire"),
    }
}

fn main() {
    let a = args();
    let exe = std::env::current_exe().expect("own path");
    let profile: PathBuf = exe.parent().and_then(|p| p.parent()).expect("target/<profile>/examples").to_path_buf();
    let sample_app = build_sample_app(&profile, true);
    let coalmine = profile.join("coalmine");
    println!(
        "canary scenarios: primary 3 tasks failing {:.0} %, canary 1 task, {} messages/s, WORK_MS={WORK_MS}, visibility timeout 300 s, DLQ after 1 receive",
        NOISE * 100.0,
        a.rate
    );
    let alarms = if a.default_alarms {
        println!("alarms: coalmine's defaults (failure-ratio, crashes, latency, hung; the guidance's dlq-depth is opt-in)\n");
        ""
    } else {
        println!("alarms: failure-ratio (min sample 20, confidence 0.99, 3 in a row), crashes (1), latency (p95 x2, Mann-Whitney), hung (x10, 30 s)\n");
        OUR_ALARMS
    };
    for style in &a.styles {
        println!("#### failure style: {style}\n");
        for kind in KINDS.into_iter().filter(|k| *k != Kind::Healthy) {
            if !a.scenarios.iter().any(|s| s == kind.key()) {
                continue;
            }
            println!("== {} ({style})", kind.name());
            let o = run(&coalmine, &sample_app, kind, style, a.rate, Duration::ZERO, alarms);
            print(&o, kind);
            if std::env::var_os("CANARY_BENCH_EVENTS").is_some() {
                for e in &o.events {
                    println!("    event {e}");
                }
            }
            println!();
        }
        if !a.scenarios.iter().any(|s| s == "healthy") {
            continue;
        }
        let healthy_for = Duration::from_secs_f64(a.minutes * 60.0);
        println!("== {} ({style}) — {} run(s) of {:.1} min", Kind::Healthy.name(), a.runs, a.minutes);
        let mut rollbacks = 0;
        let mut guidance_fired = 0;
        for i in 1..=a.runs {
            let o = run(&coalmine, &sample_app, Kind::Healthy, style, a.rate, healthy_for, alarms);
            println!("-- run {i}");
            print(&o, Kind::Healthy);
            rollbacks += o.rolled_back as u32;
            guidance_fired += o.dlq.iter().any(|(_, d)| *d > GUIDANCE_THRESHOLD) as u32;
        }
        println!(
            "healthy ({style}): rolled back in {rollbacks} of {} run(s) by ours; the guidance's alarm would have fired in {guidance_fired} of {}\n",
            a.runs, a.runs
        );
    }
}
