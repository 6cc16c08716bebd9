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
//! The same figures are then measured against a second server with durability `none` (the
//! thinnest mode: answers without waiting for the store), as the peer to compare with.
//!
//! When `BENCH_CEILING_BIN` names a built `sqsceiling` (the thinnest in-memory SQS-shaped
//! server, ../shared/tools/sqsceiling; build it with `cargo build --release` in a copy), the
//! same figures are measured against it too (`--threads BENCH_CEILING_THREADS`, default 1, its
//! own default), and the broker's figures are printed as ratios to the ceiling's.
//!
//! `cargo bench -p coalmine-queue --bench throughput`; env: BENCH_SECS (10), BENCH_DURABILITY (commit|none),
//! BENCH_PEER (none|commit|off), BENCH_PRODUCERS (32), BENCH_CONSUMERS (32), BENCH_THREADS (8),
//! BENCH_RSS_MESSAGES (1000000), BENCH_SERVER_THREADS (server runtime workers, passed to BENCH_SERVER_BIN as `--threads`;
//! default 1, as `queue serve`),
//! BENCH_SERVER_BIN (run that binary as `queue serve` instead, e.g. target/release/coalmine),
//! BENCH_ROUNDS (4: full-load rounds of the broker and the ceiling side by side after the main
//! figures; 0 for none).

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
    // One worker, as `coalmine queue serve` runs by default (its --threads).
    let threads = std::env::var("BENCH_SERVER_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
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
    for p in 0..producers {
        let (c, url, stop, sent, deleted) = (c.clone(), url.to_string(), stop.clone(), sent.clone(), deleted.clone());
        tasks.push(tokio::spawn(async move {
            // at a set rate, the producers' ticks are spread evenly over the period: a steady
            // stream of batches, not all producers' batches at once
            let mut tick = rate.map(|r| {
                let period = Duration::from_secs_f64(10.0 * producers as f64 / r);
                tokio::time::interval_at(tokio::time::Instant::now() + period.mul_f64(p as f64 / producers as f64), period)
            });
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

/// Requests the server answered so far, by action (from its metrics endpoint).
fn requests_by_action(url: &str) -> std::collections::BTreeMap<String, u64> {
    use std::io::Read as _;
    let hostport = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let mut out = std::collections::BTreeMap::new();
    let Ok(mut s) = std::net::TcpStream::connect(&hostport) else { return out };
    let _ = write!(s, "GET {} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n", coalmine_queue::METRICS_PATH);
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    for l in text.lines().filter(|l| l.starts_with("coalmine_queue_requests_total{")) {
        let action = l.split("action=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string();
        let n: u64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        *out.entry(action).or_insert(0) += n;
    }
    out
}

/// Requests per message between two metric readings, e.g. "send 0.10 receive 0.12 delete 0.10".
fn per_message(before: &std::collections::BTreeMap<String, u64>, after: &std::collections::BTreeMap<String, u64>, msgs: u64) -> String {
    let d = |a: &str| (after.get(a).copied().unwrap_or(0) - before.get(a).copied().unwrap_or(0)) as f64 / msgs.max(1) as f64;
    format!("requests/msg: send {:.3}, receive {:.3}, delete {:.3}", d("SendMessageBatch"), d("ReceiveMessage"), d("DeleteMessageBatch"))
}

/// Start sqsceiling on a free port and wait until it accepts connections.
fn start_ceiling(bin: &str, threads: u64) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .args(["--addr", &format!("127.0.0.1:{port}"), "--threads", &threads.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("BENCH_CEILING_BIN={bin}: cannot run it ({e}); build sqsceiling first"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sqsceiling did not listen on 127.0.0.1:{port} within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    Server { child, url: format!("http://127.0.0.1:{port}"), pid, _dir: tempfile::tempdir().unwrap() }
}

struct Server {
    child: std::process::Child,
    url: String,
    pid: String,
    _dir: tempfile::TempDir,
}

/// Start the broker in a child process (this executable, or `BENCH_SERVER_BIN`, e.g.
/// target/release/coalmine, run as `queue serve`).
fn start_server(durability: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = match std::env::var("BENCH_SERVER_BIN") {
        Ok(bin) => {
            let mut c = Command::new(bin);
            c.args(["queue", "serve", "--port", "0", "--durability", durability, "--data-dir"]).arg(dir.path());
            if let Ok(threads) = std::env::var("BENCH_SERVER_THREADS") {
                c.args(["--threads", &threads]);
            }
            c
        }
        Err(_) => {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.env("COALMINE_BENCH_SERVE", dir.path()).env("BENCH_DURABILITY", durability);
            c
        }
    };
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("listening on ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the server exited before listening");
    }
    let url = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let pid = child.id().to_string();
    Server { child, url, pid, _dir: dir }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Figures {
    tput: f64,
    sent: f64,
    server_us: f64,
    client_us: f64,
    p50: f64,
    p99: f64,
    half_target: f64,
    half_tput: f64,
    half_server_us: f64,
    half_client_us: f64,
    half_p50: f64,
    half_p99: f64,
    requests: String,
    half_requests: String,
}

/// Full load, then half of that rate, against `server`.
async fn measure(c: &aws_sdk_sqs::Client, server: &Server, producers: u64, consumers: u64, secs: u64) -> Figures {
    let q = c.create_queue().queue_name("bench").send().await.unwrap().queue_url().unwrap().to_string();
    let m0 = requests_by_action(&server.url);
    let r = run(c, &q, &server.pid, producers, consumers, secs, None).await;
    let m1 = requests_by_action(&server.url);
    let requests = per_message(&m0, &m1, r.deleted);
    let tput = r.deleted as f64 / r.secs;
    let (mut l, n) = (r.latencies_us.clone(), r.deleted.max(1) as f64);
    let (p50, p99) = (pct(&mut l, 0.5), pct(&mut l, 0.99));
    let (sent, server_us, client_us) = (r.sent as f64 / r.secs, r.server_cpu_us / n, r.client_cpu_us / n);
    let _ = c.purge_queue().queue_url(&q).send().await;
    let q2 = c.create_queue().queue_name("bench-half").send().await.unwrap().queue_url().unwrap().to_string();
    let half = tput / 2.0;
    let m0 = requests_by_action(&server.url);
    let mut h = run(c, &q2, &server.pid, producers, consumers, secs, Some(half)).await;
    let half_requests = per_message(&m0, &requests_by_action(&server.url), h.deleted);
    let hn = h.deleted.max(1) as f64;
    Figures {
        tput,
        sent,
        server_us,
        client_us,
        p50,
        p99,
        half_target: half,
        half_tput: h.deleted as f64 / h.secs,
        half_server_us: h.server_cpu_us / hn,
        half_client_us: h.client_cpu_us / hn,
        half_p50: pct(&mut h.latencies_us, 0.5),
        half_p99: pct(&mut h.latencies_us, 0.99),
        requests,
        half_requests,
    }
}

fn print_figures(label: &str, f: &Figures) {
    println!(
        "{label} full load : {:.0} msg/s end to end (sent {:.0}/s), server CPU {:.1} µs/msg, client CPU {:.1} µs/msg, p50 {:.2} ms, p99 {:.2} ms",
        f.tput, f.sent, f.server_us, f.client_us, f.p50, f.p99
    );
    println!("{label}             {}", f.requests);
    println!(
        "{label} half load : target {:.0} msg/s, got {:.0} msg/s, server CPU {:.1} µs/msg, client CPU {:.1} µs/msg, send-to-receive p50 {:.2} ms, p99 {:.2} ms",
        f.half_target, f.half_tput, f.half_server_us, f.half_client_us, f.half_p50, f.half_p99
    );
    println!("{label}             {}", f.half_requests);
}

/// Full-load runs of the broker and the ceiling in turn (broker, ceiling, ceiling, broker, …),
/// each pair's ratios printed and their median: on a shared machine whose load drifts, a ratio
/// of two runs side by side says more than one of two runs a minute apart.
async fn alternate(durability: &str, a: (&aws_sdk_sqs::Client, &Server), b: (&aws_sdk_sqs::Client, &Server), rounds: u64, (producers, consumers, secs): (u64, u64, u64)) {
    if rounds == 0 {
        return;
    }
    let (mut tput, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let mut pair = Vec::new();
        for (c, server) in if i % 2 == 0 { [a, b] } else { [b, a] } {
            let q = c.create_queue().queue_name(format!("bench-round-{i}")).send().await.unwrap().queue_url().unwrap().to_string();
            let r = run(c, &q, &server.pid, producers, consumers, secs, None).await;
            let _ = c.purge_queue().queue_url(&q).send().await;
            pair.push((r.deleted as f64 / r.secs, r.server_cpu_us / r.deleted.max(1) as f64));
        }
        let ((ta, ca), (tb, cb)) = if i % 2 == 0 { (pair[0], pair[1]) } else { (pair[1], pair[0]) };
        tput.push(ta / tb.max(1.0));
        cpu.push(ca / cb.max(0.001));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    };
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
    println!(
        "{durability} vs sqsceiling, {rounds} full-load rounds side by side: end-to-end msgs/s {} x (median {:.2} x), server CPU/msg {} x (median {:.2} x)",
        list(&tput),
        median(&mut tput.clone()),
        list(&cpu),
        median(&mut cpu.clone())
    );
}

/// As the `coalmine` binary does (see its main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::var("COALMINE_BENCH_SERVE").is_ok() {
        return serve_child();
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let durability = std::env::var("BENCH_DURABILITY").unwrap_or_else(|_| "commit".into());
    // the peer: the same broker without waiting for commits, measured in the same process
    let peer = std::env::var("BENCH_PEER").unwrap_or_else(|_| "none".into());
    let (producers, consumers, threads, secs) = (env("BENCH_PRODUCERS", 32), env("BENCH_CONSUMERS", 32), env("BENCH_THREADS", 8), env("BENCH_SECS", 10));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads as usize).enable_all().build().unwrap();
    rt.block_on(async {
        println!(
            "server: child process ({}); client: aws-sdk-sqs, {producers} producers, {consumers} consumers, {threads} threads; batches of 10, 100-byte bodies",
            std::env::var("BENCH_SERVER_BIN").map(|b| format!("{b} queue serve")).unwrap_or_else(|_| "this bench re-run as the server".into())
        );
        let server = start_server(&durability);
        let c = client(&server.url);
        let main = measure(&c, &server, producers, consumers, secs).await;
        print_figures(&format!("durability {durability:<6}"), &main);
        if peer != "off" && peer != durability {
            let other = start_server(&peer);
            let pc = client(&other.url);
            let p = measure(&pc, &other, producers, consumers, secs).await;
            drop(other);
            print_figures(&format!("durability {peer:<6}"), &p);
            println!(
                "{durability} vs {peer}: throughput {:.0}%, server CPU/msg {:.0}%, half-load p99 {:.2} ms vs {:.2} ms",
                100.0 * main.tput / p.tput.max(1.0),
                100.0 * main.server_us / p.server_us.max(0.001),
                main.half_p99,
                p.half_p99
            );
        }
        if let Ok(bin) = std::env::var("BENCH_CEILING_BIN") {
            let ceiling = start_ceiling(&bin, env("BENCH_CEILING_THREADS", 1));
            let cc = client(&ceiling.url);
            let p = measure(&cc, &ceiling, producers, consumers, secs).await;
            print_figures("sqsceiling       ", &p);
            println!(
                "{durability} vs sqsceiling: end-to-end msgs/s {:.2} x, server CPU/msg {:.2} x, half-load p99 {:.2} ms vs {:.2} ms",
                main.tput / p.tput.max(1.0),
                main.server_us / p.server_us.max(0.001),
                main.half_p99,
                p.half_p99
            );
            alternate(&durability, (&c, &server), (&cc, &ceiling), env("BENCH_ROUNDS", 4), (producers, consumers, secs)).await;
            drop(ceiling);
        }
        // RSS with many messages queued
        let total = env("BENCH_RSS_MESSAGES", 1_000_000);
        let q3 = c.create_queue().queue_name("bench-rss").send().await.unwrap().queue_url().unwrap().to_string();
        let server_pid: u32 = server.pid.parse().unwrap();
        let pid = server.pid.clone();
        let rss0 = rss_mib(server_pid);
        let t = Instant::now();
        let (s0, cl0) = (cpu_us(&pid), cpu_us("self"));
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
        let (s1, cl1) = (cpu_us(&pid), cpu_us("self"));
        let depth = c
            .get_queue_attributes()
            .queue_url(&q3)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        println!(
            "queued    : {} messages in {:.1} s ({:.0} sends/s, server CPU {:.1} µs/msg, client CPU {:.1} µs/msg); server RSS {:.0} MiB before, {:.0} MiB with them queued",
            depth.attributes().unwrap().values().next().unwrap(),
            secs,
            total as f64 / secs,
            (s1 - s0) / total as f64,
            (cl1 - cl0) / total as f64,
            rss0,
            rss_mib(server_pid)
        );
        drop(server);
    });
}
