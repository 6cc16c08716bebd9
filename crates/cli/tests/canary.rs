//! Canary analysis and the message-aware rollback, end to end: the real `coalmine up`, the
//! real sample worker (3 primary tasks failing 1 % of messages as noise, 1 canary task),
//! steady traffic through the AWS SDK, the queue's default 300 s visibility timeout and
//! DLQ after 1 receive. What happened to every message is read back from the tasks' logs
//! and the DLQ.

#[path = "support/sample.rs"]
mod sample;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sample::*;
use serde_json::Value;

const WORK_MS: u64 = 100;
const NOISE: f64 = 0.01;
/// Messages a second.
const RATE: f64 = 20.0;
const T: Duration = Duration::from_secs(120);

fn sample_app() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_coalmine")).parent().expect("coalmine has a folder");
        build_sample_app(dir, false)
    })
}

fn rig(steps: &str) -> Rig {
    Rig::new(Path::new(env!("CARGO_BIN_EXE_coalmine")), sample_app(), &coalmine_toml(3, 1, steps, OUR_ALARMS))
}

fn num(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// A canary failing `fail_rate` of its messages is rolled back; afterwards both services run
/// the primary's revision, nothing is lost, and every message the canary failed was redriven
/// and processed by the primary.
fn bad_canary_is_rolled_back(fail_rate: f64, within: Duration) {
    let mut rig = rig(MANUAL_STEPS);
    let v1 = rig.bootstrap(&run_sh(WORK_MS, NOISE, false));
    let traffic = Traffic::start(&rig, &rig.queue_url(APP), RATE);
    traffic.send_more(40);
    let v2 = rig.commit(&run_sh(WORK_MS, fail_rate, false), "a bad release");
    let v = rig.wait_status("the canary rolled back and back on the primary's revision", within, |v| {
        exec_status(v) == "RolledBack"
            && rollback(v).is_some_and(|r| r["canary_back_ms"].is_i64())
            && tasks_on(v, "canary", &v1)
            && service_steady(v, "canary")
    });
    let id = exec_id(&v);
    let reason = v["execution"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("alarm failure-ratio"), "rolled back by the failure-ratio alarm: {reason}");
    let rb = rollback(&v).unwrap().clone();
    assert_eq!(rb["revision"], v2.as_str());
    assert_eq!(rb["to_revision"], v1.as_str());
    assert!(rb["actor"].as_str().unwrap().starts_with("alarm:"), "{rb}");
    // Bad tasks get the 3 s rollback grace, not the deploy's; generous for a loaded machine.
    assert!(num(&rb, "canary_back_ms") < 60_000, "the canary left the bad revision {} ms after the decision", rb["canary_back_ms"]);
    // The traffic goes on for a while after the rollback, then everything must settle.
    traffic.send_more(40);
    let (sent, errors) = traffic.finish();
    assert!(errors.is_empty(), "every send acknowledged: {errors:?}");
    let out = rig.wait_settled(&sent, &[&v1], T);

    let v = rig.wait_status("the rollback report complete", T, |v| {
        exec_id(v) == id
            && rollback(v).is_some_and(|r| {
                r["dead_lettered"].as_i64() > Some(0) && r["redriven"] == r["dead_lettered"] && r["lost"] == 0
            })
    });
    let rb = rollback(&v).unwrap();
    eprintln!("sent {} messages; rollback report: {rb}", sent.len());
    assert_eq!(service_revision(&v, "primary"), v1);
    assert_eq!(service_revision(&v, "canary"), v1);
    assert!(tasks_on(&v, "primary", &v1) && tasks_on(&v, "canary", &v1));
    assert_eq!(num(rb, "lost"), 0);
    let failed_by_canary = out.failed_ids(&v2);
    assert!(!failed_by_canary.is_empty(), "the canary failed messages");
    assert!(num(rb, "received") >= num(rb, "failed") && num(rb, "failed") > 0, "report: {rb}");
    // The failures the queue saw end (handed back, expired) are no more than the canary
    // logged; the messages it still held when stopped (released) count as its failures too.
    let logged = Outcomes::count(&out.failed, &v2) as i64;
    let seen_end = num(rb, "returned") + num(rb, "expired");
    assert!(seen_end <= logged && logged <= num(rb, "failed"), "report {rb} against {logged} failures in the canary's log");
    assert_eq!(num(rb, "failed"), seen_end + num(rb, "released"), "{rb}");
    // Every message the canary failed was processed by the primary afterwards (or, rarely,
    // failed again by the primary's own noise and sits in the DLQ as the primary's).
    for m in &failed_by_canary {
        assert!(
            out.processed_by(m, &v1) || out.failed_by(m, &v1),
            "message {m} failed by the canary never reached the primary: {:?} {:?}",
            out.processed.get(m),
            out.failed.get(m)
        );
    }
    // The DLQ holds the primary's failures only.
    let dlq = rig.dlq_ids();
    let primary_failed: BTreeSet<String> =
        out.failed_ids(&v1).into_iter().filter(|m| !out.processed.contains_key(m)).collect();
    let only_canary: Vec<&String> = dlq.iter().filter(|m| !out.failed_by(m, &v1)).collect();
    assert!(only_canary.is_empty(), "messages failed by the canary only are still in the DLQ: {only_canary:?}");
    assert_eq!(dlq, primary_failed, "the DLQ holds exactly the primary's failures");
    assert_eq!(v["queue"]["dlq_visible"].as_u64(), Some(dlq.len() as u64));
    // Nothing lost: every message sent was processed, or is in the DLQ.
    let missing: Vec<&String> = sent.iter().filter(|m| !out.processed.contains_key(*m) && !dlq.contains(*m)).collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
}

#[test]
#[ignore = "end-to-end: whole releases of the sample app, built by nested cargo builds; run with: cargo test --workspace -- --include-ignored"]
fn canary_failing_every_message_is_rolled_back_and_its_messages_redriven() {
    bad_canary_is_rolled_back(1.0, Duration::from_secs(90));
}

#[test]
#[ignore = "end-to-end: whole releases of the sample app, built by nested cargo builds; run with: cargo test --workspace -- --include-ignored"]
fn canary_failing_a_fifth_of_messages_is_rolled_back_without_loss() {
    bad_canary_is_rolled_back(0.2, Duration::from_secs(150));
}

#[test]
#[ignore = "end-to-end: whole releases of the sample app, built by nested cargo builds; run with: cargo test --workspace -- --include-ignored"]
fn canary_crashing_at_start_fails_the_execution_without_loss() {
    let mut rig = rig(MANUAL_STEPS);
    let v1 = rig.bootstrap(&run_sh(WORK_MS, NOISE, false));
    let traffic = Traffic::start(&rig, &rig.queue_url(APP), RATE);
    traffic.send_more(20);
    rig.commit(&run_sh(WORK_MS, NOISE, true), "crashes at start");
    let v = rig.wait_status("the execution to end", T, |v| {
        exec_id(v) > 1 && matches!(exec_status(v), "Failed" | "RolledBack")
    });
    let reason = v["execution"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("circuit breaker") || reason.starts_with("alarm crashes"),
        "ended by the circuit breaker or the crashes alarm: {reason}"
    );
    let v = rig.wait_status("the canary back on the primary's revision", T, |v| {
        tasks_on(v, "canary", &v1) && service_steady(v, "canary") && service_revision(v, "canary") == v1
    });
    assert_eq!(service_revision(&v, "primary"), v1);
    traffic.send_more(20);
    let (sent, errors) = traffic.finish();
    assert!(errors.is_empty(), "{errors:?}");
    let out = rig.wait_settled(&sent, &[&v1], T);
    if let Some(rb) = rollback(&rig.status()) {
        assert_eq!(num(rb, "lost"), 0, "{rb}");
    }
    let dlq = rig.dlq_ids();
    let missing: Vec<&String> = sent.iter().filter(|m| !out.processed.contains_key(*m) && !dlq.contains(*m)).collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
}

#[test]
#[ignore = "end-to-end: whole releases of the sample app, built by nested cargo builds; run with: cargo test --workspace -- --include-ignored"]
fn healthy_canary_on_a_noisy_app_is_not_rolled_back_and_can_be_approved() {
    let mut rig = rig(MANUAL_STEPS);
    let v1 = rig.bootstrap(&run_sh(WORK_MS, NOISE, false));
    let traffic = Traffic::start(&rig, &rig.queue_url(APP), RATE);
    traffic.send_more(20);
    let v2 = rig.commit(&run_sh(WORK_MS, NOISE, false), "a good release");
    let v = rig.wait_status("the healthy canary awaiting approval", T, |v| waiting_for_approval(v) && service_steady(v, "canary"));
    let id = exec_id(&v);
    // Watch it under traffic: it must stay, and the analysis must have judged it on enough data.
    rig.watch_healthy_canary("noisy app", id, Duration::from_secs(30), 2 * T, || traffic.send_more(5));
    let v = rig.status();
    assert!(v["execution"]["rollbacks"].as_array().is_none_or(|r| r.is_empty()));
    assert!(v["execution"]["verdicts"].as_array().is_some_and(|x| x.len() >= 4), "every alarm was evaluated: {}", v["execution"]["verdicts"]);
    // And its own log shows the work (the traffic goes on, so this only waits for the log).
    wait_for("the canary's log to show 20 messages processed", T, || (Outcomes::count(&rig.outcomes().processed, &v2) >= 20).then_some(()), || tail(&rig.up_log(), 40));

    let out = rig.cli(&["approve", &id.to_string(), "-m", "numbers look fine"]);
    assert!(out.status.success(), "approve: {}", String::from_utf8_lossy(&out.stderr));
    let v = rig.wait_status("the release on both services", T, |v| {
        exec_id(v) == id && exec_status(v) == "Succeeded" && tasks_on(v, "primary", &v2) && service_steady(v, "primary")
    });
    assert_eq!(service_revision(&v, "canary"), v2);
    let (sent, errors) = traffic.finish();
    assert!(errors.is_empty(), "{errors:?}");
    let out = rig.wait_settled(&sent, &[&v1, &v2], T);
    let dlq = rig.dlq_ids();
    let missing: Vec<&String> = sent.iter().filter(|m| !out.processed.contains_key(*m) && !dlq.contains(*m)).collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
}

#[test]
#[ignore = "end-to-end: whole releases of the sample app, built by nested cargo builds; run with: cargo test --workspace -- --include-ignored"]
fn analysis_step_promotes_a_healthy_canary_by_itself() {
    let mut rig = rig(&auto_steps("10s"));
    let v1 = rig.bootstrap(&run_sh(WORK_MS, NOISE, false));
    let traffic = Traffic::start(&rig, &rig.queue_url(APP), RATE);
    traffic.send_more(20);
    let v2 = rig.commit(&run_sh(WORK_MS, NOISE, false), "promoted by its numbers");
    let v = rig.wait_status("the release promoted automatically", Duration::from_secs(180), |v| {
        exec_id(v) > 1 && exec_status(v) == "Succeeded" && service_revision(v, "primary") == v2
    });
    assert_ne!(v1, v2);
    let e = &v["execution"];
    assert_eq!(e["approvals"][0]["actor"], "analysis", "approved by the analysis: {}", e["approvals"]);
    let stages = e["stages"].as_array().unwrap();
    let analysis = stages.iter().find(|s| s["name"].as_str().unwrap().starts_with("Analysis")).expect("an analysis stage");
    assert_eq!(analysis["status"], "Succeeded");
    let (started, ended) = (num(analysis, "started_ms"), num(analysis, "finished_ms"));
    assert!(ended - started >= 10_000, "the analysis lasted its 10 s: {analysis}");
    let verdicts = e["verdicts"].as_array().unwrap();
    assert!(!verdicts.is_empty() && verdicts.iter().all(|x| x["outcome"] == "Pass"), "verdicts: {verdicts:?}");
    assert!(e["rollbacks"].as_array().unwrap().is_empty());
    let (sent, errors) = traffic.finish();
    assert!(errors.is_empty(), "{errors:?}");
    rig.wait_settled(&sent, &[&v1, &v2], T);
}

#[test]
#[ignore = "end-to-end: whole releases of the sample app, built by nested cargo builds; run with: cargo test --workspace -- --include-ignored"]
fn hung_canary_is_rolled_back_and_its_messages_come_back_without_the_visibility_timeout() {
    // The canary takes 10 minutes per message: it holds what it received. The queue's
    // visibility timeout is 300 s; the rollback must give those messages back at once.
    let mut rig = rig(MANUAL_STEPS);
    let v1 = rig.bootstrap(&run_sh(WORK_MS, NOISE, false));
    let traffic = Traffic::start(&rig, &rig.queue_url(APP), RATE);
    traffic.send_more(20);
    let v2 = rig.commit(&run_sh(600_000, 0.0, false), "hangs on every message");
    let v = rig.wait_status("the hung canary rolled back", T, |v| {
        exec_status(v) == "RolledBack" && tasks_on(v, "canary", &v1) && service_steady(v, "canary")
    });
    let rolled_back = Instant::now();
    let reason = v["execution"]["reason"].as_str().unwrap();
    // It holds ten messages: past the hold limit they count as failures, in a row with no
    // success, before the hung alarm's 30 s.
    assert!(
        reason.starts_with("alarm failure-ratio") || reason.starts_with("alarm hung"),
        "rolled back by the held messages (failure-ratio) or the hung alarm: {reason}"
    );
    traffic.send_more(20);
    let (sent, errors) = traffic.finish();
    assert!(errors.is_empty(), "{errors:?}");
    let out = rig.wait_settled(&sent, &[&v1], Duration::from_secs(100));
    assert!(
        rolled_back.elapsed() < Duration::from_secs(240),
        "everything settled {:?} after the rollback, well within the 300 s visibility timeout",
        rolled_back.elapsed()
    );
    let v = rig.wait_status("the rollback report complete", T, |v| {
        rollback(v).is_some_and(|r| r["released"].as_i64() > Some(0) && r["redriven"] == r["dead_lettered"])
    });
    let rb = rollback(&v).unwrap();
    assert_eq!(rb["revision"], v2.as_str());
    assert_eq!(num(rb, "lost"), 0, "{rb}");
    assert!(num(rb, "received") > 0 && num(rb, "received") <= 10 * 2, "the canary held its receives: {rb}");
    assert_eq!(Outcomes::count(&out.processed, &v2), 0, "the hung canary finished nothing");
    let dlq = rig.dlq_ids();
    let missing: Vec<&String> = sent.iter().filter(|m| !out.processed.contains_key(*m) && !dlq.contains(*m)).collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
    assert!(dlq.iter().all(|m| out.failed_by(m, &v1)), "the DLQ holds the primary's failures only");
}
