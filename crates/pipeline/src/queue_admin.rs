//! How the pipeline sees the queue: what moves messages ([`QueueControl`]) apart from what
//! measures ([`TelemetrySource`]), as Flagger keeps routers apart from metric providers; one
//! implementation of each per backend (the embedded queue, any SQS through the queue proxies),
//! wired in by the binary. What a backend cannot tell or do it names in [`QueueDepth::lacks`].

pub use coalmine_analysis::Timings;
use serde::Serialize;

/// What went wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
#[error("queue: {0}")]
pub struct QueueAdminError(pub String);

/// Counts of what one consumer (one access key id, i.e. one task) did, over a window.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ConsumerCounts {
    pub access_key_id: String,
    pub received: u64,
    /// Deleted: processed successfully.
    pub deleted: u64,
    /// Handed back with visibility 0 by the consumer.
    pub returned: u64,
    /// Made visible again by coalmine (a rolled-back revision's held messages).
    pub released: u64,
    /// Visibility timeout ran out.
    pub expired: u64,
    pub dead_lettered: u64,
    /// Receive-to-delete times of the deleted messages, in milliseconds (a histogram: time in
    /// µs -> messages).
    #[schema(value_type = Object)]
    pub latencies_ms: Timings,
    /// The same, without the consumer's first messages in the window (warm-up: a task's first
    /// messages pay for its start, connections and caches); what the latency alarm judges.
    #[schema(value_type = Object)]
    pub warm_latencies_ms: Timings,
    /// Failures since this consumer's last success.
    pub failures_since_success: u64,
    /// When this consumer last deleted a message (Unix ms, to the second); `None`: not in the window.
    pub last_success_ms: Option<u64>,
}

/// Depths of the app's queue and its DLQ, and conservation counters.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub oldest_age_ms: u64,
    pub dlq_visible: u64,
    pub dlq_in_flight: u64,
    /// The queue's backend: `embedded`, or `sqs` (any SQS, through the queue proxies).
    #[serde(default)]
    pub backend: String,
    /// What this backend cannot tell or do, each with what stands in for it (empty on the
    /// embedded queue). Fields it cannot tell read 0 and are named here.
    #[serde(default)]
    pub lacks: Vec<String>,
}

/// A message held by a consumer right now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InFlight {
    pub message_id: String,
    pub access_key_id: String,
    pub received_at_ms: u64,
}

/// A message in the DLQ, with the consumer that received it last.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub message_id: String,
    pub last_receiver: Option<String>,
    /// Its last receiver did not fail it: the task stopped holding it and handed it back
    /// unprocessed, and the queue counted that receive towards the DLQ (SQS does; the embedded
    /// queue undoes the receive of a message it releases, so there this is never true).
    pub released_at_stop: bool,
}

/// What a redrive of the whole DLQ did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RedriveAll {
    /// Messages moved, when known at once (a move task on SQS moves them afterwards).
    pub moved: Option<u64>,
    /// The SQS message move task's handle, when the backend started one.
    pub move_task: Option<String>,
    /// How it was done, in words.
    pub how: String,
}

/// What moves messages, and how deep the queues are: the queue's own API (any SQS has it).
pub trait QueueControl: Send + Sync {
    fn depth(&self) -> Result<QueueDepth, QueueAdminError>;
    fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueAdminError>;
    /// Move these DLQ messages back to the app's queue; returns how many moved.
    fn redrive(&self, message_ids: &[String]) -> Result<usize, QueueAdminError>;
    /// Move every DLQ message back to the app's queue (a person's decision: it includes what
    /// healthy revisions failed).
    fn redrive_all(&self) -> Result<RedriveAll, QueueAdminError>;
    /// Make the messages these consumers hold visible again now; returns how many.
    fn release_in_flight(&self, access_key_ids: &[String]) -> Result<usize, QueueAdminError>;
}

/// What measures: per consumer (task), what it did and what it holds. The embedded queue sees
/// it itself; on any other SQS the queue proxies report it.
pub trait TelemetrySource: Send + Sync {
    /// Per consumer of the app's queue, counts since `since_ms` (Unix milliseconds).
    fn consumers(&self, since_ms: u64) -> Result<Vec<ConsumerCounts>, QueueAdminError>;
    /// The messages consumers hold now.
    fn in_flight(&self) -> Result<Vec<InFlight>, QueueAdminError>;
}
