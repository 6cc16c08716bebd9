//! `state.db`: executions, their stages, every transition, approvals, verdicts, rollbacks and
//! the services' desired state. Every change is one SQLite transaction; nothing the engine
//! decides lives only in memory.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::PipelineError;

const SCHEMA: &str = r#"
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS executions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  commit_id TEXT NOT NULL,
  revision TEXT NOT NULL,
  message TEXT NOT NULL,
  status TEXT NOT NULL,
  stage INTEGER NOT NULL DEFAULT 0,
  bootstrap INTEGER NOT NULL DEFAULT 0,
  reason TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL,
  finished_ms INTEGER
);
CREATE TABLE IF NOT EXISTS stages (
  execution_id INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  status TEXT NOT NULL,
  started_ms INTEGER,
  finished_ms INTEGER,
  detail TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (execution_id, idx)
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  execution_id INTEGER,
  at_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  actor TEXT NOT NULL,
  reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  execution_id INTEGER NOT NULL,
  revision TEXT NOT NULL,
  decision TEXT NOT NULL,
  actor TEXT NOT NULL,
  comment TEXT NOT NULL,
  at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  execution_id INTEGER NOT NULL,
  at_ms INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  alarm TEXT NOT NULL,
  reason TEXT NOT NULL,
  numbers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollbacks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  execution_id INTEGER NOT NULL,
  revision TEXT NOT NULL,
  to_revision TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  actor TEXT NOT NULL,
  reason TEXT NOT NULL,
  canary_back_ms INTEGER,
  received INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  dead_lettered INTEGER NOT NULL DEFAULT 0,
  released INTEGER NOT NULL DEFAULT 0,
  returned INTEGER NOT NULL DEFAULT 0,
  expired INTEGER NOT NULL DEFAULT 0,
  redriven INTEGER NOT NULL DEFAULT 0,
  lost INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS services (
  name TEXT PRIMARY KEY,
  revision TEXT NOT NULL,
  tasks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
"#;

/// The status of an execution or a stage, as CodePipeline names them: one spelling in the
/// store, the API and the OpenAPI document (an enum there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Status {
    /// An execution waiting for the one in progress.
    Queued,
    /// A stage not started yet.
    Pending,
    InProgress,
    Succeeded,
    Failed,
    /// An execution a newer commit replaced before it ended.
    Superseded,
    RolledBack,
    Stopped,
}

impl Status {
    pub const ALL: [Status; 8] =
        [Status::Queued, Status::Pending, Status::InProgress, Status::Succeeded, Status::Failed, Status::Superseded, Status::RolledBack, Status::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "Queued",
            Status::Pending => "Pending",
            Status::InProgress => "InProgress",
            Status::Succeeded => "Succeeded",
            Status::Failed => "Failed",
            Status::Superseded => "Superseded",
            Status::RolledBack => "RolledBack",
            Status::Stopped => "Stopped",
        }
    }

    /// Still going: queued or in progress.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Queued | Status::InProgress)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| format!("`{s}` is not a status"))
    }
}

impl PartialEq<&str> for Status {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl rusqlite::types::ToSql for Status {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Status {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Status> {
        v.as_str()?.parse().map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

/// The statuses by their old constant names.
pub mod status {
    use super::Status;
    pub const QUEUED: Status = Status::Queued;
    pub const IN_PROGRESS: Status = Status::InProgress;
    pub const SUCCEEDED: Status = Status::Succeeded;
    pub const FAILED: Status = Status::Failed;
    pub const SUPERSEDED: Status = Status::Superseded;
    pub const ROLLED_BACK: Status = Status::RolledBack;
    pub const STOPPED: Status = Status::Stopped;
    pub const PENDING: Status = Status::Pending;
    /// Every status an execution can have, in the order of its life.
    pub const EXECUTION_ALL: &[Status] = &[QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, SUPERSEDED, ROLLED_BACK, STOPPED];
}

/// A verdict's outcome, as stored and served (the OpenAPI document's enum of
/// `coalmine_analysis::Outcome`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not enough data yet.
    Inconclusive,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExecutionRow {
    pub id: i64,
    pub commit_id: String,
    pub revision: String,
    pub message: String,
    pub status: Status,
    pub stage: i64,
    pub bootstrap: bool,
    pub reason: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StageRow {
    pub idx: i64,
    pub name: String,
    pub kind: String,
    pub status: Status,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventRow {
    pub id: i64,
    pub execution_id: Option<i64>,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApprovalRow {
    pub execution_id: i64,
    pub revision: String,
    pub decision: String,
    pub actor: String,
    pub comment: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VerdictRow {
    pub execution_id: i64,
    pub at_ms: i64,
    /// `coalmine_analysis::Outcome`, spelled as serde writes it.
    #[schema(value_type = Outcome)]
    pub outcome: String,
    pub alarm: String,
    pub reason: String,
    #[schema(value_type = Object)]
    pub numbers: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RollbackRow {
    pub id: i64,
    pub execution_id: i64,
    pub revision: String,
    pub to_revision: String,
    pub at_ms: i64,
    pub actor: String,
    pub reason: String,
    /// Milliseconds from the rollback decision until no canary task ran the bad revision.
    pub canary_back_ms: Option<i64>,
    pub received: i64,
    /// Failed attempts of the bad revision, each counted once: `returned + expired + released`.
    pub failed: i64,
    /// Of those: handed back by its tasks (visibility 0).
    pub returned: i64,
    /// Of those: left until the visibility timeout lapsed.
    pub expired: i64,
    /// Messages the dead-lettering of its receives moved to the DLQ (after a failure).
    pub dead_lettered: i64,
    /// Of the failures: still held when its tasks were gone, made visible again by coalmine.
    pub released: i64,
    pub redriven: i64,
    pub lost: i64,
}

pub struct Store {
    conn: Connection,
    /// What stamps the rows (`created_ms`, `started_ms`, `at_ms`...).
    clock: Arc<dyn Clock>,
}

impl Store {
    /// Open (or create) the store, its rows stamped with the system clock.
    pub fn open(path: &Path) -> Result<Store, PipelineError> {
        Store::open_with_clock(path, Arc::new(SystemClock))
    }

    /// Open (or create) the store, its rows stamped with `clock`.
    pub fn open_with_clock(path: &Path, clock: Arc<dyn Clock>) -> Result<Store, PipelineError> {
        let conn = Connection::open(path).map_err(|e| PipelineError::store(path, e))?;
        conn.execute_batch(SCHEMA).map_err(|e| PipelineError::store(path, e))?;
        // Columns added after the first release of the schema.
        for column in ["returned", "expired"] {
            let has: i64 = conn
                .query_row("SELECT COUNT(*) FROM pragma_table_info('rollbacks') WHERE name = ?1", [column], |r| r.get(0))
                .map_err(|e| PipelineError::store(path, e))?;
            if has == 0 {
                conn.execute_batch(&format!("ALTER TABLE rollbacks ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"))
                    .map_err(|e| PipelineError::store(path, e))?;
            }
        }
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| PipelineError::store(path, e))?;
        Ok(Store { conn, clock })
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    /// Run `f` as one transaction: all of its writes are kept, or (on an error, or a crash
    /// before the end) none.
    pub fn atomic<T>(&self, f: impl FnOnce(&Store) -> Result<T, PipelineError>) -> Result<T, PipelineError> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn kv_get(&self, key: &str) -> Result<Option<String>, PipelineError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn kv_set(&self, key: &str, value: &str) -> Result<(), PipelineError> {
        self.conn.execute(
            "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Record an event (a transition with its time, actor and reason).
    pub fn event(&self, execution_id: Option<i64>, kind: &str, actor: &str, reason: &str) -> Result<(), PipelineError> {
        self.conn.execute(
            "INSERT INTO events(execution_id, at_ms, kind, actor, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![execution_id, self.now_ms(), kind, actor, reason],
        )?;
        tracing::debug!(execution = ?execution_id, kind, actor, "{reason}");
        Ok(())
    }

    pub fn create_execution(
        &self,
        commit_id: &str,
        revision: &str,
        message: &str,
        status: Status,
        bootstrap: bool,
        stages: &[(String, String)],
    ) -> Result<i64, PipelineError> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO executions(commit_id, revision, message, status, bootstrap, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![commit_id, revision, message, status, bootstrap, self.now_ms()],
        )?;
        let id = tx.last_insert_rowid();
        for (i, (name, kind)) in stages.iter().enumerate() {
            tx.execute(
                "INSERT INTO stages(execution_id, idx, name, kind, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, i as i64, name, kind, status::PENDING],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }

    fn map_execution(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRow> {
        Ok(ExecutionRow {
            id: r.get(0)?,
            commit_id: r.get(1)?,
            revision: r.get(2)?,
            message: r.get(3)?,
            status: r.get(4)?,
            stage: r.get(5)?,
            bootstrap: r.get(6)?,
            reason: r.get(7)?,
            created_ms: r.get(8)?,
            finished_ms: r.get(9)?,
        })
    }

    const EXEC_COLS: &'static str =
        "id, commit_id, revision, message, status, stage, bootstrap, reason, created_ms, finished_ms";

    pub fn execution(&self, id: i64) -> Result<Option<ExecutionRow>, PipelineError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {} FROM executions WHERE id = ?1", Self::EXEC_COLS), [id], Self::map_execution)
            .optional()?)
    }

    pub fn execution_for_commit(&self, commit_id: &str) -> Result<Option<ExecutionRow>, PipelineError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {} FROM executions WHERE commit_id = ?1 ORDER BY id DESC LIMIT 1", Self::EXEC_COLS),
                [commit_id],
                Self::map_execution,
            )
            .optional()?)
    }

    /// Executions newest first.
    pub fn executions(&self, limit: u32) -> Result<Vec<ExecutionRow>, PipelineError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {} FROM executions ORDER BY id DESC LIMIT ?1", Self::EXEC_COLS))?;
        let rows = st.query_map([limit], Self::map_execution)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Executions in a given status, oldest first.
    pub fn executions_in(&self, status: Status) -> Result<Vec<ExecutionRow>, PipelineError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {} FROM executions WHERE status = ?1 ORDER BY id", Self::EXEC_COLS))?;
        let rows = st.query_map([status], Self::map_execution)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn set_execution_status(&self, id: i64, status: Status, reason: &str) -> Result<(), PipelineError> {
        let finished = !status.is_open();
        self.conn.execute(
            "UPDATE executions SET status = ?2, reason = ?3, finished_ms = CASE WHEN ?4 THEN ?5 ELSE NULL END WHERE id = ?1",
            params![id, status, reason, finished, self.now_ms()],
        )?;
        Ok(())
    }

    pub fn set_execution_stage(&self, id: i64, stage: i64) -> Result<(), PipelineError> {
        self.conn.execute("UPDATE executions SET stage = ?2 WHERE id = ?1", params![id, stage])?;
        Ok(())
    }

    pub fn stages(&self, execution_id: i64) -> Result<Vec<StageRow>, PipelineError> {
        let mut st = self.conn.prepare(
            "SELECT idx, name, kind, status, started_ms, finished_ms, detail FROM stages WHERE execution_id = ?1 ORDER BY idx",
        )?;
        let rows = st
            .query_map([execution_id], |r| {
                Ok(StageRow {
                    idx: r.get(0)?,
                    name: r.get(1)?,
                    kind: r.get(2)?,
                    status: r.get(3)?,
                    started_ms: r.get(4)?,
                    finished_ms: r.get(5)?,
                    detail: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn start_stage(&self, execution_id: i64, idx: i64, detail: &str) -> Result<(), PipelineError> {
        self.conn.execute(
            "UPDATE stages SET status = ?3, started_ms = COALESCE(started_ms, ?4), detail = ?5 WHERE execution_id = ?1 AND idx = ?2",
            params![execution_id, idx, status::IN_PROGRESS, self.now_ms(), detail],
        )?;
        Ok(())
    }

    pub fn set_stage_detail(&self, execution_id: i64, idx: i64, detail: &str) -> Result<(), PipelineError> {
        self.conn.execute(
            "UPDATE stages SET detail = ?3 WHERE execution_id = ?1 AND idx = ?2",
            params![execution_id, idx, detail],
        )?;
        Ok(())
    }

    pub fn finish_stage(&self, execution_id: i64, idx: i64, status: Status, detail: &str) -> Result<(), PipelineError> {
        self.conn.execute(
            "UPDATE stages SET status = ?3, finished_ms = ?4, detail = ?5 WHERE execution_id = ?1 AND idx = ?2",
            params![execution_id, idx, status, self.now_ms(), detail],
        )?;
        Ok(())
    }

    pub fn events(&self, execution_id: Option<i64>, limit: u32) -> Result<Vec<EventRow>, PipelineError> {
        let mut st = self.conn.prepare(
            "SELECT id, execution_id, at_ms, kind, actor, reason FROM events
             WHERE (?1 IS NULL OR execution_id = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let mut rows = st.query_map(params![execution_id, limit], Self::map_event)?.collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// Events with an id above `after`, oldest first.
    pub fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>, PipelineError> {
        let mut st = self.conn.prepare(
            "SELECT id, execution_id, at_ms, kind, actor, reason FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![after, limit], Self::map_event)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn map_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            id: r.get(0)?,
            execution_id: r.get(1)?,
            at_ms: r.get(2)?,
            kind: r.get(3)?,
            actor: r.get(4)?,
            reason: r.get(5)?,
        })
    }

    pub fn add_approval(&self, a: &ApprovalRow) -> Result<(), PipelineError> {
        self.conn.execute(
            "INSERT INTO approvals(execution_id, revision, decision, actor, comment, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![a.execution_id, a.revision, a.decision, a.actor, a.comment, a.at_ms],
        )?;
        Ok(())
    }

    pub fn approvals(&self, execution_id: i64) -> Result<Vec<ApprovalRow>, PipelineError> {
        let mut st = self.conn.prepare(
            "SELECT execution_id, revision, decision, actor, comment, at_ms FROM approvals WHERE execution_id = ?1 ORDER BY id",
        )?;
        let rows = st
            .query_map([execution_id], |r| {
                Ok(ApprovalRow {
                    execution_id: r.get(0)?,
                    revision: r.get(1)?,
                    decision: r.get(2)?,
                    actor: r.get(3)?,
                    comment: r.get(4)?,
                    at_ms: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn add_verdict(&self, v: &VerdictRow) -> Result<(), PipelineError> {
        self.conn.execute(
            "INSERT INTO verdicts(execution_id, at_ms, outcome, alarm, reason, numbers) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![v.execution_id, v.at_ms, v.outcome, v.alarm, v.reason, v.numbers.to_string()],
        )?;
        Ok(())
    }

    /// The latest verdict of each alarm for an execution.
    pub fn latest_verdicts(&self, execution_id: i64) -> Result<Vec<VerdictRow>, PipelineError> {
        let mut st = self.conn.prepare(
            "SELECT execution_id, at_ms, outcome, alarm, reason, numbers FROM verdicts
             WHERE id IN (SELECT MAX(id) FROM verdicts WHERE execution_id = ?1 GROUP BY alarm) ORDER BY alarm",
        )?;
        let rows = st
            .query_map([execution_id], |r| {
                let numbers: String = r.get(5)?;
                Ok(VerdictRow {
                    execution_id: r.get(0)?,
                    at_ms: r.get(1)?,
                    outcome: r.get(2)?,
                    alarm: r.get(3)?,
                    reason: r.get(4)?,
                    numbers: serde_json::from_str(&numbers).unwrap_or(serde_json::Value::Null),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Replace the latest verdicts of an execution (one row per alarm kept per change of outcome).
    pub fn record_verdicts(&self, rows: &[VerdictRow]) -> Result<(), PipelineError> {
        for v in rows {
            let prev: Option<(String, String)> = self
                .conn
                .query_row(
                    "SELECT outcome, reason FROM verdicts WHERE execution_id = ?1 AND alarm = ?2 ORDER BY id DESC LIMIT 1",
                    params![v.execution_id, v.alarm],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match prev {
                Some((o, _)) if o == v.outcome => {
                    self.conn.execute(
                        "UPDATE verdicts SET at_ms = ?3, reason = ?4, numbers = ?5
                         WHERE id = (SELECT MAX(id) FROM verdicts WHERE execution_id = ?1 AND alarm = ?2)",
                        params![v.execution_id, v.alarm, v.at_ms, v.reason, v.numbers.to_string()],
                    )?;
                }
                _ => self.add_verdict(v)?,
            }
        }
        Ok(())
    }

    pub fn add_rollback(&self, r: &RollbackRow) -> Result<i64, PipelineError> {
        self.conn.execute(
            "INSERT INTO rollbacks(execution_id, revision, to_revision, at_ms, actor, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![r.execution_id, r.revision, r.to_revision, r.at_ms, r.actor, r.reason],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn update_rollback(&self, r: &RollbackRow) -> Result<(), PipelineError> {
        self.conn.execute(
            "UPDATE rollbacks SET canary_back_ms = ?2, received = ?3, failed = ?4, dead_lettered = ?5, released = ?6,
             redriven = ?7, lost = ?8, returned = ?9, expired = ?10 WHERE id = ?1",
            params![r.id, r.canary_back_ms, r.received, r.failed, r.dead_lettered, r.released, r.redriven, r.lost, r.returned, r.expired],
        )?;
        Ok(())
    }

    pub fn rollbacks(&self, execution_id: Option<i64>) -> Result<Vec<RollbackRow>, PipelineError> {
        let mut st = self.conn.prepare(
            "SELECT id, execution_id, revision, to_revision, at_ms, actor, reason, canary_back_ms, received, failed,
             dead_lettered, released, redriven, lost, returned, expired FROM rollbacks WHERE (?1 IS NULL OR execution_id = ?1) ORDER BY id",
        )?;
        let rows = st
            .query_map([execution_id], |r| {
                Ok(RollbackRow {
                    id: r.get(0)?,
                    execution_id: r.get(1)?,
                    revision: r.get(2)?,
                    to_revision: r.get(3)?,
                    at_ms: r.get(4)?,
                    actor: r.get(5)?,
                    reason: r.get(6)?,
                    canary_back_ms: r.get(7)?,
                    received: r.get(8)?,
                    failed: r.get(9)?,
                    dead_lettered: r.get(10)?,
                    released: r.get(11)?,
                    redriven: r.get(12)?,
                    lost: r.get(13)?,
                    returned: r.get(14)?,
                    expired: r.get(15)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Desired state of a service: (revision, tasks).
    pub fn service(&self, name: &str) -> Result<Option<(String, u32)>, PipelineError> {
        Ok(self
            .conn
            .query_row("SELECT revision, tasks FROM services WHERE name = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub fn set_service(&self, name: &str, revision: &str, tasks: u32) -> Result<(), PipelineError> {
        self.conn.execute(
            "INSERT INTO services(name, revision, tasks) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET revision = excluded.revision, tasks = excluded.tasks",
            params![name, revision, tasks],
        )?;
        Ok(())
    }
}
