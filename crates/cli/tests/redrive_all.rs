//! `coalmine redrive --all` on an external SQS: with SQS's own message move task where the
//! endpoint has one (coalmine's queue served on its own, `coalmine queue serve`, as the
//! external SQS), and coalmine's journaled move where it has none (moto's server).
//!
//! A boto3 worker that fails every order naming a poison word (handing it back) sends those to
//! the DLQ; the redrive puts them back in the queue, where the worker receives — and fails —
//! each a second time: its log shows every poison order twice.

#[path = "support/moto.rs"]
mod moto;
#[path = "support/pyenv.rs"]
mod pyenv;
#[path = "support/sample.rs"]
mod sample;
#[path = "support/serve.rs"]
#[allow(dead_code)]
mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sample::*;
use serde_json::Value;

const POISON: &str = "poison";
const T: Duration = Duration::from_secs(180);

fn run_py() -> String {
    let python = pyenv::python_env(&pyenv::CURRENT);
    let worker = pyenv::python_dir().join("worker.py");
    format!("#!/bin/sh\nexport FAILURE_STYLE=return WORK_MS=20 FAIL_WORD={POISON}\nexec '{}' '{}'\n", python.display(), worker.display())
}

/// How often the worker failed each poison order, from the task logs.
fn poison_failures(rig: &Rig) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in log_lines(&rig.path().join(".coalmine/logs/tasks")).iter().filter(|l| l.starts_with("failed ")) {
        if let Some(order) = line.split_whitespace().find_map(|w| w.strip_prefix("order=")) {
            *out.entry(order.to_string()).or_default() += 1;
        }
    }
    out
}

/// Run the story against `endpoint` with `env` for coalmine; returns `redrive --all`'s answer.
fn story(endpoint: &str, env: Vec<(String, String)>) -> Value {
    let coalmine = PathBuf::from(env!("CARGO_BIN_EXE_coalmine"));
    let toml = coalmine_toml(1, 1, MANUAL_STEPS, "").replace("visibility_timeout = \"300s\"", &format!("visibility_timeout = \"30s\"\nendpoint = \"{endpoint}\""));
    let mut rig = Rig::new(&coalmine, &pyenv::python_dir().join("worker.py"), &toml);
    rig.env = env;
    rig.bootstrap(&run_py());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = sqs_client(endpoint, rig.path());
    let url = rt.block_on(client.get_queue_url().queue_name(APP).send()).expect("GetQueueUrl").queue_url.unwrap();
    for n in 0..5 {
        rt.block_on(client.send_message().queue_url(&url).message_body(format!("order {n} {POISON}")).send()).expect("send");
    }
    // Each fails once, and goes to the DLQ at its next receive (max_receive_count = 1).
    rig.wait_status("the five poison orders in the DLQ", T, |v| v["queue"]["dlq_visible"] == 5 && v["queue"]["visible"] == 0);
    assert!(poison_failures(&rig).values().all(|n| *n == 1), "{:?}", poison_failures(&rig));

    let out = rig.cli(&["redrive", "--all", "--output", "json"]);
    assert!(out.status.success(), "redrive: {}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    // Back in the queue, received and failed again: twice each in the log, in the DLQ again.
    wait_for(
        "every poison order failed a second time",
        T,
        || {
            let f = poison_failures(&rig);
            (f.len() == 5 && f.values().all(|n| *n == 2)).then_some(())
        },
        || format!("{:?}\n{}", poison_failures(&rig), tail(&rig.up_log(), 30)),
    );
    let events = rig.api_get("/events");
    assert!(events.to_string().contains("the whole DLQ back to the queue"), "the redrive is recorded: {events}");
    // Without --all it refuses, and says what the flag does.
    let out = rig.cli(&["redrive"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"), "{}", String::from_utf8_lossy(&out.stderr));
    answer
}

#[test]
#[ignore = "end-to-end: releases on the sample app and on moto's SQS; run with: cargo test --workspace -- --include-ignored"]
fn redrive_all_starts_a_message_move_task_where_sqs_has_them() {
    let data = tempfile::tempdir().unwrap();
    let queue = serve::serve(data.path(), &[]);
    let env = [("AWS_ACCESS_KEY_ID", "controller"), ("AWS_SECRET_ACCESS_KEY", "secret"), ("AWS_REGION", "us-east-1")];
    let answer = story(&queue.url, env.map(|(k, v)| (k.to_string(), v.to_string())).to_vec());
    assert!(answer["move_task"].as_str().is_some_and(|h| !h.is_empty()), "{answer}");
}

#[test]
#[ignore = "end-to-end: releases on the sample app and on moto's SQS; run with: cargo test --workspace -- --include-ignored"]
fn redrive_all_moves_the_messages_itself_where_sqs_has_no_move_tasks() {
    let moto = moto::Moto::start();
    let env = moto.client_env().into_iter().filter(|(k, _)| *k != "AWS_ENDPOINT_URL").map(|(k, v)| (k.to_string(), v)).collect();
    let answer = story(&moto.endpoint, env);
    assert_eq!(answer["moved"], 5, "{answer}");
    assert!(answer["move_task"].is_null(), "{answer}");
}
