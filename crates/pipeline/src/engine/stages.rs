//! The stages of an execution, one step per tick: source, build, deploy, approval, analysis;
//! and how an execution ends (succeeded, failed, stopped, rolled back).

use super::*;

impl Engine {
    pub(super) fn advance(&self, exec: &ExecutionRow) -> Result<(), PipelineError> {
        let stages = self.store.lock().unwrap().stages(exec.id)?;
        let Some(stage) = stages.iter().find(|s| s.status == status::PENDING || s.status == status::IN_PROGRESS) else {
            self.finish_success(exec)?;
            return Ok(());
        };
        let kind = parse_kind(stage);
        if stage.status == status::PENDING {
            self.store.lock().unwrap().atomic(|store| {
                store.set_execution_stage(exec.id, stage.idx)?;
                store.start_stage(exec.id, stage.idx, "")?;
                store.event(Some(exec.id), "stage-started", ACTOR_ENGINE, &format!("{} started", stage.name))
            })?;
        }
        let started_ms = stage.started_ms.map(|v| v as u64).unwrap_or_else(|| self.now_ms());
        let elapsed = self.now_ms().saturating_sub(started_ms);
        match kind {
            StageKind::Source => self.stage_source(exec, stage),
            StageKind::Build => self.stage_build(exec, stage),
            StageKind::Deploy { service, timeout_ms } => self.stage_deploy(exec, stage, &service, elapsed, timeout_ms),
            StageKind::Scale { service, tasks } => {
                let store = self.store.lock().unwrap();
                let (rev, current) = store.service(&service)?.unwrap_or((exec.revision.clone(), tasks));
                if current != tasks {
                    store.set_service(&service, &rev, tasks)?;
                }
                drop(store);
                match self.runtime.service(&service) {
                    Some(s) if s.steady && s.desired == tasks => {
                        self.stage_done(exec, stage, &format!("{service} runs {tasks} task(s)"))
                    }
                    _ => Ok(()),
                }
            }
            StageKind::Pause { duration_ms } => {
                if elapsed >= duration_ms {
                    self.stage_done(exec, stage, &format!("paused {}", human_ms(duration_ms)))
                } else {
                    self.stage_detail(exec, stage, &format!("{} left", human_ms((duration_ms - elapsed) / 1000 * 1000)))
                }
            }
            StageKind::Approval { timeout_ms } => self.stage_approval(exec, stage, elapsed, timeout_ms),
            StageKind::Analysis { duration_ms, auto } => self.stage_analysis(exec, stage, elapsed, duration_ms, auto),
        }
    }

    /// Where `coalmine.toml` is inside the repository, when it is in it (a local repository
    /// holding the file): each commit then carries its own.
    pub(super) fn spec_in_repo(&self) -> Option<std::path::PathBuf> {
        let coalmine_spec::Repo::Path(repo) = &self.spec.source.repo else { return None };
        let file = self.spec.root.join("coalmine.toml").canonicalize().ok()?;
        file.strip_prefix(repo.canonicalize().ok()?).ok().map(|p| p.to_path_buf())
    }

    /// The spec an execution runs with: its commit's coalmine.toml (read at its Source stage),
    /// else the one coalmine started with.
    pub(super) fn exec_spec(&self, id: i64) -> AppSpec {
        self.store
            .lock()
            .unwrap()
            .kv_get(&format!("spec:{id}"))
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_else(|| self.spec.clone())
    }

    /// Source: read and check the commit's own coalmine.toml. Invalid: the execution fails
    /// with the diagnostics. Valid: its [build] and [run] apply to this execution; what only a
    /// restart can change is named in an event.
    pub(super) fn stage_source(&self, exec: &ExecutionRow, stage: &StageRow) -> Result<(), PipelineError> {
        let summary = format!("commit {} \"{}\"", short(&exec.commit_id), exec.message);
        let Some(rel) = self.spec_in_repo() else { return self.stage_done(exec, stage, &summary) };
        let Some(text) = self.source.read_file(&exec.commit_id, &rel)? else {
            return self.stage_done(exec, stage, &summary);
        };
        let shown = self.spec.root.join("coalmine.toml");
        match coalmine_spec::parse(&text, &shown.to_string_lossy()) {
            Err(diags) => {
                let reason = format!(
                    "coalmine.toml of commit {} is not valid (fix it and commit, then `coalmine retry`):\n{diags}",
                    short(&exec.commit_id)
                );
                self.fail_stage(exec, stage, &reason)?;
                self.end_execution(exec, status::FAILED, &reason, ACTOR_ENGINE)
            }
            Ok(mut own) => {
                own.source.branch = self.spec.source.branch.clone();
                let fixed: Vec<&str> = [
                    ("app", own.app != self.spec.app),
                    ("[source]", own.source != self.spec.source),
                    ("[queue]", own.queue != self.spec.queue),
                    ("[server]", own.server != self.spec.server),
                    ("[services]", own.services != self.spec.services),
                    ("[[steps]]", own.steps != self.spec.steps),
                    ("[[alarms]]", own.alarms != self.spec.alarms),
                    ("[runtime]", own.runtime != self.spec.runtime),
                ]
                .into_iter()
                .filter_map(|(k, changed)| changed.then_some(k))
                .collect();
                let store = self.store.lock().unwrap();
                store.atomic(|store| {
                    store.kv_set(&format!("spec:{}", exec.id), &serde_json::to_string(&own).expect("spec serialises"))?;
                    store.kv_set(&format!("run:{}", exec.revision), &serde_json::to_string(&own.run).expect("spec serialises"))?;
                    if !fixed.is_empty() {
                        store.event(
                            Some(exec.id),
                            "spec-restart-needed",
                            ACTOR_ENGINE,
                            &format!(
                                "coalmine.toml of this commit changes {}: that takes effect when `coalmine up` restarts ([build] and [run] apply now)",
                                fixed.join(", ")
                            ),
                        )?;
                    }
                    Ok(())
                })?;
                drop(store);
                let note = if own.run != self.spec.run || own.build != self.spec.build { "; its own [build]/[run]" } else { "" };
                self.stage_done(exec, stage, &format!("{summary}{note}"))
            }
        }
    }

    pub(super) fn stage_done(&self, exec: &ExecutionRow, stage: &StageRow, detail: &str) -> Result<(), PipelineError> {
        self.store.lock().unwrap().atomic(|store| {
            store.finish_stage(exec.id, stage.idx, status::SUCCEEDED, detail)?;
            store.event(Some(exec.id), "stage-succeeded", ACTOR_ENGINE, &format!("{} succeeded: {detail}", stage.name))
        })?;
        self.wake();
        Ok(())
    }

    pub(super) fn stage_detail(&self, exec: &ExecutionRow, stage: &StageRow, detail: &str) -> Result<(), PipelineError> {
        if stage.detail != detail {
            self.store.lock().unwrap().set_stage_detail(exec.id, stage.idx, detail)?;
        }
        Ok(())
    }

    pub(super) fn stage_build(&self, exec: &ExecutionRow, stage: &StageRow) -> Result<(), PipelineError> {
        let mut builds = self.builds.lock().unwrap();
        let Some(running) = builds.get(&exec.id) else {
            // Not running in this process: start it (again, after a restart).
            let restarted = stage.detail.starts_with("building");
            let number = {
                let store = self.store.lock().unwrap();
                let n = store.kv_get("build_number")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
                store.kv_set("build_number", &n.to_string())?;
                store.set_stage_detail(exec.id, stage.idx, &format!("building (build #{n})"))?;
                if restarted {
                    store.event(Some(exec.id), "build-restarted", ACTOR_ENGINE, "the build was in progress when coalmine stopped; started it again")?;
                }
                n
            };
            let work = self.paths.work(exec.id);
            let req = BuildRequest {
                app: self.spec.app.clone(),
                execution_id: exec.id,
                build_number: number,
                commit: exec.commit_id.clone(),
                branch: self.spec.source.branch.clone().unwrap_or_default(),
                revision: exec.revision.clone(),
                src_dir: work.clone(),
                buildspec: work.join(&self.exec_spec(exec.id).build.buildspec),
                log_path: self.paths.build_log(exec.id),
                artifact_dir: self.paths.artifacts(&exec.revision),
                timeout: self.exec_spec(exec.id).build.timeout,
                env: self.build_env.clone(),
            };
            let cancel = Cancel::default();
            let result = Arc::new(Mutex::new(None));
            let (c2, r2) = (cancel.clone(), result.clone());
            let builder = self.builder.clone();
            let source_ok = {
                let _ = std::fs::remove_dir_all(&work);
                if let Some(parent) = work.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| PipelineError::io(parent, e))?;
                }
                self.source.checkout(&exec.commit_id, &work)
            };
            std::thread::Builder::new()
                .name(format!("build-{}", exec.id))
                .spawn(move || {
                    let out = match source_ok {
                        Ok(()) => builder.build(&req, &c2).map_err(|e| e.to_string()),
                        Err(e) => Err(format!("checkout failed: {e}")),
                    };
                    let _ = std::fs::remove_dir_all(&req.src_dir);
                    *r2.lock().unwrap() = Some(out);
                })
                .map_err(|e| PipelineError::io(&self.paths.root, e))?;
            builds.insert(exec.id, RunningBuild { cancel, result });
            return Ok(());
        };
        let done = running.result.lock().unwrap().take();
        match done {
            None => Ok(()),
            Some(Ok(built)) => {
                builds.remove(&exec.id);
                drop(builds);
                // What the runtimes start for this revision from now on (a rollback years later too).
                let artifact = serde_json::to_string(&built.artifact).expect("an artifact serialises");
                self.store.lock().unwrap().kv_set(&format!("artifact:{}", exec.revision), &artifact)?;
                self.stage_done(exec, stage, &built.summary)
            }
            Some(Err(err)) => {
                builds.remove(&exec.id);
                drop(builds);
                self.fail_stage(exec, stage, &err)?;
                // The error already says "build failed: ..." (or "checkout failed: ...").
                self.end_execution(exec, status::FAILED, &err, ACTOR_ENGINE)
            }
        }
    }

    pub(super) fn stage_deploy(
        &self,
        exec: &ExecutionRow,
        stage: &StageRow,
        service: &str,
        elapsed: u64,
        timeout_ms: u64,
    ) -> Result<(), PipelineError> {
        let tasks = self.spec_tasks(service);
        let stage_started = stage.started_ms.unwrap_or(0).max(0) as u64;
        // A deployment of this revision that failed since the stage started ends the stage
        // (the runtime's circuit breaker has already put the service back).
        if let Some(st) = self.runtime.service(service) {
            let failed = st
                .deployments
                .iter()
                .rev()
                .find(|d| d.revision == exec.revision && d.started_at_ms >= stage_started && d.state == DeploymentState::Failed);
            if let Some(d) = failed {
                let reason = format!("deployment of {} to {service} failed: {}", exec.revision, d.reason);
                self.fail_stage(exec, stage, &reason)?;
                return self.end_execution(exec, status::FAILED, &reason, ACTOR_ENGINE);
            }
        }
        {
            let store = self.store.lock().unwrap();
            if store.service(service)?.map(|(r, _)| r) != Some(exec.revision.clone()) {
                store.set_service(service, &exec.revision, tasks)?;
                store.event(Some(exec.id), "deploy", ACTOR_ENGINE, &format!("{service} → {}", exec.revision))?;
            }
        }
        self.reconcile_services()?;
        let Some(st) = self.runtime.service(service) else { return Ok(()) };
        if st.steady && st.revision == exec.revision && st.running >= tasks {
            return self.stage_done(exec, stage, &format!("{service} runs {} on {} task(s)", exec.revision, st.running));
        }
        if elapsed > timeout_ms {
            let reason = format!(
                "{service} did not reach steady state on {} within {} ({} of {} running)",
                exec.revision,
                human_ms(timeout_ms),
                st.running,
                tasks
            );
            self.fail_stage(exec, stage, &reason)?;
            return self.end_execution(exec, status::FAILED, &reason, ACTOR_ENGINE);
        }
        self.stage_detail(exec, stage, &format!("{} of {tasks} task(s) running {}", st.running, exec.revision))
    }

    pub(super) fn stage_approval(&self, exec: &ExecutionRow, stage: &StageRow, elapsed: u64, timeout_ms: u64) -> Result<(), PipelineError> {
        let decision = self.store.lock().unwrap().approvals(exec.id)?.pop();
        match decision {
            Some(a) if a.decision == "approved" => {
                self.stage_done(exec, stage, &format!("approved by {}{}", a.actor, comment_suffix(&a.comment)))
            }
            Some(a) => {
                let reason = format!("rejected by {}{}", a.actor, comment_suffix(&a.comment));
                self.fail_stage(exec, stage, &reason)?;
                self.roll_back(exec, &reason, &a.actor)
            }
            None if elapsed > timeout_ms => {
                let reason = format!("approval timed out after {}", human_ms(timeout_ms));
                self.fail_stage(exec, stage, &reason)?;
                self.roll_back(exec, &reason, ACTOR_ENGINE)
            }
            None => self.stage_detail(exec, stage, &format!("waiting for approval of {}", exec.revision)),
        }
    }

    pub(super) fn stage_analysis(
        &self,
        exec: &ExecutionRow,
        stage: &StageRow,
        elapsed: u64,
        duration_ms: u64,
        auto: bool,
    ) -> Result<(), PipelineError> {
        let decision = self.store.lock().unwrap().approvals(exec.id)?.pop();
        if let Some(a) = decision {
            if a.decision == "approved" {
                return self.stage_done(exec, stage, &format!("approved by {}{}", a.actor, comment_suffix(&a.comment)));
            }
        }
        if elapsed < duration_ms {
            return self.stage_detail(exec, stage, &format!("analysing, {} left", human_ms((duration_ms - elapsed) / 1000 * 1000)));
        }
        let verdicts = self.store.lock().unwrap().latest_verdicts(exec.id)?;
        let all_pass = !verdicts.is_empty() && verdicts.iter().all(|v| v.outcome == "Pass");
        if all_pass {
            if auto {
                let store = self.store.lock().unwrap();
                store.add_approval(&ApprovalRow {
                    execution_id: exec.id,
                    revision: exec.revision.clone(),
                    decision: "approved".into(),
                    actor: "analysis".into(),
                    comment: "every alarm passed".into(),
                    at_ms: self.now_ms() as i64,
                })?;
                drop(store);
                return self.stage_done(exec, stage, "every alarm passed: promoted automatically");
            }
            return self.stage_done(exec, stage, "every alarm passed");
        }
        self.stage_detail(exec, stage, "waiting for enough data for a passing verdict (or `coalmine approve`)")
    }

    /// Fail a stage. Always followed by the end of its execution, which writes it in the same
    /// transaction ([`Engine::end_execution`]): a crash in between must not leave a failed
    /// stage in a running execution (the next stage would start).
    pub(super) fn fail_stage(&self, exec: &ExecutionRow, stage: &StageRow, reason: &str) -> Result<(), PipelineError> {
        self.failing_stages.lock().unwrap().insert(exec.id, (stage.idx, stage.name.clone(), reason.to_string()));
        Ok(())
    }

    /// The fault-injection hook of the crash tests: dies like `kill -9` at `point`.
    pub(super) fn fault(&self, point: &str) {
        if self.fault_point.as_deref() == Some(point) {
            eprintln!("fault injection: killed at {point}");
            // SAFETY: signalling our own process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    pub(super) fn finish_success(&self, exec: &ExecutionRow) -> Result<(), PipelineError> {
        self.store.lock().unwrap().atomic(|store| {
            store.kv_set("primary_revision", &exec.revision)?;
            // Both services run the revision; the canary goes back to its configured size.
            store.set_service("canary", &exec.revision, self.spec_tasks("canary"))?;
            store.set_service("primary", &exec.revision, self.spec_tasks("primary"))?;
            store.set_execution_status(exec.id, status::SUCCEEDED, "both services run the revision")?;
            store.event(Some(exec.id), "succeeded", ACTOR_ENGINE, &format!("released {}: both services run it", exec.revision))
        })?;
        self.wake();
        Ok(())
    }

    /// End an execution that did not succeed. Unless the primary already runs this revision,
    /// the canary goes back to the primary's revision, and that is a rollback: what the bad
    /// revision holds is given back and what it dead-lettered is redriven
    /// ([`Engine::follow_rollbacks`]), whatever ended the execution (an alarm, a person, a
    /// failed deployment, a newer commit).
    pub(super) fn end_execution(&self, exec: &ExecutionRow, end: Status, reason: &str, actor: &str) -> Result<(), PipelineError> {
        if let Some(b) = self.builds.lock().unwrap().remove(&exec.id) {
            b.cancel.cancel();
        }
        let failing = self.failing_stages.lock().unwrap().remove(&exec.id);
        let store = self.store.lock().unwrap();
        // Every write goes through this lock: an execution another caller (the API, the loop)
        // ended meanwhile is not ended twice.
        if store.execution(exec.id)?.is_some_and(|e| e.status != status::IN_PROGRESS && e.status != status::QUEUED) {
            return Ok(());
        }
        self.fault("end-execution:before");
        // One transaction: the canary's restoration is recorded with the end, never after it
        // (a crash must not leave an ended execution with its bad canary running unwatched).
        let mut write = 0;
        let mut step = || {
            write += 1;
            self.fault(&format!("end-execution:write-{write}"));
        };
        let restored = store.atomic(|store| {
            let restored = match (store.kv_get("primary_revision")?, store.service("canary")?) {
                (Some(primary), Some((canary_rev, _))) if canary_rev != primary => Some((primary, canary_rev)),
                _ => None,
            };
            if let Some((primary, bad)) = restored.clone() {
                store.set_service("canary", &primary, self.spec_tasks("canary"))?;
                step();
                store.event(Some(exec.id), "canary-restored", actor, &format!("canary back on the primary's revision {primary}"))?;
                step();
                store.add_rollback(&RollbackRow {
                    id: 0,
                    execution_id: exec.id,
                    revision: bad,
                    to_revision: primary,
                    at_ms: self.now_ms() as i64,
                    actor: actor.into(),
                    reason: reason.into(),
                    canary_back_ms: None,
                    received: 0,
                    failed: 0,
                    dead_lettered: 0,
                    released: 0,
                    returned: 0,
                    expired: 0,
                    redriven: 0,
                    lost: 0,
                })?;
                step();
            }
            if let Some((idx, name, why)) = &failing {
                store.finish_stage(exec.id, *idx, status::FAILED, why)?;
                step();
                store.event(Some(exec.id), "stage-failed", ACTOR_ENGINE, &format!("{name} failed: {why}"))?;
                step();
            }
            for s in store.stages(exec.id)? {
                if s.status == status::IN_PROGRESS {
                    store.finish_stage(exec.id, s.idx, end, reason)?;
                    step();
                }
            }
            store.set_execution_status(exec.id, end, reason)?;
            step();
            store.event(Some(exec.id), &end.as_str().to_lowercase(), actor, reason)?;
            step();
            Ok(restored)
        })?;
        self.fault("end-execution:committed");
        drop(store);
        if restored.is_some() {
            self.reconcile_services()?;
        }
        self.wake();
        Ok(())
    }

    /// The message-aware rollback: end the execution RolledBack (see [`Engine::end_execution`]).
    pub(crate) fn roll_back(&self, exec: &ExecutionRow, reason: &str, actor: &str) -> Result<(), PipelineError> {
        self.end_execution(exec, status::ROLLED_BACK, reason, actor)
    }
}
