//! What users ask for (through the API or the CLI): approve, reject, roll back, stop, trigger.

use super::*;

impl Engine {
    /// Check for a new commit now.
    pub fn trigger(&self) {
        self.loop_state.lock().unwrap().trigger = true;
        self.wake();
    }

    /// The execution waiting for a decision, if any.
    pub fn awaiting_approval(&self) -> Result<Option<ExecutionRow>, PipelineError> {
        let store = self.store.lock().unwrap();
        for exec in store.executions_in(status::IN_PROGRESS)? {
            let waiting = store.stages(exec.id)?.iter().any(|s| {
                s.status == status::IN_PROGRESS
                    && matches!(parse_kind(s), StageKind::Approval { .. } | StageKind::Analysis { .. })
            });
            if waiting {
                return Ok(Some(exec));
            }
        }
        Ok(None)
    }

    /// Approve or reject execution `id`. Refused unless that very execution is waiting for a
    /// decision: an approval applies to the revision it was shown for, never to another.
    pub fn decide(&self, id: i64, approve: bool, actor: &str, comment: &str) -> Result<ExecutionRow, PipelineError> {
        let store = self.store.lock().unwrap();
        let exec = store.execution(id)?.ok_or(PipelineError::NoSuchExecution(id))?;
        let verb = if approve { "approve" } else { "reject" };
        if exec.status != status::IN_PROGRESS {
            drop(store);
            let now = self.awaiting_approval()?;
            let hint = match now {
                Some(e) => format!(
                    "; execution #{} (revision {}, \"{}\") is the one awaiting a decision now: review it, then `coalmine {verb} {}`",
                    e.id, e.revision, e.message, e.id
                ),
                None => "; no execution is awaiting a decision now".into(),
            };
            return Err(PipelineError::Refused(format!(
                "cannot {verb} execution #{id} (revision {}): it is {}{}; nothing was {}{hint}",
                exec.revision,
                exec.status,
                if exec.reason.is_empty() { String::new() } else { format!(" ({})", exec.reason) },
                if approve { "approved" } else { "rejected" },
            )));
        }
        let waiting = store.stages(id)?.iter().any(|s| {
            s.status == status::IN_PROGRESS && matches!(parse_kind(s), StageKind::Approval { .. } | StageKind::Analysis { .. })
        });
        if !waiting {
            let at = store.stages(id)?.into_iter().find(|s| s.status == status::IN_PROGRESS).map(|s| s.name);
            return Err(PipelineError::Refused(format!(
                "execution #{id} (revision {}) is not waiting for approval{}; try again when it reaches the approval stage (`coalmine status --watch`)",
                exec.revision,
                at.map(|n| format!(" (it is at stage {n})")).unwrap_or_default()
            )));
        }
        store.add_approval(&ApprovalRow {
            execution_id: id,
            revision: exec.revision.clone(),
            decision: if approve { "approved" } else { "rejected" }.into(),
            actor: actor.into(),
            comment: comment.into(),
            at_ms: self.now_ms() as i64,
        })?;
        store.event(Some(id), if approve { "approved" } else { "rejected" }, actor, &format!("{} {}{}", if approve { "approved" } else { "rejected" }, exec.revision, comment_suffix(comment)))?;
        drop(store);
        self.wake();
        Ok(exec)
    }

    /// Roll the canary back now (the alarms call the same path).
    pub fn rollback(&self, actor: &str, reason: &str) -> Result<ExecutionRow, PipelineError> {
        let active = self.store.lock().unwrap().executions_in(status::IN_PROGRESS)?;
        let Some(exec) = active.into_iter().next() else {
            return Err(PipelineError::Refused(
                "no execution is in progress: there is nothing to roll back (`coalmine history` shows past ones)".into(),
            ));
        };
        let stages = self.store.lock().unwrap().stages(exec.id)?;
        if stages.iter().any(|s| parse_kind(s).is_primary_deploy() && s.status == status::SUCCEEDED) {
            return Err(PipelineError::Refused(format!("execution #{} already deployed the primary", exec.id)));
        }
        if let Some(stage) = stages.iter().find(|s| s.status == status::IN_PROGRESS) {
            self.fail_stage(&exec, stage, reason)?;
        }
        self.roll_back(&exec, reason, actor)?;
        Ok(exec)
    }

    /// Abandon an execution.
    /// Move every message of the DLQ back to the app's queue, recorded as an event by `actor`.
    pub fn redrive_all(&self, actor: &str) -> Result<crate::queue_admin::RedriveAll, PipelineError> {
        let done = self.queue.redrive_all()?;
        self.store.lock().unwrap().event(None, "redrive", actor, &format!("the whole DLQ back to the queue: {}", done.how))?;
        Ok(done)
    }

    pub fn stop(&self, id: i64, actor: &str, reason: &str) -> Result<ExecutionRow, PipelineError> {
        let exec = self.store.lock().unwrap().execution(id)?.ok_or(PipelineError::NoSuchExecution(id))?;
        if exec.status != status::IN_PROGRESS && exec.status != status::QUEUED {
            return Err(PipelineError::Refused(format!("execution #{id} already ended: {}", exec.status)));
        }
        self.end_execution(&exec, status::STOPPED, reason, actor)?;
        Ok(exec)
    }
}
