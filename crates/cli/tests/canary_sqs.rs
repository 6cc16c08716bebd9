//! The canary story on an SQS coalmine does not run: moto's server as the queue, every task
//! behind its own `coalmine proxy` (as ECS runs the sidecar), the judgement fed by the proxies'
//! reports on the telemetry queue, the rollback's messages handed back by the proxies and the
//! ones the bad release dead-lettered redriven selectively from the DLQ.
//!
//! The worker is the plain boto3 one (`tests/python/worker.py`) in both failure styles. One
//! `coalmine up` per style: a primary of 3 tasks failing 1 % as noise, a canary of 1; a release
//! that fails every message must be rolled back, a healthy one kept and approved. Nothing may be
//! lost: every order sent is processed in the end, or failed by a kept revision and left in
//! the DLQ. (Orders are followed by their body, not their message id: SQS gives a redriven
//! message a new id.)

#[path = "support/moto.rs"]
mod moto;
#[path = "support/pyenv.rs"]
mod pyenv;
#[path = "support/sample.rs"]
mod sample;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sample::*;


const RATE: f64 = 20.0;
const T: Duration = Duration::from_secs(240);
/// moto's account id in queue URLs.
const ACCOUNT: &str = "123456789012";

fn worker() -> PathBuf {
    pyenv::python_dir().join("worker.py")
}

fn run_py(style: &str, settings: &[(&str, &str)]) -> String {
    let python = pyenv::python_env(&pyenv::CURRENT);
    let mut s = format!("#!/bin/sh\nexport FAILURE_STYLE={style} WORK_MS=100\n");
    for (k, v) in settings {
        s.push_str(&format!("export {k}='{v}'\n"));
    }
    s.push_str(&format!("exec '{}' '{}'\n", python.display(), worker().display()));
    s
}

/// Order number -> revisions that processed it, and revisions that failed it, from the logs.
#[derive(Default, Debug)]
struct Orders {
    processed: BTreeMap<u64, Vec<String>>,
    failed: BTreeMap<u64, Vec<String>>,
}

fn orders(dir: &Path) -> Orders {
    let mut o = Orders::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            for line in std::fs::read_to_string(&p).unwrap_or_default().lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                let field = |k: &str| w.iter().find_map(|x| x.strip_prefix(k));
                let (Some(rev), Some(Ok(n))) = (field("revision="), field("order=").map(str::parse::<u64>)) else { continue };
                let map = match w.first() {
                    Some(&"processed") => &mut o.processed,
                    Some(&"failed") => &mut o.failed,
                    _ => continue,
                };
                map.entry(n).or_default().push(rev.to_string());
            }
        }
    }
    o
}

/// The order numbers of the messages in a queue (received for 10 minutes: read at the end,
/// once nobody else holds any of them).
fn orders_in(endpoint: &str, app: &Path, url: &str) -> BTreeSet<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = sqs_client(endpoint, app);
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let a = client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .expect("GetQueueAttributes");
            let held = a.attributes().and_then(|m| m.values().next()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if held == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{held} message(s) of {url} still held by someone");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut out = BTreeSet::new();
        loop {
            let r = client.receive_message().queue_url(url).max_number_of_messages(10).visibility_timeout(600).send().await.expect("receive");
            let msgs = r.messages.unwrap_or_default();
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                if let Some(n) = m.body.as_deref().and_then(|b| b.split_whitespace().nth(1)).and_then(|n| n.parse().ok()) {
                    out.insert(n);
                }
            }
        }
        out
    })
}

fn send_more(traffic: &Traffic, more: usize) {
    let target = traffic.sent() + more;
    wait_for("the traffic to go on", Duration::from_secs(60), || (traffic.sent() >= target).then_some(()), String::new);
}

fn story(style: &str) {
    let moto = moto::Moto::start();
    let coalmine = PathBuf::from(env!("CARGO_BIN_EXE_coalmine"));
    let toml = coalmine_toml(3, 1, MANUAL_STEPS, "")
        .replace("visibility_timeout = \"300s\"", &format!("visibility_timeout = \"60s\"\nendpoint = \"{}\"", moto.endpoint));
    let mut rig = Rig::new(&coalmine, &worker(), &toml);
    rig.env = moto.client_env().into_iter().filter(|(k, _)| *k != "AWS_ENDPOINT_URL").map(|(k, v)| (k.to_string(), v)).collect();
    let noisy = run_py(style, &[("FAIL_RATE", "0.01")]);
    let v1 = rig.bootstrap(&noisy);
    let (queue, dlq) = (format!("{}/{ACCOUNT}/{APP}", moto.endpoint), format!("{}/{ACCOUNT}/{DLQ}", moto.endpoint));
    let traffic = Traffic::start(&rig, &queue, RATE);
    send_more(&traffic, 60);

    // A release that fails every message: rolled back on the proxies' telemetry.
    let bad = rig.commit(&run_py(style, &[("FAIL_RATE", "1")]), "fails every message");
    let v = rig.wait_status(&format!("the failing release rolled back ({style})"), T, |v| {
        v["execution"]["revision"] == bad.as_str()
            && exec_status(v) == "RolledBack"
            && rollback(v).is_some_and(|r| r["canary_back_ms"].is_i64())
            && tasks_on(v, "canary", &v1)
            && service_steady(v, "canary")
    });
    let reason = v["execution"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("failure-ratio") || reason.contains("hung"), "{style}: rolled back by {reason:?}");
    eprintln!("{style}: the failing release: {reason}");
    assert_eq!(service_revision(&v, "primary"), v1, "the primary never left its revision");
    send_more(&traffic, 20);

    // A healthy release: kept under watch, then approved.
    let good = rig.commit(&run_py(style, &[("FAIL_RATE", "0.01")]), "a good release");
    let v = rig.wait_status(&format!("the healthy canary awaiting approval ({style})"), T, |v| {
        v["execution"]["revision"] == good.as_str() && waiting_for_approval(v) && service_steady(v, "canary")
    });
    let id = exec_id(&v);
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let v = rig.status();
        assert!(exec_id(&v) == id && waiting_for_approval(&v), "the healthy canary ({style}) was not kept: {}", v["execution"]);
        send_more(&traffic, 5);
    }
    // The judgement saw the canary's messages through its proxy.
    let judged = rig.api_get(&format!("/executions/{id}"));
    let ratio = judged["verdicts"].as_array().and_then(|v| v.iter().rev().find(|v| v["alarm"] == "failure-ratio")).cloned().unwrap_or_default();
    assert!(
        ratio["numbers"]["canary_n"].as_f64().unwrap_or(0.0) >= 20.0 && ratio["numbers"]["primary_n"].as_f64().unwrap_or(0.0) >= 20.0,
        "{style}: the canary was judged on its proxy's telemetry: {ratio}"
    );
    let out = rig.cli(&["approve", &id.to_string(), "-m", "numbers look fine"]);
    assert!(out.status.success(), "approve: {}", String::from_utf8_lossy(&out.stderr));
    rig.wait_status("the good release on both services", T, |v| {
        exec_id(v) == id && exec_status(v) == "Succeeded" && tasks_on(v, "primary", &good) && service_steady(v, "primary")
    });
    let (sent, errors) = traffic.finish();
    assert!(errors.is_empty(), "every send acknowledged: {errors:?}");
    let sent = sent.len() as u64;

    // The bad release's report: what it dead-lettered was redriven, nothing lost.
    let rb = wait_for(
        "the rollback report complete",
        T,
        || {
            let all = rig.api_get("/rollbacks");
            all.as_array()?.iter().find(|r| r["revision"] == bad.as_str()).cloned().filter(|r| r["lost"] == 0 && r["redriven"] == r["dead_lettered"])
        },
        || format!("{}\n--- up.log ---\n{}", rig.api_get("/rollbacks"), tail(&rig.up_log(), 40)),
    );
    eprintln!("{style}: rollback report {rb}");

    // Every order sent ends processed, or failed by a kept revision and in the DLQ.
    let dir = rig.path().join(".coalmine/logs/tasks");
    let deadline = Instant::now() + T;
    let (o, missing) = loop {
        let o = orders(&dir);
        let missing: Vec<u64> = (0..sent)
            .filter(|n| !o.processed.contains_key(n) && !o.failed.get(n).is_some_and(|r| r.iter().any(|r| *r == v1 || *r == good)))
            .collect();
        let depth = rig.status()["queue"].clone();
        let empty = depth["visible"] == 0 && depth["in_flight"] == 0;
        if (missing.is_empty() && empty) || Instant::now() > deadline {
            break (o, missing);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(missing.is_empty(), "{style}: {} of {sent} orders have no end, e.g. {:?}\n{}", missing.len(), &missing[..missing.len().min(10)], tail(&rig.up_log(), 40));
    // coalmine reads the DLQ too (and holds what it reads for a moment): stop it first.
    rig.stop();
    let in_dlq = orders_in(&moto.endpoint, rig.path(), &dlq);
    for n in 0..sent {
        if !o.processed.contains_key(&n) {
            assert!(in_dlq.contains(&n), "{style}: order {n} was neither processed nor kept in the DLQ: lost");
        }
    }
    for n in &in_dlq {
        assert!(
            o.failed.get(n).is_some_and(|r| r.iter().any(|r| *r == v1 || *r == good)),
            "{style}: order {n} is in the DLQ, but only the rolled-back release failed it: not redriven"
        );
    }
    assert!(o.failed.values().flatten().any(|r| *r == bad), "{style}: the bad release failed nothing");
}

#[test]
fn a_worker_that_leaves_failed_messages_on_sqs() {
    story("leave");
}

#[test]
fn a_worker_that_returns_failed_messages_on_sqs() {
    story("return");
}
