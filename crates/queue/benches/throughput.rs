//! End-to-end throughput of the broker with the official Rust SDK as the client.
//!
//! The server runs in a child process (this executable re-run with `COALMINE_BENCH_SERVE`),
//! so its CPU time and RSS are read from /proc apart from the client's. Prints:
//! messages/s end to end (sent, received, deleted; batches of 10, 100-byte bodies, default
//! durability), server and client CPU µs per message, p50/p99 send-to-receive latency at half
//! that load, and the server's RSS with 1M messages queued.
//!
//! Producers hold back while more than `MAX_BACKLOG` messages are queued, so the full-load
//! figures are a steady state (sent = received = deleted).
//!
//! `cargo bench -p coalmine-queue --bench throughput`; env: BENCH_SECS (10), BENCH_DURABILITY (commit|none), BENCH_PRODUCERS
//! (32), BENCH_CONSUMERS (32), BENCH_THREADS (8), BENCH_RSS_MESSAGES (1000000).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cpu_ticks(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 14 and 15 (utime, stime) are at 11 and 12 after the command name
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn cpu_us(pid: &str) -> f64 {
    cpu_ticks(pid) as f64 * 1_000_000.0 / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn serve_child() {
    let dir = std::env::var("COALMINE_BENCH_SERVE").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut cfg = coalmine_queue::BrokerConfig::new(&dir);
        if std::env::var("BENCH_DURABILITY").as_deref() == Ok("none") {
            cfg.durability = coalmine_queue::Durability::None;
        }
        let broker = coalmine_queue::Broker::open(cfg).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on http://{}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        broker.serve(listener).await.unwrap();
    });
}

fn client(url: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDBENCH", "secret", None, None, "bench"))
        .endpoint_url(url)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// Most messages sent and not yet deleted before producers wait.
const MAX_BACKLOG: u64 = 2_000;

struct Run {
    sent: u64,
    deleted: u64,
    secs: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
    latencies_us: Vec<u64>,
}

/// Producers send batches (at `rate` messages/s in total, or as fast as they can), consumers
/// receive and delete, for `secs`.
async fn run(c: &aws_sdk_sqs::Client, url: &str, server_pid: &str, producers: u64, consumers: u64, secs: u64, rate: Option<f64>) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let deleted = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let epoch = Instant::now();
    let (s0, c0) = (cpu_us(server_pid), cpu_us("self"));
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (c, url, stop, sent, deleted) = (c.clone(), url.to_string(), stop.clone(), sent.clone(), deleted.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(10.0 * producers as f64 / r)));
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                // keep the backlog bounded so that the figures are those of a steady state
                while sent.load(Ordering::Relaxed) > deleted.load(Ordering::Relaxed) + MAX_BACKLOG && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let now_us = epoch.elapsed().as_micros() as u64;
                let mut req = c.send_message_batch().queue_url(&url);
                for i in 0..10 {
                    let body = format!("{now_us:020}-{:079}", i);
                    req = req.entries(SendMessageBatchRequestEntry::builder().id(format!("m{i}")).message_body(body).build().unwrap());
                }
                if let Ok(out) = req.send().await {
                    sent.fetch_add(out.successful().len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    for _ in 0..consumers {
        let (c, url, stop, deleted, lat) = (c.clone(), url.to_string(), stop.clone(), deleted.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(out) = c.receive_message().queue_url(&url).max_number_of_messages(10).wait_time_seconds(1).send().await else { continue };
                if out.messages().is_empty() {
                    continue;
                }
                let now_us = epoch.elapsed().as_micros() as u64;
                let mut req = c.delete_message_batch().queue_url(&url);
                for (i, m) in out.messages().iter().enumerate() {
                    if let Some(t) = m.body().and_then(|b| b.get(..20)).and_then(|t| t.parse::<u64>().ok()) {
                        mine.push(now_us.saturating_sub(t));
                    }
                    req = req.entries(DeleteMessageBatchRequestEntry::builder().id(format!("d{i}")).receipt_handle(m.receipt_handle().unwrap()).build().unwrap());
                }
                if let Ok(out) = req.send().await {
                    deleted.fetch_add(out.successful().len() as u64, Ordering::Relaxed);
                }
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (d, s) = (deleted.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    let (s1, c1) = (cpu_us(server_pid), cpu_us("self"));
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let latencies_us = std::mem::take(&mut *lat.lock().unwrap());
    Run { sent: s, deleted: d, secs, server_cpu_us: s1 - s0, client_cpu_us: c1 - c0, latencies_us }
}

fn pct(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0
}

fn main() {
    if std::env::var("COALMINE_BENCH_SERVE").is_ok() {
        return serve_child();
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("COALMINE_BENCH_SERVE", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let pid = child.id().to_string();
    let (producers, consumers, threads, secs) = (env("BENCH_PRODUCERS", 32), env("BENCH_CONSUMERS", 32), env("BENCH_THREADS", 8), env("BENCH_SECS", 10));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads as usize).enable_all().build().unwrap();
    rt.block_on(async {
        let c = client(&url);
        let q = c.create_queue().queue_name("bench").send().await.unwrap().queue_url().unwrap().to_string();
        println!("server: child process, durability {}; client: aws-sdk-sqs, {producers} producers, {consumers} consumers, {threads} threads; batches of 10, 100-byte bodies", std::env::var("BENCH_DURABILITY").unwrap_or_else(|_| "commit (default)".into()));
        let r = run(&c, &q, &pid, producers, consumers, secs, None).await;
        let tput = r.deleted as f64 / r.secs;
        println!(
            "full load : {:.0} msg/s end to end (sent {:.0}/s), server CPU {:.1} µs/msg, client CPU {:.1} µs/msg, p50 {:.2} ms, p99 {:.2} ms",
            tput,
            r.sent as f64 / r.secs,
            r.server_cpu_us / r.deleted.max(1) as f64,
            r.client_cpu_us / r.deleted.max(1) as f64,
            pct(&mut r.latencies_us.clone(), 0.5),
            pct(&mut r.latencies_us.clone(), 0.99)
        );
        // drain what is left
        let _ = c.purge_queue().queue_url(&q).send().await;
        let q2 = c.create_queue().queue_name("bench-half").send().await.unwrap().queue_url().unwrap().to_string();
        let half = tput / 2.0;
        let mut r = run(&c, &q2, &pid, producers, consumers, secs, Some(half)).await;
        println!(
            "half load : target {:.0} msg/s, got {:.0} msg/s, server CPU {:.1} µs/msg, client CPU {:.1} µs/msg, send-to-receive p50 {:.2} ms, p99 {:.2} ms",
            half,
            r.deleted as f64 / r.secs,
            r.server_cpu_us / r.deleted.max(1) as f64,
            r.client_cpu_us / r.deleted.max(1) as f64,
            pct(&mut r.latencies_us, 0.5),
            pct(&mut r.latencies_us, 0.99)
        );
        // RSS with many messages queued
        let total = env("BENCH_RSS_MESSAGES", 1_000_000);
        let q3 = c.create_queue().queue_name("bench-rss").send().await.unwrap().queue_url().unwrap().to_string();
        let rss0 = rss_mib(child.id());
        let t = Instant::now();
        let s0 = cpu_us(&pid);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let (c, q3, next) = (c.clone(), q3.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(10, Ordering::Relaxed) < total {
                    let mut req = c.send_message_batch().queue_url(&q3);
                    for i in 0..10 {
                        req = req.entries(SendMessageBatchRequestEntry::builder().id(format!("m{i}")).message_body(format!("{:0100}", i)).build().unwrap());
                    }
                    req.send().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        let depth = c
            .get_queue_attributes()
            .queue_url(&q3)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        println!(
            "queued    : {} messages in {:.1} s ({:.0} sends/s, server CPU {:.1} µs/send); server RSS {:.0} MiB before, {:.0} MiB with them queued",
            depth.attributes().unwrap().values().next().unwrap(),
            secs,
            total as f64 / secs,
            (cpu_us(&pid) - s0) / total as f64,
            rss0,
            rss_mib(child.id())
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
