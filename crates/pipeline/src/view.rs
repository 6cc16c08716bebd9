//! Read models: what `status`, `history`, the API and the dashboard show.

use coalmine_runtime::ServiceStatus;
use serde::Serialize;

use crate::engine::Engine;
use crate::queue_admin::QueueDepth;
use crate::store::{status, ApprovalRow, EventRow, ExecutionRow, RollbackRow, StageRow, VerdictRow};
use crate::PipelineError;

/// One execution with everything that happened in it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExecutionView {
    #[serde(flatten)]
    pub execution: ExecutionRow,
    pub stages: Vec<StageRow>,
    pub approvals: Vec<ApprovalRow>,
    pub verdicts: Vec<VerdictRow>,
    pub rollbacks: Vec<RollbackRow>,
    pub events: Vec<EventRow>,
}

/// A service: what the pipeline wants and what the runtime reports.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub desired_revision: Option<String>,
    pub desired_tasks: Option<u32>,
    /// The runtime's report: revision, counts, deployments, tasks.
    #[schema(value_type = Option<Object>)]
    pub status: Option<ServiceStatus>,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusView {
    pub app: String,
    pub primary_revision: Option<String>,
    /// The execution in progress (or the newest one).
    pub execution: Option<ExecutionView>,
    pub services: Vec<ServiceView>,
    pub queue: Option<QueueDepth>,
    pub queue_error: Option<String>,
}

impl Engine {
    pub fn execution_view(&self, id: i64) -> Result<Option<ExecutionView>, PipelineError> {
        let store = self.store.lock().unwrap();
        let Some(execution) = store.execution(id)? else { return Ok(None) };
        Ok(Some(ExecutionView {
            stages: store.stages(id)?,
            approvals: store.approvals(id)?,
            verdicts: store.latest_verdicts(id)?,
            rollbacks: store.rollbacks(Some(id))?,
            events: store.events(Some(id), 200)?,
            execution,
        }))
    }

    /// Events with an id above `after`, oldest first (for following progress).
    pub fn events_after(&self, after: i64) -> Result<Vec<EventRow>, PipelineError> {
        self.store.lock().unwrap().events_after(after, 1000)
    }

    /// Every rollback, oldest first.
    pub fn rollbacks(&self) -> Result<Vec<RollbackRow>, PipelineError> {
        self.store.lock().unwrap().rollbacks(None)
    }

    /// Executions, newest first.
    pub fn history(&self, limit: u32) -> Result<Vec<ExecutionView>, PipelineError> {
        let ids: Vec<i64> = self.store.lock().unwrap().executions(limit)?.iter().map(|e| e.id).collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(v) = self.execution_view(id)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    pub fn status(&self) -> Result<StatusView, PipelineError> {
        let (primary_revision, current, desired) = {
            let store = self.store.lock().unwrap();
            let active = store.executions_in(status::IN_PROGRESS)?.into_iter().next();
            let current = match active {
                Some(e) => Some(e.id),
                None => store.executions(1)?.first().map(|e| e.id),
            };
            let desired = [store.service("primary")?, store.service("canary")?];
            (store.kv_get("primary_revision")?, current, desired)
        };
        let execution = match current {
            Some(id) => self.execution_view(id)?,
            None => None,
        };
        let services = ["primary", "canary"]
            .iter()
            .zip(desired)
            .map(|(name, d)| ServiceView {
                name: name.to_string(),
                desired_revision: d.as_ref().map(|(r, _)| r.clone()),
                desired_tasks: d.map(|(_, t)| t),
                status: self.runtime.service(name),
            })
            .collect();
        let (queue, queue_error) = match self.queue.depth() {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(StatusView { app: self.spec.app.clone(), primary_revision, execution, services, queue, queue_error })
    }
}

/// Counts for metrics: executions by status, rollbacks, and the latest verdict of every
/// alarm of every execution by outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub executions_by_status: std::collections::BTreeMap<crate::store::Status, u64>,
    pub rollbacks: u64,
    /// (alarm, outcome) -> executions whose latest verdict of that alarm had that outcome.
    pub verdicts: std::collections::BTreeMap<(String, String), u64>,
}

impl Engine {
    /// Counts over every execution (read-only; for `/metrics`).
    pub fn summary(&self) -> Result<Summary, PipelineError> {
        let store = self.store.lock().unwrap();
        let mut out = Summary::default();
        for e in store.executions(u32::MAX)? {
            *out.executions_by_status.entry(e.status).or_default() += 1;
            for v in store.latest_verdicts(e.id)? {
                *out.verdicts.entry((v.alarm, v.outcome)).or_default() += 1;
            }
        }
        out.rollbacks = store.rollbacks(None)?.len() as u64;
        Ok(out)
    }
}
