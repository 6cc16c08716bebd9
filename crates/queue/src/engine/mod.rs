//! The broker: one implementation of every SQS action over the in-memory state, with the
//! durable log behind it, and the Rust admin API the rest of coalmine uses.
//!
//! Here: the configuration, the request context, the dispatch of every action and what the
//! actions share (parameters, receipts, batches, durability). The actions by family, each an
//! `impl Broker` of its own: `queues` (create, list, attributes, permissions), `send`,
//! `receive`, `delete` (deletes and visibility changes), `moves` (message move tasks); `admin`
//! is the Rust API for the rest of coalmine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde_json::{json, Map, Value};

use crate::digest::{md5_of_attributes, Ascii};
use answers::Answer as _;
use crate::error::{QueueError, SqsError};
use crate::protocol::json;
use crate::model::*;
use crate::store::{Op, QueueRow, Store};
use crate::telemetry::{ConsumerTelemetry, Event, Telemetry};

mod admin;
mod answers;
mod delete;
mod moves;
mod queues;
mod receive;
mod send;

/// Whether a request waits for its changes to be committed to disk before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Answer after the change is committed (a `kill -9` loses nothing acknowledged). A
    /// receive's own change (the messages in flight) is the exception: it is committed with the
    /// next group without being waited for; lost, its messages are delivered again.
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

fn receipt(seq: u64, nonce: u32) -> Ascii<16> {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    b[8..].copy_from_slice(&nonce.to_be_bytes());
    let mut out = [0u8; 16];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(b, &mut out).expect("12 bytes are 16 characters");
    debug_assert_eq!(n, 16);
    Ascii::new(out)
}

fn parse_receipt(h: &str) -> Result<(u64, u32), SqsError> {
    let mut b = [0u8; 12];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(h.trim(), &mut b).map_err(|_| SqsError::receipt_handle_invalid(h))?;
    if n != 12 {
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
pub(crate) struct Sent<'a> {
    #[serde(rename = "Id", skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "MessageId")]
    message_id: Ascii<36>,
    #[serde(rename = "MD5OfMessageBody")]
    md5_body: Ascii<32>,
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
pub(crate) struct Done<'a> {
    #[serde(rename = "Id")]
    id: &'a str,
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
    message_id: Ascii<36>,
    #[serde(rename = "ReceiptHandle")]
    receipt_handle: Ascii<16>,
    #[serde(rename = "MD5OfBody")]
    md5_body: Ascii<32>,
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
        name: q.name.to_string(),
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
        let Some(q) = out.get_mut(&*r.queue) else {
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
        let mut m = Msg {
            id: r.id,
            md5: crate::digest::md5(r.body.as_bytes()),
            body: r.body.into_boxed_str(),
            extra,
            sent_ms: r.sent_ms,
            visible_at: r.visible_at,
            first_recv: 0,
            recv_count: r.recv_count,
            nonce: if in_flight { r.nonce } else { 0 },
            last_nonce: if in_flight { 0 } else { r.nonce },
            sender,
            receiver,
            received_at: r.received_at,
        };
        m.set_first_recv_ms(r.first_recv_ms);
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
                self.visibility_single(&name, h, t, ctx).map(|_| json!({}))
            }
            "ChangeMessageVisibilityBatch" => {
                let name = self.queue_of(req)?;
                let entries = batch_entries(req)?;
                self.visibility_batch(&name, entries, ctx)
            }
            "ListDeadLetterSourceQueues" => {
                let name = self.queue_of(req)?;
                let max = int_range(req, "MaxResults", 1, 1000)?;
                let st = self.lock();
                if !st.queues.contains_key(&name) {
                    return Err(SqsError::queue_does_not_exist());
                }
                let mut names: Vec<&str> =
                    st.queues.values().filter(|q| q.redrive.as_ref().is_some_and(|r| r.0 == name)).map(|q| &*q.name).collect();
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
                Ok((p, name)) => self.receive_with(&p, &name, ctx).await.map(|r| r.to_json()),
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
                self.send_single(&name, SendArgs::from_typed(e), ctx).map(|r| r.to_json())
            }
            json::Fast::SendBatch(b) => {
                let name = self.queue_of_url(b.queue_url.as_deref())?;
                let entries = b.entries.as_deref().unwrap_or_default();
                check_batch_ids(entries.iter().map(|e| e.id.as_deref()), entries.len())?;
                let entries = entries.iter().map(|e| (e.id.as_deref().unwrap_or(""), SendArgs::from_typed(e))).collect();
                self.send_entries(&name, entries, ctx).map(|r| r.to_json())
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
                self.delete_batch(&name, entries, ctx).map(|r| r.to_json())
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
        message_id: crate::digest::message_id(m.id),
        receipt_handle: receipt(seq, m.nonce),
        md5_body: crate::digest::hex16(&m.md5),
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
            a.insert("ApproximateFirstReceiveTimestamp".into(), json!(m.first_recv_ms().to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt handle reads back as the message and receive it names; anything else is
    /// refused as invalid, whatever its length.
    #[test]
    fn receipt_handles_read_back_and_nothing_else_does() {
        for (seq, nonce) in [(1, 1), (u64::MAX, u32::MAX), (42, 7)] {
            let h = receipt(seq, nonce);
            assert_eq!(h.as_str().len(), 16);
            assert_eq!(parse_receipt(h.as_str()).unwrap(), (seq, nonce));
        }
        let long = format!("{}AAAA", receipt(1, 1));
        for bad in ["", "AAAA", "AAAAAAAAAAEAAAAA", "AAAAAAAAAAEAAAA!", &long, "AAAAAAAAAAEAAAABAAAAAAAAAAEAAAAB"] {
            assert_eq!(parse_receipt(bad).unwrap_err().code, "ReceiptHandleIsInvalid", "{bad:?}");
        }
    }
}
