//! New commits become executions: polling the source, queueing, retrying.

use super::*;

impl Engine {
    pub(super) fn poll_source(&self) -> Result<(), PipelineError> {
        let commit = match self.source.newest() {
            Ok(c) => {
                self.loop_state.lock().unwrap().last_source_error = None;
                c
            }
            Err(err) => {
                let msg = err.to_string();
                let mut ls = self.loop_state.lock().unwrap();
                if ls.last_source_error.as_deref() != Some(&msg) {
                    tracing::warn!("{msg}");
                    ls.last_source_error = Some(msg);
                }
                return Ok(());
            }
        };
        if self.store.lock().unwrap().execution_for_commit(&commit.id)?.is_some() {
            return Ok(());
        }
        self.begin_execution(&commit, &format!("new commit {} \"{}\"", short(&commit.id), commit.message), ACTOR_ENGINE)?;
        Ok(())
    }

    /// A new execution of `commit`: supersede what has not passed approval, queue behind
    /// what has. Returns its id.
    pub(super) fn begin_execution(&self, commit: &Commit, why: &str, actor: &str) -> Result<i64, PipelineError> {
        let mut store = self.store.lock().unwrap();
        // Supersede what has not passed approval; queue behind what has.
        let mut queue_it = false;
        for old in store.executions_in(status::IN_PROGRESS)? {
            let stages = store.stages(old.id)?;
            let past_approval = stages
                .iter()
                .any(|s| parse_kind(s).is_primary_deploy() && s.status != status::PENDING);
            if past_approval {
                queue_it = true;
            } else {
                drop(store);
                self.end_execution(&old, status::SUPERSEDED, &format!("superseded by commit {}", short(&commit.id)), ACTOR_ENGINE)?;
                store = self.store.lock().unwrap();
            }
        }
        for old in store.executions_in(status::QUEUED)? {
            store.set_execution_status(old.id, status::SUPERSEDED, &format!("superseded by commit {}", short(&commit.id)))?;
            store.event(Some(old.id), "superseded", ACTOR_ENGINE, &format!("superseded by commit {}", short(&commit.id)))?;
        }
        let id = self.create_execution(&store, commit, queue_it)?;
        store.event(Some(id), "created", actor, &format!("{why}{}", if queue_it { " (queued)" } else { "" }))?;
        drop(store);
        self.wake();
        Ok(id)
    }

    /// Run execution `id`'s commit again, as a new execution (after a failure that was not
    /// the revision's fault, or a rejection reconsidered). Refused while `id` still runs.
    pub fn retry(&self, id: i64, actor: &str) -> Result<ExecutionRow, PipelineError> {
        let old = self.store.lock().unwrap().execution(id)?.ok_or(PipelineError::NoSuchExecution(id))?;
        if old.status == status::IN_PROGRESS || old.status == status::QUEUED {
            return Err(PipelineError::Refused(format!(
                "execution #{id} (revision {}) is still {}: wait for it to end, or `coalmine stop {id}` first",
                old.revision, old.status
            )));
        }
        let commit = Commit { id: old.commit_id.clone(), message: old.message.clone() };
        let new = self.begin_execution(&commit, &format!("retry of #{id}: commit {} \"{}\"", short(&old.commit_id), old.message), actor)?;
        self.store.lock().unwrap().execution(new)?.ok_or(PipelineError::NoSuchExecution(new))
    }

    pub(super) fn create_execution(&self, store: &Store, commit: &Commit, queued: bool) -> Result<i64, PipelineError> {
        let bootstrap = store.kv_get("primary_revision")?.is_none();
        let mut kinds = vec![StageKind::Source, StageKind::Build];
        if bootstrap {
            // The first release goes to both services, as the guidance's first deployment does.
            for step in &self.spec.steps {
                if let Step::Deploy { .. } = step {
                    kinds.push(StageKind::from_step(step));
                }
            }
        } else {
            kinds.extend(self.spec.steps.iter().map(StageKind::from_step));
        }
        let stages: Vec<(String, String)> =
            kinds.iter().map(|k| (k.title(), serde_json::to_string(k).expect("stage kind serializes"))).collect();
        store.create_execution(
            &commit.id,
            &commit.revision(),
            &commit.message,
            if queued { status::QUEUED } else { status::IN_PROGRESS },
            bootstrap,
            &stages,
        )
    }

    pub(super) fn start_queued(&self) -> Result<(), PipelineError> {
        let store = self.store.lock().unwrap();
        if !store.executions_in(status::IN_PROGRESS)?.is_empty() {
            return Ok(());
        }
        if let Some(next) = store.executions_in(status::QUEUED)?.pop() {
            store.set_execution_status(next.id, status::IN_PROGRESS, "")?;
            store.event(Some(next.id), "started", ACTOR_ENGINE, "the previous execution finished")?;
        }
        Ok(())
    }
}
