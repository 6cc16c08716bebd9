//! `coalmine supervise`: run services from a JSON file on the local runtime.
//!
//! The file holds a JSON array of service specs (see `coalmine_runtime::ServiceSpec`). The
//! services run until SIGINT or SIGTERM; SIGHUP re-reads the file and applies it (a changed
//! revision starts a rolling deployment). A status line is printed per service whenever it
//! changes. Used to test and measure the runtime through the real binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use coalmine_runtime::local::LocalRuntime;
use coalmine_runtime::{Runtime, ServiceSpec, ServiceStatus};
use tokio::signal::unix::{signal, SignalKind};

#[derive(clap::Args)]
pub struct SuperviseArgs {
    /// JSON file with an array of service specs.
    pub services: PathBuf,
    /// State folder: task logs go to `<state>/logs/tasks/`, task pids to `<state>/runtime/`.
    #[arg(long, default_value = ".coalmine")]
    pub state: PathBuf,
    /// Seconds between status checks (a line is printed only when a service's status changed).
    #[arg(long, default_value_t = 0.5)]
    pub interval: f64,
    /// Print each status as one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

fn read_specs(path: &Path) -> anyhow::Result<Vec<ServiceSpec>> {
    let data = std::fs::read(path).with_context(|| format!("reading the services file {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| {
        format!("parsing {}: expected a JSON array of service specs ({{\"name\", \"revision\": {{\"name\", \"dir\", \"command\"}}, \"desired\", \"queue\": {{...}}}})", path.display())
    })
}

fn apply_all(rt: &LocalRuntime, specs: Vec<ServiceSpec>) -> anyhow::Result<()> {
    for spec in specs {
        let name = spec.name.clone();
        rt.apply(spec).with_context(|| format!("applying service `{name}`"))?;
    }
    Ok(())
}

fn line(s: &ServiceStatus, json: bool) -> String {
    if json {
        return serde_json::to_string(s).expect("status serialises");
    }
    let dep = s
        .deployments
        .last()
        .map(|d| {
            let state = serde_json::to_value(d.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            format!("{}:{}:{state}", d.id, d.revision)
        })
        .unwrap_or_default();
    let tasks: Vec<String> = s
        .tasks
        .iter()
        .map(|t| format!("{}:{}:{:?}", t.id, t.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()), t.state).to_lowercase())
        .collect();
    format!(
        "{} revision={} desired={} running={} pending={} steady={} deployment={} tasks={}",
        s.name,
        s.revision,
        s.desired,
        s.running,
        s.pending,
        s.steady,
        dep,
        tasks.join(",")
    )
}

pub fn run(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    let specs = read_specs(&args.services)?;
    let rt = LocalRuntime::new(&args.state).with_context(|| format!("starting the local runtime in {}", args.state.display()))?;
    apply_all(&rt, specs)?;
    println!("supervising {} (pid {})", args.services.display(), std::process::id());
    let interval = Duration::from_secs_f64(args.interval.max(0.01));
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the signal handler")?;
    let result: anyhow::Result<()> = signals.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut last: Vec<String> = Vec::new();
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    match read_specs(&args.services).and_then(|s| apply_all(&rt, s)) {
                        Ok(()) => println!("reloaded {}", args.services.display()),
                        Err(e) => eprintln!("error: reload failed: {e:#}"),
                    }
                }
                _ = tick.tick() => {
                    let now: Vec<String> = rt.services().iter().map(|s| line(s, args.json)).collect();
                    if now != last {
                        for l in now.iter().filter(|l| !last.contains(l)) {
                            println!("{l}");
                        }
                        last = now;
                    }
                }
            }
        }
        Ok(())
    });
    println!("stopping");
    rt.shutdown();
    println!("stopped");
    result?;
    Ok(ExitCode::SUCCESS)
}
