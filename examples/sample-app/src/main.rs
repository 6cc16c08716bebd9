//! sample-app: a queue worker built on the official AWS SDK for Rust.
//!
//! It long-polls an SQS queue (20 s, up to 10 messages), works on the messages of one
//! receive concurrently, logs one line per message, deletes what succeeded and hands what
//! failed straight back to the queue (visibility timeout 0) so that it is redelivered or
//! dead-lettered at once. On SIGTERM (or SIGINT) it stops receiving, finishes the messages
//! it holds, deletes them and exits 0.
//!
//! Configuration, all from the environment:
//! - `QUEUE_URL`, or `QUEUE` (a queue name, resolved with GetQueueUrl);
//! - the standard AWS variables (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL_SQS` ...),
//!   read by `aws_config::load_defaults`, so the same binary runs against Amazon SQS;
//! - `WORK_MS` (simulated work per message, default 1000), `FAIL_RATE` (0.0 to 1.0, the
//!   share of messages that fail, default 0), `CRASH_AT_START` (exit 1 at once when set);
//! - `FAILURE_STYLE`: `return` (default: a failed message goes back to the queue at once,
//!   ChangeMessageVisibility 0) or `leave` (it is not deleted and comes back, or goes to the
//!   DLQ, when its visibility timeout lapses — what the guidance's consumer and most workers do);
//! - `FAIL_WORD` (messages whose body contains it fail), `CRASH_AFTER` (exit 1 after this many
//!   messages);
//! - `COALMINE_REVISION`, `COALMINE_TASK`: printed on every line.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};
use aws_sdk_sqs::Client;
use tokio::sync::watch;

/// Long-poll wait, as the guidance's consumer.
const WAIT_TIME_SECONDS: i32 = 20;
/// The most messages SQS returns for one receive.
const MAX_MESSAGES: i32 = 10;

struct Settings {
    work: Duration,
    fail_rate: f64,
    /// Leave failed messages (do not delete them) instead of returning them at once.
    leave_failures: bool,
    fail_word: Option<String>,
    crash_after: u64,
    revision: String,
    task: String,
    random: RandomState,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let work_ms = match std::env::var("WORK_MS") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse::<u64>().map_err(|_| {
                format!("WORK_MS={v:?} is not a whole number of milliseconds; set e.g. WORK_MS=1000")
            })?,
            _ => 1000,
        };
        let fail_rate = match std::env::var("FAIL_RATE") {
            Ok(v) if !v.trim().is_empty() => {
                let rate = v.trim().parse::<f64>().map_err(|_| {
                    format!("FAIL_RATE={v:?} is not a number; set a share between 0.0 and 1.0")
                })?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!(
                        "FAIL_RATE={v:?} is outside 0.0..=1.0; set a share between 0.0 and 1.0"
                    ));
                }
                rate
            }
            _ => 0.0,
        };
        let leave_failures = match std::env::var("FAILURE_STYLE").unwrap_or_default().trim() {
            "" | "return" => false,
            "leave" => true,
            other => {
                return Err(format!(
                    "FAILURE_STYLE={other:?} is not a failure style; set `return` (hand failed \
                     messages back at once) or `leave` (let their visibility timeout lapse)"
                ))
            }
        };
        let crash_after = match std::env::var("CRASH_AFTER") {
            Ok(v) if !v.trim().is_empty() => v.trim().parse::<u64>().map_err(|_| {
                format!("CRASH_AFTER={v:?} is not a whole number of messages; set e.g. CRASH_AFTER=5")
            })?,
            _ => 0,
        };
        Ok(Settings {
            work: Duration::from_millis(work_ms),
            fail_rate,
            leave_failures,
            fail_word: std::env::var("FAIL_WORD").ok().filter(|w| !w.is_empty()),
            crash_after,
            revision: env_or("COALMINE_REVISION", "unknown"),
            task: env_or("COALMINE_TASK", "unknown"),
            random: RandomState::new(),
        })
    }

    /// Whether this attempt at this message fails, with probability `fail_rate`.
    fn should_fail(&self, message_id: &str, body: &str, nonce: u64) -> bool {
        if self.fail_word.as_ref().is_some_and(|w| body.contains(w.as_str())) {
            return true;
        }
        if self.fail_rate <= 0.0 {
            return false;
        }
        if self.fail_rate >= 1.0 {
            return true;
        }
        let mut h = self.random.build_hasher();
        h.write(message_id.as_bytes());
        h.write_u64(nonce);
        let draw = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        draw < self.fail_rate
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn crash_requested() -> bool {
    match std::env::var("CRASH_AT_START") {
        Ok(v) => !matches!(v.trim(), "" | "0" | "false"),
        Err(_) => false,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    if crash_requested() {
        eprintln!("sample-app: CRASH_AT_START is set: exiting with status 1");
        return ExitCode::from(1);
    }
    let settings = match Settings::from_env() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("sample-app: {e}");
            return ExitCode::from(2);
        }
    };

    let stop = match stop_signal() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("sample-app: cannot install the SIGTERM handler: {e}");
            return ExitCode::from(2);
        }
    };

    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    if config.region().is_none() {
        eprintln!("sample-app: no AWS region configured; set AWS_REGION (e.g. AWS_REGION=us-east-1)");
        return ExitCode::from(2);
    }
    let client = Client::new(&config);

    let queue_url = match resolve_queue_url(&client, stop.clone()).await {
        Ok(Some(url)) => url,
        Ok(None) => {
            println!("stopped before start");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sample-app: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "started queue={queue_url} revision={} task={} work_ms={} fail_rate={}",
        settings.revision,
        settings.task,
        settings.work.as_millis(),
        settings.fail_rate
    );

    let mut stop = stop;
    let mut nonce: u64 = 0;
    let mut handled: u64 = 0;
    loop {
        if settings.crash_after > 0 && handled >= settings.crash_after {
            eprintln!("sample-app: CRASH_AFTER={} messages reached: exiting with status 1", settings.crash_after);
            return ExitCode::from(1);
        }
        if *stop.borrow() {
            break;
        }
        let received = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = client
                .receive_message()
                .queue_url(&queue_url)
                .max_number_of_messages(MAX_MESSAGES)
                .wait_time_seconds(WAIT_TIME_SECONDS)
                .send() => r,
        };
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(err) => {
                eprintln!(
                    "receive from {queue_url} failed: {}; retrying in 1 s",
                    DisplayErrorContext(&err)
                );
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if messages.is_empty() {
            continue;
        }
        nonce += 1;
        handled += messages.len() as u64;
        handle(&client, &queue_url, &settings, messages, nonce).await;
    }
    println!(
        "stopped revision={} task={}",
        settings.revision, settings.task
    );
    ExitCode::SUCCESS
}

/// A channel that turns true on the first SIGTERM or SIGINT.
fn stop_signal() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => println!("SIGTERM: finishing the messages in hand, then exiting"),
            _ = int.recv() => println!("SIGINT: finishing the messages in hand, then exiting"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// The queue's URL: `QUEUE_URL`, or `QUEUE` resolved with GetQueueUrl (retried while the
/// endpoint is unreachable). `Ok(None)` when asked to stop before it was found.
async fn resolve_queue_url(
    client: &Client,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<String>, String> {
    if let Ok(url) = std::env::var("QUEUE_URL") {
        if !url.is_empty() {
            return Ok(Some(url));
        }
    }
    let name = match std::env::var("QUEUE") {
        Ok(n) if !n.is_empty() => n,
        _ => {
            return Err(
                "no queue given; set QUEUE to the queue's name or QUEUE_URL to its URL".to_string(),
            )
        }
    };
    loop {
        match client.get_queue_url().queue_name(&name).send().await {
            Ok(out) => {
                return out
                    .queue_url
                    .map(Some)
                    .ok_or_else(|| format!("GetQueueUrl for queue {name:?} returned no URL"))
            }
            Err(err) => {
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist())
                {
                    return Err(format!(
                        "queue {name:?} does not exist at the configured endpoint; create it \
                         (or start `coalmine up`, which does) or fix QUEUE / AWS_ENDPOINT_URL_SQS"
                    ));
                }
                eprintln!(
                    "GetQueueUrl for queue {name:?} failed: {}; retrying in 1 s",
                    DisplayErrorContext(&err)
                );
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Works on the messages of one receive concurrently, then deletes the successes in one
/// batch and returns the failures to the queue at once (or leaves them, `FAILURE_STYLE=leave`).
async fn handle(
    client: &Client,
    queue_url: &str,
    settings: &Arc<Settings>,
    messages: Vec<Message>,
    nonce: u64,
) {
    let mut work = tokio::task::JoinSet::new();
    for message in messages {
        let settings = Arc::clone(settings);
        work.spawn(async move {
            let started = Instant::now();
            tokio::time::sleep(settings.work).await;
            let id = message.message_id().unwrap_or("-");
            let ok = !settings.should_fail(id, message.body().unwrap_or(""), nonce);
            (message, ok, started.elapsed())
        });
    }

    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = work.join_next().await {
        let Ok((message, ok, took)) = joined else {
            continue;
        };
        let id = message.message_id().unwrap_or("-");
        if ok {
            println!(
                "processed {id} revision={} task={} ms={}",
                settings.revision,
                settings.task,
                took.as_millis()
            );
            succeeded.push(message);
        } else {
            println!(
                "failed {id} revision={} task={} ms={} error=simulated failure (FAIL_RATE={})",
                settings.revision,
                settings.task,
                took.as_millis(),
                settings.fail_rate
            );
            failed.push(message);
        }
    }

    if !succeeded.is_empty() {
        delete(client, queue_url, &succeeded).await;
    }
    if settings.leave_failures {
        // Left in flight: back (or to the DLQ) when the visibility timeout lapses.
        return;
    }
    for message in &failed {
        let (Some(id), Some(handle)) = (message.message_id(), message.receipt_handle()) else {
            continue;
        };
        if let Err(err) = client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await
        {
            eprintln!(
                "returning {id} to the queue failed: {}; it comes back after its visibility timeout",
                DisplayErrorContext(&err)
            );
        }
    }
}

async fn delete(client: &Client, queue_url: &str, messages: &[Message]) {
    let mut entries = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let Some(handle) = message.receipt_handle() else {
            continue;
        };
        match DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(handle)
            .build()
        {
            Ok(entry) => entries.push(entry),
            Err(e) => eprintln!("cannot build the delete entry: {e}"),
        }
    }
    for chunk in entries.chunks(MAX_MESSAGES as usize) {
        match client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(chunk.to_vec()))
            .send()
            .await
        {
            Ok(out) => {
                for f in out.failed() {
                    let id = f
                        .id()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| messages.get(i))
                        .and_then(|m| m.message_id())
                        .unwrap_or("-");
                    eprintln!(
                        "delete of {id} failed: {} {}; it will be delivered again",
                        f.code(),
                        f.message().unwrap_or("")
                    );
                }
            }
            Err(err) => eprintln!(
                "DeleteMessageBatch on {queue_url} failed: {}; these messages will be delivered again",
                DisplayErrorContext(&err)
            ),
        }
    }
}
