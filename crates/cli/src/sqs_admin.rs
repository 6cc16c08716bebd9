//! The pipeline's `QueueControl` and `TelemetrySource` over an SQS coalmine does not run (Amazon SQS, moto, LocalStack,
//! another coalmine): depth from `GetQueueAttributes`, per-task telemetry from the queue
//! proxies' reports on the telemetry queue, dead letters attributed by the failures the proxies
//! reported, and a selective redrive that is journaled step by step.
//!
//! What SQS cannot do is said, not faked: it cannot make visible the messages another consumer
//! holds (`release_in_flight` moves nothing: each task's proxy hands its messages back when the
//! task stops), and it knows no message's last receiver (only the proxies' reports do).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use coalmine_pipeline::now_ms;
use coalmine_pipeline::queue_admin::{ConsumerCounts, DeadLetter, InFlight, QueueAdminError, QueueControl, TelemetrySource, QueueDepth, RedriveAll};
use coalmine_proxy::collect::Collector;
use coalmine_proxy::telemetry::Report;
use coalmine_runtime::TaskIdentity;
use coalmine_spec::AppSpec;

/// A DLQ scan is reused this long (the engine asks several times a tick).
const DLQ_CACHE: Duration = Duration::from_secs(2);
/// Receives of one DLQ scan at most (10 messages each).
const DLQ_SCAN_RECEIVES: usize = 100;
/// How long a scanned DLQ message stays invisible before the scan hands it back.
const SCAN_VISIBILITY: i32 = 30;
/// The telemetry queue's retention: reports are read within seconds; older ones are useless.
const TELEMETRY_RETENTION_S: u64 = 600;

/// What SQS cannot tell or do, and what stands in for it (shown with the queue's depth).
const LACKS: &[&str] = &[
    "oldest_age_ms: SQS tells the oldest message's age only through CloudWatch",
    "release held messages: SQS cannot make visible what another consumer holds; each task's proxy hands its messages back when the task stops",
    "last receiver of a dead letter: SQS does not say; coalmine attributes it from the failures the proxies reported",
    "message ids across a redrive: SQS gives a redriven message a new id",
];

fn err(e: impl std::fmt::Display) -> QueueAdminError {
    QueueAdminError(e.to_string())
}

fn sdk_err<E: std::error::Error + 'static>(what: &str, e: aws_sdk_sqs::error::SdkError<E>) -> QueueAdminError {
    QueueAdminError(format!("{what}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
}

/// The app's queue, its DLQ and the telemetry queue on an external SQS.
pub struct SqsQueue {
    client: Client,
    /// Its own runtime (the engine calls from plain threads and from the API's handlers);
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    pub queue_url: String,
    pub dlq_url: String,
    collector: Arc<Mutex<Collector>>,
    dlq: Mutex<Option<(Instant, Vec<DeadLetter>)>>,
    /// Message ids each task's failures sent to the DLQ (seen there by a scan).
    dead_seen: Mutex<HashMap<String, HashSet<String>>>,
    journal: PathBuf,
    /// ECS service names -> coalmine's (`primary`, `canary`): on ECS a proxy names its task's
    /// service from the task metadata.
    services: HashMap<String, String>,
}

/// An SQS client for `[queue]`: its region and endpoint, credentials from the standard chain.
pub async fn client(spec: &AppSpec) -> Client {
    let q = &spec.queue;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(q.region.clone()))
        .load()
        .await;
    let mut conf = aws_sdk_sqs::config::Builder::from(&sdk);
    if let Some(e) = &q.endpoint {
        conf = conf.endpoint_url(e);
    }
    Client::from_conf(conf.build())
}

/// Find a queue, or create it with `attrs`; an existing queue whose attributes differ is
/// adopted as it is, and the differences are reported.
async fn ensure(client: &Client, name: &str, attrs: &BTreeMap<QueueAttributeName, String>) -> anyhow::Result<(String, Vec<String>)> {
    let found = match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => Some(out),
        // Only "no such queue" means create it; anything else (unreachable, refused) is said.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_queue_does_not_exist()) => None,
        Err(e) => anyhow::bail!("looking up the queue `{name}`: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)),
    };
    if let Some(out) = found {
        let url = out.queue_url().unwrap_or_default().to_string();
        let have = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("reading the attributes of `{name}`: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
        let have = have.attributes().cloned().unwrap_or_default();
        let mut differences = Vec::new();
        for (k, want) in attrs {
            let got = have.get(k).map(String::as_str).unwrap_or("(unset)");
            let same = match k {
                QueueAttributeName::RedrivePolicy => serde_json::from_str::<serde_json::Value>(got).ok().is_some_and(|g| {
                    let w: serde_json::Value = serde_json::from_str(want).unwrap_or_default();
                    g["deadLetterTargetArn"] == w["deadLetterTargetArn"] && g["maxReceiveCount"].to_string().trim_matches('"') == w["maxReceiveCount"].to_string()
                }),
                _ => got == want,
            };
            if !same {
                differences.push(format!("queue `{name}`: {} is {got}, coalmine.toml asks for {want}", k.as_str()));
            }
        }
        return Ok((url, differences));
    }
    let out = client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating the queue `{name}`: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
    tracing::info!(queue = name, "queue created");
    Ok((out.queue_url().unwrap_or_default().to_string(), Vec::new()))
}

impl SqsQueue {
    /// Connect, create or adopt the queue, DLQ and telemetry queue with the file's settings
    /// (the guidance's by default), and start reading the proxies' reports.
    pub fn connect(spec: &AppSpec, state: &std::path::Path) -> anyhow::Result<(SqsQueue, Vec<String>)> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let q = &spec.queue;
        let (client, dlq_url, queue_url, telemetry_url, differences) = rt.block_on(async {
            let client = client(spec).await;
            let mut differences = Vec::new();
            let dlq_attrs = BTreeMap::from([(QueueAttributeName::MessageRetentionPeriod, q.dlq_retention.as_secs().to_string())]);
            let (dlq_url, d) = ensure(&client, &q.dlq, &dlq_attrs).await?;
            differences.extend(d);
            let dlq_arn = client
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("reading the DLQ's ARN: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                .context("the DLQ has no QueueArn attribute")?;
            let attrs = BTreeMap::from([
                (QueueAttributeName::VisibilityTimeout, q.visibility_timeout.as_secs().to_string()),
                (
                    QueueAttributeName::RedrivePolicy,
                    serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": q.max_receive_count}).to_string(),
                ),
            ]);
            let (queue_url, d) = ensure(&client, &q.name, &attrs).await?;
            differences.extend(d);
            let tattrs = BTreeMap::from([(QueueAttributeName::MessageRetentionPeriod, TELEMETRY_RETENTION_S.to_string())]);
            let (telemetry_url, _) = ensure(&client, &coalmine_proxy::telemetry_queue_name(&spec.app), &tattrs).await?;
            anyhow::Ok((client, dlq_url, queue_url, telemetry_url, differences))
        })?;
        let collector = Arc::new(Mutex::new(Collector::default()));
        rt.spawn(read_reports(client.clone(), telemetry_url, collector.clone()));
        let sqs = SqsQueue {
            client,
            rt: Some(rt),
            queue_url,
            dlq_url,
            collector,
            dlq: Mutex::new(None),
            dead_seen: Mutex::new(HashMap::new()),
            journal: state.join("sqs-redrive.journal"),
            services: spec
                .runtime
                .ecs()
                .map(|e| HashMap::from([(e.primary_service.clone(), "primary".to_string()), (e.canary_service.clone(), "canary".to_string())]))
                .unwrap_or_default(),
        };
        Ok((sqs, differences))
    }

    /// Run `fut` on this queue's own runtime and wait for it (callable from any thread, also
    /// from inside another tokio runtime).
    fn run<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, QueueAdminError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let rt = self.rt.as_ref().ok_or_else(|| QueueAdminError("the SQS client is shutting down".into()))?;
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(Duration::from_secs(60)).map_err(|_| QueueAdminError("the SQS request did not finish within 60 s".into()))
    }

    /// Receive everything in the DLQ for a moment: (message, receipt) pairs, not yet handed back.
    fn scan_dlq(&self) -> Result<Vec<Message>, QueueAdminError> {
        let (client, url) = (self.client.clone(), self.dlq_url.clone());
        self.run(async move {
            let mut out: Vec<Message> = Vec::new();
            let mut seen = HashSet::new();
            for _ in 0..DLQ_SCAN_RECEIVES {
                let r = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .visibility_timeout(SCAN_VISIBILITY)
                    .wait_time_seconds(0)
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .message_attribute_names("All")
                    .send()
                    .await
                    .map_err(|e| sdk_err("receiving from the DLQ", e))?;
                let batch = r.messages().to_vec();
                if batch.is_empty() {
                    break;
                }
                for m in batch {
                    if seen.insert(m.message_id().unwrap_or_default().to_string()) {
                        out.push(m);
                    }
                }
            }
            Ok(out)
        })?
    }

    /// Make these DLQ messages visible again now.
    fn hand_back(&self, messages: Vec<Message>) -> Result<(), QueueAdminError> {
        let (client, url) = (self.client.clone(), self.dlq_url.clone());
        self.run(async move {
            for chunk in messages.chunks(10) {
                let entries: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        ChangeMessageVisibilityBatchRequestEntry::builder().id(i.to_string()).receipt_handle(m.receipt_handle()?).visibility_timeout(0).build().ok()
                    })
                    .collect();
                if let Err(e) = client.change_message_visibility_batch().queue_url(&url).set_entries(Some(entries)).send().await {
                    tracing::warn!("handing scanned DLQ messages back (they come back within {SCAN_VISIBILITY} s): {}", aws_sdk_sqs::error::DisplayErrorContext(&e));
                }
            }
        })
    }

    /// The access key id coalmine knows a task by (`CM.<service>.<revision>.<n>`), from what
    /// its proxy reports.
    fn key(&self, service: &str, revision: &str, task: &str) -> String {
        key_of(&self.services, service, revision, task)
    }

    fn receiver_of(&self, message_id: &str) -> Option<String> {
        let c = self.collector.lock().unwrap();
        c.last_receiver(message_id).map(|(service, revision, task)| self.key(service, revision, task))
    }

    fn journal_read(&self) -> HashSet<String> {
        std::fs::read_to_string(&self.journal)
            .map(|t| t.lines().filter_map(|l| l.strip_prefix("sent ")).map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn journal_write(&self, line: &str) -> Result<(), QueueAdminError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .map_err(|e| err(format!("{}: {e}", self.journal.display())))?;
        writeln!(f, "{line}").and_then(|_| f.sync_data()).map_err(|e| err(format!("{}: {e}", self.journal.display())))
    }
}

fn key_of(services: &HashMap<String, String>, service: &str, revision: &str, task: &str) -> String {
    let service = services.get(service).map_or(service, String::as_str);
    TaskIdentity { service: service.to_string(), revision: revision.to_string(), task: task.to_string() }.access_key_id()
}

impl SqsQueue {
    /// Receive the DLQ, send the messages `chosen` picks (by id) to the app's queue and delete them from the
    /// DLQ, handing the others back at once. Each send is journaled before its delete, so a
    /// crash between the two deletes the DLQ copy on the next try instead of sending it again.
    fn move_back(&self, chosen: impl Fn(&str) -> bool) -> Result<usize, QueueAdminError> {
        let messages = self.scan_dlq()?;
        *self.dlq.lock().unwrap() = None;
        let (chosen, others): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(|m| m.message_id().is_some_and(&chosen));
        self.hand_back(others)?;
        let sent_before = self.journal_read();
        let mut moved = 0;
        for m in chosen {
            let id = m.message_id().unwrap_or_default().to_string();
            if !sent_before.contains(&id) {
                let (client, url, m2) = (self.client.clone(), self.queue_url.clone(), m.clone());
                self.run(async move {
                    client
                        .send_message()
                        .queue_url(url)
                        .message_body(m2.body().unwrap_or_default())
                        .set_message_attributes(m2.message_attributes().cloned())
                        .send()
                        .await
                        .map_err(|e| sdk_err("sending a redriven message to the queue", e))
                })??;
                self.journal_write(&format!("sent {id}"))?;
            }
            let (client, url, receipt) = (self.client.clone(), self.dlq_url.clone(), m.receipt_handle().unwrap_or_default().to_string());
            self.run(async move {
                client.delete_message().queue_url(url).receipt_handle(receipt).send().await.map_err(|e| sdk_err("deleting a redriven message from the DLQ", e))
            })??;
            self.journal_write(&format!("done {id}"))?;
            moved += 1;
        }
        Ok(moved)
    }
}

impl Drop for SqsQueue {
    fn drop(&mut self) {
        // Without blocking: the last reference may go inside an async task.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Read the proxies' reports for as long as the queue exists.
async fn read_reports(client: Client, url: String, collector: Arc<Mutex<Collector>>) {
    let mut failing = false;
    loop {
        let r = client.receive_message().queue_url(&url).max_number_of_messages(10).wait_time_seconds(1).send().await;
        let messages = match r {
            Ok(r) => {
                if failing {
                    tracing::info!("the telemetry queue answers again");
                    failing = false;
                }
                r.messages().to_vec()
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("reading the telemetry queue: {}", aws_sdk_sqs::error::DisplayErrorContext(&e));
                    failing = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut done = Vec::new();
        {
            let mut c = collector.lock().unwrap();
            for (i, m) in messages.iter().enumerate() {
                match Report::parse(m.body().unwrap_or_default()) {
                    Ok(report) => c.add(report),
                    Err(e) => {
                        c.refused += 1;
                        tracing::warn!(message_id = m.message_id().unwrap_or_default(), "not a telemetry report, dropped: {e}");
                    }
                }
                if let Some(h) = m.receipt_handle() {
                    if let Ok(e) = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(h).build() {
                        done.push(e);
                    }
                }
            }
            c.forget_before(now_ms().saturating_sub(30 * 60_000));
        }
        if !done.is_empty() {
            if let Err(e) = client.delete_message_batch().queue_url(&url).set_entries(Some(done)).send().await {
                tracing::debug!("deleting read reports (they are read again, and ignored): {}", aws_sdk_sqs::error::DisplayErrorContext(&e));
            }
        }
    }
}

impl QueueControl for SqsQueue {
    fn depth(&self) -> Result<QueueDepth, QueueAdminError> {
        let (client, q, d) = (self.client.clone(), self.queue_url.clone(), self.dlq_url.clone());
        self.run(async move {
            let get = |url: String| {
                let client = client.clone();
                async move {
                    let out = client
                        .get_queue_attributes()
                        .queue_url(&url)
                        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                        .send()
                        .await
                        .map_err(|e| sdk_err("GetQueueAttributes", e))?;
                    let a = out.attributes().cloned().unwrap_or_default();
                    let n = |k: QueueAttributeName| a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    Ok::<_, QueueAdminError>((
                        n(QueueAttributeName::ApproximateNumberOfMessages),
                        n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
                        n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
                    ))
                }
            };
            let (v, i, dl) = get(q).await?;
            let (dv, di, _) = get(d).await?;
            Ok(QueueDepth {
                visible: v,
                in_flight: i,
                delayed: dl,
                oldest_age_ms: 0,
                dlq_visible: dv,
                dlq_in_flight: di,
                backend: "sqs".into(),
                lacks: LACKS.iter().map(|s| s.to_string()).collect(),
            })
        })?
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueAdminError> {
        if let Some((at, cached)) = self.dlq.lock().unwrap().as_ref() {
            if at.elapsed() < DLQ_CACHE {
                return Ok(cached.clone());
            }
        }
        let messages = self.scan_dlq()?;
        let out: Vec<DeadLetter> = messages
            .iter()
            .map(|m| {
                let id = m.message_id().unwrap_or_default().to_string();
                let released_at_stop = self.collector.lock().unwrap().released_at_stop(&id);
                DeadLetter { last_receiver: self.receiver_of(&id), message_id: id, released_at_stop }
            })
            .collect();
        self.hand_back(messages)?;
        {
            let mut dead = self.dead_seen.lock().unwrap();
            for d in &out {
                if let Some(k) = &d.last_receiver {
                    dead.entry(k.clone()).or_default().insert(d.message_id.clone());
                }
            }
        }
        *self.dlq.lock().unwrap() = Some((Instant::now(), out.clone()));
        Ok(out)
    }

    fn redrive(&self, message_ids: &[String]) -> Result<usize, QueueAdminError> {
        let wanted: HashSet<&str> = message_ids.iter().map(String::as_str).collect();
        self.move_back(|id| wanted.contains(id))
    }

    /// SQS's own message move task (StartMessageMoveTask, as the console's "DLQ redrive");
    /// where the endpoint does not offer it (moto, older emulators), coalmine's journaled
    /// move of every message the DLQ holds now.
    fn redrive_all(&self) -> Result<RedriveAll, QueueAdminError> {
        let (client, dlq, queue) = (self.client.clone(), self.dlq_url.clone(), self.queue_url.clone());
        let started = self.run(async move {
            let arn = |url: String| {
                let client = client.clone();
                async move {
                    client
                        .get_queue_attributes()
                        .queue_url(url)
                        .attribute_names(QueueAttributeName::QueueArn)
                        .send()
                        .await
                        .map_err(|e| sdk_err("reading a queue's ARN", e))?
                        .attributes()
                        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                        .ok_or_else(|| QueueAdminError("the queue has no QueueArn attribute".into()))
                }
            };
            let (source, destination) = (arn(dlq).await?, arn(queue).await?);
            match client.start_message_move_task().source_arn(&source).destination_arn(&destination).send().await {
                Ok(out) => Ok(Some(out.task_handle().unwrap_or_default().to_string())),
                Err(e) => {
                    let code = e.as_service_error().and_then(|s| aws_sdk_sqs::error::ProvideErrorMetadata::code(s).map(str::to_string));
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    // Not offered here: an unknown action, no such route, or an answer that is
                    // no SQS error at all (moto answers an HTML page); AWS's errors have codes.
                    let unknown = match code.as_deref() {
                        Some(c) => matches!(c, "InvalidAction" | "UnknownOperationException" | "UnsupportedOperation"),
                        None => e.as_service_error().is_some(),
                    };
                    if unknown || matches!(status, Some(404 | 501)) {
                        tracing::info!("the SQS endpoint offers no StartMessageMoveTask ({}); moving the messages one by one", code.unwrap_or_default());
                        Ok(None)
                    } else {
                        Err(sdk_err("StartMessageMoveTask", e))
                    }
                }
            }
        })??;
        if let Some(handle) = started {
            return Ok(RedriveAll { moved: None, move_task: Some(handle), how: "started an SQS message move task from the DLQ to the queue".into() });
        }
        let moved = self.move_back(|_| true)? as u64;
        Ok(RedriveAll { moved: Some(moved), move_task: None, how: format!("moved {moved} message(s) one by one (send, then delete from the DLQ; journaled)") })
    }

    fn release_in_flight(&self, _access_key_ids: &[String]) -> Result<usize, QueueAdminError> {
        // SQS cannot make visible what another consumer holds; each task's proxy does it when
        // its task stops.
        Ok(0)
    }
}

impl TelemetrySource for SqsQueue {
    fn consumers(&self, since_ms: u64) -> Result<Vec<ConsumerCounts>, QueueAdminError> {
        let window = self.collector.lock().unwrap().window(since_ms, now_ms());
        let dead = self.dead_seen.lock().unwrap();
        Ok(window
            .into_iter()
            .map(|t| {
                let access_key_id = self.key(&t.service, &t.revision, &t.task);
                ConsumerCounts {
                    dead_lettered: dead.get(&access_key_id).map_or(0, |s| s.len() as u64),
                    access_key_id,
                    received: t.received,
                    deleted: t.deleted,
                    returned: t.returned,
                    released: t.released,
                    expired: t.expired,
                    latencies_ms: t.latencies_ms,
                    warm_latencies_ms: t.warm_latencies_ms,
                    failures_since_success: t.failures_since_success,
                    last_success_ms: t.last_success_ms,
                }
            })
            .collect())
    }

    fn in_flight(&self) -> Result<Vec<InFlight>, QueueAdminError> {
        let now = now_ms();
        let window = self.collector.lock().unwrap().window(now.saturating_sub(30 * 60_000), now);
        Ok(window
            .into_iter()
            .flat_map(|t| {
                let key = self.key(&t.service, &t.revision, &t.task);
                // The proxies report how long, not which: SQS does not say who holds a message.
                t.held_ms.into_iter().map(move |age| InFlight { message_id: String::new(), access_key_id: key.clone(), received_at_ms: now.saturating_sub(age) })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::key_of;
    use std::collections::{BTreeSet, HashMap};

    /// The SQS operations this file calls (`client.<operation>()`, across line breaks), as IAM
    /// actions (a batch is authorised by the action without `Batch`).
    fn actions(source: &str) -> BTreeSet<String> {
        let compact: String = source.split_whitespace().collect();
        let mut out = BTreeSet::new();
        for (i, _) in compact.match_indices("client.") {
            let rest = &compact[i + "client.".len()..];
            let op: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if op.is_empty() || !rest[op.len()..].starts_with("()") || op == "clone" {
                continue;
            }
            let camel: String = op.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            out.insert(format!("sqs:{}", camel.trim_end_matches("Batch")));
        }
        out
    }

    #[test]
    fn every_sqs_call_of_the_controller_is_granted_by_the_synth_role() {
        let calls = actions(include_str!("sqs_admin.rs"));
        for expected in ["sqs:ReceiveMessage", "sqs:StartMessageMoveTask", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"] {
            assert!(calls.contains(expected), "the scan missed {expected}: {calls:?}");
        }
        let granted: BTreeSet<&str> =
            coalmine_synth::policy::CONTROLLER_QUEUES.iter().chain(coalmine_synth::policy::CONTROLLER_TELEMETRY).copied().collect();
        // CreateQueue only runs when a queue is missing: the stack creates all three.
        let missing: Vec<_> = calls.iter().filter(|a| !granted.contains(a.as_str()) && *a != "sqs:CreateQueue").collect();
        assert!(missing.is_empty(), "the controller calls {missing:?}, which synth's controller role does not grant");
    }

    #[test]
    fn a_proxys_identity_is_the_tasks_key_with_ecs_service_names_mapped() {
        let local = HashMap::new();
        assert_eq!(key_of(&local, "canary", "4f1e2d3", "canary-1"), "CM.canary.4f1e2d3.1");
        let ecs = HashMap::from([("orders".to_string(), "primary".to_string()), ("orders-canary".to_string(), "canary".to_string())]);
        assert_eq!(key_of(&ecs, "orders-canary", "4f1e2d3", "0123abcd"), "CM.canary.4f1e2d3.0123abcd");
        assert_eq!(key_of(&ecs, "orders", "4f1e2d3", "9a8b"), "CM.primary.4f1e2d3.9a8b");
    }
}
