//! The sample worker and `coalmine send`, end to end: the real `coalmine queue serve`, the
//! real `sample-app` binary (built here with `cargo build -p sample-app` if needed) and the
//! AWS SDK as the test's own client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;

const COALMINE: &str = env!("CARGO_BIN_EXE_coalmine");

/// The sample-app binary next to `coalmine`, built once per test run (same profile).
fn sample_app_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(COALMINE).parent().expect("coalmine has a folder");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "sample-app"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        // The same target folder as this test's, even when it was given by --target-dir.
        if let Some(target) = dir.parent().filter(|t| t.join("CACHEDIR.TAG").exists()) {
            cmd.arg("--target-dir").arg(target);
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build -p sample-app");
        assert!(status.success(), "cargo build -p sample-app failed: {status}");
        let bin = dir.join("sample-app");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

/// Lines a child wrote, collected by a thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(reader: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                sink.0.lock().unwrap().push(line);
            }
        });
        lines
    }
    fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn starting_with(&self, word: &str) -> Vec<String> {
        let prefix = format!("{word} ");
        self.snapshot()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }
}

/// `coalmine queue serve --port 0`, killed on drop.
struct QueueServer {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

impl QueueServer {
    fn start() -> QueueServer {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(COALMINE)
            .args(["queue", "serve", "--port", "0", "--data-dir"])
            .arg(data.path())
            .env("COALMINE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting coalmine queue serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let mut rest = String::new();
            while matches!(reader.read_line(&mut rest), Ok(n) if n > 0) {
                rest.clear();
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("coalmine queue serve printed no `listening on` line within 20 s");
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from queue serve: {line:?}"))
            .to_string();
        QueueServer {
            child,
            endpoint,
            _data: data,
        }
    }

    fn client(&self) -> Client {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("test-admin", "secret", None, None, "test"))
            .build();
        Client::from_conf(conf)
    }
}

impl Drop for QueueServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running sample-app, killed on drop.
struct App {
    child: Child,
    out: Lines,
    err: Lines,
}

impl App {
    fn start(queue: &QueueServer, name: &str, env: &[(&str, &str)]) -> App {
        let mut cmd = Command::new(sample_app_bin());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("QUEUE", name)
            .env("AWS_ENDPOINT_URL_SQS", &queue.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "task-1")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("COALMINE_SERVICE", "primary")
            .env("COALMINE_REVISION", "rev1")
            .env("COALMINE_TASK", "primary-1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting sample-app");
        let out = Lines::collect(child.stdout.take().unwrap());
        let err = Lines::collect(child.stderr.take().unwrap());
        App { child, out, err }
    }

    fn describe(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.out.snapshot().join("\n"),
            self.err.snapshot().join("\n")
        )
    }

    /// Waits for the process to exit, up to `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `name` (visibility timeout 300 s, as the guidance) and `name-dlq`, with a redrive
/// policy after one receive. Returns the queue's URL and the DLQ's URL.
async fn create_queues(client: &Client, name: &str) -> (String, String) {
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create the DLQ")
        .queue_url
        .unwrap();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("DLQ attributes")
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .expect("the DLQ's ARN");
    let url = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, "300")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"1"}}"#),
        )
        .send()
        .await
        .expect("create the queue")
        .queue_url
        .unwrap();
    (url, dlq_url)
}

/// (visible, in flight) of a queue.
async fn depth(client: &Client, url: &str) -> (u64, u64) {
    let attrs = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default();
    let get = |k: &QueueAttributeName| -> u64 {
        attrs.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (
        get(&QueueAttributeName::ApproximateNumberOfMessages),
        get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn send(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(COALMINE)
        .arg("send")
        .args(["--endpoint", endpoint])
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL_SQS")
        .output()
        .expect("running coalmine send")
}

fn distinct_ids(lines: &[String]) -> std::collections::BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the sample app, built by a nested cargo build; run with: cargo test --workspace -- --include-ignored"]
async fn every_message_sent_is_processed_once_and_deleted() {
    let queue = QueueServer::start();
    let client = queue.client();
    let (url, dlq_url) = create_queues(&client, "sample-app").await;

    // 4 batches of 5.
    let out = send(&queue.endpoint, &["--queue", "sample-app", "--count", "4", "--batch", "5"]);
    assert!(out.status.success(), "send failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sent 20 messages in 4 batches"), "{stdout}");
    assert_eq!(depth(&client, &url).await, (20, 0));

    let app = App::start(&queue, "sample-app", &[("WORK_MS", "10")]);
    let done = eventually(Duration::from_secs(30), || async {
        app.out.starting_with("processed").len() >= 20 && depth(&client, &url).await == (0, 0)
    })
    .await;
    assert!(done, "not all 20 processed and deleted in time; {}", app.describe());

    let processed = app.out.starting_with("processed");
    assert_eq!(processed.len(), 20, "{}", app.describe());
    assert_eq!(distinct_ids(&processed).len(), 20, "a message was processed twice");
    for line in &processed {
        assert!(
            line.contains(" revision=rev1 task=primary-1 ms="),
            "line without revision and task: {line}"
        );
    }
    assert!(app.out.starting_with("failed").is_empty());
    assert_eq!(depth(&client, &dlq_url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the sample app, built by a nested cargo build; run with: cargo test --workspace -- --include-ignored"]
async fn the_messages_of_one_receive_are_worked_on_concurrently() {
    let queue = QueueServer::start();
    let client = queue.client();
    let (url, _) = create_queues(&client, "work").await;
    let out = send(&queue.endpoint, &["--queue", "work", "--count", "1", "--batch", "10"]);
    assert!(out.status.success(), "send failed: {out:?}");

    // 10 messages of 1 s each: one after the other they would take 10 s.
    let started = Instant::now();
    let app = App::start(&queue, "work", &[("WORK_MS", "1000")]);
    let done = eventually(Duration::from_secs(20), || async {
        app.out.starting_with("processed").len() >= 10 && depth(&client, &url).await == (0, 0)
    })
    .await;
    assert!(done, "{}", app.describe());
    let took = started.elapsed();
    assert!(
        // One after the other they take 10 s or more, however idle the machine.
        took < Duration::from_secs(9),
        "10 messages of 1 s took {took:?}: not worked on concurrently; {}",
        app.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the sample app, built by a nested cargo build; run with: cargo test --workspace -- --include-ignored"]
async fn failed_messages_come_back_at_once_and_are_dead_lettered() {
    let queue = QueueServer::start();
    let client = queue.client();
    let (url, dlq_url) = create_queues(&client, "failing").await;
    let out = send(&queue.endpoint, &["--queue", "failing", "--count", "4", "--batch", "5"]);
    assert!(out.status.success(), "send failed: {out:?}");

    let app = App::start(&queue, "failing", &[("WORK_MS", "10"), ("FAIL_RATE", "1")]);
    // The visibility timeout is 300 s: only an immediate return gets them to the DLQ this fast.
    let done = eventually(Duration::from_secs(30), || async {
        depth(&client, &dlq_url).await == (20, 0) && depth(&client, &url).await == (0, 0)
    })
    .await;
    assert!(
        done,
        "failed messages did not reach the DLQ promptly: queue {:?}, dlq {:?}; {}",
        depth(&client, &url).await,
        depth(&client, &dlq_url).await,
        app.describe()
    );
    let failed = app.out.starting_with("failed");
    assert_eq!(distinct_ids(&failed).len(), 20, "{}", app.describe());
    assert!(app.out.starting_with("processed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the sample app, built by a nested cargo build; run with: cargo test --workspace -- --include-ignored"]
async fn sigterm_finishes_and_deletes_the_messages_in_hand_then_exits_0() {
    let queue = QueueServer::start();
    let client = queue.client();
    let (url, dlq_url) = create_queues(&client, "stopping").await;
    let out = send(&queue.endpoint, &["--queue", "stopping", "--count", "2", "--batch", "5"]);
    assert!(out.status.success(), "send failed: {out:?}");

    let mut app = App::start(&queue, "stopping", &[("WORK_MS", "3000")]);
    let holding = eventually(Duration::from_secs(20), || async {
        depth(&client, &url).await == (0, 10)
    })
    .await;
    assert!(holding, "the app never held the 10 messages; {}", app.describe());
    assert!(app.out.starting_with("processed").is_empty(), "work finished too early to test");

    let kill = Command::new("kill")
        .args(["-TERM", &app.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Well under the 20 s long poll: it must not start another receive.
    let status = app.wait_exit(Duration::from_secs(12));
    assert!(status.is_some(), "sample-app did not exit after SIGTERM; {}", app.describe());
    assert!(status.unwrap().success(), "exit status {status:?}; {}", app.describe());

    assert_eq!(
        distinct_ids(&app.out.starting_with("processed")).len(),
        10,
        "{}",
        app.describe()
    );
    assert_eq!(depth(&client, &url).await, (0, 0), "messages not deleted: {}", app.describe());
    assert_eq!(depth(&client, &dlq_url).await, (0, 0));
}

#[test]
#[ignore = "end-to-end: the sample app, built by a nested cargo build; run with: cargo test --workspace -- --include-ignored"]
fn crash_at_start_exits_1_at_once() {
    let queue = QueueServer::start();
    let mut app = App::start(&queue, "unused", &[("CRASH_AT_START", "1")]);
    let status = app.wait_exit(Duration::from_secs(10)).expect("sample-app kept running");
    assert_eq!(status.code(), Some(1), "{}", app.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_renders_bodies_and_reports_json() {
    let queue = QueueServer::start();
    let client = queue.client();
    let (url, _) = create_queues(&client, "bodies").await;
    let out = send(
        &queue.endpoint,
        &["--queue", "bodies", "--count", "3", "--batch", "2", "--body", "order {n} at {ts}", "--output", "json"],
    );
    assert!(out.status.success(), "send failed: {out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(summary["sent"], 6);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["batches"], 3);
    assert_eq!(summary["queue_url"], url.as_str());

    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bodies.len() < 6 && Instant::now() < deadline {
        let out = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            bodies.push(m.body().unwrap_or("").to_string());
        }
    }
    let got_all = bodies.len() == 6;
    assert!(got_all, "received only {bodies:?}");
    let mut numbers: Vec<u32> = bodies
        .iter()
        .map(|b| {
            let rest = b.strip_prefix("order ").expect(b);
            let (n, ts) = rest.split_once(" at ").expect(b);
            assert!(ts.ends_with('Z') && ts.contains('T'), "not a timestamp: {b}");
            n.parse().expect(b)
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn send_to_a_missing_queue_says_so_and_how_to_fix_it() {
    let queue = QueueServer::start();
    let out = send(&queue.endpoint, &["--queue", "nope", "--count", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"nope\" does not exist"), "{stderr}");
    assert!(stderr.contains("coalmine up") && stderr.contains("create-queue"), "{stderr}");
}

#[test]
fn send_takes_the_queue_and_endpoint_from_coalmine_toml() {
    let queue = QueueServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = queue.client();
    let (url, _) = rt.block_on(create_queues(&client, "from-spec"));
    let dir = tempfile::tempdir().unwrap();
    // The queue's name from `app`, the endpoint from `[queue] port`.
    let port = queue.endpoint.rsplit(':').next().unwrap();
    std::fs::write(
        dir.path().join("coalmine.toml"),
        format!("app = \"from-spec\"\n\n[queue]\nport = {port}\n"),
    )
    .unwrap();
    let out = Command::new(COALMINE)
        .args(["send", "--count", "2", "--batch", "3"])
        .current_dir(dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_ENDPOINT_URL_SQS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rt.block_on(depth(&client, &url)), (6, 0));

    // No coalmine.toml and no --queue: a clear error.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(COALMINE)
        .args(["send", "--endpoint", &queue.endpoint])
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--queue"), "{out:?}");
}

#[test]
fn send_to_an_unreachable_endpoint_fails_with_a_hint() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out = send(&format!("http://127.0.0.1:{port}"), &["--queue", "q", "--count", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the queue"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_keeps_to_the_rate_asked() {
    let queue = QueueServer::start();
    let client = queue.client();
    let (url, _) = create_queues(&client, "paced").await;
    // 40 messages at 100/s: batches of 5 start every 50 ms, the last one at 350 ms.
    let started = Instant::now();
    let out = send(
        &queue.endpoint,
        &["--queue", "paced", "--count", "8", "--batch", "5", "--rate", "100/s"],
    );
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took >= Duration::from_millis(350), "40 messages at 100/s took only {took:?}");
    assert_eq!(depth(&client, &url).await, (40, 0));
}
