//! Commands that talk to the running `coalmine up` over its API: status, approve, reject,
//! rollback, stop, trigger, history, logs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::output::{clock, duration, paint, status_color};
use crate::workspace;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Common {
    /// The app's coalmine.toml (its folder holds the running instance's .coalmine/). Default:
    /// the one in this folder or the nearest folder above.
    #[arg(long, global = true, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// `json` for scripts.
    #[arg(long, short, value_enum, default_value_t, global = true)]
    pub output: Output,
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn connect(common: &Common) -> anyhow::Result<Client> {
        let (base, token) = workspace::connect(common.file.as_deref())?;
        Ok(Client { base, token, http: reqwest::Client::new() })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach coalmine at {url}: is `coalmine up` running?"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(text);
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(resp)
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        Ok(self.call(method, path, body).await?.json().await?)
    }

    async fn text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.call(reqwest::Method::GET, path, None).await?.text().await?)
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(f: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn actor() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "cli".into())
}

// ----- status ----------------------------------------------------------------------------

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Keep redrawing until Ctrl-C.
    #[arg(long, short)]
    pub watch: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let client = Client::connect(&args.common)?;
        loop {
            let v = client.json(reqwest::Method::GET, "/status", None).await?;
            if args.common.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                if args.watch && crate::output::color() {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render_status(&v));
            }
            if !args.watch {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

fn stage_duration(st: &Value) -> String {
    let start = st.get("started_ms").and_then(Value::as_i64);
    let end = st.get("finished_ms").and_then(Value::as_i64);
    match (start, end) {
        (Some(a), Some(b)) => duration(b - a),
        (Some(a), None) => duration(coalmine_pipeline::now_ms() as i64 - a),
        _ => String::new(),
    }
}

/// The pipeline as a tree, like `kubectl argo rollouts get rollout`.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let app = s(v, "app");
    out.push_str(&format!("Name:      {app}\n"));
    out.push_str(&format!("Primary:   {}\n", v.get("primary_revision").and_then(Value::as_str).unwrap_or("(none yet)")));
    if let Some(q) = v.get("queue").filter(|q| !q.is_null()) {
        out.push_str(&format!(
            "Queue:     {} visible, {} in flight, DLQ {}\n",
            q["visible"], q["in_flight"], q["dlq_visible"]
        ));
        if q["backend"] == "sqs" {
            out.push_str("           (SQS, through the tasks' queue proxies; what it cannot tell: `coalmine status --output json`, queue.lacks)\n");
        }
    }
    if let Some(e) = v.get("execution").filter(|e| !e.is_null()) {
        let st = s(e, "status");
        out.push_str(&format!(
            "Execution: #{} {} revision {} \"{}\"\n",
            e["id"],
            paint(st, status_color(st)),
            s(e, "revision"),
            s(e, "message")
        ));
        if !s(e, "reason").is_empty() {
            out.push_str(&format!("           {}\n", s(e, "reason")));
        }
        let stages = e["stages"].as_array().cloned().unwrap_or_default();
        for (i, stage) in stages.iter().enumerate() {
            let branch = if i + 1 == stages.len() { "└──" } else { "├──" };
            // A stage an ended execution never reached did not run (the dashboard says the same).
            let ss = match s(stage, "status") {
                "Pending" if !matches!(st, "InProgress" | "Queued") => "Not run",
                other => other,
            };
            let icon = match ss {
                "Succeeded" => "✔",
                "Failed" => "✖",
                "InProgress" => "◌",
                _ => "·",
            };
            out.push_str(&format!(
                "{branch} {} {:<28} {:<11} {:>7}  {}\n",
                paint(icon, status_color(ss)),
                s(stage, "name"),
                paint(ss, status_color(ss)),
                stage_duration(stage),
                s(stage, "detail")
            ));
        }
        let waiting = st == "InProgress"
            && stages.iter().any(|x| x["status"] == "InProgress" && (x["name"] == "Approval" || s(x, "name").starts_with("Analysis")));
        if waiting {
            out.push_str(&format!("           → `coalmine approve {0}` or `coalmine reject {0}`\n", e["id"]));
        }
        let verdicts = e["verdicts"].as_array().cloned().unwrap_or_default();
        if !verdicts.is_empty() {
            out.push_str("Verdicts:\n");
            for vd in verdicts {
                let o = s(&vd, "outcome");
                out.push_str(&format!("  {:<14} {:<13} {}\n", s(&vd, "alarm"), paint(o, status_color(o)), s(&vd, "reason")));
            }
        }
        for rb in e["rollbacks"].as_array().cloned().unwrap_or_default() {
            out.push_str(&render_rollback(&rb));
        }
    } else {
        out.push_str("Execution: none yet (commit to the watched branch, or `coalmine trigger`)\n");
    }
    out.push_str("Services:\n");
    for svc in v["services"].as_array().cloned().unwrap_or_default() {
        let name = s(&svc, "name");
        let st = &svc["status"];
        if st.is_null() {
            out.push_str(&format!("  {name:<8} not deployed yet\n"));
            continue;
        }
        let steady = if st["steady"].as_bool().unwrap_or(false) { paint("steady", "32") } else { paint("deploying", "36") };
        out.push_str(&format!(
            "  {name:<8} {} {}/{} running, {} pending  {steady}\n",
            s(st, "revision"),
            st["running"],
            st["desired"],
            st["pending"]
        ));
        let tasks = st["tasks"].as_array().cloned().unwrap_or_default();
        for (i, t) in tasks.iter().enumerate() {
            let t = t.clone();
            out.push_str(&format!(
                "    {{branch}} {:<12} {:<12} pid {:<8} {:<11} restarts {}{}\n",
                s(&t, "id"),
                s(&t, "revision"),
                t["pid"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                s(&t, "state"),
                t["restarts"],
                t.get("last_exit").and_then(Value::as_str).map(|x| format!(", last {x}")).unwrap_or_default()
            ).replacen("{branch}", if i + 1 == tasks.len() { "└──" } else { "├──" }, 1));
            let lines = t["last_output"].as_array().cloned().unwrap_or_default();
            if !lines.is_empty() {
                let bar = if i + 1 == tasks.len() { " " } else { "│" };
                out.push_str(&format!("    {bar}     last output before {}:\n", s(&t, "last_exit")));
                for l in lines {
                    out.push_str(&format!("    {bar}       {}\n", l.as_str().unwrap_or("")));
                }
            }
        }
    }
    out
}

/// Who ended an execution, for people: `alarm:failure-ratio` reads "the failure-ratio alarm".
fn who(actor: &str) -> String {
    match actor.strip_prefix("alarm:") {
        Some(kind) => format!("the {kind} alarm"),
        None => actor.to_string(),
    }
}

/// The reason without the `alarm <kind>: ` prefix that [`who`] already says.
fn why<'a>(actor: &str, reason: &'a str) -> &'a str {
    match actor.strip_prefix("alarm:") {
        Some(kind) => reason.strip_prefix(&format!("alarm {kind}: ")).unwrap_or(reason),
        None => reason,
    }
}

fn render_rollback(rb: &Value) -> String {
    format!(
        "Rollback:  {} → {} by {}: {}\n           canary back in {}; received {}, failed {} (handed back {}, expired {}, held when stopped {}), dead-lettered {}, released {}, redriven {}, lost {}\n",
        s(rb, "revision"),
        s(rb, "to_revision"),
        who(s(rb, "actor")),
        why(s(rb, "actor"), s(rb, "reason")),
        rb["canary_back_ms"].as_i64().map(duration).unwrap_or_else(|| "(in progress)".into()),
        rb["received"],
        rb["failed"],
        rb["returned"],
        rb["expired"],
        rb["released"],
        rb["dead_lettered"],
        rb["released"],
        rb["redriven"],
        rb["lost"]
    )
}

// ----- approve / reject ------------------------------------------------------------------

#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    /// The execution (default: the one awaiting approval now). Give it to be sure the
    /// decision applies to the revision you reviewed.
    pub execution: Option<i64>,
    /// Why.
    #[arg(long, short = 'm', default_value = "")]
    pub comment: String,
    /// Who decides (default: $USER).
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn decide(args: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let client = Client::connect(&args.common)?;
        let id = match args.execution {
            Some(id) => id,
            None => {
                let st = client.json(reqwest::Method::GET, "/status", None).await?;
                let e = &st["execution"];
                let waiting = e["stages"].as_array().is_some_and(|stages| {
                    stages.iter().any(|s| {
                        s["status"] == "InProgress"
                            && (s["name"] == "Approval" || s["name"].as_str().unwrap_or("").starts_with("Analysis"))
                    })
                });
                if !waiting || e["status"] != "InProgress" {
                    bail!("no execution is waiting for approval (see `coalmine status`)");
                }
                e["id"].as_i64().context("status without an execution id")?
            }
        };
        let verb = if approve { "approve" } else { "reject" };
        let v = client
            .json(
                reqwest::Method::POST,
                &format!("/executions/{id}/{verb}"),
                Some(json!({"actor": args.actor.clone().unwrap_or_else(actor), "comment": args.comment})),
            )
            .await?;
        if args.common.output == Output::Json {
            println!("{v}");
        } else {
            println!("{verb}d execution #{id} (revision {})", s(&v, "revision"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

// ----- rollback / stop / trigger ---------------------------------------------------------

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// Why (recorded with the rollback).
    #[arg(long, short = 'm')]
    pub reason: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let client = Client::connect(&args.common)?;
        let who = actor();
        let v = client
            .json(
                reqwest::Method::POST,
                "/rollback",
                Some(json!({"actor": who, "reason": args.reason.unwrap_or_else(|| format!("rolled back by {who}"))})),
            )
            .await?;
        println!("rolled back execution #{} (revision {}): the canary returns to the primary's revision", v["id"], s(&v, "revision"));
        Ok(ExitCode::SUCCESS)
    })
}

/// Move every message of the DLQ back to the app's queue.
///
/// A rollback already redrives what the bad revision dead-lettered; this moves the rest too —
/// what healthy revisions failed (the primary's noise), once you have fixed the cause. On SQS
/// it starts a message move task (as the console's "Start DLQ redrive"); where the endpoint has
/// none, coalmine moves them itself.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  coalmine redrive --all")]
pub struct RedriveArgs {
    /// Every message of the DLQ (required: say it).
    #[arg(long, required = true)]
    pub all: bool,
    #[command(flatten)]
    pub common: Common,
}

pub fn redrive(args: RedriveArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let client = Client::connect(&args.common)?;
        let v = client.json(reqwest::Method::POST, "/queue/redrive-all", Some(json!({"actor": actor()}))).await?;
        if args.common.output == Output::Json {
            println!("{v}");
        } else {
            println!("{}", s(&v, "how"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// The execution to abandon (its number, as `coalmine history` shows).
    pub execution: i64,
    /// Why (recorded with the execution's end).
    #[arg(long, short = 'm')]
    pub reason: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let client = Client::connect(&args.common)?;
        let body = json!({"actor": actor(), "reason": args.reason});
        client.json(reqwest::Method::POST, &format!("/executions/{}/stop", args.execution), Some(body)).await?;
        println!("stopped execution #{}", args.execution);
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    /// The execution whose commit to run again (default: the newest one).
    pub execution: Option<i64>,
    #[command(flatten)]
    pub common: Common,
}

pub fn retry(args: RetryArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let client = Client::connect(&args.common)?;
        let id = match args.execution {
            Some(id) => id,
            None => {
                let st = client.json(reqwest::Method::GET, "/status", None).await?;
                st["execution"]["id"].as_i64().context("there is no execution yet: commit to the branch first")?
            }
        };
        let v = client.json(reqwest::Method::POST, &format!("/executions/{id}/retry"), Some(json!({"actor": actor()}))).await?;
        if args.common.output == Output::Json {
            println!("{v}");
        } else {
            println!("execution #{} runs commit {} of #{id} again (`coalmine status --watch`)", v["id"], s(&v, "revision"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(clap::Args, Debug)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub common: Common,
}

pub fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        Client::connect(&args.common)?.json(reqwest::Method::POST, "/trigger", None).await?;
        println!("checking the branch for a new commit now");
        Ok(ExitCode::SUCCESS)
    })
}

// ----- history ---------------------------------------------------------------------------

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// How many of the newest executions to show.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub common: Common,
}

pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let v = Client::connect(&args.common)?
            .json(reqwest::Method::GET, &format!("/executions?limit={}", args.limit), None)
            .await?;
        if args.common.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        for e in v.as_array().cloned().unwrap_or_default() {
            let st = s(&e, "status");
            println!(
                "#{:<4} {} {:<12} {:<11} \"{}\"",
                e["id"],
                clock(e["created_ms"].as_i64().unwrap_or(0)),
                s(&e, "revision"),
                paint(st, status_color(st)),
                s(&e, "message")
            );
            for a in e["approvals"].as_array().cloned().unwrap_or_default() {
                println!("        {} by {} at {}: {}", s(&a, "decision"), s(&a, "actor"), clock(a["at_ms"].as_i64().unwrap_or(0)), s(&a, "comment"));
            }
            if !s(&e, "reason").is_empty() {
                println!("        {}", s(&e, "reason"));
            }
            for rb in e["rollbacks"].as_array().cloned().unwrap_or_default() {
                print!("{}", render_rollback(&rb).replace("Rollback:  ", "        rollback ").replace("           ", "        "));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

// ----- logs ------------------------------------------------------------------------------

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// `build <execution>`, a service (`primary`, `canary`: the logs of its tasks now) or a
    /// task id (`canary-4`, also of a task that is gone; `coalmine status` lists them).
    pub what: String,
    /// The execution, for `build`.
    pub execution: Option<i64>,
    /// With a service: the logs of the tasks of its previous revision — after a rollback,
    /// those of the rolled-back canary.
    #[arg(long)]
    pub previous: bool,
    /// Lines to show.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub lines: usize,
    /// Keep printing new lines.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub common: Common,
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let client = Client::connect(&args.common)?;
        let path = if args.what == "build" {
            let id = args.execution.context("`coalmine logs build` needs an execution number: `coalmine logs build 3`")?;
            format!("/executions/{id}/build-log?")
        } else if coalmine_runtime::local::logs::valid_task_id(&args.what) {
            if args.previous {
                anyhow::bail!("--previous goes with a service (`coalmine logs canary --previous`), not with a task id");
            }
            format!("/tasks/{}/logs?", args.what)
        } else {
            format!("/services/{}/logs?{}", args.what, if args.previous { "previous=true&" } else { "" })
        };
        let mut seen = String::new();
        loop {
            let text = client.text(&format!("{path}lines={}", args.lines)).await?;
            if args.follow {
                // Print only what is new since the last poll.
                let new = match text.find(seen.lines().last().unwrap_or("\u{0}")) {
                    Some(_) if !seen.is_empty() => text.lines().skip_while(|l| seen.lines().any(|s| s == *l)).collect::<Vec<_>>().join("\n"),
                    _ => text.trim_end().to_string(),
                };
                if !new.is_empty() {
                    println!("{new}");
                }
                seen = text;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            } else {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
        }
    })
}
