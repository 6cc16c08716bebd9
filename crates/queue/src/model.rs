//! Queues and messages in memory, with their validation rules.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::error::SqsError;
use crate::telemetry::{Event, Telemetry};

pub const ACCOUNT: &str = "000000000000";
/// SQS's largest message (and batch): 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 1_048_576;
/// Longest a message may stay in flight from its receipt (12 hours).
pub const MAX_VISIBILITY_MS: u64 = 43_200_000;
/// Messages in flight per queue before ReceiveMessage answers `OverLimit`.
pub const MAX_IN_FLIGHT: usize = 120_000;

/// An access key id, shared by every message and telemetry series that names it. Equal ids
/// share one allocation through a process-wide table; ids nothing refers to any more are
/// dropped from the table as it grows, so a client cycling through fresh ids cannot grow it
/// beyond about twice the ids in use (see [`interned_access_keys`]). One pointer wide (the
/// name behind a second `Arc`): every message names two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyId(Option<Arc<Arc<str>>>);

struct KeyTable {
    /// name -> its id (the key shares the name's allocation)
    ids: HashMap<Arc<str>, Arc<Arc<str>>>,
    /// Prune when the table grows past this (twice its size after the last prune).
    prune_at: usize,
}

const KEY_TABLE_MIN_PRUNE: usize = 1024;
static KEYS: std::sync::Mutex<Option<KeyTable>> = std::sync::Mutex::new(None);

/// How many distinct access key ids the process holds interned now.
pub fn interned_access_keys() -> usize {
    KEYS.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|t| t.ids.len()).unwrap_or(0)
}

impl KeyId {
    pub const NONE: KeyId = KeyId(None);

    pub fn intern(name: &str) -> KeyId {
        let mut g = KEYS.lock().unwrap_or_else(|e| e.into_inner());
        let t = g.get_or_insert_with(|| KeyTable { ids: HashMap::new(), prune_at: KEY_TABLE_MIN_PRUNE });
        if let Some(id) = t.ids.get(name) {
            return KeyId(Some(id.clone()));
        }
        if t.ids.len() >= t.prune_at {
            // Only the table holds these: nobody names them any more.
            t.ids.retain(|_, id| Arc::strong_count(id) > 1);
            t.prune_at = (t.ids.len() * 2).max(KEY_TABLE_MIN_PRUNE);
        }
        let name: Arc<str> = Arc::from(name);
        let id = Arc::new(name.clone());
        t.ids.insert(name, id.clone());
        KeyId(Some(id))
    }

    pub fn get(&self) -> Option<Arc<str>> {
        self.0.as_deref().cloned()
    }

    /// Whether this is `name`'s very allocation.
    pub fn is(&self, name: &Arc<str>) -> bool {
        self.0.as_deref().is_some_and(|a| Arc::ptr_eq(a, name))
    }

    pub fn name(&self) -> String {
        self.0.as_deref().map(|a| a.to_string()).unwrap_or_default()
    }
}

pub(crate) struct Extra {
    pub attrs: Option<Map<String, Value>>,
    pub sys_attrs: Option<Map<String, Value>>,
    pub group: Option<Arc<str>>,
    pub dedup_id: Option<String>,
    pub seqnum: u64,
    pub dl_source: Option<String>,
    pub dl_moved_at: u64,
}

pub(crate) struct Msg {
    pub id: [u8; 16],
    pub body: Box<str>,
    pub extra: Option<Box<Extra>>,
    pub sent_ms: u64,
    pub visible_at: u64,
    /// The body's MD5 (every receive answers it; kept rather than computed again).
    pub md5: [u8; 16],
    /// When the message was first received: 1 + milliseconds after `sent_ms` (0: never), see
    /// [`Msg::first_recv_ms`]. Four bytes hold 49 days, more than a message is kept.
    pub first_recv: u32,
    pub recv_count: u32,
    /// Nonce of the current receipt handle; 0 when not in flight.
    pub nonce: u32,
    /// Nonce of the last receipt handle once its visibility ran out (or was ended), while
    /// nobody received the message again: that handle still deletes it, as on SQS.
    pub last_nonce: u32,
    pub sender: KeyId,
    /// The last receiver (access key id).
    pub receiver: KeyId,
    pub received_at: u64,
}

impl Msg {
    pub fn id_string(&self) -> String {
        crate::digest::message_id(self.id).to_string()
    }
    /// When the message was first received (ms since the epoch), or 0.
    pub fn first_recv_ms(&self) -> u64 {
        match self.first_recv {
            0 => 0,
            n => self.sent_ms + u64::from(n - 1),
        }
    }

    pub fn set_first_recv_ms(&mut self, ms: u64) {
        self.first_recv = if ms == 0 { 0 } else { ms.saturating_sub(self.sent_ms).min(u64::from(u32::MAX - 1)) as u32 + 1 };
    }

    pub fn group(&self) -> Option<&Arc<str>> {
        self.extra.as_ref().and_then(|e| e.group.as_ref())
    }

    pub fn row(&self, seq: u64, queue: Arc<str>) -> crate::store::MsgRow {
        let e = self.extra.as_deref();
        crate::store::MsgRow {
            seq,
            queue,
            id: self.id,
            body: self.body.to_string(),
            attrs: e.and_then(|e| e.attrs.as_ref()).map(|a| Value::Object(a.clone()).to_string()),
            sys_attrs: e.and_then(|e| e.sys_attrs.as_ref()).map(|a| Value::Object(a.clone()).to_string()),
            sent_ms: self.sent_ms,
            visible_at: self.visible_at,
            recv_count: self.recv_count,
            first_recv_ms: self.first_recv_ms(),
            nonce: self.nonce,
            sender: self.sender.get().unwrap_or_else(|| Arc::from("")),
            receiver: self.receiver.get(),
            received_at: self.received_at,
            group_id: e.and_then(|e| e.group.as_ref()).map(|g| g.to_string()),
            dedup_id: e.and_then(|e| e.dedup_id.clone()),
            seqnum: e.map(|e| e.seqnum).unwrap_or(0),
            dl_source: e.and_then(|e| e.dl_source.clone()),
            dl_moved_at: e.map(|e| e.dl_moved_at).unwrap_or(0),
        }
    }

    pub fn state_op(&self, seq: u64) -> crate::store::Op {
        crate::store::Op::State {
            seq,
            visible_at: self.visible_at,
            recv_count: self.recv_count,
            first_recv_ms: self.first_recv_ms(),
            // not in flight: the last receipt's nonce, which still deletes the message (a
            // stored message is in flight only while its visibility lasts)
            nonce: if self.nonce != 0 { self.nonce } else { self.last_nonce },
            receiver: self.receiver.get(),
            received_at: self.received_at,
        }
    }
}

/// A queue's messages by sequence number: a deque in sequence order (messages arrive mostly in
/// order), with holes left by deletes until the front catches up. Compact in memory: no hash
/// table, no tree nodes.
#[derive(Default)]
pub(crate) struct MsgStore {
    slots: VecDeque<(u64, Option<Msg>)>,
    live: usize,
}

impl MsgStore {
    fn find(&self, seq: u64) -> Result<usize, usize> {
        // Sequence numbers are distinct and ascending, so `seq` is at most `seq - first` slots
        // from the front: there exactly while no other queue's messages or compacted holes
        // lie between (the usual case), else the search looks only up to there.
        let Some(&(first, _)) = self.slots.front() else { return Err(0) };
        let Some(guess) = seq.checked_sub(first) else { return Err(0) };
        let end = match usize::try_from(guess) {
            Ok(g) if g < self.slots.len() => {
                if self.slots[g].0 == seq {
                    return Ok(g);
                }
                g + 1
            }
            _ => self.slots.len(),
        };
        let (mut lo, mut hi) = (0, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.slots[mid].0.cmp(&seq) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    pub fn get(&self, seq: &u64) -> Option<&Msg> {
        self.find(*seq).ok().and_then(|i| self.slots[i].1.as_ref())
    }

    pub fn get_mut(&mut self, seq: &u64) -> Option<&mut Msg> {
        match self.find(*seq) {
            Ok(i) => self.slots[i].1.as_mut(),
            Err(_) => None,
        }
    }

    pub fn insert(&mut self, seq: u64, m: Msg) {
        if self.slots.back().is_none_or(|b| b.0 < seq) {
            self.slots.push_back((seq, Some(m)));
            self.live += 1;
            return;
        }
        match self.find(seq) {
            Ok(i) => {
                if self.slots[i].1.replace(m).is_none() {
                    self.live += 1;
                }
            }
            Err(i) => {
                self.slots.insert(i, (seq, Some(m)));
                self.live += 1;
            }
        }
    }

    pub fn remove(&mut self, seq: &u64) -> Option<Msg> {
        let i = self.find(*seq).ok()?;
        let m = self.slots[i].1.take()?;
        self.live -= 1;
        while self.slots.front().is_some_and(|s| s.1.is_none()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|s| s.1.is_none()) {
            self.slots.pop_back();
        }
        let holes = self.slots.len() - self.live;
        if holes > 4096 && holes > self.live {
            self.slots.retain(|s| s.1.is_some());
            self.slots.shrink_to_fit();
        }
        Some(m)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.slots.shrink_to_fit();
        self.live = 0;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Msg)> {
        self.slots.iter().filter_map(|(s, m)| m.as_ref().map(|m| (s, m)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &u64> {
        self.iter().map(|(s, _)| s)
    }
}

impl std::ops::Index<&u64> for MsgStore {
    type Output = Msg;
    fn index(&self, seq: &u64) -> &Msg {
        self.get(seq).expect("message present")
    }
}

pub(crate) struct Queue {
    /// (shared with the rows the store writes for its messages)
    pub name: Arc<str>,
    pub fifo: bool,
    /// Attributes set by users (normalized strings).
    pub attrs: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub created_s: u64,
    pub modified_s: u64,
    pub last_purge_ms: u64,
    pub msgs: MsgStore,
    pub ready: BTreeSet<u64>,
    pub pending: BTreeSet<(u64, u64)>,
    pub inflight: usize,
    pub group_inflight: HashMap<Arc<str>, u32>,
    pub dedup: HashMap<String, (u64, [u8; 16], u64)>,
    pub dedup_order: VecDeque<(u64, String)>,
    pub next_seqnum: u64,
    pub notify: Arc<Notify>,
    // parsed attributes
    pub visibility_s: u64,
    pub delay_s: u64,
    pub retention_ms: u64,
    pub max_size: usize,
    pub wait_s: u64,
    pub redrive: Option<(String, u32)>,
    /// FIFO `ReceiveRequestAttemptId`s of the last 5 minutes: expiry (ms) and what they
    /// received (sequence number, receipt nonce).
    pub attempts: HashMap<String, (u64, Vec<(u64, u32)>)>,
}

pub fn default_attr(name: &str) -> Option<&'static str> {
    Some(match name {
        "DelaySeconds" => "0",
        "MaximumMessageSize" => "1048576",
        "MessageRetentionPeriod" => "345600",
        "ReceiveMessageWaitTimeSeconds" => "0",
        "VisibilityTimeout" => "30",
        "SqsManagedSseEnabled" => "false",
        _ => return None,
    })
}

pub const SETTABLE: &[&str] = &[
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "Policy",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

pub const READ_ONLY: &[&str] = &[
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
];

/// A queue's ARN in the default account ([`ACCOUNT`]).
pub fn arn(region: &str, name: &str) -> String {
    arn_of(region, ACCOUNT, name)
}

/// A queue's ARN.
pub fn arn_of(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:sqs:{region}:{account}:{name}")
}

pub fn name_from_arn(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() == 6 && parts[0] == "arn" && parts[2] == "sqs" {
        Some(parts[5])
    } else {
        None
    }
}

fn int_in(name: &str, v: &str, lo: u64, hi: u64) -> Result<String, SqsError> {
    match v.trim().parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n.to_string()),
        _ => Err(SqsError::invalid_attribute_value(format!(
            "Invalid value for the parameter {name}: \"{v}\"; it must be an integer from {lo} to {hi}."
        ))),
    }
}

/// Validate and normalize one attribute. `fifo` tells whether the queue is FIFO.
pub fn validate_attr(name: &str, value: &str, fifo: bool, creating: bool) -> Result<String, SqsError> {
    let bad = |why: &str| SqsError::invalid_attribute_value(format!("Invalid value for the parameter {name}: {why}"));
    match name {
        "DelaySeconds" => int_in(name, value, 0, 900),
        "MaximumMessageSize" => int_in(name, value, 1024, MAX_MESSAGE_BYTES as u64),
        "MessageRetentionPeriod" => int_in(name, value, 60, 1_209_600),
        "ReceiveMessageWaitTimeSeconds" => int_in(name, value, 0, 20),
        "VisibilityTimeout" => int_in(name, value, 0, 43_200),
        "KmsDataKeyReusePeriodSeconds" => int_in(name, value, 60, 86_400),
        "Policy" | "KmsMasterKeyId" => Ok(value.to_string()),
        "SqsManagedSseEnabled" | "ContentBasedDeduplication" | "FifoQueue" => {
            if (name != "SqsManagedSseEnabled") && !fifo && !(name == "FifoQueue" && value == "false") {
                return Err(SqsError::invalid_attribute_name(name));
            }
            if name == "FifoQueue" && !creating {
                return Err(SqsError::invalid_attribute_name(name));
            }
            match value.to_ascii_lowercase().as_str() {
                "true" => Ok("true".into()),
                "false" => Ok("false".into()),
                _ => Err(bad("must be true or false")),
            }
        }
        "DeduplicationScope" | "FifoThroughputLimit" => {
            if !fifo {
                return Err(SqsError::invalid_attribute_name(name));
            }
            let ok: &[&str] = if name == "DeduplicationScope" { &["messageGroup", "queue"] } else { &["perQueue", "perMessageGroupId"] };
            if ok.contains(&value) {
                Ok(value.to_string())
            } else {
                Err(bad(&format!("must be one of {ok:?}")))
            }
        }
        "RedrivePolicy" => {
            if value.is_empty() {
                return Ok(String::new());
            }
            let v: Value = serde_json::from_str(value).map_err(|_| bad("must be a JSON object"))?;
            let target = v.get("deadLetterTargetArn").and_then(Value::as_str).ok_or_else(|| bad("deadLetterTargetArn is missing"))?;
            if name_from_arn(target).is_none() {
                return Err(bad("deadLetterTargetArn is not a queue ARN"));
            }
            let max = match v.get("maxReceiveCount") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse::<u64>().ok(),
                _ => None,
            }
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad("maxReceiveCount must be an integer from 1 to 1000"))?;
            Ok(serde_json::json!({"deadLetterTargetArn": target, "maxReceiveCount": max}).to_string())
        }
        "RedriveAllowPolicy" => {
            if value.is_empty() {
                return Ok(String::new());
            }
            let v: Value = serde_json::from_str(value).map_err(|_| bad("must be a JSON object"))?;
            let perm = v.get("redrivePermission").and_then(Value::as_str).ok_or_else(|| bad("redrivePermission is missing"))?;
            match perm {
                "allowAll" | "denyAll" => {}
                "byQueue" => {
                    let arns = v.get("sourceQueueArns").and_then(Value::as_array).ok_or_else(|| bad("sourceQueueArns is required with byQueue"))?;
                    if arns.is_empty() || arns.len() > 10 {
                        return Err(bad("sourceQueueArns must list 1 to 10 queue ARNs"));
                    }
                }
                _ => return Err(bad("redrivePermission must be allowAll, denyAll or byQueue")),
            }
            Ok(v.to_string())
        }
        _ => Err(SqsError::invalid_attribute_name(name)),
    }
}

pub fn valid_queue_name(name: &str) -> bool {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    !name.is_empty() && name.len() <= 80 && !base.is_empty() && base.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Queue {
    pub fn new(name: &str, attrs: BTreeMap<String, String>, tags: BTreeMap<String, String>, created_s: u64) -> Queue {
        let mut q = Queue {
            name: Arc::from(name),
            fifo: name.ends_with(".fifo"),
            attrs,
            tags,
            created_s,
            modified_s: created_s,
            last_purge_ms: 0,
            msgs: MsgStore::default(),
            ready: BTreeSet::new(),
            pending: BTreeSet::new(),
            inflight: 0,
            group_inflight: HashMap::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            next_seqnum: 0,
            notify: Arc::new(Notify::new()),
            visibility_s: 30,
            delay_s: 0,
            retention_ms: 345_600_000,
            max_size: MAX_MESSAGE_BYTES,
            wait_s: 0,
            redrive: None,
            attempts: HashMap::new(),
        };
        q.reparse();
        q
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str).filter(|s| !s.is_empty()).or_else(|| default_attr(name))
    }

    pub fn reparse(&mut self) {
        let num = |q: &Queue, n: &str| q.attr(n).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        self.visibility_s = num(self, "VisibilityTimeout");
        self.delay_s = num(self, "DelaySeconds");
        self.retention_ms = num(self, "MessageRetentionPeriod") * 1000;
        self.max_size = num(self, "MaximumMessageSize") as usize;
        self.wait_s = num(self, "ReceiveMessageWaitTimeSeconds");
        self.redrive = self.attr("RedrivePolicy").and_then(|p| {
            let v: Value = serde_json::from_str(p).ok()?;
            let dlq = name_from_arn(v.get("deadLetterTargetArn")?.as_str()?)?.to_string();
            let max = v.get("maxReceiveCount")?.as_u64()? as u32;
            Some((dlq, max))
        });
    }

    pub fn content_dedup(&self) -> bool {
        self.attr("ContentBasedDeduplication") == Some("true")
    }

    pub fn dedup_by_group(&self) -> bool {
        self.attr("DeduplicationScope") == Some("messageGroup")
    }

    pub fn delayed(&self) -> usize {
        self.pending.len() - self.inflight
    }

    /// Insert a message into the indexes by its state.
    pub fn insert(&mut self, seq: u64, m: Msg, now: u64) {
        if m.nonce != 0 && m.visible_at > now {
            self.inflight += 1;
            if let Some(g) = m.group() {
                *self.group_inflight.entry(g.clone()).or_insert(0) += 1;
            }
            self.pending.insert((m.visible_at, seq));
        } else if m.visible_at > now {
            self.pending.insert((m.visible_at, seq));
        } else {
            self.ready.insert(seq);
        }
        self.msgs.insert(seq, m);
    }

    fn release_group(&mut self, g: Option<Arc<str>>) {
        if let Some(g) = g {
            if let Some(c) = self.group_inflight.get_mut(&g) {
                *c -= 1;
                if *c == 0 {
                    self.group_inflight.remove(&g);
                }
            }
        }
    }

    /// Remove a message from the queue and its indexes.
    pub fn take(&mut self, seq: u64) -> Option<Msg> {
        let m = self.msgs.remove(&seq)?;
        if !self.ready.remove(&seq) {
            self.pending.remove(&(m.visible_at, seq));
            if m.nonce != 0 {
                self.inflight -= 1;
                self.release_group(m.group().cloned());
            }
        }
        Some(m)
    }

    /// Make the in-flight message `seq` visible again now.
    pub fn make_visible(&mut self, seq: u64, now: u64) -> bool {
        let Some(m) = self.msgs.get_mut(&seq) else { return false };
        if m.nonce == 0 {
            return false;
        }
        self.pending.remove(&(m.visible_at, seq));
        m.last_nonce = m.nonce;
        m.nonce = 0;
        m.visible_at = now;
        let g = m.group().cloned();
        self.inflight -= 1;
        self.release_group(g);
        self.ready.insert(seq);
        true
    }

    /// Move messages whose time has come from `pending` to `ready`; in-flight ones whose
    /// visibility ran out count as expired for their receiver.
    pub fn promote(&mut self, now: u64, tel: &mut Telemetry) {
        let mut woke = 0;
        while let Some(&(t, seq)) = self.pending.first() {
            if t > now {
                break;
            }
            self.pending.pop_first();
            let Some(m) = self.msgs.get_mut(&seq) else { continue };
            if m.nonce != 0 {
                m.last_nonce = m.nonce;
                m.nonce = 0;
                let g = m.group().cloned();
                if let Some(r) = m.receiver.get() {
                    tel.record(&self.name, &r, now, Event::Expired);
                }
                self.inflight -= 1;
                self.release_group(g);
            }
            self.ready.insert(seq);
            woke += 1;
        }
        if woke > 0 {
            self.notify.notify_one();
        }
    }

    pub fn next_wake(&self) -> Option<u64> {
        self.pending.first().map(|p| p.0)
    }

    pub fn forget_old_dedup(&mut self, now: u64) {
        while let Some((exp, _)) = self.dedup_order.front() {
            if *exp > now {
                break;
            }
            let (exp, key) = self.dedup_order.pop_front().unwrap();
            if self.dedup.get(&key).is_some_and(|d| d.0 == exp) {
                self.dedup.remove(&key);
            }
        }
    }
}

/// Check a message body's characters as SQS does.
pub fn check_body(body: &str) -> Result<(), SqsError> {
    for c in body.chars() {
        let u = c as u32;
        let ok = u == 0x9 || u == 0xA || u == 0xD || (0x20..=0xD7FF).contains(&u) || (0xE000..=0xFFFD).contains(&u) || u >= 0x10000;
        if !ok {
            return Err(SqsError::invalid_message_contents(format!(
                "Invalid binary character '#x{u:X}' was found in the message body, the set of allowed characters is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF"
            )));
        }
    }
    Ok(())
}

/// Validate message attributes; returns their size in bytes (names, types and values).
pub fn check_message_attributes(attrs: &Map<String, Value>, system: bool) -> Result<usize, SqsError> {
    use base64::Engine as _;
    if attrs.len() > 10 {
        return Err(SqsError::invalid_parameter(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [10].",
            attrs.len()
        )));
    }
    let mut size = 0;
    for (name, v) in attrs {
        if system {
            if name != "AWSTraceHeader" {
                return Err(SqsError::invalid_parameter(format!(
                    "Message system attribute name '{name}' is invalid; the only one a sender may set is AWSTraceHeader."
                )));
            }
        } else {
            let lower = name.to_ascii_lowercase();
            let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            if name.is_empty()
                || name.len() > 256
                || !ok_chars
                || lower.starts_with("aws.")
                || lower.starts_with("amazon.")
                || name.starts_with('.')
                || name.ends_with('.')
                || name.contains("..")
            {
                return Err(SqsError::invalid_parameter(format!(
                    "Message attribute name '{name}' is invalid: use up to 256 letters, digits, '_', '-' and '.', not starting with AWS. or Amazon. and without leading, trailing or repeated periods."
                )));
            }
        }
        let dt = v.get("DataType").and_then(Value::as_str).unwrap_or("");
        let base = dt.split('.').next().unwrap_or("");
        if dt.len() > 256 || !matches!(base, "String" | "Number" | "Binary") {
            return Err(SqsError::invalid_parameter(format!(
                "The message attribute '{name}' has an invalid message attribute type \"{dt}\"; the type must be String, Number or Binary, optionally with a custom suffix (String.foo)."
            )));
        }
        size += name.len() + dt.len();
        match base {
            "Binary" => {
                let b = v
                    .get("BinaryValue")
                    .and_then(Value::as_str)
                    .ok_or_else(|| SqsError::invalid_parameter(format!("The message attribute '{name}' with type 'Binary' must use field 'Binary'.")))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| SqsError::invalid_parameter(format!("The message attribute '{name}' has a BinaryValue that is not valid base64.")))?;
                if bytes.is_empty() {
                    return Err(SqsError::invalid_parameter(format!("The message attribute '{name}' must contain a non-empty value of type 'Binary'.")));
                }
                size += bytes.len();
            }
            _ => {
                let s = v.get("StringValue").and_then(Value::as_str).ok_or_else(|| {
                    SqsError::invalid_parameter(format!("The message attribute '{name}' with type '{base}' must use field 'String'."))
                })?;
                if s.is_empty() {
                    return Err(SqsError::invalid_parameter(format!("The message attribute '{name}' must contain a non-empty message attribute value.")));
                }
                check_body(s)?;
                if base == "Number" && s.trim().parse::<f64>().is_err() {
                    return Err(SqsError::invalid_parameter(format!("Can't cast the value of message attribute '{name}' to a number: \"{s}\".")));
                }
                size += s.len();
            }
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued message's own memory (its body aside): with a million queued, each byte here
    /// is a MiB of RSS.
    #[test]
    fn a_message_stays_small() {
        assert_eq!(std::mem::size_of::<KeyId>(), 8);
        assert!(std::mem::size_of::<Msg>() <= 112, "{} bytes", std::mem::size_of::<Msg>());
    }

    /// The first receive's time, kept as an offset from the send, reads back as it was set.
    #[test]
    fn the_first_receive_time_reads_back() {
        let sent = 1_764_000_000_000;
        let mut m = Msg {
            id: [0; 16],
            body: "b".into(),
            extra: None,
            sent_ms: sent,
            visible_at: sent,
            md5: crate::digest::md5(b"b"),
            first_recv: 0,
            recv_count: 0,
            nonce: 0,
            last_nonce: 0,
            sender: KeyId::NONE,
            receiver: KeyId::NONE,
            received_at: 0,
        };
        assert_eq!(m.first_recv_ms(), 0, "never received");
        for at in [sent, sent + 1, sent + 14 * 86_400_000] {
            m.set_first_recv_ms(at);
            assert_eq!(m.first_recv_ms(), at);
        }
        // a clock set back between the send and the receive: no earlier than the send
        m.set_first_recv_ms(sent - 5);
        assert_eq!(m.first_recv_ms(), sent);
        m.set_first_recv_ms(0);
        assert_eq!(m.first_recv_ms(), 0);
    }

    #[test]
    fn equal_key_ids_share_one_allocation() {
        let (a, b) = (KeyId::intern("AKIDSHARED"), KeyId::intern("AKIDSHARED"));
        assert_eq!(a, b);
        let name = a.get().unwrap();
        assert!(b.is(&name) && Arc::ptr_eq(&name, &b.get().unwrap()));
        assert_eq!(b.name(), "AKIDSHARED");
        assert_eq!(KeyId::NONE.get(), None);
    }
}
