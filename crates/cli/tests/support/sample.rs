//! Canary scenarios with the real sample worker: an app folder whose git repository holds a
//! `run.sh` wrapper (the revision's behaviour: `FAIL_RATE=1 exec ./sample-app` ...) and a
//! buildspec that copies the already-built `sample-app` binary into the artifact; the real
//! `coalmine up`; steady traffic sent with the AWS SDK; and what happened to every message,
//! read back from the tasks' logs and the DLQ.
//!
//! Shared by the end-to-end tests (`tests/canary.rs`) and the benchmark
//! (`examples/canary_bench.rs`), so it depends on nothing only one of them has.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use serde_json::Value;

#[path = "common.rs"]
mod common;
pub use common::*;

pub const APP: &str = "orders";
pub const DLQ: &str = "orders-dlq";

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Build `sample-app` (and, with `also_coalmine`, the `coalmine` binary) in the profile of
/// `profile_dir` (`target/debug` or `target/release`) and return the sample-app's path.
pub fn build_sample_app(profile_dir: &Path, also_coalmine: bool) -> PathBuf {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "sample-app"]);
    if also_coalmine {
        cmd.args(["-p", "coalmine"]);
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo build -p sample-app");
    assert!(status.success(), "cargo build -p sample-app failed: {status}");
    let bin = profile_dir.join("sample-app");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// A revision's `run.sh`: the sample worker with `WORK_MS`, `FAIL_RATE` and, when `crash`,
/// `CRASH_AT_START` set.
pub fn run_sh(work_ms: u64, fail_rate: f64, crash: bool) -> String {
    let mut settings = vec![("FAIL_RATE", fail_rate.to_string())];
    if crash {
        settings.push(("CRASH_AT_START", "1".to_string()));
    }
    run_sh_with(work_ms, &settings)
}

/// A revision's `run.sh`: the sample worker with `WORK_MS` and any other settings
/// (`FAILURE_STYLE`, `FAIL_WORD`, `CRASH_AFTER` ...).
pub fn run_sh_with(work_ms: u64, settings: &[(&str, String)]) -> String {
    let mut s = format!("#!/bin/sh\nexport WORK_MS={work_ms}\n");
    for (k, v) in settings {
        s.push_str(&format!("export {k}='{v}'\n"));
    }
    s.push_str("exec ./sample-app\n");
    s
}

/// The alarms of the tests and the benchmark: ours, without the guidance's DLQ alarm (it
/// cannot tell the primary's failures from the canary's; the benchmark reports what it would
/// have done on the same run).
pub const OUR_ALARMS: &str = r#"
[[alarms]]
kind = "failure-ratio"
min_sample = 20
confidence = 0.99
consecutive_failures = 3

[[alarms]]
kind = "crashes"
threshold = 1

[[alarms]]
kind = "latency"
percentile = 95
factor = 2.0
min_sample = 20

[[alarms]]
kind = "hung"
factor = 10
min_ms = 30000
"#;

pub const MANUAL_STEPS: &str = r#"
[[steps]]
deploy = "canary"
timeout = "2m"

[[steps]]
approval = "manual"
timeout = "1h"

[[steps]]
deploy = "primary"
timeout = "2m"
"#;

pub fn auto_steps(analysis: &str) -> String {
    format!(
        r#"
[[steps]]
deploy = "canary"
timeout = "2m"

[[steps]]
analysis = "{analysis}"
promote = "auto"

[[steps]]
deploy = "primary"
timeout = "2m"
"#
    )
}

/// The queue keeps the guidance's settings: visibility timeout 300 s, DLQ after 1 receive.
pub fn coalmine_toml(primary_tasks: u32, canary_tasks: u32, steps: &str, alarms: &str) -> String {
    format!(
        r#"app = "{APP}"

[source]
repo = "repo"
branch = "main"
poll_interval = "200ms"

[run]
command = "./run.sh"
healthy_after = "1s"
stop_timeout = "5s"

[queue]
visibility_timeout = "300s"
max_receive_count = 1

[services.primary]
tasks = {primary_tasks}

[services.canary]
tasks = {canary_tasks}
{steps}
{alarms}
"#
    )
}

/// An app folder (`coalmine.toml`, a git repository `repo/`) and its `coalmine up`.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub coalmine: PathBuf,
    pub sample_app: PathBuf,
    pub up: Option<Child>,
    /// Extra environment of `coalmine up` (e.g. AWS credentials for an external SQS).
    pub env: Vec<(String, String)>,
}

impl Rig {
    pub fn new(coalmine: &Path, sample_app: &Path, toml: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("coalmine.toml"), toml).unwrap();
        let rig = Rig { dir, coalmine: coalmine.into(), sample_app: sample_app.into(), up: None, env: Vec::new() };
        let repo = rig.repo();
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "--quiet", "--initial-branch=main"]);
        git(&repo, &["config", "user.email", "dev@example.com"]);
        git(&repo, &["config", "user.name", "Dev"]);
        rig
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.path().join("repo")
    }

    /// Commit `run.sh` and a buildspec that copies the built sample-app beside it; returns
    /// the revision (the short commit id).
    pub fn commit(&self, run_sh: &str, message: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let repo = self.repo();
        std::fs::write(repo.join("run.sh"), run_sh).unwrap();
        std::fs::set_permissions(repo.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let buildspec = format!(
            "version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p out\n      - cp run.sh out/run.sh\n      - cp '{}' out/sample-app\nartifacts:\n  files:\n    - out/*\n  discard-paths: yes\n",
            self.sample_app.display()
        );
        std::fs::write(repo.join("buildspec.yml"), buildspec).unwrap();
        std::fs::write(repo.join("message.txt"), message).unwrap();
        git(&repo, &["add", "run.sh", "buildspec.yml", "message.txt"]);
        git(&repo, &["commit", "--quiet", "-m", message]);
        git(&repo, &["rev-parse", "HEAD"]).trim().chars().take(12).collect()
    }

    pub fn start(&mut self) {
        let log = std::fs::File::create(self.path().join("up.log")).unwrap();
        let child = Command::new(&self.coalmine)
            .args(["up", "--queue-port", "0", "--api-port", "0"])
            .current_dir(self.path())
            .env("COALMINE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start coalmine up");
        let pid = child.id() as u64;
        self.up = Some(child);
        wait_for("coalmine up to write up.json", Duration::from_secs(30), || {
            self.up_info().filter(|v| v["pid"].as_u64() == Some(pid)).map(|_| ())
        }, || self.up_log());
        wait_for("the API to answer", Duration::from_secs(30), || self.status_opt().map(|_| ()), || self.up_log());
    }

    fn up_info(&self) -> Option<Value> {
        let t = std::fs::read_to_string(self.path().join(".coalmine/up.json")).ok()?;
        serde_json::from_str(&t).ok()
    }

    /// The embedded queue's endpoint, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        self.up_info().and_then(|v| v["queue"].as_str().map(String::from)).expect("up.json names the queue endpoint")
    }

    /// GET a route of the running `up`'s API (`/api/v1` + `path`) with the app's token.
    pub fn api_get(&self, path: &str) -> Value {
        let api = self.up_info().and_then(|v| v["api"].as_str().map(String::from)).expect("up.json names the API");
        let token = std::fs::read_to_string(self.path().join(".coalmine/token")).expect("the API token");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let res = reqwest::Client::new()
                .get(format!("{}/api/v1{path}", api.trim_end_matches('/')))
                .bearer_auth(token.trim())
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert!(res.status().is_success(), "GET {path}: {}", res.status());
            res.json().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
        })
    }

    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/000000000000/{name}", self.endpoint())
    }

    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.path().join("up.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.up.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.coalmine).args(args).current_dir(self.path()).output().expect("run coalmine")
    }

    pub fn status_opt(&self) -> Option<Value> {
        status_json(&self.coalmine, self.path())
    }

    pub fn status(&self) -> Value {
        self.status_opt().unwrap_or_else(|| panic!("status failed\n{}", self.up_log()))
    }

    pub fn wait_status(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, timeout, || self.status_opt().filter(|v| pred(v)), || {
            format!(
                "last status: {}\n--- up.log (tail) ---\n{}",
                self.status_opt().map(|v| v.to_string()).unwrap_or_default(),
                tail(&self.up_log(), 60)
            )
        })
    }

    /// Watch the healthy canary of execution `id` awaiting approval while `more` keeps the
    /// traffic going: for at least `at_least`, and until its failure-ratio alarm has passed on a
    /// full sample (`min_sample` messages completed by the canary and by the primary). A loaded
    /// machine makes the tasks slower, so the watch lasts as long as that sample takes, up to
    /// `timeout`. At every look the canary must still be kept and no alarm may have failed.
    /// Returns the passing verdict.
    pub fn watch_healthy_canary(&self, label: &str, id: i64, at_least: Duration, timeout: Duration, mut more: impl FnMut()) -> Value {
        let start = Instant::now();
        loop {
            let v = self.status();
            assert!(exec_id(&v) == id && waiting_for_approval(&v), "the healthy canary ({label}) was not kept: {}", v["execution"]);
            let verdicts = v["execution"]["verdicts"].as_array().cloned().unwrap_or_default();
            assert!(verdicts.iter().all(|x| x["outcome"] != "Fail"), "{label}: an alarm failed on the healthy canary: {verdicts:?}");
            let ratio = verdicts.iter().find(|x| x["alarm"] == "failure-ratio").cloned().unwrap_or_default();
            let n = |k: &str| ratio["numbers"][k].as_f64().unwrap_or(0.0);
            let full = ratio["outcome"] == "Pass" && n("min_sample") > 0.0 && n("canary_n") >= n("min_sample") && n("primary_n") >= n("min_sample");
            if full && start.elapsed() >= at_least {
                return ratio;
            }
            assert!(
                start.elapsed() < timeout,
                "{label}: no passing failure-ratio verdict on a full sample after {timeout:?} of watching the healthy canary: {ratio}\n--- up.log (tail) ---\n{}",
                tail(&self.up_log(), 40)
            );
            more();
        }
    }

    /// Commit `run_sh` as the first release and wait until both services run it.
    pub fn bootstrap(&mut self, run_sh: &str) -> String {
        let rev = self.commit(run_sh, "first release");
        self.start();
        self.wait_status("the first release on both services", Duration::from_secs(120), |v| {
            exec_status(v) == "Succeeded"
                && service_revision(v, "primary") == rev
                && service_revision(v, "canary") == rev
                && service_steady(v, "primary")
                && service_steady(v, "canary")
        });
        rev
    }

    /// Every "processed"/"failed" line of every task log.
    pub fn outcomes(&self) -> Outcomes {
        Outcomes::scan(&self.path().join(".coalmine/logs/tasks"))
    }

    /// The message ids in the DLQ (read at the end: they are received, so they turn
    /// invisible there for 10 minutes; the DLQ has no consumer).
    pub fn dlq_ids(&self) -> BTreeSet<String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = sqs_client(&self.endpoint(), self.path());
        let url = self.queue_url(DLQ);
        rt.block_on(async {
            let mut ids = BTreeSet::new();
            loop {
                let out = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .visibility_timeout(600)
                    .wait_time_seconds(0)
                    .send()
                    .await
                    .expect("receive from the DLQ");
                let msgs = out.messages.unwrap_or_default();
                if msgs.is_empty() {
                    break;
                }
                ids.extend(msgs.into_iter().filter_map(|m| m.message_id));
            }
            ids
        })
    }

    /// Wait until every message `sent` has an end: processed by some task, or failed by a
    /// task of one of `kept` (revisions whose failures stay in the DLQ: the primary's noise),
    /// and nothing is left in the queue. Returns the outcomes then.
    pub fn wait_settled(&self, sent: &[String], kept: &[&str], timeout: Duration) -> Outcomes {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.outcomes();
            let open: Vec<&String> = sent.iter().filter(|id| !o.settled(id, kept)).collect();
            let empty = self.status_opt().is_some_and(|v| {
                let q = &v["queue"];
                q["visible"] == 0 && q["in_flight"] == 0 && q["delayed"] == 0
            });
            if open.is_empty() && empty {
                return o;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?}: {} of {} sent message(s) have no end, e.g. {:?}; queue {}\nthose messages' history: {:?}\n--- up.log (tail) ---\n{}",
                    open.len(),
                    sent.len(),
                    open.iter().take(5).collect::<Vec<_>>(),
                    self.status_opt().map(|v| v["queue"].to_string()).unwrap_or_default(),
                    open.iter().take(5).map(|id| (o.processed.get(*id), o.failed.get(*id))).collect::<Vec<_>>(),
                    tail(&self.up_log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every task of the service runs `rev` (and there is at least one).
pub fn tasks_on(v: &Value, name: &str, rev: &str) -> bool {
    service(v, name)["tasks"]
        .as_array()
        .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["revision"] == rev))
}

/// A client of `up`'s queue with the user's key, the documented way in: the `default` profile
/// of `.coalmine/credentials` in the app folder `app`.
pub fn sqs_client(endpoint: &str, app: &Path) -> Client {
    let path = app.join(".coalmine/credentials");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().trim_start_matches('=').trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
    };
    let (key, secret) = (field("aws_access_key_id"), field("aws_secret_access_key"));
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(key, secret, None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// Steady traffic: `rate` messages a second in batches every 100 ms, from its own thread,
/// until stopped. Keeps the id of every message the queue acknowledged.
/// One message in twenty (5 %) names a rush order: a release that mishandles the word fails
/// only those.
pub const RUSH_WORD: &str = "rush";

/// Whether order `n` is a rush order: one in twenty, scattered by a hash of `n`. Not every
/// twentieth: traffic sent in batches at a fixed pace and workers that take equally long settle
/// into a rhythm where each worker receives the same positions of every second, and a canary
/// could then never see one.
fn is_rush(n: u64) -> bool {
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) % 20 == 0
}

fn order_body(n: u64) -> String {
    if is_rush(n) {
        format!("order {n} at {} {RUSH_WORD}", now_ms())
    } else {
        format!("order {n} at {}", now_ms())
    }
}

/// The traffic pauses while the queue holds this many visible messages: on a loaded machine the
/// tasks (and an SQS emulator) fall behind a fixed rate, and a backlog growing without end only
/// slows everything further. What is judged is the releases, not how much the machine can take.
const MAX_BACKLOG: u64 = 200;

/// The queue's approximate number of visible messages.
async fn visible_messages(client: &Client, url: &str) -> Option<u64> {
    let a = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .ok()?;
    a.attributes()?.values().next()?.parse().ok()
}

/// Orders sent to the app's queue at `rate` a second from a thread of their own.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    ids: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(rig: &Rig, queue_url: &str, rate: f64) -> Traffic {
        let (endpoint, app) = (rig.endpoint(), rig.path().to_path_buf());
        let stop = Arc::new(AtomicBool::new(false));
        let ids = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, i, e) = (stop.clone(), ids.clone(), errors.clone());
        let url = queue_url.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let client = sqs_client(&endpoint, &app);
                let mut n: u64 = 0;
                // Messages due (at most a second's worth: a send that took long is not made up
                // for with a burst), and the queue's backlog as last read.
                let mut due = 0.0_f64;
                let mut last = Instant::now();
                let (mut backlog, mut backlog_read) = (0_u64, None::<Instant>);
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !s.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let now = Instant::now();
                    due = (due + now.duration_since(last).as_secs_f64() * rate).min(rate.max(10.0));
                    last = now;
                    if backlog_read.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                        backlog = visible_messages(&client, &url).await.unwrap_or(backlog);
                        backlog_read = Some(now);
                    }
                    if backlog >= MAX_BACKLOG {
                        due = 0.0;
                        continue;
                    }
                    while due >= 1.0 && !s.load(Ordering::SeqCst) {
                        let batch = (due as u64).min(10);
                        let entries: Vec<SendMessageBatchRequestEntry> = (0..batch)
                            .map(|k| {
                                SendMessageBatchRequestEntry::builder()
                                    .id(format!("m{}", n + k))
                                    .message_body(order_body(n + k))
                                    .build()
                                    .unwrap()
                            })
                            .collect();
                        n += batch;
                        due -= batch as f64;
                        match client.send_message_batch().queue_url(&url).set_entries(Some(entries)).send().await {
                            Ok(out) => {
                                i.lock().unwrap().extend(out.successful.into_iter().map(|ok| ok.message_id));
                                for f in out.failed {
                                    e.lock().unwrap().push(format!("{}: {}", f.code, f.message.unwrap_or_default()));
                                }
                            }
                            Err(err) => e.lock().unwrap().push(aws_sdk_sqs::error::DisplayErrorContext(&err).to_string()),
                        }
                    }
                }
            });
        });
        Traffic { stop, ids, errors, thread: Some(thread) }
    }

    pub fn sent(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    /// Wait until `more` further messages are sent: time passing with traffic. (It pauses while
    /// the backlog is deep, so this also waits for the tasks to catch up.)
    pub fn send_more(&self, more: usize) {
        let target = self.sent() + more;
        wait_for("the traffic to go on", Duration::from_secs(180), || (self.sent() >= target).then_some(()), || {
            format!("{} sent; errors: {:?}", self.sent(), self.errors.lock().unwrap())
        });
    }

    /// Stop sending; the ids of the messages sent, and the errors seen.
    pub fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("traffic thread");
        }
        (self.ids.lock().unwrap().clone(), self.errors.lock().unwrap().clone())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every line of every file under `dir` (the task logs, rotated ones included).
pub fn log_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                lines.extend(text.lines().map(str::to_string));
            }
        }
    }
    lines
}

/// What the tasks' logs say happened to each message: message id -> revisions that
/// processed (deleted) it, and revisions that failed it (handed it back).
#[derive(Debug, Default, Clone)]
pub struct Outcomes {
    pub processed: BTreeMap<String, Vec<String>>,
    pub failed: BTreeMap<String, Vec<String>>,
}

impl Outcomes {
    pub fn scan(dir: &Path) -> Outcomes {
        let mut o = Outcomes::default();
        for line in log_lines(dir) {
            let mut w = line.split_whitespace();
            let (Some(kind), Some(id), Some(rev)) = (w.next(), w.next(), w.next()) else { continue };
            let Some(rev) = rev.strip_prefix("revision=") else { continue };
            let map = match kind {
                "processed" => &mut o.processed,
                "failed" => &mut o.failed,
                _ => continue,
            };
            map.entry(id.to_string()).or_default().push(rev.to_string());
        }
        o
    }

    pub fn processed_by(&self, id: &str, rev: &str) -> bool {
        self.processed.get(id).is_some_and(|r| r.iter().any(|r| r == rev))
    }

    pub fn failed_by(&self, id: &str, rev: &str) -> bool {
        self.failed.get(id).is_some_and(|r| r.iter().any(|r| r == rev))
    }

    /// Processed by anyone, or failed by one of `kept` (then it waits in the DLQ).
    pub fn settled(&self, id: &str, kept: &[&str]) -> bool {
        self.processed.contains_key(id) || kept.iter().any(|r| self.failed_by(id, r))
    }

    /// Ids a revision failed.
    pub fn failed_ids(&self, rev: &str) -> BTreeSet<String> {
        self.failed.iter().filter(|(_, r)| r.iter().any(|r| r == rev)).map(|(id, _)| id.clone()).collect()
    }

    pub fn count(map: &BTreeMap<String, Vec<String>>, rev: &str) -> usize {
        map.values().map(|r| r.iter().filter(|r| *r == rev).count()).sum()
    }
}

/// The one rollback of the execution in `v`, once it has a result: the canary back off the
/// bad revision and nothing of it left to redrive.
pub fn rollback(v: &Value) -> Option<&Value> {
    v["execution"]["rollbacks"].as_array().and_then(|a| a.first())
}
