//! `coalmine demo`: the guidance's whole story on one machine. A scratch git repository of
//! the sample app, everything started in this process, and a narrated release: first release,
//! traffic, a good change approved and promoted, a bad change caught and rolled back with its
//! dead letters redriven and nothing lost. Exits non-zero if any step did not hold.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use coalmine_pipeline::{now_ms, StatusView};
use coalmine_runtime::TaskIdentity;

use crate::cmd::up::{self, Running, UpArgs};
use crate::output::{duration, paint};
use crate::sample;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Approve the good release yourself at the prompt instead of after a short pause.
    #[arg(long)]
    pub interactive: bool,
    /// Leave everything running at the end (until Ctrl-C) and keep the scratch folder.
    #[arg(long)]
    pub keep: bool,
    /// Scratch folder (default: a new temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Simulated work per message, in milliseconds (the guidance's app sleeps 1000).
    #[arg(long, default_value_t = 200)]
    pub work_ms: u64,
}

const DEMO_TOML: &str = r#"# The demo's coalmine.toml: the guidance's defaults (queue `sample-app`, visibility timeout
# 300 s, DLQ after 1 receive, primary 3 tasks, canary 1, deploy canary -> approval -> deploy
# primary, the default alarms), with a quicker poll and health wait so the story fits in minutes.
app = "sample-app"

[source]
repo = "."
branch = "main"
poll_interval = "1s"

[build]
timeout = "30m"

[run]
command = "./sample-app"
env = { WORK_MS = "{work_ms}" }
healthy_after = "2s"
stop_timeout = "15s"
"#;

/// Where revision builds keep compiled dependencies, shared between builds and demo runs.
fn shared_target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("COALMINE_BUILD_CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // Built from the repository: share its target folder.
    let repo_target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    if let Ok(repo_target) = std::fs::canonicalize(repo_target) {
        return repo_target.join("demo-revisions");
    }
    std::env::temp_dir().join("coalmine-demo-target")
}

struct Story {
    started: Instant,
    failures: Vec<String>,
}

impl Story {
    fn step(&self, n: u32, title: &str) {
        println!();
        println!("{} {}", paint(&format!("[{n}/4]"), "1;36"), paint(title, "1"));
    }

    fn say(&self, text: &str) {
        println!("      {text}");
    }

    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            println!("      {} {what}", paint("✔", "32"));
        } else {
            println!("      {} {what}", paint("✖", "31"));
            self.failures.push(what.to_string());
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let scratch = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            None
        }
        None => Some(tempfile::Builder::new().prefix("coalmine-demo-").tempdir()?),
    };
    let dir = args.dir.clone().unwrap_or_else(|| scratch.as_ref().unwrap().path().to_path_buf());
    let dir = std::fs::canonicalize(&dir)?;
    if dir.join(".git").exists() {
        bail!("{} already holds a repository: give an empty folder to --dir", dir.display());
    }
    let toml = DEMO_TOML.replace("{work_ms}", &args.work_ms.to_string());
    sample::write(&dir, Some(&toml))?;
    sample::init_repo(&dir, "sample-app v1: consume the queue, process, delete")?;
    // Revision builds share compiled dependencies (set before any thread starts).
    let target = shared_target_dir();
    std::env::set_var("COALMINE_BUILD_CARGO_TARGET_DIR", &target);
    // A demo worker does not need full optimisation; its builds take half the time with 1.
    if std::env::var_os("COALMINE_BUILD_CARGO_PROFILE_RELEASE_OPT_LEVEL").is_none() {
        std::env::set_var("COALMINE_BUILD_CARGO_PROFILE_RELEASE_OPT_LEVEL", "1");
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = rt.block_on(story(&args, &dir, &target));
    let keep = args.keep;
    if keep {
        if let Some(s) = scratch {
            let kept = s.keep();
            println!("kept {}", kept.display());
        }
    }
    match result {
        Ok(failures) if failures.is_empty() => Ok(ExitCode::SUCCESS),
        Ok(failures) => {
            eprintln!("the demo did not hold: {}", failures.join("; "));
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}

async fn story(args: &DemoArgs, dir: &std::path::Path, target: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let up_args = UpArgs { file: Some(dir.join("coalmine.toml")), queue_port: Some(0), api_port: Some(0), bind: None, allow_host: Vec::new() };
    let running = up::start(&up_args).await?;
    let mut story = Story { started: Instant::now(), failures: Vec::new() };
    println!("{}", paint("coalmine demo: a queue worker released through a canary", "1"));
    println!("  app repository  {}", dir.display());
    println!(
        "  queue           {}  (any SQS client with the key in {}: AWS_SHARED_CREDENTIALS_FILE=<that file> aws --endpoint-url {} sqs ...)",
        running.queue_endpoint,
        dir.join(".coalmine/credentials").display(),
        running.queue_endpoint
    );
    println!("  dashboard       {}", coalmine_server::dashboard_url(&running.api, &running.token));
    println!("  builds share compiled dependencies in {}", target.display());
    let printer = tokio::spawn(up::print_events(running.engine.clone()));
    let outcome = chapters(args, dir, &running, &mut story).await;
    printer.abort();
    if let Err(e) = &outcome {
        story.failures.push(format!("{e:#}"));
    }
    println!();
    println!("demo finished in {}", duration(story.started.elapsed().as_millis() as i64));
    if args.keep {
        println!("everything keeps running (dashboard {}); Ctrl-C stops it", coalmine_server::dashboard_url(&running.api, &running.token));
        up::wait_for_signal().await;
    }
    tokio::task::spawn_blocking(move || running.shutdown()).await?;
    Ok(story.failures)
}

async fn chapters(args: &DemoArgs, dir: &std::path::Path, running: &Running, story: &mut Story) -> anyhow::Result<()> {
    let engine = running.engine.clone();
    let sqs = sqs_client(&running.queue_endpoint, &running.queue_keys).await;

    // 1. The first release.
    story.step(1, "First release: build v1 and deploy it to both services (primary 3 tasks, canary 1)");
    story.say("the first build compiles the AWS SDK once; later builds reuse it");
    let v1 = wait_execution_end(running, 1, Duration::from_secs(30 * 60)).await?;
    story.check(v1.status == "Succeeded", &format!("execution #1 {} ({})", v1.status, v1.revision));
    if v1.status != "Succeeded" {
        bail!("the first release did not succeed: {}", v1.reason);
    }
    let st = engine.status()?;
    story.check(on_revision(&st, "primary", &v1.revision, 3) && on_revision(&st, "canary", &v1.revision, 1), "primary runs v1 on 3 tasks, canary on 1");

    // 2. Traffic.
    story.step(2, "Send 100 batches of 5 messages; both services process them");
    let since = now_ms();
    send(&sqs, &running.queue_url, 100, 5, "order").await?;
    story.say("sent 500 messages");
    wait_drained(running, Duration::from_secs(120)).await?;
    let counts = per_service(running, since)?;
    for ((service, revision), (received, deleted)) in &counts {
        story.say(&format!("{service:<8} {revision}  received {received:>4}  processed {deleted:>4}"));
    }
    let processed: u64 = counts.values().map(|(_, d)| d).sum();
    story.check(processed >= 500, &format!("{processed} messages processed, queue empty"));
    story.check(counts.keys().any(|(s, _)| s == "canary") && counts.keys().any(|(s, _)| s == "primary"), "both services took their share");

    // 3. A good change.
    story.step(3, "Commit a good change: canary, approval, primary");
    sample::edit(dir, "src/main.rs", "\"processed {id} revision={} task={} ms={}\"", "\"processed {id} revision={} task={} ms={} ok\"")?;
    sample::commit_all(dir, "sample-app v2: clearer log line")?;
    engine.trigger();
    let (id2, rev2) = wait_for_approval(running, Duration::from_secs(10 * 60)).await?;
    story.say(&format!("execution #{id2}: {rev2} runs on the canary; the approval stage waits (`coalmine approve {id2}` or the dashboard)"));
    let since = now_ms();
    send(&sqs, &running.queue_url, 40, 5, "canary-traffic").await?;
    wait_drained(running, Duration::from_secs(120)).await?;
    let counts = per_service(running, since)?;
    let canary_v2 = counts.get(&("canary".to_string(), rev2.clone())).map(|c| c.1).unwrap_or(0);
    story.check(canary_v2 > 0, &format!("the canary processed {canary_v2} of 200 messages on {rev2}"));
    if let Some(v) = engine.execution_view(id2)? {
        for verdict in &v.verdicts {
            story.say(&format!("verdict {:<14} {:<13} {}", verdict.alarm, verdict.outcome, verdict.reason));
        }
    }
    let approved = if args.interactive {
        ask("approve this release?").await?
    } else {
        story.say("approving after a short look (run with --interactive to decide yourself)");
        tokio::time::sleep(Duration::from_secs(2)).await;
        true
    };
    if approved {
        engine.decide(id2, true, "demo", "canary looked healthy")?;
    } else {
        engine.decide(id2, false, "demo", "rejected at the prompt")?;
    }
    let e2 = wait_execution_end(running, id2, Duration::from_secs(10 * 60)).await?;
    if approved {
        story.check(e2.status == "Succeeded", &format!("execution #{id2} {}", e2.status));
        let st = engine.status()?;
        story.check(on_revision(&st, "primary", &rev2, 3) && on_revision(&st, "canary", &rev2, 1), "both services run v2");
    } else {
        story.check(e2.status == "RolledBack", &format!("execution #{id2} {} (rejected)", e2.status));
    }

    // 4. A bad change.
    story.step(4, "Commit a bad change: every message fails on the canary");
    let primary_rev = engine.status()?.primary_revision.unwrap_or_default();
    sample::edit(dir, "src/main.rs", "            _ => 0.0,", "            _ => 1.0, // bug: every message fails")?;
    sample::commit_all(dir, "sample-app v3: new failure handling (broken)")?;
    engine.trigger();
    let (id3, rev3) = wait_for_approval(running, Duration::from_secs(10 * 60)).await?;
    story.say(&format!("execution #{id3}: {rev3} runs on the canary; sending traffic"));
    let since = now_ms();
    send(&sqs, &running.queue_url, 40, 5, "after-bad-release").await?;
    let e3 = wait_execution_end(running, id3, Duration::from_secs(120)).await?;
    story.check(e3.status == "RolledBack", &format!("execution #{id3} {}: {}", e3.status, e3.reason));
    wait_drained(running, Duration::from_secs(120)).await?;
    let rb = wait_rollback_settled(running, id3, Duration::from_secs(60)).await?;
    let back = wait_until(Duration::from_secs(60), || Ok(on_revision(&engine.status()?, "canary", &primary_rev, 1))).await?;
    story.check(back, &format!("canary back on the primary's revision {primary_rev}, healthy"));
    let first_failure = first_failure_ms(running, &rev3, since);
    if let (Some(first), Some(back)) = (first_failure, rb.canary_back_ms) {
        let to_back = (rb.at_ms + back) - first as i64;
        story.say(&format!(
            "time to rollback: {} from the canary's first failure to no canary task on {rev3} (decision after {})",
            duration(to_back.max(0)),
            duration((rb.at_ms - first as i64).max(0))
        ));
    }
    story.say(&format!("why: {}", rb.reason));
    story.say(&format!(
        "canary received {}, failed {}, dead-lettered {}, released {}, redriven {}, lost {}",
        rb.received, rb.failed, rb.dead_lettered, rb.released, rb.redriven, rb.lost
    ));
    let depth = engine.queue().depth()?;
    story.check(
        depth.visible == 0 && depth.in_flight == 0 && depth.dlq_visible == 0 && depth.dlq_in_flight == 0,
        "queue and DLQ empty: every message sent was processed",
    );
    story.check(rb.redriven == rb.dead_lettered, "every message the canary dead-lettered was redriven");
    story.check(rb.lost == 0, "messages lost: 0");
    Ok(())
}

/// The SDK client the demo sends with.
async fn sqs_client(endpoint: &str, keys: &coalmine_queue::Credentials) -> aws_sdk_sqs::Client {
    // The demo's own key, accepted by the queue while the demo runs.
    let secret = coalmine_runtime::random_secret();
    keys.insert("demo-sender", secret.clone());
    let creds = aws_sdk_sqs::config::Credentials::new("demo-sender", secret, None, None, "coalmine-demo");
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

async fn send(client: &aws_sdk_sqs::Client, queue_url: &str, batches: u32, per_batch: u32, label: &str) -> anyhow::Result<()> {
    for b in 0..batches {
        let entries = (0..per_batch)
            .map(|i| {
                SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(format!("{{\"{label}\": {}}}", b * per_batch + i))
                    .build()
                    .expect("id and body set")
            })
            .collect::<Vec<_>>();
        let out = client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .context("cannot send to the embedded queue")?;
        if !out.failed().is_empty() {
            bail!("{} message(s) of a batch were refused: {:?}", out.failed().len(), out.failed());
        }
    }
    Ok(())
}

/// Live status while waiting: a spinner on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<(Instant, String)>,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stdout().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress { bar, last_line: None }
    }

    /// Show what the execution in progress is doing (its stage, and for a build the newest
    /// line of its log).
    fn update(&mut self, running: &Running) {
        let Ok(Some(v)) = running.engine.history(1).map(|h| h.into_iter().next()) else { return };
        let Some(stage) = v.stages.iter().find(|s| s.status == "InProgress") else { return };
        let mut msg = format!("#{} {}: {}", v.execution.id, stage.name, stage.detail);
        if stage.name == "Build" {
            let log = std::fs::read_to_string(running.engine.paths().build_log(v.execution.id)).unwrap_or_default();
            if let Some(line) = log.lines().rev().find(|l| !l.trim().is_empty()) {
                msg = format!("{msg} | {}", line.trim().chars().take(90).collect::<String>());
            }
            // How far cargo is: crates compiled so far against the packages of the app's
            // Cargo.lock (an upper bound: it lists other platforms' crates too).
            let compiled = log.lines().filter(|l| l.trim_start().starts_with("Compiling ")).count();
            if compiled > 0 {
                let lock = running.engine.paths().root.parent().map(|app| app.join("Cargo.lock"));
                let packages = lock.and_then(|l| std::fs::read_to_string(l).ok()).map(|t| t.matches("[[package]]").count()).unwrap_or(0);
                msg = if packages > 0 { format!("{msg} (crate {compiled} of at most {packages})") } else { format!("{msg} (crate {compiled})") };
            }
        }
        match &self.bar {
            Some(b) => b.set_message(msg),
            None => {
                let due = self.last_line.as_ref().is_none_or(|(t, m)| t.elapsed() > Duration::from_secs(15) && *m != msg);
                if due {
                    println!("      … {msg}");
                    self.last_line = Some((Instant::now(), msg));
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

struct Ended {
    status: String,
    revision: String,
    reason: String,
}

async fn wait_execution_end(running: &Running, id: i64, timeout: Duration) -> anyhow::Result<Ended> {
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::new();
    loop {
        progress.update(running);
        if let Some(v) = running.engine.execution_view(id)? {
            let s = v.execution.status;
            if !s.is_open() {
                return Ok(Ended { status: s.to_string(), revision: v.execution.revision.clone(), reason: v.execution.reason.clone() });
            }
        }
        if Instant::now() > deadline {
            bail!("execution #{id} did not end within {}", duration(timeout.as_millis() as i64));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_approval(running: &Running, timeout: Duration) -> anyhow::Result<(i64, String)> {
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::new();
    loop {
        progress.update(running);
        if let Some(e) = running.engine.awaiting_approval()? {
            return Ok((e.id, e.revision));
        }
        if let Some(v) = running.engine.history(1)?.into_iter().next() {
            let s = v.execution.status.as_str();
            if s != "InProgress" && s != "Queued" && s != "Succeeded" {
                bail!("execution #{} ended {} before its approval: {}", v.execution.id, s, v.execution.reason);
            }
        }
        if Instant::now() > deadline {
            bail!("no execution reached the approval stage within {}", duration(timeout.as_millis() as i64));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_drained(running: &Running, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let d = running.engine.queue().depth()?;
        if d.visible == 0 && d.in_flight == 0 && d.delayed == 0 && d.dlq_visible == 0 && d.dlq_in_flight == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the queue did not drain within {}: {} visible, {} in flight, DLQ {}",
                duration(timeout.as_millis() as i64),
                d.visible,
                d.in_flight,
                d.dlq_visible
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the rollback's report is complete: canary back, everything dead-lettered redriven.
async fn wait_rollback_settled(
    running: &Running,
    id: i64,
    timeout: Duration,
) -> anyhow::Result<coalmine_pipeline::store::RollbackRow> {
    let deadline = Instant::now() + timeout;
    loop {
        let rb = running.engine.rollbacks()?.into_iter().rev().find(|r| r.execution_id == id);
        if let Some(rb) = rb {
            if rb.canary_back_ms.is_some() && rb.redriven >= rb.dead_lettered {
                return Ok(rb);
            }
            if Instant::now() > deadline {
                return Ok(rb);
            }
        } else if Instant::now() > deadline {
            bail!("execution #{id} has no rollback record");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Poll `f` until it holds or `timeout` passes; returns whether it held.
async fn wait_until(timeout: Duration, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn on_revision(st: &StatusView, service: &str, revision: &str, tasks: u32) -> bool {
    st.services.iter().any(|s| {
        s.name == service
            && s.status.as_ref().is_some_and(|x| x.revision == revision && x.steady && x.running == tasks)
    })
}

/// (service, revision) -> (received, processed) since `since_ms`.
fn per_service(running: &Running, since_ms: u64) -> anyhow::Result<BTreeMap<(String, String), (u64, u64)>> {
    let mut out = BTreeMap::new();
    for c in running.engine.telemetry().consumers(since_ms)? {
        if let Some(id) = TaskIdentity::parse(&c.access_key_id) {
            let e = out.entry((id.service, id.revision)).or_insert((0, 0));
            e.0 += c.received;
            e.1 += c.deleted;
        }
    }
    Ok(out)
}

/// When a task of `revision` first failed a message (second resolution), from the queue's telemetry.
fn first_failure_ms(running: &Running, revision: &str, since_ms: u64) -> Option<u64> {
    let queue = &running.engine.spec().queue.name;
    running
        .broker
        .as_ref()?
        .telemetry(queue, since_ms)
        .ok()?
        .into_iter()
        .filter(|c| TaskIdentity::parse(&c.access_key_id).is_some_and(|id| id.revision == revision))
        .flat_map(|c| c.buckets.into_iter())
        .filter(|b| b.returned + b.expired > 0)
        .map(|b| b.second * 1000)
        .min()
}

async fn ask(question: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    print!("      {question} [y/N] ");
    std::io::stdout().flush()?;
    let line = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map(|_| s)
    })
    .await??;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
