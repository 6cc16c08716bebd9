//! `coalmine proxy` as real processes: clients we did not write (the official Rust SDK, boto3
//! and the AWS CLI of today on the JSON protocol, and from before SQS moved to JSON on the query
//! protocol) talk through the proxy to `coalmine queue serve --verify-signatures`, which knows
//! only the proxy's credentials, not the app's; then the same against moto's server. The
//! telemetry reports are read from the telemetry queue as the controller would.
//!
//! The Python clients come from `target/pyenv/{current,legacy}` (`scripts/pyenv.sh` makes them;
//! `queue_clients.rs` describes them); moto from `target/pyenv/aws` (`support/moto.rs`).

mod support;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};
use coalmine_proxy::Report;
use support::moto::Moto;

/// Credentials the upstream knows: the proxy signs with these.
const UPSTREAM_KEY: &str = "AKIDPROXYUPSTREAM";
const UPSTREAM_SECRET: &str = "proxy-upstream-secret";
/// Credentials the app signs with: unknown to the upstream, so only a re-signed request passes.
const APP_KEY: &str = "AKIDAPPONLY";
const APP_SECRET: &str = "app-only-secret";
const REGION: &str = "us-east-1";
const APP: &str = "tiny";
const TELEMETRY: &str = "tiny-coalmine-telemetry";
/// Generous: the CI machine is a loaded 2-core box.
const DEADLINE: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("proxy-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a scratch folder");
    dir
}

/// The first stdout line of a child (its address), within `timeout`; the rest is drained.
fn first_line(child: &mut Child, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        for _ in lines {}
    });
    rx.recv_timeout(timeout).ok().flatten()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Environment without anything that would point an AWS client elsewhere.
fn clean_aws_env(cmd: &mut Command, dir: &Path) {
    let nowhere = dir.join("no-aws-config");
    cmd.env("AWS_CONFIG_FILE", &nowhere)
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION);
    for var in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "ECS_CONTAINER_METADATA_URI_V4",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "COALMINE_SERVICE",
        "COALMINE_REVISION",
        "COALMINE_TASK",
        "COALMINE_APP",
    ] {
        cmd.env_remove(var);
    }
}

/// `coalmine queue serve --verify-signatures`, knowing only the proxy's credentials.
struct Queue {
    child: Child,
    endpoint: String,
    dir: PathBuf,
}

impl Queue {
    fn start() -> Queue {
        let dir = scratch("queue");
        let creds = dir.join("credentials");
        fs::write(&creds, format!("{UPSTREAM_KEY} {UPSTREAM_SECRET}\n")).unwrap();
        let log = File::create(dir.join("queue.log")).unwrap();
        let mut child = Command::new(support::BIN)
            .args(["queue", "serve", "--port", "0", "--durability", "none", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--verify-signatures")
            .arg(&creds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start coalmine queue serve");
        let line = first_line(&mut child, DEADLINE).unwrap_or_else(|| panic!("the queue printed no address; log:\n{}", fs::read_to_string(dir.join("queue.log")).unwrap_or_default()));
        let endpoint = line.strip_prefix("listening on ").expect("listening on ...").trim().to_string();
        Queue { child, endpoint, dir }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `coalmine proxy`.
struct Proxy {
    child: Child,
    url: String,
    first: String,
    log: PathBuf,
}

struct ProxyOpts<'a> {
    upstream: &'a str,
    key: &'a str,
    secret: &'a str,
    identity: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    command: Vec<String>,
}

impl<'a> ProxyOpts<'a> {
    fn new(upstream: &'a str) -> ProxyOpts<'a> {
        ProxyOpts { upstream, key: UPSTREAM_KEY, secret: UPSTREAM_SECRET, identity: true, args: Vec::new(), env: Vec::new(), command: Vec::new() }
    }
}

impl Proxy {
    fn start(o: ProxyOpts) -> Proxy {
        let dir = scratch("proxy");
        let log = dir.join("proxy.log");
        let mut cmd = Command::new(support::BIN);
        cmd.args(["proxy", "--port", "0", "--upstream", o.upstream, "--app", APP, "--report-every", "200ms"]);
        if o.identity {
            cmd.args(["--service", "canary", "--revision", "c0ffee1", "--task", "canary-1"]);
        }
        cmd.args(&o.args);
        if !o.command.is_empty() {
            cmd.arg("--").args(&o.command);
        }
        clean_aws_env(&mut cmd, &dir);
        cmd.env("AWS_ACCESS_KEY_ID", o.key).env("AWS_SECRET_ACCESS_KEY", o.secret).env("COALMINE_LOG", "info,coalmine_proxy=debug");
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(File::create(&log).unwrap()).spawn().expect("start coalmine proxy");
        let first = first_line(&mut child, DEADLINE)
            .unwrap_or_else(|| panic!("the proxy printed no address; log:\n{}", fs::read_to_string(&log).unwrap_or_default()));
        let url = if first.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(&first).unwrap()["listening"].as_str().unwrap().to_string()
        } else {
            first.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {first:?}")).trim().to_string()
        };
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Proxy { child, url, first, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit.
    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_exit(&mut self.child, DEADLINE).unwrap_or_else(|| panic!("the proxy did not exit after SIGTERM; log:\n{}", self.log()))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(endpoint: &str, key: &str, secret: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::new()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(key, secret, None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

async fn create_queue(c: &aws_sdk_sqs::Client, name: &str, visibility: u32) -> String {
    c.create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("create {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
        .queue_url()
        .unwrap()
        .to_string()
}

/// Reports read from the telemetry queue, as the controller reads them.
struct Telemetry {
    client: aws_sdk_sqs::Client,
    url: String,
    seen: Vec<Report>,
}

impl Telemetry {
    async fn poll(&mut self) {
        let out = self.client.receive_message().queue_url(&self.url).max_number_of_messages(10).wait_time_seconds(1).send().await.expect("receive telemetry");
        for m in out.messages() {
            let report = Report::parse(m.body().unwrap_or_default()).unwrap_or_else(|e| panic!("a telemetry message that is no report ({e}): {:?}", m.body()));
            self.seen.push(report);
            self.client.delete_message().queue_url(&self.url).receipt_handle(m.receipt_handle().unwrap()).send().await.expect("delete telemetry");
        }
    }

    /// The newest report (highest seq) of `task`.
    fn latest(&self, task: &str) -> Option<&Report> {
        self.seen.iter().filter(|r| r.task == task).max_by_key(|r| r.seq)
    }

    /// Poll until the newest report of `task` satisfies `ok`; panic with the last one otherwise.
    async fn wait(&mut self, task: &str, what: &str, ok: impl Fn(&Report) -> bool, log: impl Fn() -> String) -> Report {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(r) = self.latest(task) {
                if ok(r) {
                    return r.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("no telemetry report of {task} with {what} within {DEADLINE:?}; newest: {:#?}\n--- proxy log\n{}", self.latest(task), log());
            }
            self.poll().await;
        }
    }

    /// Every failed id reported by `task`, with how it failed.
    fn failed(&self, task: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self.seen.iter().filter(|r| r.task == task).flat_map(|r| r.failed.iter().map(|f| (f.id.clone(), f.how.clone()))).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Receive (directly, from the upstream) everything visible now, with a deadline.
async fn receive_all(c: &aws_sdk_sqs::Client, url: &str, want: usize) -> Vec<Message> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        let out = c
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap_or_else(|e| panic!("receive: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)));
        got.extend(out.messages().iter().cloned());
    }
    got
}

fn ids(ms: &[Message]) -> Vec<String> {
    let mut v: Vec<String> = ms.iter().map(|m| m.message_id().unwrap().to_string()).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The whole life of a task with the official Rust SDK through the proxy: every action the
/// proxy observes, counted in the telemetry; upstream errors unchanged; on SIGTERM the messages
/// it holds are visible again at once (the queue's visibility timeout is 300 s).
async fn rust_sdk_story(upstream: &str, key: &str, secret: &str, log_upstream: impl Fn() -> String) {
    let direct = client(upstream, key, secret).await;
    let jobs = create_queue(&direct, &format!("jobs-{}", std::process::id()), 300).await;
    let telemetry_url = create_queue(&direct, TELEMETRY, 30).await;
    let mut telemetry = Telemetry { client: direct.clone(), url: telemetry_url, seen: Vec::new() };
    telemetry.poll().await; // what an earlier test left is not ours
    telemetry.seen.clear();

    let mut proxy = Proxy::start(ProxyOpts { key, secret, args: vec!["--hold-limit".into(), "5s".into()], ..ProxyOpts::new(upstream) });
    let app = client(&proxy.url, APP_KEY, APP_SECRET).await;

    // Send with message attributes: the SDK checks the MD5s of the upstream's answers.
    for i in 0..12 {
        app.send_message()
            .queue_url(&jobs)
            .message_body(format!("job {i} <&> é 😀"))
            .message_attributes("n", MessageAttributeValue::builder().data_type("Number").string_value(i.to_string()).build().unwrap())
            .send()
            .await
            .unwrap_or_else(|e| panic!("send through the proxy: {}\n--- proxy log\n{}", aws_sdk_sqs::error::DisplayErrorContext(&e), proxy.log()));
    }
    let mut got: Vec<Message> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < 12 {
        assert!(Instant::now() < deadline, "received {} of 12 through the proxy", got.len());
        let out = app
            .receive_message()
            .queue_url(&jobs)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap_or_else(|e| panic!("receive through the proxy: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)));
        got.extend(out.messages().iter().cloned());
    }
    let id = |m: &Message| m.message_id().unwrap().to_string();
    let rh = |m: &Message| m.receipt_handle().unwrap().to_string();
    let (deleted_batch, rest) = got.split_at(5);
    let (deleted_one, rest) = rest.split_at(1);
    let (returned_batch, rest) = rest.split_at(2);
    let (returned_one, held) = rest.split_at(1);
    let out = app
        .delete_message_batch()
        .queue_url(&jobs)
        .set_entries(Some(deleted_batch.iter().enumerate().map(|(i, m)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(rh(m)).build().unwrap()).collect()))
        .send()
        .await
        .expect("delete batch");
    assert_eq!(out.successful().len(), 5);
    app.delete_message().queue_url(&jobs).receipt_handle(rh(&deleted_one[0])).send().await.expect("delete");
    let out = app
        .change_message_visibility_batch()
        .queue_url(&jobs)
        .set_entries(Some(
            returned_batch
                .iter()
                .enumerate()
                .map(|(i, m)| ChangeMessageVisibilityBatchRequestEntry::builder().id(i.to_string()).receipt_handle(rh(m)).visibility_timeout(0).build().unwrap())
                .collect(),
        ))
        .send()
        .await
        .expect("hand back a batch");
    assert_eq!(out.successful().len(), 2);
    app.change_message_visibility().queue_url(&jobs).receipt_handle(rh(&returned_one[0])).visibility_timeout(0).send().await.expect("hand back one");
    app.change_message_visibility().queue_url(&jobs).receipt_handle(rh(&held[0])).visibility_timeout(600).send().await.expect("extend one");

    // An upstream error passes through unchanged: the app sees the upstream's code and message.
    let missing = format!("{}/000000000000/no-such-queue", upstream.trim_end_matches('/'));
    let through = app.get_queue_attributes().queue_url(&missing).send().await.expect_err("a missing queue");
    let direct_err = direct.get_queue_attributes().queue_url(&missing).send().await.expect_err("a missing queue");
    let (a, b) = (through.into_service_error(), direct_err.into_service_error());
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    assert_eq!((a.code(), a.message()), (b.code(), b.message()), "the error through the proxy differs from the upstream's");

    let returned_ids = sorted(returned_batch.iter().chain(returned_one).map(id).collect());
    let report = telemetry
        .wait(
            "canary-1",
            "received 12, deleted 6, returned 3, extended 1, held 3, over the limit 3",
            |r| r.received == 12 && r.deleted == 6 && r.returned == 3 && r.held == 3 && r.over_limit == 3,
            || proxy.log(),
        )
        .await;
    assert_eq!((report.service.as_str(), report.revision.as_str(), report.identity_source.as_str()), ("canary", "c0ffee1", "env"));
    assert_eq!(report.extended, 1);
    assert_eq!((report.expired, report.refused, report.deleted_unknown, report.handed_back), (0, 0, 0, 0));
    assert_eq!(report.processing_ms.count, 6, "one processing time per delete");
    assert_eq!(report.processing_ms.counts.iter().sum::<u64>(), 6);
    assert_eq!(report.upstream_errors, 1, "the missing queue");
    assert_eq!(report.app.as_deref(), Some(APP));
    assert_eq!(telemetry.failed("canary-1"), returned_ids.iter().map(|i| (i.clone(), "returned".to_string())).collect::<Vec<_>>());
    // 12 sends, at least 2 receives, a batch and a single delete, two hand-backs, one extension,
    // the missing queue.
    assert!(report.requests > 12 + 2 + 1 + 1 + 2 + 1, "{report:?}");

    // SIGTERM: the three held messages are made visible again at once.
    let status = proxy.terminate();
    assert!(status.success(), "the proxy exited with {status}; log:\n{}", proxy.log());
    let back = receive_all(&direct, &jobs, 6).await;
    let mut expect = returned_ids.clone();
    expect.extend(held.iter().map(id));
    assert_eq!(ids(&back), sorted(expect), "held and returned messages visible again; proxy log:\n{}\n--- upstream log\n{}", proxy.log(), log_upstream());
    let last = telemetry.wait("canary-1", "the final report", |r| r.kind == coalmine_proxy::telemetry::Kind::Final, || proxy.log()).await;
    assert_eq!((last.handed_back, last.held), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_through_the_proxy_to_coalmine_queue_with_signature_checks() {
    let queue = Queue::start();
    // The app's own credentials are refused by the upstream: only the re-signed requests pass.
    let refused = client(&queue.endpoint, APP_KEY, APP_SECRET).await.list_queues().send().await.expect_err("unknown key");
    assert_eq!(aws_sdk_sqs::error::ProvideErrorMetadata::code(&refused), Some("InvalidClientTokenId"));
    let log = queue.dir.join("queue.log");
    rust_sdk_story(&queue.endpoint, UPSTREAM_KEY, UPSTREAM_SECRET, || fs::read_to_string(&log).unwrap_or_default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the proxy with boto3, the AWS CLI or moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
async fn rust_sdk_through_the_proxy_to_moto() {
    let moto = Moto::start();
    rust_sdk_story(&moto.endpoint, support::moto::ACCESS_KEY_ID, support::moto::SECRET_ACCESS_KEY, || moto.log()).await;
}

/// Signed with the upstream's credentials, sent straight to it (what the proxy sends).
async fn signed_post(endpoint: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, Vec<u8>) {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let identity = aws_credential_types::Credentials::new(UPSTREAM_KEY, UPSTREAM_SECRET, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("sqs")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut all: Vec<(&str, &str)> = vec![("host", host)];
    all.extend_from_slice(headers);
    let url = format!("http://{host}/");
    let signable = SignableRequest::new("POST", &url, all.iter().copied(), SignableBody::Bytes(body.as_bytes())).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = reqwest::Client::new().post(&url).body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    for (k, v) in instructions.headers() {
        req = req.header(k, v);
    }
    raw(req).await
}

async fn raw(req: reqwest::RequestBuilder) -> (u16, String, Vec<u8>) {
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

/// The proxy answers with the upstream's bytes: the same request (one unsigned, through the
/// proxy; one signed, straight to the upstream) gets the same status, content type and body, in
/// both protocols, success and error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_the_upstreams_bytes() {
    let queue = Queue::start();
    let direct = client(&queue.endpoint, UPSTREAM_KEY, UPSTREAM_SECRET).await;
    let still = create_queue(&direct, "still", 45).await;
    create_queue(&direct, TELEMETRY, 30).await;
    let proxy = Proxy::start(ProxyOpts::new(&queue.endpoint));
    let json = [("content-type", "application/x-amz-json-1.0"), ("x-amz-target", "AmazonSQS.GetQueueAttributes")];
    let ok_body = format!(r#"{{"QueueUrl":"{still}","AttributeNames":["All"]}}"#);
    let missing_body = format!(r#"{{"QueueUrl":"{}/000000000000/missing","AttributeNames":["All"]}}"#, queue.endpoint);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let q_missing = "Action=GetQueueUrl&QueueName=missing&Version=2012-11-05";
    let q_ok = "Action=GetQueueUrl&QueueName=still&Version=2012-11-05";
    let http = reqwest::Client::new();
    for (headers, body) in [(&json[..], ok_body.as_str()), (&json[..], missing_body.as_str()), (&form[..], q_ok), (&form[..], q_missing)] {
        let mut req = http.post(format!("{}/", proxy.url)).body(body.to_string()).header("authorization", format!("AWS4-HMAC-SHA256 Credential={APP_KEY}/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=00"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let through = raw(req).await;
        let straight = signed_post(&queue.endpoint, headers, body).await;
        // The query protocol's answers carry a fresh RequestId each time; everything else is equal.
        let mask = |b: &[u8]| {
            let s = String::from_utf8_lossy(b).to_string();
            match (s.find("<RequestId>"), s.find("</RequestId>")) {
                (Some(a), Some(z)) => format!("{}{}", &s[..a], &s[z..]),
                _ => s,
            }
        };
        assert_eq!((through.0, &through.1), (straight.0, &straight.1), "status and content type for {body}");
        assert_eq!(mask(&through.2), mask(&straight.2), "body for {body}\n--- proxy log\n{}", proxy.log());
        if headers == &json[..] {
            assert_eq!(through.2, straight.2, "JSON bodies byte for byte");
        }
    }
}

/// The Python of a client environment (`current` or `legacy`), made first when missing.
fn pyenv(name: &str) -> PathBuf {
    use support::pyenv::{python_env, CURRENT, LEGACY};
    python_env(if name == "legacy" { &LEGACY } else { &CURRENT })
}

fn run_python(python: &Path, script: &str, env: &[(&str, &str)], args: &[&str], dir: &Path) -> String {
    let mut cmd = Command::new(python);
    cmd.arg(repo_root().join("tests/python").join(script)).args(args);
    clean_aws_env(&mut cmd, dir);
    cmd.env("AWS_ACCESS_KEY_ID", APP_KEY).env("AWS_SECRET_ACCESS_KEY", APP_SECRET).env("PYTHONUNBUFFERED", "1").env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start python");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child, Duration::from_secs(300));
    if status.is_none() {
        let _ = child.kill();
    }
    let (stdout, stderr) = (o.join().unwrap(), e.join().unwrap());
    assert!(status.is_some_and(|s| s.success()), "{script} failed ({status:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    stdout
}

/// The client test scripts of the embedded queue, run unchanged through the proxy: every action
/// of both protocols passes, re-signed, with the clients' own checks of the answers.
fn python_suite(env: &str, script: &str, protocol: &str) {
    let python = pyenv(env);
    let queue = Queue::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let direct = client(&queue.endpoint, UPSTREAM_KEY, UPSTREAM_SECRET).await;
        create_queue(&direct, TELEMETRY, 30).await;
    });
    let proxy = Proxy::start(ProxyOpts::new(&queue.endpoint));
    let dir = scratch("py");
    let out = run_python(&python, script, &[("AWS_ENDPOINT_URL", &proxy.url), ("COALMINE_EXPECT_PROTOCOL", protocol)], &[], &dir);
    assert!(out.contains(" passed, 0 failed"), "{out}\n--- proxy log\n{}", proxy.log());
}

#[test]
#[ignore = "end-to-end: the proxy with boto3, the AWS CLI or moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn boto3_json_through_the_proxy() {
    python_suite("current", "sqs_boto3.py", "json");
}

#[test]
#[ignore = "end-to-end: the proxy with boto3, the AWS CLI or moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn aws_cli_json_through_the_proxy() {
    python_suite("current", "sqs_awscli.py", "json");
}

#[test]
#[ignore = "end-to-end: the proxy with boto3, the AWS CLI or moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn boto3_query_through_the_proxy() {
    python_suite("legacy", "sqs_boto3.py", "query");
}

#[test]
#[ignore = "end-to-end: the proxy with boto3, the AWS CLI or moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn aws_cli_query_through_the_proxy() {
    python_suite("legacy", "sqs_awscli.py", "query");
}

#[derive(serde::Deserialize)]
struct Done {
    protocol: String,
    received: Vec<String>,
    deleted: Vec<String>,
    returned: Vec<String>,
    held: Vec<String>,
}

/// boto3 on the query protocol (form requests, XML answers) through the proxy: its receives,
/// batch and single deletes and hand-backs are counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the proxy with boto3, the AWS CLI or moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
async fn query_protocol_consumer_is_counted() {
    let python = pyenv("legacy");
    let queue = Queue::start();
    let direct = client(&queue.endpoint, UPSTREAM_KEY, UPSTREAM_SECRET).await;
    let jobs = create_queue(&direct, "jobs", 300).await;
    let telemetry_url = create_queue(&direct, TELEMETRY, 30).await;
    for i in 0..14 {
        direct.send_message().queue_url(&jobs).message_body(format!("m{i}")).send().await.unwrap();
    }
    let proxy = Proxy::start(ProxyOpts::new(&queue.endpoint));
    let dir = scratch("py");
    let out = run_python(
        &python,
        "proxy_consumer.py",
        &[("AWS_ENDPOINT_URL_SQS", &proxy.url), ("QUEUE_URL", &jobs)],
        &["--count", "14", "--delete-batch", "6", "--delete-one", "2", "--return-batch", "3", "--return-one", "1"],
        &dir,
    );
    let done: Done = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(done.protocol, "query");
    assert_eq!((done.received.len(), done.deleted.len(), done.returned.len(), done.held.len()), (14, 8, 4, 2));
    let mut telemetry = Telemetry { client: direct.clone(), url: telemetry_url, seen: Vec::new() };
    let r = telemetry
        .wait("canary-1", "received 14, deleted 8, returned 4, held 2", |r| r.received == 14 && r.deleted == 8 && r.returned == 4 && r.held == 2, || proxy.log())
        .await;
    assert_eq!(r.redelivered, 0);
    assert_eq!(r.processing_ms.count, 8);
    let failed: Vec<String> = telemetry.failed("canary-1").into_iter().map(|(id, how)| {
        assert_eq!(how, "returned");
        id
    }).collect();
    assert_eq!(failed, sorted(done.returned));
}

/// The proxy runs the app (boto3, JSON protocol) behind it; on SIGTERM it stops the app, then
/// makes the messages the app held visible again at once, not after the 300 s visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: the proxy with boto3, the AWS CLI or moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
async fn sigterm_hands_back_what_the_app_holds() {
    let python = pyenv("current");
    let queue = Queue::start();
    let direct = client(&queue.endpoint, UPSTREAM_KEY, UPSTREAM_SECRET).await;
    let jobs = create_queue(&direct, "jobs", 300).await;
    let telemetry_url = create_queue(&direct, TELEMETRY, 30).await;
    for i in 0..7 {
        direct.send_message().queue_url(&jobs).message_body(format!("m{i}")).send().await.unwrap();
    }
    let dir = scratch("app");
    let wait_file = dir.join("holding.json");
    let mut proxy = Proxy::start(ProxyOpts {
        env: vec![
            ("QUEUE_URL".into(), jobs.clone()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            // The app's own credentials; the proxy's are AWS_* of its own process.
        ],
        command: vec![
            "env".into(),
            format!("AWS_ACCESS_KEY_ID={APP_KEY}"),
            format!("AWS_SECRET_ACCESS_KEY={APP_SECRET}"),
            python.display().to_string(),
            repo_root().join("tests/python/proxy_consumer.py").display().to_string(),
            "--count".into(),
            "7".into(),
            "--delete-one".into(),
            "2".into(),
            "--wait-file".into(),
            wait_file.display().to_string(),
        ],
        ..ProxyOpts::new(&queue.endpoint)
    });
    let done: Done = support::wait_for(
        "the app to hold its messages",
        DEADLINE,
        || fs::read_to_string(&wait_file).ok().and_then(|s| serde_json::from_str(&s).ok()),
        || proxy.log(),
    );
    assert_eq!((done.protocol.as_str(), done.held.len()), ("json", 5));
    let status = proxy.terminate();
    assert!(status.success(), "the proxy exits with the app's status (0 on SIGTERM): {status}\n{}", proxy.log());
    let started = Instant::now();
    let back = receive_all(&direct, &jobs, 5).await;
    assert_eq!(ids(&back), sorted(done.held.clone()), "the held messages are visible again; proxy log:\n{}", proxy.log());
    assert!(started.elapsed() < Duration::from_secs(60), "at once, not after the visibility timeout");
    let mut telemetry = Telemetry { client: direct.clone(), url: telemetry_url, seen: Vec::new() };
    let last = telemetry.wait("canary-1", "the final report", |r| r.kind == coalmine_proxy::telemetry::Kind::Final, || proxy.log()).await;
    assert_eq!((last.received, last.deleted, last.handed_back, last.held), (7, 2, 5, 0));
}

/// Telemetry is fail-open: with no telemetry queue the app's requests pass all the same; the
/// reports lost are counted, and reported once the queue exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_loss_does_not_stop_forwarding_and_is_reported() {
    let queue = Queue::start();
    let direct = client(&queue.endpoint, UPSTREAM_KEY, UPSTREAM_SECRET).await;
    let jobs = create_queue(&direct, "jobs", 300).await;
    let proxy = Proxy::start(ProxyOpts::new(&queue.endpoint));
    let app = client(&proxy.url, APP_KEY, APP_SECRET).await;
    app.send_message().queue_url(&jobs).message_body("x").send().await.expect("send through the proxy without telemetry");
    let got = receive_all(&app, &jobs, 1).await;
    app.delete_message().queue_url(&jobs).receipt_handle(got[0].receipt_handle().unwrap()).send().await.expect("delete");
    // Reports are being lost (every 200 ms) while the queue does not exist.
    support::wait_for("a lost report in the log", DEADLINE, || proxy.log().contains("telemetry report lost").then_some(()), || proxy.log());
    let telemetry_url = create_queue(&direct, TELEMETRY, 30).await;
    let mut telemetry = Telemetry { client: direct.clone(), url: telemetry_url, seen: Vec::new() };
    let r = telemetry.wait("canary-1", "reports lost counted", |r| r.telemetry_lost > 0 && r.received == 1 && r.deleted == 1, || proxy.log()).await;
    assert!(r.seq > r.telemetry_lost, "{r:?}");
}

/// Identity from the ECS task metadata endpoint version 4, served by a small local HTTP server
/// with answers shaped like the examples of the Amazon ECS Developer Guide ("Amazon ECS task
/// metadata v4 examples"): the container's own metadata at `${ECS_CONTAINER_METADATA_URI_V4}`,
/// the task's at `/task`. ECS itself is not here to ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_from_the_ecs_task_metadata_endpoint() {
    let own = r#"{"DockerId":"ea32192c8553fbff06c9340478a2ff089b2bb5646fb718b4ee206641c9086d66","Name":"coalmine-proxy","DockerName":"ecs-sample-app-7-coalmine-proxy-cca48e8dcadd97805600","Image":"111122223333.dkr.ecr.us-west-2.amazonaws.com/coalmine:0.1.0","ImageID":"sha256:d691691e9652791a60114e67b365688d20d19940dde7c4736ea30e660d8d3553","Labels":{"com.amazonaws.ecs.cluster":"default","com.amazonaws.ecs.container-name":"coalmine-proxy","com.amazonaws.ecs.task-arn":"arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c","com.amazonaws.ecs.task-definition-family":"sample-app","com.amazonaws.ecs.task-definition-version":"7"},"DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Limits":{"CPU":10,"Memory":128},"CreatedAt":"2020-10-02T00:15:07.620912337Z","StartedAt":"2020-10-02T00:15:08.062559351Z","Type":"NORMAL","Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.2.106"]}]}"#;
    let task = r#"{"Cluster":"default","TaskARN":"arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c","Family":"sample-app","Revision":"7","ServiceName":"sample-app-canary","DesiredStatus":"RUNNING","KnownStatus":"RUNNING","PullStartedAt":"2020-10-02T00:43:06.202617438Z","PullStoppedAt":"2020-10-02T00:43:06.31288465Z","AvailabilityZone":"us-west-2d","LaunchType":"FARGATE","Containers":[{"DockerId":"598cba581fe3f939459eaba1e071d5c93bb2c49b7d1ba7db6bb19deeb70d8e38","Name":"~internal~ecs~pause","DockerName":"ecs-sample-app-7-internalecspause-e8e6b2b8bfc3f4d3b201","Image":"amazon/amazon-ecs-pause:0.1.0","ImageID":"","Labels":{"com.amazonaws.ecs.cluster":"default"},"DesiredStatus":"RESOURCES_PROVISIONED","KnownStatus":"RESOURCES_PROVISIONED","Type":"CNI_PAUSE"},{"DockerId":"ee08638adaaf009d78c248913f629e38299471d45fe7dc944d1039077e3424ca","Name":"app","DockerName":"ecs-sample-app-7-app-a0e0d8a2bbb2d0a9bd01","Image":"111122223333.dkr.ecr.us-west-2.amazonaws.com/sample-app:4f1e2d3","ImageID":"sha256:2ae34abc2ed0a22e280d17e13f9c01aaf725688b09b7a1525d1a2750e2c0d1de","Labels":{"com.amazonaws.ecs.cluster":"default","com.amazonaws.ecs.container-name":"app","coalmine.service":"canary"},"DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Limits":{"CPU":0,"Memory":0},"Type":"NORMAL"},{"DockerId":"ea32192c8553fbff06c9340478a2ff089b2bb5646fb718b4ee206641c9086d66","Name":"coalmine-proxy","Image":"111122223333.dkr.ecr.us-west-2.amazonaws.com/coalmine:0.1.0","Labels":{},"Type":"NORMAL"}],"Limits":{"CPU":0.25,"Memory":512}}"#;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        // Two requests: the container's metadata and the task's.
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = if path.ends_with("/task") { task } else { own };
            write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
        }
    });
    let queue = Queue::start();
    let direct = client(&queue.endpoint, UPSTREAM_KEY, UPSTREAM_SECRET).await;
    let telemetry_url = create_queue(&direct, TELEMETRY, 30).await;
    let proxy = Proxy::start(ProxyOpts {
        identity: false,
        args: vec!["--output".into(), "json".into()],
        env: vec![("ECS_CONTAINER_METADATA_URI_V4".into(), format!("http://127.0.0.1:{port}/v4/ea32192c8553fbff06c9340478a2ff089b2bb5646fb718b4ee206641c9086d66"))],
        ..ProxyOpts::new(&queue.endpoint)
    });
    server.join().unwrap();
    let first: serde_json::Value = serde_json::from_str(&proxy.first).unwrap();
    assert_eq!(first["service"], "canary", "the coalmine.service label wins over the ECS service name");
    assert_eq!(first["revision"], "4f1e2d3", "the app container's image tag");
    assert_eq!(first["task"], "158d1c8083dd49d6b527399fd6414f5c");
    assert_eq!(first["identity_source"], "ecs");
    let mut telemetry = Telemetry { client: direct, url: telemetry_url, seen: Vec::new() };
    let r = telemetry.wait("158d1c8083dd49d6b527399fd6414f5c", "a report", |_| true, || proxy.log()).await;
    assert_eq!((r.service.as_str(), r.revision.as_str(), r.identity_source.as_str()), ("canary", "4f1e2d3", "ecs"));
}

/// Without an identity the proxy refuses to start and says how to give one.
#[test]
fn no_identity_is_a_clear_error() {
    let dir = scratch("noid");
    let mut cmd = Command::new(support::BIN);
    cmd.args(["proxy", "--port", "0", "--upstream", "http://127.0.0.1:9", "--app", APP]);
    clean_aws_env(&mut cmd, &dir);
    let out = cmd.env("AWS_ACCESS_KEY_ID", "a").env("AWS_SECRET_ACCESS_KEY", "b").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("COALMINE_SERVICE, COALMINE_REVISION, COALMINE_TASK not set") && err.contains("ECS_CONTAINER_METADATA_URI_V4"), "{err}");
}
