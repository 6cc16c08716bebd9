//! Figures for `coalmine send` and the sample worker against the embedded queue.
//!
//! ```sh
//! cargo build --release -p coalmine -p sample-app
//! cargo run --release -p sample-app --example bench
//! ```
//!
//! Binaries: `COALMINE_BIN` and `SAMPLE_APP_BIN`, else `coalmine` and `sample-app` beside
//! the folder of this example (`target/<profile>/`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;

fn bin(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/examples/bench -> target/<profile>/<name>
    let dir = exe.parent().and_then(|p| p.parent()).expect("target folder");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it (cargo build --release -p coalmine -p sample-app) or set {var}",
        path.display()
    );
    path
}

struct Killed(Vec<Child>);
impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn depth(client: &Client, url: &str) -> u64 {
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
    attrs
        .values()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

fn send(coalmine: &PathBuf, endpoint: &str, queue: &str, count: u32, batch: u32) -> (f64, f64) {
    let out = Command::new(coalmine)
        .args(["send", "--endpoint", endpoint, "--queue", queue, "--output", "json"])
        .args(["--count", &count.to_string(), "--batch", &batch.to_string()])
        .env("COALMINE_LOG", "warn")
        .output()
        .expect("coalmine send");
    assert!(out.status.success(), "coalmine send failed: {out:?}");
    let json = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        let key = format!("\"{name}\":");
        let start = json.find(&key).expect("field in the summary") + key.len();
        json[start..]
            .split([',', '}'])
            .next()
            .and_then(|v| v.trim().parse().ok())
            .expect("a number")
    };
    (field("seconds"), field("messages_per_second"))
}

/// Starts `tasks` workers and returns the seconds until the queue is empty.
async fn drain(
    app: &PathBuf,
    endpoint: &str,
    client: &Client,
    url: &str,
    queue: &str,
    tasks: usize,
    work_ms: u64,
) -> f64 {
    let started = Instant::now();
    let mut children = Killed(Vec::new());
    for t in 0..tasks {
        children.0.push(
            Command::new(app)
                .env("QUEUE", queue)
                .env("AWS_ENDPOINT_URL_SQS", endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", format!("bench-task-{t}"))
                .env("AWS_SECRET_ACCESS_KEY", "bench")
                .env("WORK_MS", work_ms.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("starting sample-app"),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while depth(client, url).await > 0 {
        assert!(Instant::now() < deadline, "the queue did not drain in 300 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let coalmine = bin("COALMINE_BIN", "coalmine");
    let app = bin("SAMPLE_APP_BIN", "sample-app");
    let data = std::env::temp_dir().join(format!("coalmine-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();

    let mut server = Command::new(&coalmine)
        .args(["queue", "serve", "--port", "0", "--data-dir"])
        .arg(&data)
        .env("COALMINE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("coalmine queue serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let _server = Killed(vec![server]);

    let client = Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
            .build(),
    );
    let url = client
        .create_queue()
        .queue_name("bench")
        .attributes(QueueAttributeName::VisibilityTimeout, "300")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    println!("coalmine send and sample-app against coalmine queue serve ({endpoint})");
    let (s, rate) = send(&coalmine, &endpoint, "bench", 100, 5);
    println!("send, the guidance's 100 batches of 5:     {s:.3} s, {rate:.0} msg/s");
    let t = drain(&app, &endpoint, &client, &url, "bench", 1, 0).await;
    println!("  drained by 1 task, WORK_MS=0:            {t:.3} s, {:.0} msg/s", 500.0 / t);

    let (s, rate) = send(&coalmine, &endpoint, "bench", 500, 10);
    println!("send, 500 batches of 10:                   {s:.3} s, {rate:.0} msg/s");
    let t = drain(&app, &endpoint, &client, &url, "bench", 1, 0).await;
    println!("  drained by 1 task, WORK_MS=0:            {t:.3} s, {:.0} msg/s", 5000.0 / t);

    send(&coalmine, &endpoint, "bench", 500, 10);
    let t = drain(&app, &endpoint, &client, &url, "bench", 4, 0).await;
    println!("  5000 drained by 4 tasks, WORK_MS=0:      {t:.3} s, {:.0} msg/s", 5000.0 / t);

    send(&coalmine, &endpoint, "bench", 100, 5);
    let t = drain(&app, &endpoint, &client, &url, "bench", 4, 1000).await;
    println!(
        "  500 drained by 4 tasks, WORK_MS=1000:    {t:.3} s (ideal ~{:.1} s: 10 at a time per task)",
        500.0 / 40.0
    );

    let _ = std::fs::remove_dir_all(&data);
}
