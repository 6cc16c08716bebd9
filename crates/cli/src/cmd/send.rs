//! `coalmine send`: send messages to the app's queue, as the guidance's
//! `send-sqs-message.sh` does (100 batches of 5), through the SQS API.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;

/// Default endpoint: the embedded queue.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9324";
/// Attempts per message (the first one and the retries) before it counts as not sent.
const ATTEMPTS: u32 = 4;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// Number of batches to send (the guidance sends 100 batches of 5 messages).
    #[arg(long, default_value_t = 100)]
    pub count: u32,
    /// Messages per batch: SendMessageBatch takes 1 to 10.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub batch: u32,
    /// Message body template: n in braces becomes the message's number (from 1), as in the
    /// default, and `{ts}` the time it is sent (RFC 3339, UTC).
    // (The help cannot spell the first placeholder: clap turns it into a line break.)
    #[arg(long, default_value = "message {n} sent at {ts}")]
    pub body: String,
    /// Queue name or queue URL. Default: the queue of ./coalmine.toml (`[queue] name`, else
    /// the `app` name).
    #[arg(long)]
    pub queue: Option<String>,
    /// SQS endpoint. Default: the queue of the `coalmine up` running for this app (whatever
    /// port it got), else coalmine.toml's `[queue] endpoint`, else the embedded queue on its
    /// `[queue] port` (http://127.0.0.1:9324). For Amazon SQS give its regional endpoint, e.g.
    /// https://sqs.us-east-1.amazonaws.com.
    #[arg(long, env = "AWS_ENDPOINT_URL_SQS")]
    pub endpoint: Option<String>,
    /// AWS region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Limit the send rate, in messages per second: `50` or `50/s`. Default: as fast as the
    /// queue takes them.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// `text` (a summary line) or `json` (one JSON object on stdout).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s.trim().trim_end_matches("/s").trim();
    match number.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate; give messages per second as a positive number, e.g. 50 or 50/s"
        )),
    }
}

/// One message that could not be sent, with the queue's last answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// The message's number (`{n}`).
    pub n: u64,
    pub code: String,
    pub message: String,
}

#[derive(Debug, serde::Serialize)]
struct Summary {
    queue_url: String,
    requested: u64,
    sent: u64,
    failed: u64,
    batches: u32,
    seconds: f64,
    messages_per_second: f64,
    failures: Vec<Failure>,
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    if args.body.is_empty() {
        bail!("--body is empty; SQS refuses empty messages: give a body, e.g. --body 'message {{n}}'");
    }
    let spec_path = crate::workspace::spec_path(None);
    let spec_path = spec_path.as_path();
    let spec = if args.queue.is_none() || args.endpoint.is_none() {
        load_spec(spec_path)?
    } else {
        None
    };
    let queue = match &args.queue {
        Some(q) => q.clone(),
        None => queue_from_spec(spec.as_ref(), spec_path)?,
    };
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => crate::workspace::running_queue(None).unwrap_or_else(|| endpoint_from_spec(spec.as_ref())),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(send(args, queue, endpoint))
}

/// The coalmine.toml at `path` as a TOML table; `None` when there is none.
fn load_spec(path: &Path) -> anyhow::Result<Option<toml::Table>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid TOML: {e}; fix it (`coalmine validate` explains) or pass --queue \
             NAME and --endpoint URL",
            path.display()
        )
    })?;
    Ok(Some(table))
}

/// The endpoint a coalmine.toml points at: `[queue] endpoint`, else the embedded queue on
/// `[queue] port`, else the default.
fn endpoint_from_spec(spec: Option<&toml::Table>) -> String {
    let queue = spec.and_then(|t| t.get("queue"));
    if let Some(endpoint) = queue.and_then(|q| q.get("endpoint")).and_then(|e| e.as_str()) {
        return endpoint.to_string();
    }
    match queue.and_then(|q| q.get("port")).and_then(|p| p.as_integer()) {
        Some(port) => format!("http://127.0.0.1:{port}"),
        None => DEFAULT_ENDPOINT.to_string(),
    }
}

/// The queue named by a coalmine.toml: `[queue] name`, else `app`.
fn queue_from_spec(spec: Option<&toml::Table>, path: &Path) -> anyhow::Result<String> {
    let Some(table) = spec else {
        bail!(
            "no --queue given and no {} here; pass --queue NAME or run in the app's folder \
             (`coalmine init` writes a coalmine.toml)",
            path.display()
        )
    };
    if let Some(name) = table
        .get("queue")
        .and_then(|q| q.get("name"))
        .and_then(|n| n.as_str())
    {
        return Ok(name.to_string());
    }
    match table.get("app").and_then(|a| a.as_str()) {
        Some(app) if !app.is_empty() => Ok(app.to_string()),
        _ => bail!(
            "{} has no `app = \"...\"` name to take the queue's name from; add one or pass --queue NAME",
            path.display()
        ),
    }
}

fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let host = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

async fn client_for(args: &SendArgs, endpoint: &str) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new(args.region.clone()))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(20))
                .build(),
        );
    // The local queue of `coalmine up` accepts `coalmine send`'s key from .coalmine/credentials
    // (and `coalmine queue serve`, without --verify-signatures, any key); Amazon SQS gets the
    // standard credential chain.
    if is_loopback(endpoint) {
        if let Some(secret) = crate::workspace::queue_secret(None, crate::workspace::SEND_KEY_ID) {
            loader = loader.credentials_provider(Credentials::new(crate::workspace::SEND_KEY_ID, secret, None, None, "coalmine-send"));
            return Client::new(&loader.load().await);
        }
    }
    let has_env_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    let has_profile = std::env::var_os("AWS_PROFILE").is_some();
    if !has_env_keys && !has_profile && is_loopback(endpoint) {
        loader = loader.credentials_provider(Credentials::new(
            crate::workspace::SEND_KEY_ID,
            "coalmine",
            None,
            None,
            "coalmine-send",
        ));
    }
    Client::new(&loader.load().await)
}

fn unreachable_hint(endpoint: &str) -> String {
    format!(
        "cannot reach the queue at {endpoint}; is it running? Start it with `coalmine up` in the \
         app's folder (or `coalmine queue serve`), or point --endpoint at a running queue"
    )
}

fn missing_queue_hint(queue: &str, endpoint: &str) -> String {
    format!(
        "queue {queue:?} does not exist at {endpoint}; start `coalmine up` in the app's folder \
         (it creates the app's queue), or create it: \
         aws --endpoint-url {endpoint} sqs create-queue --queue-name {queue}"
    )
}

async fn resolve_url(client: &Client, queue: &str, endpoint: &str) -> anyhow::Result<String> {
    if queue.starts_with("http://") || queue.starts_with("https://") {
        return Ok(queue.to_string());
    }
    match client.get_queue_url().queue_name(queue).send().await {
        Ok(out) => out
            .queue_url
            .ok_or_else(|| anyhow::anyhow!("GetQueueUrl for {queue:?} at {endpoint} returned no URL")),
        Err(err) => {
            if err
                .as_service_error()
                .is_some_and(|e| e.is_queue_does_not_exist())
            {
                bail!(missing_queue_hint(queue, endpoint));
            }
            if matches!(err, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) {
                bail!("{} ({})", unreachable_hint(endpoint), DisplayErrorContext(&err));
            }
            bail!(
                "GetQueueUrl for {queue:?} at {endpoint} failed: {}",
                DisplayErrorContext(&err)
            )
        }
    }
}

async fn send(args: SendArgs, queue: String, endpoint: String) -> anyhow::Result<ExitCode> {
    let client = client_for(&args, &endpoint).await;
    let url = resolve_url(&client, &queue, &endpoint).await?;
    let requested = u64::from(args.count) * u64::from(args.batch);

    let progress = if args.output == Output::Text && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(requested);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} messages  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };

    let started = Instant::now();
    let ctx = Arc::new(BatchContext {
        client,
        url: url.clone(),
        queue: queue.clone(),
        endpoint,
        body: args.body.clone(),
    });
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    let mut failures = Vec::new();
    let mut fatal: Option<anyhow::Error> = None;
    let start_tokio = tokio::time::Instant::now();

    let mut absorb = |result: Result<anyhow::Result<BatchOutcome>, tokio::task::JoinError>,
                      fatal: &mut Option<anyhow::Error>| {
        match result {
            Ok(Ok(outcome)) => {
                sent += outcome.sent;
                if let Some(bar) = &progress {
                    bar.inc(outcome.sent + outcome.failures.len() as u64);
                }
                failures.extend(outcome.failures);
            }
            Ok(Err(e)) => {
                if fatal.is_none() {
                    *fatal = Some(e);
                }
            }
            Err(e) => {
                if fatal.is_none() {
                    *fatal = Some(anyhow::anyhow!("a send task failed: {e}"));
                }
            }
        }
    };

    for b in 0..args.count {
        if fatal.is_some() {
            break;
        }
        if let Some(rate) = args.rate {
            let due = Duration::from_secs_f64(f64::from(b) * f64::from(args.batch) / rate);
            tokio::time::sleep_until(start_tokio + due).await;
        }
        while in_flight.len() >= args.concurrency as usize {
            if let Some(r) = in_flight.join_next().await {
                absorb(r, &mut fatal);
            }
        }
        let first = u64::from(b) * u64::from(args.batch) + 1;
        let numbers: Vec<u64> = (first..first + u64::from(args.batch)).collect();
        let ctx = Arc::clone(&ctx);
        in_flight.spawn(async move { ctx.send_batch(numbers).await });
    }
    while let Some(r) = in_flight.join_next().await {
        absorb(r, &mut fatal);
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    if let Some(e) = fatal {
        return Err(e.context(format!("sent {sent} of {requested} messages before stopping")));
    }

    let seconds = started.elapsed().as_secs_f64();
    failures.sort_by_key(|f| f.n);
    let summary = Summary {
        queue_url: url,
        requested,
        sent,
        failed: failures.len() as u64,
        batches: args.count,
        seconds,
        messages_per_second: if seconds > 0.0 { sent as f64 / seconds } else { 0.0 },
        failures,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string(&summary)?),
        Output::Text => {
            println!(
                "sent {} messages in {} batches to {} in {:.2} s, {:.0} msg/s",
                summary.sent, summary.batches, queue, summary.seconds, summary.messages_per_second
            );
            if !summary.failures.is_empty() {
                eprintln!(
                    "{} messages could not be sent after {ATTEMPTS} attempts each:",
                    summary.failed
                );
                for f in summary.failures.iter().take(20) {
                    eprintln!("  message {}: {}: {}", f.n, f.code, f.message);
                }
                if summary.failures.len() > 20 {
                    eprintln!("  ... and {} more", summary.failures.len() - 20);
                }
            }
        }
    }
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

struct BatchContext {
    client: Client,
    url: String,
    queue: String,
    endpoint: String,
    body: String,
}

struct BatchOutcome {
    sent: u64,
    failures: Vec<Failure>,
}

impl BatchContext {
    /// Sends one batch, retrying failed entries (and failed calls) a few times. A queue
    /// that does not exist is an error for the whole run.
    async fn send_batch(&self, numbers: Vec<u64>) -> anyhow::Result<BatchOutcome> {
        let mut pending = numbers;
        let mut sent = 0u64;
        let mut last: std::collections::HashMap<u64, (String, String)> = Default::default();
        let mut failures = Vec::new();
        for attempt in 0..ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let entries = pending
                .iter()
                .map(|&n| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{n}"))
                        .message_body(render(&self.body, n))
                        .build()
                        .context("building a SendMessageBatch entry")
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let result = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Ok(out) => {
                    sent += out.successful().len() as u64;
                    let mut retry = Vec::new();
                    for f in out.failed() {
                        let Some(n) = f.id().strip_prefix('m').and_then(|s| s.parse().ok()) else {
                            continue;
                        };
                        let text = f.message().unwrap_or("").to_string();
                        if f.sender_fault() {
                            // The message itself is refused: retrying cannot help.
                            failures.push(Failure {
                                n,
                                code: f.code().to_string(),
                                message: text,
                            });
                        } else {
                            last.insert(n, (f.code().to_string(), text));
                            retry.push(n);
                        }
                    }
                    pending = retry;
                }
                Err(err) => {
                    if err
                        .as_service_error()
                        .is_some_and(|e| e.is_queue_does_not_exist())
                    {
                        bail!(missing_queue_hint(&self.queue, &self.endpoint));
                    }
                    let (code, text) = match &err {
                        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
                            "Unreachable".to_string(),
                            format!(
                                "{} ({})",
                                unreachable_hint(&self.endpoint),
                                DisplayErrorContext(&err)
                            ),
                        ),
                        _ => (
                            err.as_service_error()
                                .and_then(|e| aws_sdk_sqs::error::ProvideErrorMetadata::code(e))
                                .unwrap_or("RequestFailed")
                                .to_string(),
                            DisplayErrorContext(&err).to_string(),
                        ),
                    };
                    tracing::debug!(%code, "SendMessageBatch failed: {text}");
                    for &n in &pending {
                        last.insert(n, (code.clone(), text.clone()));
                    }
                }
            }
        }
        for n in pending {
            let (code, message) = last
                .remove(&n)
                .unwrap_or_else(|| ("Unknown".to_string(), String::new()));
            failures.push(Failure { n, code, message });
        }
        Ok(BatchOutcome { sent, failures })
    }
}

/// The body for message `n`: `{n}` and `{ts}` replaced.
pub fn render(template: &str, n: u64) -> String {
    let mut body = template.replace("{n}", &n.to_string());
    if body.contains("{ts}") {
        body = body.replace("{ts}", &rfc3339_now());
    }
    body
}

/// The current time as RFC 3339 in UTC with milliseconds, e.g. `2026-11-27T13:05:09.123Z`.
fn rfc3339_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs() as i64, since.subsec_millis())
}

fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let mut year = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    if month <= 2 {
        year += 1;
    }
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_784_709, 123), "2026-11-27T13:05:09.123Z");
    }

    #[test]
    fn render_replaces_placeholders() {
        assert_eq!(render("m{n}-{n}", 7), "m7-7");
        let b = render("{ts}", 1);
        assert!(b.ends_with('Z') && b.len() == 24, "{b}");
        assert_eq!(render("plain {x}", 3), "plain {x}");
    }

    #[test]
    fn rate_parsing() {
        assert_eq!(parse_rate("50").unwrap(), 50.0);
        assert_eq!(parse_rate("12.5/s").unwrap(), 12.5);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn loopback_endpoints() {
        assert!(is_loopback("http://127.0.0.1:9324"));
        assert!(is_loopback("http://localhost:9324/"));
        assert!(is_loopback("http://[::1]:9324"));
        assert!(!is_loopback("https://sqs.us-east-1.amazonaws.com"));
    }

    #[test]
    fn queue_and_endpoint_from_spec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coalmine.toml");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            load_spec(&path).unwrap()
        };
        let spec = read("app = \"orders\"\n[run]\ncommand = \"./orders\"\n");
        assert_eq!(queue_from_spec(spec.as_ref(), &path).unwrap(), "orders");
        assert_eq!(endpoint_from_spec(spec.as_ref()), DEFAULT_ENDPOINT);
        let spec = read("app = \"orders\"\n[queue]\nname = \"orders-in\"\nport = 9400\n");
        assert_eq!(queue_from_spec(spec.as_ref(), &path).unwrap(), "orders-in");
        assert_eq!(endpoint_from_spec(spec.as_ref()), "http://127.0.0.1:9400");
        let spec = read("app = \"o\"\n[queue]\nendpoint = \"https://sqs.eu-west-1.amazonaws.com\"\n");
        assert_eq!(endpoint_from_spec(spec.as_ref()), "https://sqs.eu-west-1.amazonaws.com");
        let spec = read("[run]\ncommand = \"x\"\n");
        let err = queue_from_spec(spec.as_ref(), &path).unwrap_err().to_string();
        assert!(err.contains("app"), "{err}");
        std::fs::write(&path, "app = ").unwrap();
        assert!(load_spec(&path).unwrap_err().to_string().contains("not valid TOML"));
        let missing = dir.path().join("missing.toml");
        assert!(load_spec(&missing).unwrap().is_none());
        assert!(queue_from_spec(None, &missing).unwrap_err().to_string().contains("--queue"));
        assert_eq!(endpoint_from_spec(None), DEFAULT_ENDPOINT);
    }
}
