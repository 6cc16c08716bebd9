//! The broker: one implementation of every SQS action over the in-memory state, with the
//! durable log behind it, and the Rust admin API the rest of coalmine uses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::digest::{md5_hex, md5_of_attributes};
use crate::error::{QueueError, SqsError};
use crate::protocol::json;
use crate::model::*;
use crate::store::{Op, QueueRow, Store};
use crate::telemetry::{ConsumerTelemetry, Event, Telemetry};

/// Whether a request waits for its changes to be committed to disk before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Answer after the change is committed (a `kill -9` loses nothing acknowledged).
    #[default]
    Commit,
    /// Answer at once; the change is committed shortly after.
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "commit" => Ok(Durability::Commit),
            "none" => Ok(Durability::None),
            _ => Err(format!("durability must be `commit` or `none`, not `{s}`")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Folder of `queue.db`.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Region used in queue ARNs.
    pub region: String,
    /// `host:port` used in queue URLs made outside a request (admin API); requests use their
    /// own Host header. Set by [`Broker::serve`] when unset.
    pub public_host: Option<String>,
    /// When set, every request must carry a valid SigV4 signature by one of these keys.
    pub credentials: Option<crate::sigv4::Credentials>,
    /// Connection, size and time limits of the HTTP server.
    pub limits: crate::http::Limits,
    /// The account id in queue URLs and ARNs (12 digits); URLs naming another are refused.
    pub account_id: String,
    /// Web origins (`https://host:port`, or `*`) whose pages may call the queue from a
    /// browser; requests from any other origin are refused. Empty by default.
    pub allowed_origins: Vec<String>,
    /// Messages in flight per queue before ReceiveMessage answers `OverLimit` (SQS: 120,000;
    /// lower only to test clients against the limit).
    pub max_in_flight: usize,
}

impl BrokerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig { data_dir: data_dir.into(), durability: Durability::Commit, region: "us-east-1".into(), public_host: None, credentials: None, limits: Default::default(), max_in_flight: MAX_IN_FLIGHT, account_id: ACCOUNT.to_string(), allowed_origins: Vec::new() }
    }
}

/// Depth of one queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    /// Age of the oldest message (ms), 0 when empty.
    pub oldest_age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InFlightMessage {
    pub message_id: String,
    pub access_key_id: String,
    pub received_at_ms: u64,
    pub receive_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    /// Name of the queue it came from.
    pub source_queue: String,
    /// Access key id of the last consumer that received it.
    pub last_receiver: Option<String>,
    pub moved_at_ms: u64,
    pub receive_count: u32,
    pub body: String,
}

/// Who made a request, and where it came in.
pub struct Ctx {
    pub access_key: Arc<str>,
    /// `host:port` for queue URLs.
    pub host: String,
    pub now_ms: u64,
    /// Set by actions that change state: the store ticket to wait for.
    pub ticket: u64,
    pub(crate) durable: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    /// `access_key` interned (looked up once per request, not once per message).
    key: KeyId,
}

impl Ctx {
    pub fn new(access_key: &str, host: &str) -> Ctx {
        let key = KeyId::intern(access_key);
        let access_key = key.get().unwrap_or_else(|| Arc::from(access_key));
        Ctx { access_key, host: host.to_string(), now_ms: now_ms(), ticket: 0, durable: None, key }
    }

    /// The interned access key id (interned again if `access_key` was changed since).
    fn key_id(&self) -> KeyId {
        if self.key.is(&self.access_key) {
            self.key.clone()
        } else {
            KeyId::intern(&self.access_key)
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub(crate) struct MoveTask {
    pub handle: String,
    pub source: String,
    pub dest: Option<String>,
    pub rate: Option<u64>,
    pub status: &'static str,
    pub moved: u64,
    pub to_move: u64,
    pub started_ms: u64,
}

pub(crate) struct State {
    /// Queues deleted in the last 60 s (name -> when, ms): their names are not free yet.
    pub deleted: HashMap<String, u64>,
    pub queues: HashMap<String, Queue>,
    pub next_seq: u64,
    pub telemetry: Telemetry,
    pub tasks: Vec<MoveTask>,
}

pub(crate) struct Inner {
    pub state: Mutex<State>,
    pub store: Store,
    pub cfg: BrokerConfig,
    pub metrics: crate::metrics::Metrics,
    pub public_host: Mutex<String>,
    pub background: std::sync::atomic::AtomicBool,
    pub polls_waiting: std::sync::atomic::AtomicI64,
    /// When a request last tried to reload a broken store (Unix ms): at most one try per
    /// 200 ms, so a store that cannot be read is not re-read by every request.
    pub reload_tried_ms: std::sync::atomic::AtomicU64,
}

/// A handle on the broker; clones share it.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

fn s<'a>(req: &'a Value, name: &str) -> Option<&'a str> {
    req.get(name).and_then(Value::as_str)
}

fn req_str<'a>(req: &'a Value, name: &str) -> Result<&'a str, SqsError> {
    match req.get(name) {
        None | Some(Value::Null) => Err(SqsError::missing_parameter(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(SqsError::invalid_parameter(format!("The parameter {name} must be a string."))),
    }
}

fn int(req: &Value, name: &str) -> Result<Option<i64>, SqsError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| SqsError::invalid_parameter(format!("Value {n} for parameter {name} is invalid. Reason: must be an integer."))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| SqsError::invalid_parameter(format!("Value {s} for parameter {name} is invalid. Reason: must be an integer."))),
        Some(v) => Err(SqsError::invalid_parameter(format!("Value {v} for parameter {name} is invalid. Reason: must be an integer."))),
    }
}

fn int_range(req: &Value, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, SqsError> {
    opt_range(name, int(req, name)?, lo, hi)
}

fn opt_range(name: &str, v: Option<i64>, lo: i64, hi: i64) -> Result<Option<i64>, SqsError> {
    match v {
        Some(n) if n < lo || n > hi => Err(SqsError::invalid_parameter(format!(
            "Value {n} for parameter {name} is invalid. Reason: Must be between {lo} and {hi}, if provided."
        ))),
        other => Ok(other),
    }
}

fn str_map(req: &Value, name: &str) -> Result<BTreeMap<String, String>, SqsError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(n) => Ok((k.clone(), n.to_string())),
                Value::Bool(b) => Ok((k.clone(), b.to_string())),
                _ => Err(SqsError::invalid_parameter(format!("{name}.{k} must be a string."))),
            })
            .collect(),
        Some(_) => Err(SqsError::invalid_parameter(format!("{name} must be a map of strings."))),
    }
}

fn str_list(req: &Value, name: &str) -> Vec<String> {
    req.get(name)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The queue name of a queue URL (its last path segment).
pub fn queue_name_from_url(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

fn receipt(seq: u64, nonce: u32) -> String {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    b[8..].copy_from_slice(&nonce.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn parse_receipt(h: &str) -> Result<(u64, u32), SqsError> {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h.trim()).map_err(|_| SqsError::receipt_handle_invalid(h))?;
    if b.len() != 12 {
        return Err(SqsError::receipt_handle_invalid(h));
    }
    let seq = u64::from_be_bytes(b[..8].try_into().unwrap());
    let nonce = u32::from_be_bytes(b[8..].try_into().unwrap());
    if nonce == 0 {
        return Err(SqsError::receipt_handle_invalid(h));
    }
    Ok((seq, nonce))
}

fn batch_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 80 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Validate a batch's entries (count, ids) and return them.
fn batch_entries(req: &Value) -> Result<&Vec<Value>, SqsError> {
    static EMPTY: Vec<Value> = Vec::new();
    let entries = match req.get("Entries") {
        None | Some(Value::Null) => &EMPTY,
        Some(Value::Array(a)) => a,
        Some(_) => return Err(SqsError::invalid_parameter("Entries must be a list.")),
    };
    check_batch_ids(entries.iter().map(|e| s(e, "Id")), entries.len())?;
    Ok(entries)
}

/// A batch's checks of its entries' count and ids, in SQS's order.
fn check_batch_ids<'a>(ids: impl Iterator<Item = Option<&'a str>>, n: usize) -> Result<(), SqsError> {
    if n == 0 {
        return Err(SqsError::empty_batch());
    }
    if n > 10 {
        return Err(SqsError::too_many_entries(n));
    }
    let mut seen = HashSet::new();
    for id in ids {
        let id = id.ok_or_else(|| SqsError::missing_parameter("Id"))?;
        if !batch_id_ok(id) {
            return Err(SqsError::invalid_batch_entry_id(id));
        }
        if !seen.insert(id) {
            return Err(SqsError::ids_not_distinct(id));
        }
    }
    Ok(())
}

/// One message to send, as SendMessage or a batch entry gives it. A parameter's error is kept
/// until its check's turn, so that a request with several faults gets the same error either way.
pub(crate) struct SendArgs<'a> {
    body: Result<&'a str, SqsError>,
    attrs: Result<Option<&'a Map<String, Value>>, SqsError>,
    sys_attrs: Option<&'a Map<String, Value>>,
    delay: Result<Option<i64>, SqsError>,
    group: Option<&'a str>,
    dedup: Option<&'a str>,
}

impl<'a> SendArgs<'a> {
    fn from_value(req: &'a Value) -> Self {
        SendArgs {
            body: match req.get("MessageBody") {
                Some(Value::String(b)) if !b.is_empty() => Ok(b),
                Some(Value::String(_)) | None | Some(Value::Null) => Err(SqsError::missing_parameter("MessageBody")),
                Some(_) => Err(SqsError::invalid_parameter("MessageBody must be a string.")),
            },
            attrs: match req.get("MessageAttributes") {
                Some(Value::Object(m)) => Ok(Some(m)),
                None | Some(Value::Null) => Ok(None),
                Some(_) => Err(SqsError::invalid_parameter("MessageAttributes must be a map.")),
            },
            sys_attrs: req.get("MessageSystemAttributes").and_then(Value::as_object),
            delay: int_range(req, "DelaySeconds", 0, 900),
            group: s(req, "MessageGroupId"),
            dedup: s(req, "MessageDeduplicationId"),
        }
    }

    fn from_typed(e: &'a json::SendEntry<'a>) -> Self {
        SendArgs {
            body: match e.message_body.as_deref() {
                Some(b) if !b.is_empty() => Ok(b),
                _ => Err(SqsError::missing_parameter("MessageBody")),
            },
            attrs: Ok(e.message_attributes.as_ref()),
            sys_attrs: e.message_system_attributes.as_ref(),
            delay: opt_range("DelaySeconds", e.delay_seconds, 0, 900),
            group: e.message_group_id.as_deref(),
            dedup: e.message_deduplication_id.as_deref(),
        }
    }

    /// Bytes counted against a batch's total: the body and the message attributes.
    fn size(&self) -> usize {
        self.body.as_ref().map(|b| b.len()).unwrap_or(0)
            + self.attrs.as_ref().ok().copied().flatten().map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        k.len()
                            + s(v, "DataType").map(str::len).unwrap_or(0)
                            + s(v, "StringValue").map(str::len).unwrap_or(0)
                            + s(v, "BinaryValue").map(|b| b.len() * 3 / 4).unwrap_or(0)
                    })
                    .sum::<usize>()
            }).unwrap_or(0)
    }
}

/// What sending one message answers (a batch entry's answer adds its `Id`).
#[derive(serde::Serialize)]
pub(crate) struct Sent {
    #[serde(rename = "Id", skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "MD5OfMessageBody")]
    md5_body: String,
    #[serde(rename = "MD5OfMessageAttributes", skip_serializing_if = "Option::is_none")]
    md5_attrs: Option<String>,
    #[serde(rename = "MD5OfMessageSystemAttributes", skip_serializing_if = "Option::is_none")]
    md5_sys: Option<String>,
    #[serde(rename = "SequenceNumber", skip_serializing_if = "Option::is_none")]
    sequence_number: Option<String>,
}

/// A batch entry that failed.
#[derive(serde::Serialize)]
pub(crate) struct Failed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "SenderFault")]
    sender_fault: bool,
    #[serde(rename = "Code")]
    code: &'static str,
    #[serde(rename = "Message")]
    message: String,
}

impl Failed {
    fn new(id: &str, e: &SqsError) -> Self {
        Failed { id: id.to_string(), sender_fault: e.sender_fault, code: e.code, message: e.message.clone() }
    }
}

/// A batch entry that succeeded with nothing to say but its id.
#[derive(serde::Serialize)]
pub(crate) struct Done {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(serde::Serialize)]
pub(crate) struct BatchOut<T> {
    #[serde(rename = "Successful")]
    successful: Vec<T>,
    #[serde(rename = "Failed")]
    failed: Vec<Failed>,
}

/// One received message as ReceiveMessage returns it.
#[derive(serde::Serialize)]
pub(crate) struct Received {
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "ReceiptHandle")]
    receipt_handle: String,
    #[serde(rename = "MD5OfBody")]
    md5_body: String,
    #[serde(rename = "Body")]
    body: String,
    #[serde(rename = "Attributes", skip_serializing_if = "Option::is_none")]
    attributes: Option<Map<String, Value>>,
    #[serde(rename = "MD5OfMessageAttributes", skip_serializing_if = "Option::is_none")]
    md5_attrs: Option<String>,
    #[serde(rename = "MessageAttributes", skip_serializing_if = "Option::is_none")]
    message_attributes: Option<Map<String, Value>>,
}

#[derive(serde::Serialize)]
pub(crate) struct ReceiveOut {
    #[serde(rename = "Messages", skip_serializing_if = "Vec::is_empty")]
    messages: Vec<Received>,
}

/// The general (`Value`) form of a typed answer.
fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("answers are plain JSON")
}

/// A typed answer as the AWS JSON 1.0 protocol's body.
fn to_body<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024);
    serde_json::to_writer(&mut buf, v).expect("answers are plain JSON");
    buf
}

fn failed(id: &str, e: &SqsError) -> Value {
    json!({"Id": id, "SenderFault": e.sender_fault, "Code": e.code, "Message": e.message})
}

/// Tag keys of 1 to 128 characters not starting with the reserved `aws:`, values of at most 256.
fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), SqsError> {
    for (k, v) in tags {
        let n = k.chars().count();
        if n == 0 || n > 128 {
            return Err(SqsError::invalid_parameter(format!("Tag key \"{k}\" is invalid: a tag key is 1 to 128 characters long.")));
        }
        if k.as_bytes().get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"aws:")) {
            return Err(SqsError::invalid_parameter(format!("Tag key \"{k}\" is invalid: the prefix aws: is reserved for AWS; choose another key.")));
        }
        if v.chars().count() > 256 {
            return Err(SqsError::invalid_parameter(format!("The value of tag \"{k}\" is invalid: a tag value is at most 256 characters long.")));
        }
    }
    Ok(())
}

fn visibility_beyond_limit(t: i64) -> SqsError {
    SqsError::invalid_parameter(format!(
        "Value {t} for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [43200 seconds]."
    ))
}

fn bad_receipt_visibility(h: &str) -> SqsError {
    SqsError::invalid_parameter(format!(
        "Value {h} for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change."
    ))
}

struct RecvParams {
    attempt: Option<String>,
    max: usize,
    visibility: Option<u64>,
    wait: Option<u64>,
    sys_names: Vec<String>,
    attr_names: Vec<String>,
}

fn parse_receive(req: &Value) -> Result<RecvParams, SqsError> {
    let max = int_range(req, "MaxNumberOfMessages", 1, 10)?.unwrap_or(1) as usize;
    let visibility = int_range(req, "VisibilityTimeout", 0, 43_200)?.map(|v| v as u64);
    let wait = int_range(req, "WaitTimeSeconds", 0, 20)?.map(|v| v as u64);
    let mut sys_names = str_list(req, "AttributeNames");
    sys_names.extend(str_list(req, "MessageSystemAttributeNames"));
    let attempt = s(req, "ReceiveRequestAttemptId").map(str::to_string);
    finish_receive(max, visibility, wait, sys_names, attempt, str_list(req, "MessageAttributeNames"))
}

fn parse_receive_typed(r: &json::Receive<'_>) -> Result<RecvParams, SqsError> {
    let max = opt_range("MaxNumberOfMessages", r.max_number_of_messages, 1, 10)?.unwrap_or(1) as usize;
    let visibility = opt_range("VisibilityTimeout", r.visibility_timeout, 0, 43_200)?.map(|v| v as u64);
    let wait = opt_range("WaitTimeSeconds", r.wait_time_seconds, 0, 20)?.map(|v| v as u64);
    let names = |l: &Option<Vec<std::borrow::Cow<'_, str>>>| l.iter().flatten().map(|n| n.to_string()).collect::<Vec<String>>();
    let mut sys_names = names(&r.attribute_names);
    sys_names.extend(names(&r.message_system_attribute_names));
    let attempt = r.receive_request_attempt_id.as_deref().map(str::to_string);
    finish_receive(max, visibility, wait, sys_names, attempt, names(&r.message_attribute_names))
}

fn finish_receive(
    max: usize,
    visibility: Option<u64>,
    wait: Option<u64>,
    sys_names: Vec<String>,
    attempt: Option<String>,
    attr_names: Vec<String>,
) -> Result<RecvParams, SqsError> {
    if let Some(bad) = sys_names.iter().find(|n| !SYS_ATTRS.contains(&n.as_str())) {
        return Err(SqsError::invalid_attribute_name(bad));
    }
    if let Some(a) = &attempt {
        let ok = !a.is_empty() && a.len() <= 128 && a.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(SqsError::invalid_parameter(format!(
                "Value {a} for parameter ReceiveRequestAttemptId is invalid. Reason: use 1 to 128 printable ASCII characters."
            )));
        }
    }
    Ok(RecvParams { attempt, max, visibility, wait, sys_names, attr_names })
}

const SYS_ATTRS: &[&str] = &[
    "All",
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
];

impl State {
    fn queue(&mut self, name: &str) -> Result<&mut Queue, SqsError> {
        self.queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)
    }

}

fn queue_row(q: &Queue) -> QueueRow {
    QueueRow {
        name: q.name.clone(),
        created_s: q.created_s,
        modified_s: q.modified_s,
        attrs: serde_json::to_string(&q.attrs).unwrap_or_default(),
        tags: serde_json::to_string(&q.tags).unwrap_or_default(),
        last_purge_ms: q.last_purge_ms,
    }
}

/// The queues and messages of the store, in memory; and the next sequence number.
fn build_queues(queues: Vec<QueueRow>, messages: Vec<crate::store::MsgRow>, path: &std::path::Path) -> Result<(HashMap<String, Queue>, u64), QueueError> {
    let now = now_ms();
    let mut out: HashMap<String, Queue> = HashMap::new();
    let mut next_seq = 1u64;
        for r in queues {
        let attrs: BTreeMap<String, String> = serde_json::from_str(&r.attrs)
            .map_err(|e| QueueError::Corrupt { path: path.to_path_buf(), message: format!("queue {}: attributes: {e}", r.name) })?;
        let tags: BTreeMap<String, String> = serde_json::from_str(&r.tags).unwrap_or_default();
        let mut q = Queue::new(&r.name, attrs, tags, r.created_s);
        q.modified_s = r.modified_s;
        q.last_purge_ms = r.last_purge_ms;
        out.insert(r.name.clone(), q);
    }
    let mut orphans = 0usize;
    for r in messages {
        next_seq = next_seq.max(r.seq + 1);
        let sender = KeyId::intern(&r.sender);
        let receiver = r.receiver.as_deref().map(KeyId::intern).unwrap_or_default();
        let Some(q) = out.get_mut(&r.queue) else {
            orphans += 1;
            continue;
        };
        let parse = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok());
        let attrs = parse(&r.attrs);
        let sys_attrs = parse(&r.sys_attrs);
        let extra = if attrs.is_some() || sys_attrs.is_some() || r.group_id.is_some() || r.dedup_id.is_some() || r.dl_source.is_some() {
            Some(Box::new(Extra {
                attrs,
                sys_attrs,
                group: r.group_id.as_deref().map(Arc::from),
                dedup_id: r.dedup_id.clone(),
                seqnum: r.seqnum,
                dl_source: r.dl_source.clone(),
                dl_moved_at: r.dl_moved_at,
            }))
        } else {
            None
        };
        q.next_seqnum = q.next_seqnum.max(r.seqnum);
        let in_flight = r.recv_count > 0 && r.visible_at > now && r.nonce != 0;
        let m = Msg {
            id: uuid::Uuid::parse_str(&r.id).map(|u| *u.as_bytes()).unwrap_or_else(|_| rand::random()),
            body: r.body.into_boxed_str(),
            extra,
            sent_ms: r.sent_ms,
            visible_at: r.visible_at,
            first_recv_ms: r.first_recv_ms,
            recv_count: r.recv_count,
            nonce: if in_flight { r.nonce } else { 0 },
            last_nonce: if in_flight { 0 } else { r.nonce },
            sender,
            receiver,
            received_at: r.received_at,
        };
        if let (true, Some(d)) = (q.fifo, r.dedup_id.as_ref()) {
            let key = match (&r.group_id, q.dedup_by_group()) {
                (Some(g), true) => format!("{g}\u{0}{d}"),
                _ => d.clone(),
            };
            let exp = r.sent_ms + 300_000;
            if exp > now {
                q.dedup.insert(key.clone(), (exp, m.id, r.seqnum));
                q.dedup_order.push_back((exp, key));
            }
        }
        q.insert(r.seq, m, now);
    }
    if orphans > 0 {
        tracing::warn!(count = orphans, "queue store held messages of deleted queues; ignored");
    }
    Ok((out, next_seq))
}

impl Broker {
    /// Open (or create) the broker's store in `cfg.data_dir` and load its state.
    pub fn open(cfg: BrokerConfig) -> Result<Broker, QueueError> {
        let (store, loaded) = Store::open(&cfg.data_dir)?;
        let path = cfg.data_dir.join("queue.db");
        let mut st = State { deleted: HashMap::new(), queues: HashMap::new(), next_seq: 1, telemetry: Telemetry::default(), tasks: Vec::new() };
        let (queues, next_seq) = build_queues(loaded.queues, loaded.messages, &path)?;
        st.queues = queues;
        st.next_seq = next_seq;
        st.telemetry.restore(loaded.telemetry);
        st.telemetry.tickets = Some(store.issued());
        let host = cfg.public_host.clone().unwrap_or_else(|| "127.0.0.1:9324".into());
        tracing::debug!(queues = st.queues.len(), "queue store loaded");
        Ok(Broker {
            inner: Arc::new(Inner {
                state: Mutex::new(st),
                store,
                cfg,
                metrics: crate::metrics::Metrics::default(),
                public_host: Mutex::new(host),
                background: std::sync::atomic::AtomicBool::new(false),
                polls_waiting: std::sync::atomic::AtomicI64::new(0),
                reload_tried_ms: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.cfg
    }

    /// Set the `host:port` used in queue URLs returned by the admin API (e.g. by
    /// [`Broker::ensure_queue`]) when the router is mounted on another server. `serve` sets it
    /// from its listener unless the configuration fixed it.
    pub fn set_public_host(&self, host: impl Into<String>) {
        if self.inner.cfg.public_host.is_none() {
            *self.inner.public_host.lock().unwrap() = host.into();
        }
    }

    /// URL of queue `name` as clients outside a request see it.
    pub fn queue_url(&self, name: &str) -> String {
        format!("http://{}/{}/{name}", self.inner.public_host.lock().unwrap(), self.account())
    }

    fn url(&self, host: &str, name: &str) -> String {
        format!("http://{host}/{}/{name}", self.account())
    }

    /// The account id in queue URLs and ARNs.
    pub fn account(&self) -> &str {
        &self.inner.cfg.account_id
    }

    fn arn(&self, name: &str) -> String {
        arn_of(self.region(), self.account(), name)
    }

    fn region(&self) -> &str {
        &self.inner.cfg.region
    }

    fn submit(&self, ctx: &mut Ctx, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        let done = if self.inner.cfg.durability == Durability::Commit {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ctx.durable = Some(rx);
            Some(tx)
        } else {
            None
        };
        ctx.ticket = self.inner.store.submit_with(ops, done);
    }

    fn wait_durable_blocking(&self, ticket: u64) -> Result<(), SqsError> {
        if self.inner.cfg.durability == Durability::None || ticket == 0 {
            return Ok(());
        }
        self.inner.store.wait_blocking(ticket).map_err(SqsError::internal)
    }

    /// Flush the store and stop its writer. The broker must not be used afterwards.
    pub fn close(&self) {
        self.flush_telemetry();
        self.inner.store.close();
    }

    /// Run one action synchronously (ReceiveMessage without waiting). The result is in the
    /// JSON protocol's shape. Changes are submitted to the store; `ctx.ticket` tells which to
    /// wait for.
    pub fn handle(&self, action: &str, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        if !req.is_object() {
            return Err(SqsError::malformed("The request body must be a JSON object."));
        }
        match action {
            "CreateQueue" => self.create_queue(req, ctx),
            "GetQueueUrl" => {
                let name = req_str(req, "QueueName")?;
                if s(req, "QueueOwnerAWSAccountId").is_some_and(|owner| owner != self.account()) {
                    return Err(SqsError::queue_does_not_exist());
                }
                let st = self.lock();
                if st.queues.contains_key(name) {
                    Ok(json!({"QueueUrl": self.url(&ctx.host, name)}))
                } else {
                    Err(SqsError::queue_does_not_exist())
                }
            }
            "ListQueues" => self.list_queues(req, ctx),
            "DeleteQueue" => {
                let name = self.queue_of(req)?;
                let mut st = self.lock();
                st.queues.remove(&name).ok_or_else(SqsError::queue_does_not_exist)?;
                st.telemetry.series.remove(&name);
                let now = ctx.now_ms;
                st.deleted.retain(|_, at| *at + 60_000 > now);
                st.deleted.insert(name.clone(), now);
                tracing::info!(queue = %name, "queue deleted");
                self.submit(ctx, vec![Op::DropQueue(name)]);
                Ok(json!({}))
            }
            "GetQueueAttributes" => self.get_queue_attributes(req, ctx),
            "SetQueueAttributes" => {
                let name = self.queue_of(req)?;
                let attrs = str_map(req, "Attributes")?;
                self.set_attributes(&name, &attrs, ctx)?;
                Ok(json!({}))
            }
            "PurgeQueue" => {
                let name = self.queue_of(req)?;
                let mut st = self.lock();
                let q = st.queue(&name)?;
                if q.last_purge_ms + 60_000 > ctx.now_ms {
                    return Err(SqsError::purge_in_progress(&name));
                }
                let max_seq = q.msgs.keys().copied().max().unwrap_or(0);
                let n = q.msgs.len();
                q.msgs.clear();
                q.ready.clear();
                q.pending.clear();
                q.inflight = 0;
                q.group_inflight.clear();
                q.last_purge_ms = ctx.now_ms;
                let row = queue_row(q);
                tracing::info!(queue = %name, messages = n, "queue purged");
                self.submit(ctx, vec![Op::Purge { queue: name, max_seq }, Op::Queue(row)]);
                Ok(json!({}))
            }
            "SendMessage" => {
                let name = self.queue_of(req)?;
                self.send_single(&name, SendArgs::from_value(req), ctx).map(|r| to_value(&r))
            }
            "SendMessageBatch" => self.send_batch(req, ctx),
            "ReceiveMessage" => {
                let p = parse_receive(req)?;
                let name = self.queue_of(req)?;
                let mut st = self.lock();
                let messages = self.receive_once(&mut st, &name, &p, ctx)?;
                Ok(to_value(&ReceiveOut { messages }))
            }
            "DeleteMessage" => {
                let name = self.queue_of(req)?;
                let h = req_str(req, "ReceiptHandle")?;
                self.delete_single(&name, h, ctx).map(|_| json!({}))
            }
            "DeleteMessageBatch" => {
                let name = self.queue_of(req)?;
                let entries = batch_entries(req)?;
                let entries = entries.iter().map(|e| (s(e, "Id").unwrap_or(""), req_str(e, "ReceiptHandle"))).collect();
                self.delete_batch(&name, entries, ctx).map(|r| to_value(&r))
            }
            "ChangeMessageVisibility" => {
                let name = self.queue_of(req)?;
                let h = req_str(req, "ReceiptHandle")?;
                let t = int(req, "VisibilityTimeout")?.ok_or_else(|| SqsError::missing_parameter("VisibilityTimeout"))?;
                let mut st = self.lock();
                let mut ops = Vec::new();
                let r = Self::change_visibility(&mut st, &name, h, t, ctx, &mut ops);
                self.submit(ctx, ops);
                r.map(|_| json!({}))
            }
            "ChangeMessageVisibilityBatch" => {
                let name = self.queue_of(req)?;
                let entries = batch_entries(req)?;
                let mut st = self.lock();
                st.queue(&name)?;
                let (mut ok, mut bad, mut ops) = (Vec::new(), Vec::new(), Vec::new());
                for e in entries {
                    let id = s(e, "Id").unwrap_or("");
                    let r = req_str(e, "ReceiptHandle").and_then(|h| {
                        let t = int(e, "VisibilityTimeout")?.ok_or_else(|| SqsError::missing_parameter("VisibilityTimeout"))?;
                        Self::change_visibility(&mut st, &name, h, t, ctx, &mut ops)
                    });
                    match r {
                        Ok(()) => ok.push(json!({"Id": id})),
                        Err(e) => bad.push(failed(id, &e)),
                    }
                }
                self.submit(ctx, ops);
                Ok(json!({"Successful": ok, "Failed": bad}))
            }
            "ListDeadLetterSourceQueues" => {
                let name = self.queue_of(req)?;
                let max = int_range(req, "MaxResults", 1, 1000)?;
                let st = self.lock();
                if !st.queues.contains_key(&name) {
                    return Err(SqsError::queue_does_not_exist());
                }
                let mut names: Vec<&String> =
                    st.queues.values().filter(|q| q.redrive.as_ref().is_some_and(|r| r.0 == name)).map(|q| &q.name).collect();
                names.sort();
                Ok(self.paged(names, max, s(req, "NextToken"), &ctx.host, "queueUrls"))
            }
            "TagQueue" => {
                let name = self.queue_of(req)?;
                let tags = str_map(req, "Tags")?;
                if tags.is_empty() {
                    return Err(SqsError::missing_parameter("Tags"));
                }
                check_tags(&tags)?;
                let mut st = self.lock();
                let q = st.queue(&name)?;
                if q.tags.len() + tags.keys().filter(|k| !q.tags.contains_key(*k)).count() > 50 {
                    return Err(SqsError::invalid_parameter("Too many tags added for queue; a queue can have at most 50 tags."));
                }
                q.tags.extend(tags);
                let row = queue_row(q);
                self.submit(ctx, vec![Op::Queue(row)]);
                Ok(json!({}))
            }
            "UntagQueue" => {
                let name = self.queue_of(req)?;
                let keys = str_list(req, "TagKeys");
                if keys.is_empty() {
                    return Err(SqsError::missing_parameter("TagKeys"));
                }
                let mut st = self.lock();
                let q = st.queue(&name)?;
                for k in keys {
                    q.tags.remove(&k);
                }
                let row = queue_row(q);
                self.submit(ctx, vec![Op::Queue(row)]);
                Ok(json!({}))
            }
            "ListQueueTags" => {
                let name = self.queue_of(req)?;
                let mut st = self.lock();
                let q = st.queue(&name)?;
                Ok(if q.tags.is_empty() { json!({}) } else { json!({"Tags": q.tags}) })
            }
            "StartMessageMoveTask" => self.start_move_task(req, ctx),
            "ListMessageMoveTasks" => {
                let src = req_str(req, "SourceArn")?;
                let max = int_range(req, "MaxResults", 1, 10)?.unwrap_or(1) as usize;
                let st = self.lock();
                let name = name_from_arn(src).filter(|n| st.queues.contains_key(*n)).ok_or_else(|| {
                    SqsError::resource_not_found(format!("The resource {src} does not exist."))
                })?;
                let results: Vec<Value> = st
                    .tasks
                    .iter()
                    .rev()
                    .filter(|t| t.source == name)
                    .take(max)
                    .map(|t| {
                        let mut v = json!({
                            "Status": t.status,
                            "SourceArn": self.arn(&t.source),
                            "ApproximateNumberOfMessagesMoved": t.moved,
                            "ApproximateNumberOfMessagesToMove": t.to_move,
                            "StartedTimestamp": t.started_ms,
                        });
                        if t.status == "RUNNING" {
                            v["TaskHandle"] = json!(t.handle);
                        }
                        if let Some(d) = &t.dest {
                            v["DestinationArn"] = json!(self.arn(d));
                        }
                        if let Some(r) = t.rate {
                            v["MaxNumberOfMessagesPerSecond"] = json!(r);
                        }
                        v
                    })
                    .collect();
                Ok(json!({"Results": results}))
            }
            "CancelMessageMoveTask" => {
                let h = req_str(req, "TaskHandle")?;
                let mut st = self.lock();
                let t = st
                    .tasks
                    .iter_mut()
                    .find(|t| t.handle == h)
                    .ok_or_else(|| SqsError::resource_not_found(format!("The task handle {h} does not exist.")))?;
                if t.status != "RUNNING" {
                    return Err(SqsError::invalid_parameter(format!(
                        "The task {h} is {}; only a RUNNING task can be cancelled.",
                        t.status
                    )));
                }
                t.status = "CANCELLED";
                Ok(json!({"ApproximateNumberOfMessagesMoved": t.moved}))
            }
            "AddPermission" | "RemovePermission" => self.permission(action, req, ctx),
            other => Err(SqsError::client_legacy(
                "UnknownOperationException",
                "InvalidAction",
                format!("{other} is not a valid SQS action; see the SQS API reference for the list of actions."),
            )),
        }
    }

    /// AddPermission / RemovePermission: a statement per label in the queue's `Policy`.
    fn permission(&self, action: &str, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let name = self.queue_of(req)?;
        let label = req_str(req, "Label")?;
        if label.is_empty() || label.len() > 80 || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(SqsError::invalid_parameter(format!(
                "Value {label} for parameter Label is invalid. Reason: use up to 80 letters, digits, hyphens and underscores."
            )));
        }
        let add = action == "AddPermission";
        let (accounts, actions) = (str_list(req, "AWSAccountIds"), str_list(req, "Actions"));
        if add {
            if accounts.is_empty() {
                return Err(SqsError::missing_parameter("AWSAccountIds"));
            }
            if actions.is_empty() {
                return Err(SqsError::missing_parameter("Actions"));
            }
            const ALLOWED: &[&str] = &[
                "*", "SendMessage", "ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility", "GetQueueAttributes",
                "GetQueueUrl", "ListDeadLetterSourceQueues", "PurgeQueue", "ListQueueTags",
            ];
            if let Some(bad) = actions.iter().find(|a| !ALLOWED.contains(&a.as_str())) {
                return Err(SqsError::invalid_parameter(format!(
                    "Value {bad} for parameter ActionName is invalid. Reason: Please refer to the appropriate WSDL for a list of valid actions."
                )));
            }
        }
        let mut st = self.lock();
        let q = st.queue(&name)?;
        let queue_arn = self.arn(&name);
        let mut policy: Value = q
            .attrs
            .get("Policy")
            .filter(|p| !p.is_empty())
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_else(|| json!({"Version": "2012-10-17", "Id": format!("{queue_arn}/SQSDefaultPolicy"), "Statement": []}));
        if !policy["Statement"].is_array() {
            policy["Statement"] = json!([]);
        }
        let statements = policy["Statement"].as_array_mut().expect("an array");
        let at = statements.iter().position(|st| st["Sid"].as_str() == Some(label));
        if add {
            if at.is_some() {
                return Err(SqsError::invalid_parameter(format!("Value {label} for parameter Label is invalid. Reason: Already exists.")));
            }
            let principals: Vec<String> = accounts.iter().map(|a| format!("arn:aws:iam::{a}:root")).collect();
            statements.push(json!({
                "Sid": label,
                "Effect": "Allow",
                "Principal": {"AWS": if principals.len() == 1 { json!(principals[0]) } else { json!(principals) }},
                "Action": actions.iter().map(|a| format!("SQS:{a}")).collect::<Vec<_>>(),
                "Resource": queue_arn,
            }));
        } else {
            let Some(i) = at else {
                return Err(SqsError::invalid_parameter(format!("Value {label} for parameter Label is invalid. Reason: can't find label.")));
            };
            statements.remove(i);
        }
        if statements.is_empty() {
            q.attrs.remove("Policy");
        } else {
            q.attrs.insert("Policy".into(), policy.to_string());
        }
        q.modified_s = ctx.now_ms / 1000;
        let row = queue_row(q);
        self.submit(ctx, vec![Op::Queue(row)]);
        Ok(json!({}))
    }

    fn queue_of(&self, req: &Value) -> Result<String, SqsError> {
        self.queue_of_url(Some(req_str(req, "QueueUrl")?))
    }

    fn queue_of_url(&self, url: Option<&str>) -> Result<String, SqsError> {
        let url = url.ok_or_else(|| SqsError::missing_parameter("QueueUrl"))?;
        let name = queue_name_from_url(url);
        if name.is_empty() {
            return Err(SqsError::queue_does_not_exist());
        }
        // `.../<account>/<name>`: another account's queue is not ours to touch
        let mut parts = url.trim_end_matches('/').rsplit('/');
        parts.next();
        if let Some(account) = parts.next().filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit())) {
            if account != self.account() {
                return Err(SqsError::access_denied(url));
            }
        }
        Ok(name.to_string())
    }

    fn paged(&self, names: Vec<&String>, max: Option<i64>, token: Option<&str>, host: &str, field: &str) -> Value {
        let start = token
            .and_then(|t| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let mut it: Vec<&String> = names.into_iter().filter(|n| start.as_ref().is_none_or(|s| n.as_str() > s.as_str())).collect();
        let limit = max.map(|m| m as usize).unwrap_or(1000);
        let more = it.len() > limit;
        it.truncate(limit);
        let mut out = Map::new();
        if !it.is_empty() {
            out.insert(field.into(), json!(it.iter().map(|n| self.url(host, n)).collect::<Vec<_>>()));
        }
        if more && max.is_some() {
            let last = it.last().map(|s| s.as_str()).unwrap_or("");
            out.insert("NextToken".into(), json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)));
        }
        Value::Object(out)
    }

    fn list_queues(&self, req: &Value, ctx: &Ctx) -> Result<Value, SqsError> {
        let prefix = s(req, "QueueNamePrefix").unwrap_or("");
        let max = int_range(req, "MaxResults", 1, 1000)?;
        let st = self.lock();
        let mut names: Vec<&String> = st.queues.keys().filter(|n| n.starts_with(prefix)).collect();
        names.sort();
        Ok(self.paged(names, max, s(req, "NextToken"), &ctx.host, "QueueUrls"))
    }

    /// Check attributes that need the other queues (the dead-letter target).
    fn check_redrive(st: &State, source: &str, fifo: bool, attrs: &BTreeMap<String, String>, source_arn: &str) -> Result<(), SqsError> {
        let Some(p) = attrs.get("RedrivePolicy").filter(|p| !p.is_empty()) else { return Ok(()) };
        let v: Value = serde_json::from_str(p).unwrap_or_default();
        let target = v.get("deadLetterTargetArn").and_then(Value::as_str).unwrap_or("");
        let dlq_name = name_from_arn(target).unwrap_or("");
        let dlq = st.queues.get(dlq_name).ok_or_else(|| {
            SqsError::invalid_parameter(format!(
                "Value {p} for parameter RedrivePolicy is invalid. Reason: Dead letter target does not exist; create the queue {dlq_name} first."
            ))
        })?;
        if dlq.fifo != fifo {
            return Err(SqsError::invalid_parameter(format!(
                "Value {p} for parameter RedrivePolicy is invalid. Reason: Dead-letter queue must be the same type of queue as the source."
            )));
        }
        if let Some(allow) = dlq.attr("RedriveAllowPolicy").and_then(|a| serde_json::from_str::<Value>(a).ok()) {
            let perm = allow.get("redrivePermission").and_then(Value::as_str).unwrap_or("allowAll");
            let src_arn = source_arn.to_string();
            let allowed = match perm {
                "denyAll" => false,
                "byQueue" => allow
                    .get("sourceQueueArns")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(src_arn.as_str()))),
                _ => true,
            };
            if !allowed {
                return Err(SqsError::invalid_parameter(format!(
                    "Value {p} for parameter RedrivePolicy is invalid. Reason: Queue {dlq_name} does not allow {source} to use it as a dead-letter queue (RedriveAllowPolicy)."
                )));
            }
        }
        Ok(())
    }

    fn normalize_attrs(name: &str, fifo: bool, attrs: &BTreeMap<String, String>, creating: bool) -> Result<BTreeMap<String, String>, SqsError> {
        let mut out = BTreeMap::new();
        for (k, v) in attrs {
            if k == "FifoQueue" && v.eq_ignore_ascii_case("true") && !name.ends_with(".fifo") {
                return Err(SqsError::invalid_parameter(format!(
                    "The name of a FIFO queue must end with .fifo; {name} does not."
                )));
            }
            out.insert(k.clone(), validate_attr(k, v, fifo, creating)?);
        }
        Ok(out)
    }

    fn create_queue(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let name = req_str(req, "QueueName")?;
        let attrs = str_map(req, "Attributes")?;
        let tags = str_map(req, "tags").and_then(|t| if t.is_empty() { str_map(req, "Tags") } else { Ok(t) })?;
        self.create_or_match(name, &attrs, tags, ctx, false)
    }

    fn create_or_match(&self, name: &str, attrs: &BTreeMap<String, String>, tags: BTreeMap<String, String>, ctx: &mut Ctx, update: bool) -> Result<Value, SqsError> {
        if !valid_queue_name(name) {
            return Err(SqsError::invalid_parameter(format!(
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length; got queue name \"{name}\"."
            )));
        }
        let wants_fifo = attrs.get("FifoQueue").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if name.ends_with(".fifo") && !wants_fifo {
            return Err(SqsError::invalid_parameter(format!(
                "The queue name {name} ends with .fifo: set the attribute FifoQueue to true to create a FIFO queue, or choose a name without .fifo."
            )));
        }
        let fifo = name.ends_with(".fifo");
        let mut norm = Self::normalize_attrs(name, fifo, attrs, true)?;
        norm.remove("FifoQueue");
        let url = self.url(&ctx.host, name);
        let mut st = self.lock();
        Self::check_redrive(&st, name, fifo, &norm, &self.arn(name))?;
        if let Some(q) = st.queues.get_mut(name) {
            let differs = norm.iter().any(|(k, v)| q.attr(k).unwrap_or("") != v);
            if differs {
                if !update {
                    return Err(SqsError::queue_already_exists(name));
                }
                q.attrs.extend(norm);
                q.modified_s = ctx.now_ms / 1000;
                q.reparse();
                let row = queue_row(q);
                self.submit(ctx, vec![Op::Queue(row)]);
            }
            return Ok(json!({"QueueUrl": url}));
        }
        if !update && st.deleted.get(name).is_some_and(|at| at + 60_000 > ctx.now_ms) {
            return Err(SqsError::queue_deleted_recently(name));
        }
        check_tags(&tags)?;
        let q = Queue::new(name, norm, tags, ctx.now_ms / 1000);
        let row = queue_row(&q);
        st.queues.insert(name.to_string(), q);
        tracing::info!(queue = %name, fifo, "queue created");
        self.submit(ctx, vec![Op::Queue(row)]);
        Ok(json!({"QueueUrl": url}))
    }

    fn set_attributes(&self, name: &str, attrs: &BTreeMap<String, String>, ctx: &mut Ctx) -> Result<(), SqsError> {
        let mut st = self.lock();
        let fifo = st.queue(name)?.fifo;
        let norm = Self::normalize_attrs(name, fifo, attrs, false)?;
        Self::check_redrive(&st, name, fifo, &norm, &self.arn(name))?;
        let q = st.queue(name)?;
        q.attrs.extend(norm);
        q.modified_s = ctx.now_ms / 1000;
        q.reparse();
        let row = queue_row(q);
        self.submit(ctx, vec![Op::Queue(row)]);
        Ok(())
    }

    fn get_queue_attributes(&self, req: &Value, ctx: &Ctx) -> Result<Value, SqsError> {
        let name = self.queue_of(req)?;
        let names = str_list(req, "AttributeNames");
        for n in &names {
            if n != "All" && !SETTABLE.contains(&n.as_str()) && !READ_ONLY.contains(&n.as_str()) {
                return Err(SqsError::invalid_attribute_name(n));
            }
        }
        let all = names.iter().any(|n| n == "All");
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(&name).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(ctx.now_ms, telemetry);
        let mut out = Map::new();
        let mut put = |k: &str, v: String| {
            if all || names.iter().any(|n| n == k) {
                out.insert(k.to_string(), Value::String(v));
            }
        };
        put("QueueArn", self.arn(&q.name));
        put("ApproximateNumberOfMessages", q.ready.len().to_string());
        put("ApproximateNumberOfMessagesNotVisible", q.inflight.to_string());
        put("ApproximateNumberOfMessagesDelayed", q.delayed().to_string());
        put("CreatedTimestamp", q.created_s.to_string());
        put("LastModifiedTimestamp", q.modified_s.to_string());
        for k in ["VisibilityTimeout", "MaximumMessageSize", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds", "SqsManagedSseEnabled"] {
            put(k, q.attr(k).unwrap_or("").to_string());
        }
        for k in ["Policy", "RedrivePolicy", "RedriveAllowPolicy", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds"] {
            if let Some(v) = q.attrs.get(k).filter(|v| !v.is_empty()) {
                put(k, v.clone());
            }
        }
        if q.fifo {
            put("FifoQueue", "true".into());
            put("ContentBasedDeduplication", q.attr("ContentBasedDeduplication").unwrap_or("false").to_string());
            put("DeduplicationScope", q.attr("DeduplicationScope").unwrap_or("queue").to_string());
            put("FifoThroughputLimit", q.attr("FifoThroughputLimit").unwrap_or("perQueue").to_string());
        }
        Ok(if out.is_empty() { json!({}) } else { json!({"Attributes": out}) })
    }

    /// Validate and enqueue one message. `req` is a SendMessage request or batch entry.
    fn send_one(&self, st: &mut State, name: &str, a: SendArgs<'_>, ctx: &Ctx, ops: &mut Vec<Op>) -> Result<Sent, SqsError> {
        let body = a.body?;
        check_body(body)?;
        let attrs = a.attrs?.filter(|m| !m.is_empty()).cloned();
        let sys_attrs = a.sys_attrs.filter(|m| !m.is_empty()).cloned();
        let attr_size = attrs.as_ref().map(|a| check_message_attributes(a, false)).transpose()?.unwrap_or(0);
        if let Some(sa) = &sys_attrs {
            check_message_attributes(sa, true)?;
        }
        let delay = a.delay?;
        let group = a.group;
        let dedup = a.dedup;
        let sender = ctx.key_id();
        let State { queues, next_seq, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        let size = body.len() + attr_size;
        if size > q.max_size {
            return Err(SqsError::invalid_parameter(format!(
                "One or more parameters are invalid. Reason: Message must be shorter than {} bytes.",
                q.max_size
            )));
        }
        let now = ctx.now_ms;
        let md5_body = md5_hex(body.as_bytes());
        let md5_attrs = attrs.as_ref().and_then(md5_of_attributes);
        let md5_sys = sys_attrs.as_ref().and_then(md5_of_attributes);
        let mut extra = None;
        let delay_s;
        if q.fifo {
            if delay.is_some_and(|d| d > 0) {
                return Err(SqsError::invalid_parameter(
                    "Value for parameter DelaySeconds is invalid. Reason: The request include parameter that is not valid for this queue type (FIFO queues support only a queue-level delay).",
                ));
            }
            let g = group.ok_or_else(|| SqsError::missing_parameter("MessageGroupId"))?;
            let id_ok = |v: &str| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic());
            if !id_ok(g) {
                return Err(SqsError::invalid_parameter(format!("Value {g} for parameter MessageGroupId is invalid: use 1 to 128 printable ASCII characters.")));
            }
            let d = match dedup {
                Some(d) if id_ok(d) => d.to_string(),
                Some(d) => {
                    return Err(SqsError::invalid_parameter(format!(
                        "Value {d} for parameter MessageDeduplicationId is invalid: use 1 to 128 printable ASCII characters."
                    )))
                }
                None if q.content_dedup() => {
                    crate::digest::hex(&sha256(body.as_bytes()))
                }
                None => {
                    return Err(SqsError::invalid_parameter(
                        "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                    ))
                }
            };
            q.forget_old_dedup(now);
            let key = if q.dedup_by_group() { format!("{g}\u{0}{d}") } else { d.clone() };
            if let Some((_, id, seqnum)) = q.dedup.get(&key) {
                return Ok(Sent {
                    id: None,
                    message_id: uuid::Uuid::from_bytes(*id).hyphenated().to_string(),
                    md5_body,
                    md5_attrs,
                    md5_sys,
                    sequence_number: Some(format!("{seqnum:020}")),
                });
            }
            q.next_seqnum += 1;
            let seqnum = q.next_seqnum;
            extra = Some(Box::new(Extra {
                attrs: attrs.clone(),
                sys_attrs: sys_attrs.clone(),
                group: Some(Arc::from(g)),
                dedup_id: Some(d.clone()),
                seqnum,
                dl_source: None,
                dl_moved_at: 0,
            }));
            delay_s = q.delay_s;
        } else {
            if dedup.is_some() {
                return Err(SqsError::invalid_parameter(
                    "Value for parameter MessageDeduplicationId is invalid. Reason: The request includes a parameter that is not valid for this queue type.",
                ));
            }
            // A MessageGroupId on a standard queue (fair queues) is kept and returned.
            if let Some(g) = group {
                if g.is_empty() || g.len() > 128 || !g.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(SqsError::invalid_parameter(format!(
                        "Value {g} for parameter MessageGroupId is invalid: use 1 to 128 printable ASCII characters."
                    )));
                }
            }
            if attrs.is_some() || sys_attrs.is_some() || group.is_some() {
                extra = Some(Box::new(Extra {
                    attrs: attrs.clone(),
                    sys_attrs: sys_attrs.clone(),
                    group: group.map(Arc::from),
                    dedup_id: None,
                    seqnum: 0,
                    dl_source: None,
                    dl_moved_at: 0,
                }));
            }
            delay_s = delay.map(|d| d as u64).unwrap_or(q.delay_s);
        }
        let id = *uuid::Builder::from_random_bytes(rand::random()).into_uuid().as_bytes();
        let seq = *next_seq;
        *next_seq += 1;
        let m = Msg {
            id,
            body: Box::from(body),
            extra,
            sent_ms: now,
            visible_at: now + delay_s * 1000,
            first_recv_ms: 0,
            recv_count: 0,
            nonce: 0,
            last_nonce: 0,
            sender,
            receiver: KeyId::NONE,
            received_at: 0,
        };
        // a sequence number never used before: a new row
        ops.push(Op::Insert(Box::new(m.row(seq, name))));
        let mut out = Sent { id: None, message_id: m.id_string(), md5_body, md5_attrs, md5_sys, sequence_number: None };
        if let Some(e) = m.extra.as_ref().filter(|_| q.fifo) {
            out.sequence_number = Some(format!("{:020}", e.seqnum));
            let key = if q.dedup_by_group() {
                format!("{}\u{0}{}", e.group.as_deref().unwrap_or(""), e.dedup_id.as_deref().unwrap_or(""))
            } else {
                e.dedup_id.clone().unwrap_or_default()
            };
            q.dedup.insert(key.clone(), (now + 300_000, id, e.seqnum));
            q.dedup_order.push_back((now + 300_000, key));
        }
        q.insert(seq, m, now);
        Ok(out)
    }

    fn send_single(&self, name: &str, a: SendArgs<'_>, ctx: &mut Ctx) -> Result<Sent, SqsError> {
        let mut st = self.lock();
        let mut ops = Vec::with_capacity(1);
        let r = self.send_one(&mut st, name, a, ctx, &mut ops);
        self.submit(ctx, ops);
        Self::wake_one(&st, name);
        r
    }

    fn send_batch(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let name = self.queue_of(req)?;
        let entries = batch_entries(req)?;
        let entries = entries.iter().map(|e| (s(e, "Id").unwrap_or(""), SendArgs::from_value(e))).collect();
        self.send_entries(&name, entries, ctx).map(|r| to_value(&r))
    }

    fn send_entries(&self, name: &str, entries: Vec<(&str, SendArgs<'_>)>, ctx: &mut Ctx) -> Result<BatchOut<Sent>, SqsError> {
        let total: usize = entries.iter().map(|(_, a)| a.size()).sum();
        if total > MAX_MESSAGE_BYTES {
            return Err(SqsError::batch_too_long(total, MAX_MESSAGE_BYTES));
        }
        let mut st = self.lock();
        let q = st.queue(name)?;
        if q.fifo {
            // SQS fails the whole request, not the entry (not documented; the SDK models' errors).
            let content_dedup = q.content_dedup();
            for (_, e) in &entries {
                if e.group.is_none() {
                    return Err(SqsError::missing_parameter("MessageGroupId"));
                }
                if e.dedup.is_none() && !content_dedup {
                    return Err(SqsError::invalid_parameter(
                        "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                    ));
                }
            }
        }
        let (mut ok, mut bad, mut ops) = (Vec::with_capacity(entries.len()), Vec::new(), Vec::with_capacity(entries.len()));
        for (id, e) in entries {
            match self.send_one(&mut st, name, e, ctx, &mut ops) {
                Ok(mut v) => {
                    v.id = Some(id.to_string());
                    ok.push(v)
                }
                Err(err) => bad.push(Failed::new(id, &err)),
            }
        }
        self.submit(ctx, ops);
        Self::wake_one(&st, name);
        Ok(BatchOut { successful: ok, failed: bad })
    }

    fn delete_single(&self, name: &str, h: &str, ctx: &mut Ctx) -> Result<(), SqsError> {
        let mut st = self.lock();
        let mut ops = Vec::new();
        let r = Self::delete_one(&mut st, name, h, ctx, &mut ops);
        self.submit(ctx, ops);
        r
    }

    fn delete_batch(&self, name: &str, entries: Vec<(&str, Result<&str, SqsError>)>, ctx: &mut Ctx) -> Result<BatchOut<Done>, SqsError> {
        let mut st = self.lock();
        st.queue(name)?;
        let (mut ok, mut bad, mut ops) = (Vec::with_capacity(entries.len()), Vec::new(), Vec::with_capacity(entries.len()));
        for (id, h) in entries {
            match h.and_then(|h| Self::delete_one(&mut st, name, h, ctx, &mut ops)) {
                Ok(()) => ok.push(Done { id: id.to_string() }),
                Err(e) => bad.push(Failed::new(id, &e)),
            }
        }
        self.submit(ctx, ops);
        Ok(BatchOut { successful: ok, failed: bad })
    }

    /// Wake one long poll of queue `name` when it has visible messages; a receiver that
    /// leaves messages behind wakes the next one.
    fn wake_one(st: &State, name: &str) {
        if let Some(q) = st.queues.get(name) {
            if !q.ready.is_empty() {
                q.notify.notify_one();
            }
        }
    }

    fn delete_one(st: &mut State, name: &str, h: &str, ctx: &Ctx, ops: &mut Vec<Op>) -> Result<(), SqsError> {
        let State { queues, telemetry, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        let (seq, nonce) = parse_receipt(h)?;
        q.promote(ctx.now_ms, telemetry);
        let Some(m) = q.msgs.get(&seq) else { return Ok(()) };
        if m.nonce != nonce {
            // Not the current receipt. Its visibility ran out and nobody received the message
            // since: SQS deletes it all the same (a standard queue), or says the handle has
            // expired (FIFO). Received again since: the old handle deletes nothing.
            if m.nonce == 0 && m.last_nonce == nonce {
                if q.fifo {
                    return Err(SqsError::receipt_handle_expired());
                }
            } else {
                return Ok(());
            }
        }
        let m = q.take(seq).expect("message present");
        if let Some(r) = m.receiver.get() {
            let latency_us = ctx.now_ms.saturating_sub(m.received_at) * 1000;
            telemetry.record(name, &r, ctx.now_ms, Event::Deleted { latency_us });
        }
        ops.push(Op::Del(seq));
        Ok(())
    }

    fn change_visibility(st: &mut State, name: &str, h: &str, t: i64, ctx: &Ctx, ops: &mut Vec<Op>) -> Result<(), SqsError> {
        let State { queues, telemetry, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        if !(0..=43_200).contains(&t) {
            return Err(SqsError::invalid_parameter(format!(
                "Value {t} for parameter VisibilityTimeout is invalid. Reason: Must be between 0 and 43200, if provided."
            )));
        }
        let (seq, nonce) = parse_receipt(h)?;
        let now = ctx.now_ms;
        q.promote(now, telemetry);
        let Some(m) = q.msgs.get_mut(&seq) else { return Err(bad_receipt_visibility(h)) };
        if m.nonce == 0 {
            if m.last_nonce != nonce || m.last_nonce == 0 {
                return Err(SqsError::message_not_inflight());
            }
            // The latest receipt, whose visibility ran out with nobody receiving the message
            // since. SQS answers 200 (FIFO: the handle has expired); the SQS API reference does
            // not say what happens to the message: here a timeout above 0 hands it back to the
            // holder of the handle, as if its visibility had not run out.
            if q.fifo {
                return Err(SqsError::receipt_handle_expired());
            }
            if t > 0 {
                if now + t as u64 * 1000 > m.received_at + MAX_VISIBILITY_MS {
                    return Err(visibility_beyond_limit(t));
                }
                let mut m = q.take(seq).expect("message present");
                m.nonce = m.last_nonce;
                m.visible_at = now + t as u64 * 1000;
                q.insert(seq, m, now);
                ops.push(q.msgs[&seq].state_op(seq));
            }
            return Ok(());
        }
        if m.nonce != nonce {
            return Err(bad_receipt_visibility(h));
        }
        if t == 0 {
            let receiver = m.receiver.get();
            q.make_visible(seq, now);
            if let Some(r) = receiver {
                telemetry.record(name, &r, now, Event::Returned);
            }
            q.notify.notify_one();
        } else {
            if now + t as u64 * 1000 > m.received_at + MAX_VISIBILITY_MS {
                return Err(visibility_beyond_limit(t));
            }
            q.pending.remove(&(m.visible_at, seq));
            m.visible_at = now + t as u64 * 1000;
            q.pending.insert((m.visible_at, seq));
        }
        ops.push(q.msgs[&seq].state_op(seq));
        Ok(())
    }

    fn receive_once(&self, st: &mut State, name: &str, p: &RecvParams, ctx: &mut Ctx) -> Result<Vec<Received>, SqsError> {
        let now = ctx.now_ms;
        let kid = ctx.key_id();
        let key = kid.get().unwrap_or_else(|| ctx.access_key.clone());
        let State { queues, telemetry, .. } = st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let redrive = q.redrive.clone().filter(|(dlq, _)| dlq != name && queues.contains_key(dlq));
        let q = queues.get_mut(name).expect("queue present");
        let vis = p.visibility.unwrap_or(q.visibility_s);
        let mut ops = Vec::new();
        let mut out = Vec::new();
        let mut to_dlq: Vec<(u64, Msg)> = Vec::new();
        // candidates in order
        let candidates: Vec<u64> = if q.fifo {
            let locked: HashSet<Arc<str>> = q.group_inflight.keys().cloned().collect();
            q.ready
                .iter()
                .copied()
                .filter(|seq| q.msgs.get(seq).and_then(|m| m.group()).is_none_or(|g| !locked.contains(g)))
                .collect()
        } else {
            q.ready.iter().copied().take(p.max + 64).collect()
        };
        // A retried FIFO receive (same ReceiveRequestAttemptId within 5 minutes) gets the same
        // messages and receipt handles, as long as they are still in flight with them.
        if let (true, Some(attempt)) = (q.fifo, &p.attempt) {
            q.attempts.retain(|_, (exp, _)| *exp > now);
            if let Some((_, got)) = q.attempts.get(attempt) {
                let same = got.iter().all(|(seq, nonce)| q.msgs.get(seq).is_some_and(|m| m.nonce == *nonce));
                if same {
                    return Ok(got.iter().map(|(seq, _)| render_message(&q.msgs[seq], *seq, p, self.region(), self.account(), true)).collect());
                }
            }
        }
        if q.inflight >= self.inner.cfg.max_in_flight && !q.ready.is_empty() {
            return Err(SqsError::over_limit(q.inflight));
        }
        let mut received: Vec<(u64, u32)> = Vec::new();
        for seq in candidates {
            if q.inflight >= self.inner.cfg.max_in_flight {
                break;
            }
            if out.len() >= p.max {
                break;
            }
            let Some(m) = q.msgs.get(&seq) else {
                q.ready.remove(&seq);
                continue;
            };
            if m.sent_ms + q.retention_ms <= now {
                q.take(seq);
                ops.push(Op::Del(seq));
                continue;
            }
            if let Some((_, max)) = &redrive {
                if m.recv_count >= *max {
                    let m = q.take(seq).expect("present");
                    to_dlq.push((seq, m));
                    continue;
                }
            }
            q.ready.remove(&seq);
            let m = q.msgs.get_mut(&seq).expect("present");
            m.recv_count += 1;
            if m.first_recv_ms == 0 {
                m.first_recv_ms = now;
            }
            m.nonce = loop {
                let n: u32 = rand::random();
                if n != 0 {
                    break n;
                }
            };
            m.receiver = kid.clone();
            m.received_at = now;
            m.visible_at = now + vis * 1000;
            let m = &q.msgs[&seq];
            q.pending.insert((m.visible_at, seq));
            q.inflight += 1;
            if let Some(g) = m.group() {
                *q.group_inflight.entry(g.clone()).or_insert(0) += 1;
            }
            ops.push(m.state_op(seq));
            telemetry.record(name, &key, now, Event::Received);
            received.push((seq, m.nonce));
            out.push(render_message(m, seq, p, self.region(), self.account(), q.fifo));
        }
        if let (true, Some(attempt), false) = (q.fifo, &p.attempt, received.is_empty()) {
            // (an attempt that received nothing is not remembered: its retry may receive)
            q.attempts.insert(attempt.clone(), (now + 300_000, received));
        }
        if let Some((dlq_name, _)) = redrive {
            for (seq, mut m) in to_dlq {
                if let Some(r) = m.receiver.get() {
                    telemetry.record(name, &r, now, Event::DeadLettered);
                }
                let e = m.extra.get_or_insert_with(|| {
                    Box::new(Extra { attrs: None, sys_attrs: None, group: None, dedup_id: None, seqnum: 0, dl_source: None, dl_moved_at: 0 })
                });
                e.dl_source = Some(name.to_string());
                e.dl_moved_at = now;
                m.nonce = 0;
                m.visible_at = now;
                let dlq = queues.get_mut(&dlq_name).expect("dlq present");
                ops.push(Op::Put(Box::new(m.row(seq, &dlq_name))));
                tracing::debug!(queue = %name, dlq = %dlq_name, "message moved to the dead-letter queue");
                dlq.insert(seq, m, now);
                dlq.notify.notify_one();
            }
        }
        self.submit(ctx, ops);
        Ok(out)
    }

    /// ReceiveMessage with long polling: answers as soon as a message is available or the
    /// wait time is over.
    pub(crate) async fn receive(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let p = parse_receive(req)?;
        let name = self.queue_of(req)?;
        self.receive_with(&p, &name, ctx).await.map(|r| to_value(&r))
    }

    async fn receive_with(&self, p: &RecvParams, name: &str, ctx: &mut Ctx) -> Result<ReceiveOut, SqsError> {
        let start = std::time::Instant::now();
        let (notify, default_wait) = {
            let mut st = self.lock();
            let q = st.queue(name)?;
            (q.notify.clone(), q.wait_s)
        };
        let wait = p.wait.unwrap_or(default_wait);
        let deadline = start + std::time::Duration::from_secs(wait);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            ctx.now_ms = now_ms();
            let (msgs, next_wake) = {
                let mut st = self.lock();
                let msgs = self.receive_once(&mut st, name, p, ctx)?;
                if !msgs.is_empty() {
                    Self::wake_one(&st, name);
                }
                let nw = st.queues.get(name).and_then(|q| q.next_wake());
                (msgs, nw)
            };
            let now_i = std::time::Instant::now();
            if !msgs.is_empty() || now_i >= deadline {
                return Ok(ReceiveOut { messages: msgs });
            }
            let mut until = deadline;
            if let Some(t) = next_wake {
                let wake = now_i + std::time::Duration::from_millis(t.saturating_sub(ctx.now_ms) + 1);
                until = until.min(wake);
            }
            let waiting = WaitingGuard::new(&self.inner.polls_waiting);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            drop(waiting);
        }
    }

    /// Before any action: after a refused write the in-memory state holds changes the store
    /// does not (a delete answered 500, say); reload it now rather than at the next tick, so a
    /// retried request acts on what is stored and never answers 200 for a change that is not.
    fn store_ready(&self) -> Result<(), SqsError> {
        if self.inner.store.is_broken() {
            let now = now_ms();
            let last = self.inner.reload_tried_ms.load(std::sync::atomic::Ordering::Relaxed);
            if now >= last + 200 && self.inner.reload_tried_ms.compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed).is_ok() {
                self.recover_store();
            }
            if self.inner.store.is_broken() {
                return Err(SqsError::internal("the queue's store refuses writes (is the disk full?); retry shortly"));
            }
        }
        Ok(())
    }

    /// Run one action, waiting for long polls and for durability as configured.
    pub async fn dispatch(&self, action: &str, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        self.store_ready()?;
        let r = if action == "ReceiveMessage" { self.receive(req, ctx).await } else { self.handle(action, req, ctx) };
        if action == "StartMessageMoveTask" && r.is_ok() {
            self.spawn_move_tasks();
        }
        Self::await_durable(ctx).await?;
        r
    }

    /// Run one of the busiest actions from its typed AWS JSON 1.0 request, answering the
    /// protocol's body: the same checks, changes and answers as [`Broker::dispatch`].
    pub(crate) async fn dispatch_json(&self, req: json::Fast<'_>, ctx: &mut Ctx) -> Result<Vec<u8>, SqsError> {
        self.store_ready()?;
        let r = match &req {
            json::Fast::Receive(r) => match parse_receive_typed(r).and_then(|p| Ok((p, self.queue_of_url(r.queue_url.as_deref())?))) {
                Ok((p, name)) => self.receive_with(&p, &name, ctx).await.map(|r| to_body(&r)),
                Err(e) => Err(e),
            },
            _ => self.handle_json(&req, ctx),
        };
        Self::await_durable(ctx).await?;
        r
    }

    fn handle_json(&self, req: &json::Fast<'_>, ctx: &mut Ctx) -> Result<Vec<u8>, SqsError> {
        match req {
            json::Fast::Send(e) => {
                let name = self.queue_of_url(e.queue_url.as_deref())?;
                self.send_single(&name, SendArgs::from_typed(e), ctx).map(|r| to_body(&r))
            }
            json::Fast::SendBatch(b) => {
                let name = self.queue_of_url(b.queue_url.as_deref())?;
                let entries = b.entries.as_deref().unwrap_or_default();
                check_batch_ids(entries.iter().map(|e| e.id.as_deref()), entries.len())?;
                let entries = entries.iter().map(|e| (e.id.as_deref().unwrap_or(""), SendArgs::from_typed(e))).collect();
                self.send_entries(&name, entries, ctx).map(|r| to_body(&r))
            }
            json::Fast::Delete(e) => {
                let name = self.queue_of_url(e.queue_url.as_deref())?;
                let h = e.receipt_handle.as_deref().ok_or_else(|| SqsError::missing_parameter("ReceiptHandle"))?;
                self.delete_single(&name, h, ctx).map(|_| b"{}".to_vec())
            }
            json::Fast::DeleteBatch(b) => {
                let name = self.queue_of_url(b.queue_url.as_deref())?;
                let entries = b.entries.as_deref().unwrap_or_default();
                check_batch_ids(entries.iter().map(|e| e.id.as_deref()), entries.len())?;
                let entries = entries
                    .iter()
                    .map(|e| (e.id.as_deref().unwrap_or(""), e.receipt_handle.as_deref().ok_or_else(|| SqsError::missing_parameter("ReceiptHandle"))))
                    .collect();
                self.delete_batch(&name, entries, ctx).map(|r| to_body(&r))
            }
            json::Fast::Receive(_) => unreachable!("ReceiveMessage waits: see dispatch_json"),
        }
    }

    /// Wait until the changes this request made are committed, as its durability asks.
    async fn await_durable(ctx: &mut Ctx) -> Result<(), SqsError> {
        if let Some(rx) = ctx.durable.take() {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(SqsError::internal(e)),
                Err(_) => return Err(SqsError::internal("the queue store stopped before the change was committed")),
            }
        }
        Ok(())
    }

    fn start_move_task(&self, req: &Value, ctx: &mut Ctx) -> Result<Value, SqsError> {
        let src_arn = req_str(req, "SourceArn")?;
        let rate = int_range(req, "MaxNumberOfMessagesPerSecond", 1, 500)?.map(|r| r as u64);
        let mut st = self.lock();
        let src = name_from_arn(src_arn)
            .filter(|n| st.queues.contains_key(*n))
            .ok_or_else(|| SqsError::resource_not_found(format!("The resource {src_arn} does not exist.")))?
            .to_string();
        if !st.queues.values().any(|q| q.redrive.as_ref().is_some_and(|r| r.0 == src)) {
            return Err(SqsError::invalid_parameter(format!(
                "Source queue {src} must be configured as a dead-letter queue of some queue."
            )));
        }
        let dest = match s(req, "DestinationArn") {
            Some(d) => Some(
                name_from_arn(d)
                    .filter(|n| st.queues.contains_key(*n))
                    .ok_or_else(|| SqsError::resource_not_found(format!("The resource {d} does not exist.")))?
                    .to_string(),
            ),
            None => None,
        };
        if st.tasks.iter().any(|t| t.source == src && t.status == "RUNNING") {
            return Err(SqsError::invalid_parameter(format!("There is already a running message move task for {src}.")));
        }
        let to_move = st.queues[&src].msgs.len() as u64;
        let handle = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{src}", rand::random::<u64>()));
        st.tasks.push(MoveTask { handle: handle.clone(), source: src, dest, rate, status: "RUNNING", moved: 0, to_move, started_ms: ctx.now_ms });
        // ListMessageMoveTasks shows at most the 10 most recent tasks of a source: older
        // finished ones are forgotten rather than kept without end
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut keep: Vec<bool> = st
            .tasks
            .iter()
            .rev()
            .map(|t| {
                let n = seen.entry(t.source.clone()).or_insert(0);
                *n += 1;
                t.status == "RUNNING" || *n <= 10
            })
            .collect();
        keep.reverse();
        let mut i = 0;
        st.tasks.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        Ok(json!({"TaskHandle": handle}))
    }

    /// Advance running move tasks; returns whether any still runs.
    fn step_move_tasks(&self, budget_per_task: u64) -> bool {
        let mut st = self.lock();
        let now = now_ms();
        let mut ops = Vec::new();
        let mut running = false;
        let n_tasks = st.tasks.len();
        for i in 0..n_tasks {
            if st.tasks[i].status != "RUNNING" {
                continue;
            }
            let t = st.tasks[i].clone();
            let limit = t.rate.map(|r| r.min(budget_per_task)).unwrap_or(u64::MAX).min(t.to_move - t.moved);
            let State { queues, telemetry, .. } = &mut *st;
            let Some(q) = queues.get_mut(&t.source) else {
                st.tasks[i].status = "FAILED";
                continue;
            };
            q.promote(now, telemetry);
            let seqs: Vec<u64> = q.ready.iter().copied().take(limit as usize).collect();
            let mut moved = 0;
            for seq in seqs {
                let q = queues.get_mut(&t.source).expect("present");
                let Some(src_name) = t.dest.clone().or_else(|| q.msgs[&seq].extra.as_ref().and_then(|e| e.dl_source.clone())) else {
                    continue;
                };
                if !queues.contains_key(&src_name) {
                    continue;
                }
                let q = queues.get_mut(&t.source).expect("present");
                let mut m = q.take(seq).expect("present");
                m.recv_count = 0;
                m.visible_at = now;
                m.nonce = 0;
                let d = queues.get_mut(&src_name).expect("present");
                ops.push(Op::Put(Box::new(m.row(seq, &src_name))));
                d.insert(seq, m, now);
                d.notify.notify_one();
                moved += 1;
            }
            let task = &mut st.tasks[i];
            task.moved += moved;
            if task.moved >= task.to_move || moved == 0 {
                task.status = "COMPLETED";
            } else {
                running = true;
            }
        }
        self.inner.store.submit(ops);
        running
    }

    fn spawn_move_tasks(&self) {
        let b = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if !b.step_move_tasks(u64::MAX) {
                    break;
                }
            }
        });
    }

    // ---- admin API ---------------------------------------------------------------------

    fn admin_ctx(&self) -> Ctx {
        let host = self.inner.public_host.lock().unwrap().clone();
        Ctx::new("coalmine", &host)
    }

    /// Create queue `name` with `attributes`, or set them on the existing queue. Returns its URL.
    pub fn ensure_queue(&self, name: &str, attributes: &BTreeMap<String, String>) -> Result<String, SqsError> {
        let mut ctx = self.admin_ctx();
        let mut attrs = attributes.clone();
        if name.ends_with(".fifo") {
            attrs.entry("FifoQueue".into()).or_insert_with(|| "true".into());
        }
        let v = self.create_or_match(name, &attrs, BTreeMap::new(), &mut ctx, true)?;
        self.wait_durable_blocking(ctx.ticket)?;
        Ok(v["QueueUrl"].as_str().unwrap_or_default().to_string())
    }

    /// Names of all queues, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().queues.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn queue_stats(&self, name: &str) -> Result<QueueStats, SqsError> {
        let now = now_ms();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(name).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let oldest = q.msgs.keys().min().and_then(|s| q.msgs.get(s)).map(|m| now.saturating_sub(m.sent_ms)).unwrap_or(0);
        Ok(QueueStats { visible: q.ready.len() as u64, in_flight: q.inflight as u64, delayed: q.delayed() as u64, oldest_age_ms: oldest })
    }

    /// Per access key id, per-second buckets since `since_ms` (unix ms).
    pub fn telemetry(&self, queue: &str, since_ms: u64) -> Result<Vec<ConsumerTelemetry>, SqsError> {
        let now = now_ms();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(queue).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        Ok(telemetry.query(queue, since_ms))
    }

    pub fn in_flight(&self, queue: &str) -> Result<Vec<InFlightMessage>, SqsError> {
        let now = now_ms();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(queue).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        Ok(q
            .pending
            .iter()
            .filter_map(|(_, seq)| q.msgs.get(seq))
            .filter(|m| m.nonce != 0)
            .map(|m| InFlightMessage {
                message_id: m.id_string(),
                access_key_id: m.receiver.name(),
                received_at_ms: m.received_at,
                receive_count: m.recv_count,
            })
            .collect())
    }

    /// Messages in the dead-letter queue `dlq` that another queue moved there, oldest first.
    pub fn dead_letters(&self, dlq: &str) -> Result<Vec<DeadLetter>, SqsError> {
        let mut st = self.lock();
        let q = st.queue(dlq)?;
        let mut seqs: Vec<&u64> = q.msgs.keys().collect();
        seqs.sort();
        Ok(seqs
            .into_iter()
            .filter_map(|s| {
                let m = &q.msgs[s];
                let e = m.extra.as_deref()?;
                Some(DeadLetter {
                    message_id: m.id_string(),
                    source_queue: e.dl_source.clone()?,
                    last_receiver: m.receiver.get().map(|r| r.to_string()),
                    moved_at_ms: e.dl_moved_at,
                    receive_count: m.recv_count,
                    body: m.body.to_string(),
                })
            })
            .collect())
    }

    /// Move the given dead letters back to their source queues, visible now, with their
    /// receive count reset. In-flight ones (received from the DLQ) are skipped. Returns how
    /// many moved.
    pub fn redrive(&self, dlq: &str, message_ids: &[String]) -> Result<usize, SqsError> {
        let wanted: HashSet<[u8; 16]> = message_ids.iter().filter_map(|id| uuid::Uuid::parse_str(id).ok()).map(|u| *u.as_bytes()).collect();
        let now = now_ms();
        let mut ctx = self.admin_ctx();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(dlq).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let picks: Vec<(u64, String)> = q
            .msgs
            .iter()
            .filter(|(_, m)| wanted.contains(&m.id) && m.nonce == 0)
            .filter_map(|(s, m)| Some((*s, m.extra.as_ref()?.dl_source.clone()?)))
            .collect();
        let mut ops = Vec::new();
        for (seq, src) in &picks {
            if !queues.contains_key(src) {
                continue;
            }
            let mut m = queues.get_mut(dlq).expect("present").take(*seq).expect("present");
            m.recv_count = 0;
            m.visible_at = now;
            m.nonce = 0;
            if let Some(e) = m.extra.as_mut() {
                e.dl_source = None;
                e.dl_moved_at = 0;
            }
            ops.push(Op::Put(Box::new(m.row(*seq, src))));
            let d = queues.get_mut(src).expect("present");
            d.insert(*seq, m, now);
            d.notify.notify_one();
        }
        let n = ops.len();
        self.submit(&mut ctx, ops);
        drop(st);
        self.wait_durable_blocking(ctx.ticket)?;
        Ok(n)
    }

    /// Make the in-flight messages received by these access key ids visible now, undoing
    /// their receive (counted as released, not returned). Returns how many.
    pub fn release_in_flight(&self, queue: &str, access_key_ids: &[String]) -> Result<usize, SqsError> {
        let now = now_ms();
        let mut ctx = self.admin_ctx();
        let mut st = self.lock();
        let State { queues, telemetry, .. } = &mut *st;
        let q = queues.get_mut(queue).ok_or_else(SqsError::queue_does_not_exist)?;
        q.promote(now, telemetry);
        let seqs: Vec<(u64, Arc<str>)> = q
            .pending
            .iter()
            .filter_map(|(_, s)| {
                let m = q.msgs.get(s)?;
                let r = m.receiver.get()?;
                (m.nonce != 0 && access_key_ids.iter().any(|k| k.as_str() == &*r)).then(|| (*s, r.clone()))
            })
            .collect();
        let mut ops = Vec::new();
        for (seq, r) in &seqs {
            q.make_visible(*seq, now);
            // The holder's receive is undone: the message was taken from a consumer, it did
            // not fail one more time, and must not reach the DLQ on its next receive for it.
            if let Some(m) = q.msgs.get_mut(seq) {
                m.recv_count = m.recv_count.saturating_sub(1);
            }
            telemetry.record(queue, r, now, Event::Released);
            ops.push(q.msgs[seq].state_op(*seq));
            q.notify.notify_one();
        }
        self.submit(&mut ctx, ops);
        drop(st);
        self.wait_durable_blocking(ctx.ticket)?;
        Ok(seqs.len())
    }

    /// After a failed write, make the in-memory state what the store holds again (dropping
    /// every change that was refused), and accept changes again. Does nothing while the store
    /// is well; when the store still cannot be read, tries again at the next tick.
    pub(crate) fn recover_store(&self) {
        if !self.inner.store.is_broken() {
            return;
        }
        let mut st = self.lock();
        let path = self.inner.cfg.data_dir.join("queue.db");
        let loaded = match self.inner.store.reload() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "queue store still failing; trying again shortly");
                return;
            }
        };
        match build_queues(loaded.queues, loaded.messages, &path) {
            Ok((mut queues, next_seq)) => {
                for (name, q) in queues.iter_mut() {
                    if let Some(old) = st.queues.get(name) {
                        // long polls in progress wait on these
                        q.notify = old.notify.clone();
                    }
                }
                let refused: usize = st.queues.values().map(|q| q.msgs.len()).sum::<usize>().abs_diff(queues.values().map(|q| q.msgs.len()).sum());
                st.queues = queues;
                st.next_seq = st.next_seq.max(next_seq);
                self.inner.store.settled(|done, refused| st.telemetry.settle(done, refused));
                st.telemetry.mark_all_dirty();
                tracing::warn!(message_count_change = refused, "queue state reloaded from the store after a failed write; refused changes are gone");
            }
            Err(e) => tracing::error!(error = %e, "queue store reopened but its data could not be read"),
        }
    }

    /// Make the store's next `n` commits fail as a full disk would: the changes are refused
    /// (answered with a server error) and the broker recovers by itself. For tests.
    #[doc(hidden)]
    pub fn fail_next_store_commits(&self, n: u32) {
        self.inner.store.fail_next_commits(n);
    }

    /// Periodic upkeep: visibility expiry, retention, telemetry persistence.
    pub(crate) fn tick(&self) {
        self.recover_store();
        let now = now_ms();
        let mut st = self.lock();
        self.inner.store.settled(|done, refused| st.telemetry.settle(done, refused));
        let State { queues, telemetry, .. } = &mut *st;
        let mut ops = Vec::new();
        for q in queues.values_mut() {
            q.promote(now, telemetry);
            while let Some(&seq) = q.ready.first() {
                let expired = q.msgs.get(&seq).is_some_and(|m| m.sent_ms + q.retention_ms <= now);
                if !expired {
                    break;
                }
                q.take(seq);
                ops.push(Op::Del(seq));
            }
            q.forget_old_dedup(now);
        }
        self.inner.store.submit(ops);
    }

    pub(crate) fn flush_telemetry(&self) {
        let mut st = self.lock();
        st.telemetry.forget_stale(now_ms() / 1000);
        let rows = st.telemetry.take_dirty();
        if !rows.is_empty() {
            let cutoff = now_ms() / 1000 - crate::telemetry::KEEP_SECONDS;
            self.inner.store.submit(vec![Op::Telemetry(rows), Op::TrimTelemetry(cutoff)]);
        }
    }

    /// Start the background upkeep on the current tokio runtime (called by `serve`/`router`).
    pub(crate) fn start_background(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let b = Broker { inner };
                b.tick();
                n += 1;
                if n.is_multiple_of(4) {
                    b.flush_telemetry();
                }
            }
        });
    }

    /// Counts of messages per queue and state (for metrics).
    pub(crate) fn depth_snapshot(&self) -> Vec<(String, usize, usize, usize)> {
        let st = self.lock();
        let mut v: Vec<_> = st.queues.values().map(|q| (q.name.clone(), q.ready.len(), q.inflight, q.delayed())).collect();
        v.sort();
        v
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).to_vec()
}

/// One received message as ReceiveMessage returns it.
fn render_message(m: &Msg, seq: u64, p: &RecvParams, region: &str, account: &str, fifo: bool) -> Received {
    let want_all_sys = p.sys_names.iter().any(|n| n == "All");
    let want = |n: &str| want_all_sys || p.sys_names.iter().any(|x| x == n);
    let mut v = Received {
        message_id: m.id_string(),
        receipt_handle: receipt(seq, m.nonce),
        md5_body: md5_hex(m.body.as_bytes()),
        body: m.body.to_string(),
        attributes: None,
        md5_attrs: None,
        message_attributes: None,
    };
    if !p.sys_names.is_empty() {
        let mut a = Map::new();
        let e = m.extra.as_deref();
        if want("SenderId") {
            a.insert("SenderId".into(), json!(m.sender.name()));
        }
        if want("SentTimestamp") {
            a.insert("SentTimestamp".into(), json!(m.sent_ms.to_string()));
        }
        if want("ApproximateReceiveCount") {
            a.insert("ApproximateReceiveCount".into(), json!(m.recv_count.to_string()));
        }
        if want("ApproximateFirstReceiveTimestamp") {
            a.insert("ApproximateFirstReceiveTimestamp".into(), json!(m.first_recv_ms.to_string()));
        }
        if let Some(e) = e {
            if let Some(g) = &e.group {
                if want("MessageGroupId") {
                    a.insert("MessageGroupId".into(), json!(&**g));
                }
                if want("SequenceNumber") && fifo {
                    a.insert("SequenceNumber".into(), json!(format!("{:020}", e.seqnum)));
                }
            }
            if let (Some(d), true) = (&e.dedup_id, want("MessageDeduplicationId")) {
                a.insert("MessageDeduplicationId".into(), json!(d));
            }
            if let (Some(src), true) = (&e.dl_source, want("DeadLetterQueueSourceArn")) {
                a.insert("DeadLetterQueueSourceArn".into(), json!(arn_of(region, account, src)));
            }
            if let (Some(t), true) = (e.sys_attrs.as_ref().and_then(|s| s.get("AWSTraceHeader")), want("AWSTraceHeader")) {
                if let Some(v) = t.get("StringValue") {
                    a.insert("AWSTraceHeader".into(), v.clone());
                }
            }
        }
        if !a.is_empty() {
            v.attributes = Some(a);
        }
    }
    if let Some(attrs) = m.extra.as_ref().and_then(|e| e.attrs.as_ref()) {
        if !p.attr_names.is_empty() {
            let sel: Map<String, Value> = attrs
                .iter()
                .filter(|(k, _)| {
                    p.attr_names.iter().any(|n| {
                        // `All`, `.*` and `*` select every attribute; `Hel.*` those whose
                        // names start with `Hel` (Hello, Help.Me), as the SDK models describe.
                        n == "All" || n == ".*" || n == "*" || n == *k || (n.ends_with(".*") && k.starts_with(&n[..n.len() - 2]))
                    })
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(md5) = md5_of_attributes(&sel) {
                v.md5_attrs = Some(md5);
                v.message_attributes = Some(sel);
            }
        }
    }
    v
}

struct WaitingGuard<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> WaitingGuard<'a> {
    fn new(c: &'a std::sync::atomic::AtomicI64) -> Self {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WaitingGuard(c)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
