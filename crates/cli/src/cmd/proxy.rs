//! `coalmine proxy`: the queue proxy, a sidecar for one task of a queue consumer.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use coalmine_proxy::{Config, Given, Proxy};

/// Run the queue proxy beside one task of a queue consumer.
///
/// Point the task's AWS_ENDPOINT_URL_SQS at the address printed on the first line. Every SQS
/// request is forwarded to the upstream (--upstream, or the region's AWS endpoint), re-signed
/// with the credentials of the standard AWS chain (environment, profile, ECS container
/// credentials, instance profile); answers come back unchanged. The proxy counts what the task
/// received, deleted, handed back, let expire or held past --hold-limit, and sends a report
/// once a second to the telemetry queue `<app>-coalmine-telemetry`.
///
/// On SIGTERM it waits for the app (the COMMAND it runs, or the requests in flight when it runs
/// as a separate sidecar) for at most --grace, makes the messages the task still holds visible
/// again (ChangeMessageVisibility 0), sends a final report and exits.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  coalmine proxy --app sample-app --upstream http://127.0.0.1:9324 -- ./worker
      run ./worker behind a proxy (its AWS_ENDPOINT_URL_SQS set to the proxy)
  coalmine proxy --app sample-app --region eu-west-1 --port 9325
      a sidecar in front of Amazon SQS; identity from COALMINE_* or the ECS task metadata")]
pub struct ProxyArgs {
    /// Port on 127.0.0.1 (0: any free port; the line `listening on ...` tells which).
    #[arg(long, default_value_t = 9325)]
    pub port: u16,
    /// The SQS endpoint to forward to, e.g. http://127.0.0.1:9324 (default: the region's AWS endpoint).
    #[arg(long, env = "COALMINE_PROXY_UPSTREAM")]
    pub upstream: Option<String>,
    /// Region for signing and for the AWS endpoint (default: the standard chain's, AWS_REGION).
    #[arg(long)]
    pub region: Option<String>,
    /// The app's name; reports go to the queue `<app>-coalmine-telemetry`.
    #[arg(long, env = "COALMINE_APP")]
    pub app: Option<String>,
    /// The telemetry queue's name or URL, instead of the one named after the app.
    #[arg(long)]
    pub telemetry_queue: Option<String>,
    /// The task's service (default: COALMINE_SERVICE, else the ECS task metadata).
    #[arg(long, env = "COALMINE_SERVICE")]
    pub service: Option<String>,
    /// The task's revision (default: COALMINE_REVISION, else the ECS task metadata).
    #[arg(long, env = "COALMINE_REVISION")]
    pub revision: Option<String>,
    /// The task's id (default: COALMINE_TASK, else the ECS task ARN's id).
    #[arg(long, env = "COALMINE_TASK")]
    pub task: Option<String>,
    /// A message held longer than this counts as held past the limit (`over_limit`), e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub hold_limit: Duration,
    /// After SIGTERM, how long to wait for the app before handing its messages back.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How often to report.
    #[arg(long, default_value = "1s", value_parser = parse_report_every)]
    pub report_every: Duration,
    /// `text`: the line `listening on URL`; `json`: {"listening": URL, "service", "revision", "task"}.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// The app to run behind the proxy, with AWS_ENDPOINT_URL_SQS pointing at it. Without it
    /// the proxy runs alone, as a sidecar.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `250ms`, `2s`, `5m`, `1h`; a bare number is seconds.
fn parse_report_every(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("the report interval must be more than 0; e.g. 1s".to_string()),
        d => Ok(d),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration; write e.g. 500ms, 30s, 5m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(a: ProxyArgs) -> anyhow::Result<ExitCode> {
    let rt = coalmine_proxy::runtime().context("starting the async runtime")?;
    let code = rt.block_on(serve(a))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}

async fn serve(a: ProxyArgs) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let config = Config {
        port: a.port,
        upstream: a.upstream.clone(),
        region: a.region.clone(),
        given: Given { service: a.service.clone(), revision: a.revision.clone(), task: a.task.clone() },
        metadata_uri: std::env::var("ECS_CONTAINER_METADATA_URI_V4").ok(),
        app: a.app.clone(),
        telemetry_queue: a.telemetry_queue.clone(),
        report_every: a.report_every,
        hold_limit: a.hold_limit,
    };
    let proxy = Proxy::bind(config).await.context("starting the queue proxy")?;
    let url = format!("http://{}", proxy.local_addr());
    {
        let id = proxy.identity();
        let mut out = std::io::stdout().lock();
        if a.output == "json" {
            writeln!(out, "{}", serde_json::json!({"listening": url, "service": id.service, "revision": id.revision, "task": id.task, "identity_source": id.source}))?;
        } else {
            writeln!(out, "listening on {url}")?;
        }
        out.flush()?;
    }
    let running = proxy.start();
    let mut code = ExitCode::SUCCESS;
    if a.command.is_empty() {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(grace = ?a.grace, "stopping: waiting for the requests in flight");
        if !running.drain(a.grace).await {
            tracing::warn!(in_flight = running.in_flight(), "grace period over with requests still in flight");
        }
    } else {
        let mut cmd = tokio::process::Command::new(&a.command[0]);
        cmd.args(&a.command[1..]).env("AWS_ENDPOINT_URL_SQS", &url).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the child dies with the proxy.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {:?}", a.command))?;
        let status = tokio::select! {
            s = child.wait() => s?,
            _ = async { tokio::select! { _ = term.recv() => {} _ = int.recv() => {} } } => {
                if let Some(pid) = child.id() {
                    // SAFETY: plain kill(2) on our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                match tokio::time::timeout(a.grace, child.wait()).await {
                    Ok(s) => s?,
                    Err(_) => {
                        tracing::warn!(grace = ?a.grace, "the app did not exit within the grace period; killing it");
                        child.kill().await.ok();
                        child.wait().await?
                    }
                }
            }
        };
        tracing::info!(%status, "the app exited");
        // The app is gone: an answer still on its way (a long poll) goes nowhere. Wait for it
        // (SQS answers a long poll within 20 s): what it brings is handed back below and named
        // in the final report. Cut short, SQS would keep those messages invisible for the
        // visibility timeout and, with maxReceiveCount 1, dead-letter them at their next
        // receive with nobody to say which revision failed them. The runtime's SIGKILL comes
        // later than this (`SIDECAR_STOP_MARGIN`; on ECS the sidecar's own stop timeout).
        running.drain(coalmine_proxy::LATE_RECEIVE_GRACE).await;
        code = match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
            None => ExitCode::from(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0).clamp(0, 127) as u8),
        };
    }
    let stopped = running.stop().await;
    tracing::info!(
        handed_back = stopped.handed_back,
        hand_back_failed = stopped.hand_back_failed,
        final_report_sent = stopped.final_sent,
        telemetry_lost = stopped.report.telemetry_lost,
        "queue proxy stopped"
    );
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unknown unit"));
    }
}
