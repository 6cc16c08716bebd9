//! The report a proxy sends to its telemetry queue (`<app>-coalmine-telemetry`): one small JSON
//! message per second, and one when it stops. Counts are cumulative since the proxy started, so a
//! lost report loses nothing but time resolution; `seq` orders them (a standard queue may
//! deliver out of order: the highest `seq` of a `proxy` wins). The format is described in
//! ARCHITECTURE.md.

use serde::{Deserialize, Serialize};

use crate::observe::{Counts, Failed, Histogram};

/// The format's version; a reader refuses other versions.
pub const VERSION: u32 = 1;

/// Ages of held messages carried by one report at most (the oldest).
pub const HELD_AGES: usize = 100;

/// Ids of held messages carried by one report at most (the oldest; a message id is at most
/// 100 bytes, so a report stays far below SQS's message size).
pub const HELD_IDS: usize = 500;

/// Failed message ids carried by one report at most; the rest wait for the next one.
pub const FAILED_PER_REPORT: usize = 100;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Sent every second while the proxy runs.
    Tick,
    /// Sent once, after the hand-back, when the proxy stops.
    Final,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistogramReport {
    pub le_ms: Vec<u64>,
    pub counts: Vec<u64>,
    pub sum_ms: u64,
    pub count: u64,
}

impl From<&Histogram> for HistogramReport {
    fn from(h: &Histogram) -> HistogramReport {
        HistogramReport { le_ms: h.le_ms.to_vec(), counts: h.counts.clone(), sum_ms: h.sum_ms, count: h.count }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailedReport {
    pub id: String,
    /// `returned` (handed back with ChangeMessageVisibility 0), `expired`, or `released` (held
    /// when the proxy stopped, made visible again by it).
    pub how: String,
}

impl From<Failed> for FailedReport {
    fn from(f: Failed) -> FailedReport {
        FailedReport { id: f.id, how: serde_json::to_value(f.how).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default() }
    }
}

/// One telemetry message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub v: u32,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub service: String,
    pub revision: String,
    pub task: String,
    /// `env` or `ecs`: where the identity came from.
    pub identity_source: String,
    /// This proxy's instance id (a task restarted gets a new one; counts restart with it).
    pub proxy: String,
    pub seq: u64,
    /// Unix time of the report and of the proxy's start, in milliseconds.
    pub time_ms: u64,
    pub started_ms: u64,
    /// Cumulative counts (see `observe::Counts`).
    pub received: u64,
    pub redelivered: u64,
    pub deleted: u64,
    pub deleted_unknown: u64,
    pub returned: u64,
    pub extended: u64,
    pub expired: u64,
    pub over_limit: u64,
    pub refused: u64,
    pub requests: u64,
    pub upstream_errors: u64,
    pub unreachable: u64,
    pub handed_back: u64,
    /// Messages held now, and how long the oldest has been held.
    pub held: u64,
    pub oldest_held_ms: u64,
    /// How long each held message has been held, the longest first (at most `HELD_AGES`).
    #[serde(default)]
    pub held_ages_ms: Vec<u64>,
    /// The ids of the messages held, the longest held first (at most `HELD_IDS`): who held a
    /// message last, even when the task is killed before its final report.
    #[serde(default)]
    pub held_ids: Vec<String>,
    /// The censoring limit: holds longer than this count in `over_limit`.
    pub hold_limit_ms: u64,
    /// Processing times (receive to successful delete), cumulative.
    pub processing_ms: HistogramReport,
    /// Messages failed since the previous delivered report (at most `FAILED_PER_REPORT`).
    pub failed: Vec<FailedReport>,
    /// Failed ids never reported because too many waited (cumulative).
    pub failed_dropped: u64,
    /// Reports that could not be sent (cumulative); this one counts the ones before it.
    pub telemetry_lost: u64,
}

impl Report {
    pub fn counts(&self) -> Counts {
        Counts {
            received: self.received,
            redelivered: self.redelivered,
            deleted: self.deleted,
            deleted_unknown: self.deleted_unknown,
            returned: self.returned,
            extended: self.extended,
            expired: self.expired,
            over_limit: self.over_limit,
            refused: self.refused,
            requests: self.requests,
            upstream_errors: self.upstream_errors,
            unreachable: self.unreachable,
            handed_back: self.handed_back,
        }
    }

    /// Read a telemetry message; a clear error for anything else.
    pub fn parse(body: &str) -> Result<Report, String> {
        let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        match v.get("v").and_then(|v| v.as_u64()) {
            Some(n) if n == VERSION as u64 => {}
            Some(n) => return Err(format!("telemetry format version {n}; this coalmine reads version {VERSION}")),
            None => return Err("no format version (`v`): not a coalmine proxy report".into()),
        }
        serde_json::from_value(v).map_err(|e| format!("not a coalmine proxy report: {e}"))
    }
}
