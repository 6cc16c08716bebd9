//! The reconcile loop. One thread runs [`Engine::tick`] a few times a second (and at once when
//! a command arrives); commands from the API only record intent in the store and wake it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalmine_analysis::{Observation, Outcome, RevisionSample};
use coalmine_runtime::{DeploymentState, QueueEnv, RevisionSpec, Runtime, ServiceSpec, TaskIdentity};
use coalmine_spec::{AppSpec, Promote, ServiceName, Step};
use serde::{Deserialize, Serialize};

use crate::build::{BuildRequest, Builder, Cancel};
use crate::queue_admin::QueueAdmin;
use crate::source::{Commit, Source};
use crate::store::{status, Status, ApprovalRow, ExecutionRow, RollbackRow, StageRow, Store, VerdictRow};
use crate::clock::Clock;
use crate::PipelineError;

/// Where the engine keeps things (all under `.coalmine/`).
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }
    pub fn artifacts(&self, revision: &str) -> PathBuf {
        self.root.join("artifacts").join(revision)
    }
    pub fn work(&self, execution: i64) -> PathBuf {
        self.root.join("work").join(execution.to_string())
    }
    pub fn build_log(&self, execution: i64) -> PathBuf {
        self.root.join("logs").join("build").join(format!("{execution}.log"))
    }
    pub fn source_mirror(&self) -> PathBuf {
        self.root.join("source.git")
    }
}

/// What a stage does; stored with the stage so a restart runs the same stage it stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum StageKind {
    Source,
    Build,
    Deploy { service: String, timeout_ms: u64 },
    Approval { timeout_ms: u64 },
    Pause { duration_ms: u64 },
    Scale { service: String, tasks: u32 },
    Analysis { duration_ms: u64, auto: bool },
}

impl StageKind {
    fn from_step(step: &Step) -> StageKind {
        match step {
            Step::Deploy { service, timeout } => {
                StageKind::Deploy { service: service_name(*service).into(), timeout_ms: timeout.as_millis() as u64 }
            }
            Step::Approval { timeout } => StageKind::Approval { timeout_ms: timeout.as_millis() as u64 },
            Step::Pause { duration } => StageKind::Pause { duration_ms: duration.as_millis() as u64 },
            Step::Scale { service, tasks } => StageKind::Scale { service: service_name(*service).into(), tasks: *tasks },
            Step::Analysis { duration, promote } => StageKind::Analysis {
                duration_ms: duration.as_millis() as u64,
                auto: matches!(promote, Promote::Auto),
            },
        }
    }

    fn title(&self) -> String {
        match self {
            StageKind::Source => "Source".into(),
            StageKind::Build => "Build".into(),
            StageKind::Deploy { service, .. } => format!("Deploy {service}"),
            StageKind::Approval { .. } => "Approval".into(),
            StageKind::Pause { duration_ms } => format!("Pause {}", human_ms(*duration_ms)),
            StageKind::Scale { service, tasks } => format!("Scale {service} to {tasks}"),
            StageKind::Analysis { duration_ms, auto } => {
                format!("Analysis {}{}", human_ms(*duration_ms), if *auto { " (auto-promote)" } else { "" })
            }
        }
    }

    fn is_primary_deploy(&self) -> bool {
        matches!(self, StageKind::Deploy { service, .. } if service == "primary")
    }
}

fn service_name(s: ServiceName) -> &'static str {
    match s {
        ServiceName::Primary => "primary",
        ServiceName::Canary => "canary",
    }
}

pub(crate) fn human_ms(ms: u64) -> String {
    if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

struct RunningBuild {
    cancel: Cancel,
    result: Arc<Mutex<Option<Result<String, String>>>>,
}

/// What the engine is built from.
pub struct EngineParts {
    pub spec: AppSpec,
    pub paths: Paths,
    pub runtime: Arc<dyn Runtime>,
    pub queue: Arc<dyn QueueAdmin>,
    pub source: Box<dyn Source>,
    pub builder: Arc<dyn Builder>,
    /// How tasks reach the queue.
    pub queue_env: QueueEnv,
    /// Extra environment for builds.
    pub build_env: BTreeMap<String, String>,
    /// What the engine and its store read the time from: [`crate::system_clock`], or a
    /// [`crate::ManualClock`] in tests.
    pub clock: Arc<dyn Clock>,
}

/// The release engine.
pub struct Engine {
    pub(crate) spec: AppSpec,
    pub(crate) paths: Paths,
    pub(crate) store: Mutex<Store>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) queue: Arc<dyn QueueAdmin>,
    source: Box<dyn Source>,
    builder: Arc<dyn Builder>,
    queue_env: QueueEnv,
    build_env: BTreeMap<String, String>,
    clock: Arc<dyn Clock>,
    builds: Mutex<HashMap<i64, RunningBuild>>,
    wake_tx: Mutex<Sender<()>>,
    wake_rx: Mutex<Option<Receiver<()>>>,
    loop_state: Mutex<LoopState>,
    /// Stages failed just before their execution ends: written with the end, in its
    /// transaction (execution id → stage index, name, reason).
    failing_stages: Mutex<HashMap<i64, (i64, String, String)>>,
    /// Test hook: `COALMINE_FAULT_INJECT=<point>` kills this process (SIGKILL) at that point.
    fault_point: Option<String>,
}

#[derive(Default)]
struct LoopState {
    next_poll_ms: u64,
    trigger: bool,
    last_alarm_ms: u64,
    /// DLQ depth samples (time, depth) over the DLQ alarm's period.
    dlq_samples: Vec<(u64, u64)>,
    last_source_error: Option<String>,
    last_orphan_check_ms: u64,
}

const ACTOR_ENGINE: &str = "coalmine";

impl Engine {
    pub fn open(parts: EngineParts) -> Result<Arc<Engine>, PipelineError> {
        std::fs::create_dir_all(&parts.paths.root).map_err(|e| PipelineError::io(&parts.paths.root, e))?;
        let store = Store::open_with_clock(&parts.paths.state_db(), parts.clock.clone())?;
        let (tx, rx) = channel();
        Ok(Arc::new(Engine {
            spec: parts.spec,
            paths: parts.paths,
            store: Mutex::new(store),
            runtime: parts.runtime,
            queue: parts.queue,
            source: parts.source,
            builder: parts.builder,
            queue_env: parts.queue_env,
            build_env: parts.build_env,
            clock: parts.clock,
            builds: Mutex::new(HashMap::new()),
            wake_tx: Mutex::new(tx),
            wake_rx: Mutex::new(Some(rx)),
            loop_state: Mutex::new(LoopState::default()),
            failing_stages: Mutex::new(HashMap::new()),
            fault_point: std::env::var("COALMINE_FAULT_INJECT").ok().filter(|p| !p.is_empty()),
        }))
    }

    /// The time, from the engine's clock.
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn spec(&self) -> &AppSpec {
        &self.spec
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    pub fn queue(&self) -> &Arc<dyn QueueAdmin> {
        &self.queue
    }

    /// Wake the loop now.
    pub fn wake(&self) {
        let _ = self.wake_tx.lock().unwrap().send(());
    }

    /// Run the loop on its own thread until `stop` is set.
    pub fn spawn(self: &Arc<Self>, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        let rx = me.wake_rx.lock().unwrap().take().expect("the engine loop runs once");
        std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                let mut last_error = String::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // A persisting error is logged once, not four times a second.
                    match me.tick() {
                        Err(err) if err.to_string() != last_error => {
                            last_error = err.to_string();
                            tracing::error!("pipeline: {last_error}");
                        }
                        Err(_) => {}
                        Ok(()) => last_error.clear(),
                    }
                    match rx.recv_timeout(Duration::from_millis(250)) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    while rx.try_recv().is_ok() {}
                }
                for (_, b) in me.builds.lock().unwrap().drain() {
                    b.cancel.cancel();
                }
            })
            .expect("spawn pipeline thread")
    }

    /// One pass of reconciliation.
    pub fn tick(&self) -> Result<(), PipelineError> {
        let now = self.now_ms();
        let poll = {
            let mut ls = self.loop_state.lock().unwrap();
            let due = ls.trigger || now >= ls.next_poll_ms;
            if due {
                ls.trigger = false;
                ls.next_poll_ms = now + self.spec.source.poll_interval.as_millis() as u64;
            }
            due
        };
        // Each step runs even when another failed (the queue briefly unavailable must not stop
        // the services from being reconciled); the first error is reported.
        type Step<'a> = (&'a str, &'a dyn Fn() -> Result<(), PipelineError>);
        let steps: [Step; 6] = [
            ("source", &|| if poll { self.poll_source() } else { Ok(()) }),
            ("executions", &|| {
                self.start_queued()?;
                let active = self.store.lock().unwrap().executions_in(status::IN_PROGRESS)?;
                active.iter().try_for_each(|exec| self.advance(exec))
            }),
            ("alarms", &|| self.watch_alarms()),
            ("rollbacks", &|| self.follow_rollbacks()),
            ("services", &|| self.reconcile_services()),
            ("orphans", &|| self.release_orphans()),
        ];
        let mut first = None;
        for (name, step) in steps {
            if let Err(err) = step() {
                tracing::debug!(step = name, "{err}");
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Messages held by tasks that no longer exist (stopped by a deployment, killed) go back
    /// to the queue now instead of after their visibility timeout.
    fn release_orphans(&self) -> Result<(), PipelineError> {
        let now = self.now_ms();
        {
            let mut ls = self.loop_state.lock().unwrap();
            if now < ls.last_orphan_check_ms + 2000 {
                return Ok(());
            }
            ls.last_orphan_check_ms = now;
        }
        let live: std::collections::HashSet<String> = self
            .runtime
            .services()
            .into_iter()
            .flat_map(|s| s.tasks.into_iter().map(|t| t.access_key_id))
            .collect();
        let mut gone: Vec<String> = self
            .queue
            .in_flight()?
            .into_iter()
            .map(|m| m.access_key_id)
            .filter(|k| TaskIdentity::parse(k).is_some() && !live.contains(k))
            .collect();
        gone.sort();
        gone.dedup();
        if !gone.is_empty() {
            let n = self.queue.release_in_flight(&gone)?;
            if n > 0 {
                self.store.lock().unwrap().event(
                    None,
                    "released",
                    ACTOR_ENGINE,
                    &format!("{n} message(s) held by {} stopped task(s) made visible again", gone.len()),
                )?;
            }
        }
        Ok(())
    }

    // ----- source -------------------------------------------------------------------------

    fn poll_source(&self) -> Result<(), PipelineError> {
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
    fn begin_execution(&self, commit: &Commit, why: &str, actor: &str) -> Result<i64, PipelineError> {
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

    fn create_execution(&self, store: &Store, commit: &Commit, queued: bool) -> Result<i64, PipelineError> {
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

    fn start_queued(&self) -> Result<(), PipelineError> {
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

    // ----- stages -------------------------------------------------------------------------

    fn advance(&self, exec: &ExecutionRow) -> Result<(), PipelineError> {
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
    fn spec_in_repo(&self) -> Option<std::path::PathBuf> {
        let coalmine_spec::Repo::Path(repo) = &self.spec.source.repo else { return None };
        let file = self.spec.root.join("coalmine.toml").canonicalize().ok()?;
        file.strip_prefix(repo.canonicalize().ok()?).ok().map(|p| p.to_path_buf())
    }

    /// The spec an execution runs with: its commit's coalmine.toml (read at its Source stage),
    /// else the one coalmine started with.
    fn exec_spec(&self, id: i64) -> AppSpec {
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
    fn stage_source(&self, exec: &ExecutionRow, stage: &StageRow) -> Result<(), PipelineError> {
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

    fn stage_done(&self, exec: &ExecutionRow, stage: &StageRow, detail: &str) -> Result<(), PipelineError> {
        self.store.lock().unwrap().atomic(|store| {
            store.finish_stage(exec.id, stage.idx, status::SUCCEEDED, detail)?;
            store.event(Some(exec.id), "stage-succeeded", ACTOR_ENGINE, &format!("{} succeeded: {detail}", stage.name))
        })?;
        self.wake();
        Ok(())
    }

    fn stage_detail(&self, exec: &ExecutionRow, stage: &StageRow, detail: &str) -> Result<(), PipelineError> {
        if stage.detail != detail {
            self.store.lock().unwrap().set_stage_detail(exec.id, stage.idx, detail)?;
        }
        Ok(())
    }

    fn stage_build(&self, exec: &ExecutionRow, stage: &StageRow) -> Result<(), PipelineError> {
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
            Some(Ok(summary)) => {
                builds.remove(&exec.id);
                drop(builds);
                self.stage_done(exec, stage, &summary)
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

    fn stage_deploy(
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

    fn stage_approval(&self, exec: &ExecutionRow, stage: &StageRow, elapsed: u64, timeout_ms: u64) -> Result<(), PipelineError> {
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

    fn stage_analysis(
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
    fn fail_stage(&self, exec: &ExecutionRow, stage: &StageRow, reason: &str) -> Result<(), PipelineError> {
        self.failing_stages.lock().unwrap().insert(exec.id, (stage.idx, stage.name.clone(), reason.to_string()));
        Ok(())
    }

    /// The fault-injection hook of the crash tests: dies like `kill -9` at `point`.
    fn fault(&self, point: &str) {
        if self.fault_point.as_deref() == Some(point) {
            eprintln!("fault injection: killed at {point}");
            // SAFETY: signalling our own process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    fn finish_success(&self, exec: &ExecutionRow) -> Result<(), PipelineError> {
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
    fn end_execution(&self, exec: &ExecutionRow, end: Status, reason: &str, actor: &str) -> Result<(), PipelineError> {
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

    // ----- alarms -------------------------------------------------------------------------

    /// Evaluate the alarms for the execution whose canary is under watch: from the canary
    /// deploy until the primary deploy completes.
    fn watch_alarms(&self) -> Result<(), PipelineError> {
        let now = self.now_ms();
        {
            let mut ls = self.loop_state.lock().unwrap();
            if now < ls.last_alarm_ms + 500 {
                return Ok(());
            }
            ls.last_alarm_ms = now;
        }
        let store = self.store.lock().unwrap();
        let Some(exec) = store.executions_in(status::IN_PROGRESS)?.into_iter().next() else { return Ok(()) };
        if exec.bootstrap {
            return Ok(());
        }
        let stages = store.stages(exec.id)?;
        let Some(primary_rev) = store.kv_get("primary_revision")? else { return Ok(()) };
        drop(store);
        let canary_stage = stages
            .iter()
            .find(|s| matches!(parse_kind(s), StageKind::Deploy { ref service, .. } if service == "canary"));
        let Some(since) = canary_stage.and_then(|s| s.started_ms) else { return Ok(()) };
        let primary_done = stages.iter().any(|s| parse_kind(s).is_primary_deploy() && s.status == status::SUCCEEDED);
        if primary_done {
            return Ok(());
        }
        let obs = self.observe(&exec.revision, &primary_rev, since as u64)?;
        let verdicts = coalmine_analysis::evaluate(&self.spec.alarms, &obs);
        let rows: Vec<VerdictRow> = verdicts
            .iter()
            .map(|v| VerdictRow {
                execution_id: exec.id,
                at_ms: now as i64,
                outcome: v.outcome.as_str().to_string(),
                alarm: v.alarm.clone(),
                reason: v.reason.clone(),
                numbers: serde_json::to_value(&v.numbers).unwrap_or_default(),
            })
            .collect();
        self.store.lock().unwrap().record_verdicts(&rows)?;
        if let Some(failed) = verdicts.iter().find(|v| v.outcome == Outcome::Fail) {
            let reason = format!("alarm {}: {}", failed.alarm, failed.reason);
            let stage = stages.iter().find(|s| s.status == status::IN_PROGRESS).cloned();
            if let Some(stage) = stage {
                self.fail_stage(&exec, &stage, &reason)?;
            }
            self.roll_back(&exec, &reason, &format!("alarm:{}", failed.alarm))?;
        }
        Ok(())
    }

    /// Gather the numbers the analysis judges.
    pub(crate) fn observe(&self, canary_rev: &str, primary_rev: &str, since_ms: u64) -> Result<Observation, PipelineError> {
        let now = self.now_ms();
        let telemetry = self.queue.telemetry(since_ms)?;
        let mut canary = RevisionSample { revision: canary_rev.into(), ..Default::default() };
        let mut primary = RevisionSample { revision: primary_rev.into(), ..Default::default() };
        let mut keys: HashMap<String, bool> = HashMap::new();
        let mut last_success = [None::<u64>, None];
        for c in &telemetry {
            let Some(id) = TaskIdentity::parse(&c.access_key_id) else { continue };
            let is_canary = if id.service == "canary" && id.revision == canary_rev {
                true
            } else if id.service == "primary" && id.revision == primary_rev {
                false
            } else {
                continue;
            };
            keys.insert(c.access_key_id.clone(), is_canary);
            let sample = if is_canary { &mut canary } else { &mut primary };
            sample.received += c.received;
            sample.succeeded += c.deleted;
            // A failed attempt is a return or an expiry; dead-lettering is what follows one, not
            // another failure. Messages held too long count too (the analysis censors them).
            sample.failed += c.returned + c.expired;
            sample.dead_lettered += c.dead_lettered;
            sample.failures_since_last_success += c.failures_since_success;
            sample.latencies_ms.extend_from_slice(&c.warm_latencies_ms);
            let ls = &mut last_success[is_canary as usize];
            *ls = (*ls).max(c.last_success_ms);
        }
        primary.last_success_ago_ms = last_success[0].map(|t| now.saturating_sub(t));
        canary.last_success_ago_ms = last_success[1].map(|t| now.saturating_sub(t));
        for m in self.queue.in_flight()? {
            if let Some(is_canary) = keys.get(&m.access_key_id) {
                let sample = if *is_canary { &mut canary } else { &mut primary };
                sample.held_ms.push(now.saturating_sub(m.received_at_ms));
            }
        }
        if let Some(st) = self.runtime.service("canary") {
            canary.task_exits = st.exits_by_revision.get(canary_rev).copied().unwrap_or(0);
        }
        // The guidance's DLQ alarm, made canary-aware: it counts the DLQ messages a task of the
        // canary's revision received last (the guidance counts the whole DLQ, so the primary's
        // noise trips it), as a maximum over its period since this canary deploy began.
        let canary_dead = self
            .queue
            .dead_letters()?
            .iter()
            .filter(|d| {
                d.last_receiver
                    .as_deref()
                    .and_then(TaskIdentity::parse)
                    .is_some_and(|id| id.service == "canary" && id.revision == canary_rev)
            })
            .count() as u64;
        let period_ms = self
            .spec
            .alarms
            .iter()
            .find_map(|a| match a {
                coalmine_analysis::AlarmSpec::DlqDepth { period, .. } => Some(period.as_millis() as u64),
                _ => None,
            })
            .unwrap_or(300_000);
        let dlq_depth_max = {
            let mut ls = self.loop_state.lock().unwrap();
            ls.dlq_samples.push((now, canary_dead));
            ls.dlq_samples.retain(|(t, _)| *t + period_ms >= now && *t >= since_ms);
            ls.dlq_samples.iter().map(|(_, d)| *d).max().unwrap_or(0)
        };
        Ok(Observation { now_ms: now, window_ms: now.saturating_sub(since_ms), canary, primary, dlq_depth_max })
    }

    // ----- rollback follow-up -------------------------------------------------------------

    /// For recent rollbacks: note when the canary is off the bad revision, release what its
    /// tasks held, redrive what it dead-lettered, and keep the report's numbers current.
    fn follow_rollbacks(&self) -> Result<(), PipelineError> {
        let now = self.now_ms() as i64;
        let rollbacks = self.store.lock().unwrap().rollbacks(None)?;
        // Dead letters older than the DLQ's retention are gone: follow rollbacks that long.
        let window = self.spec.queue.dlq_retention.as_millis() as i64;
        for mut rb in rollbacks.into_iter().filter(|r| now - r.at_ms < window) {
            let canary = self.runtime.service("canary");
            let bad_tasks = canary
                .as_ref()
                .map(|s| s.tasks.iter().filter(|t| t.revision == rb.revision).count())
                .unwrap_or(0);
            let mut changed = false;
            if rb.canary_back_ms.is_none() && bad_tasks == 0 {
                rb.canary_back_ms = Some(now - rb.at_ms);
                changed = true;
                let store = self.store.lock().unwrap();
                store.event(
                    Some(rb.execution_id),
                    "canary-back",
                    ACTOR_ENGINE,
                    &format!("no canary task runs {} any more ({} ms after the rollback)", rb.revision, now - rb.at_ms),
                )?;
            }
            let stage_start = self
                .store
                .lock()
                .unwrap()
                .stages(rb.execution_id)?
                .iter()
                .find_map(|s| match parse_kind(s) {
                    StageKind::Deploy { service, .. } if service == "canary" => s.started_ms,
                    _ => None,
                })
                .unwrap_or(rb.at_ms) as u64;
            let telemetry = self.queue.telemetry(stage_start)?;
            // The canary's tasks of that revision only: a retried release of the same commit
            // may run on the primary now, and its messages are not this rollback's.
            let is_bad = |key: &str| TaskIdentity::parse(key).is_some_and(|id| id.revision == rb.revision && id.service == "canary");
            let bad_keys: Vec<String> = telemetry.iter().filter(|c| is_bad(&c.access_key_id)).map(|c| c.access_key_id.clone()).collect();
            // What the bad revision still holds goes back to the queue now, not after the
            // visibility timeout — once its tasks are gone: a task still finishing a message
            // would otherwise process it while another consumer receives it again. A message
            // a task held when it ended was not processed by it: a failed attempt.
            // Whoever releases them (this, or the release of stopped tasks' messages that may
            // come first), the queue counts them per consumer: the report takes its count.
            let mut released_now = 0;
            if bad_tasks == 0 && !bad_keys.is_empty() {
                released_now = self.queue.release_in_flight(&bad_keys)? as i64;
            }
            let released_before: i64 =
                telemetry.iter().filter(|c| bad_keys.contains(&c.access_key_id)).map(|c| c.released as i64).sum();
            let released = (rb.released + released_now).max(released_before + released_now);
            if released != rb.released {
                rb.released = released;
                changed = true;
            }
            // The bad revision's dead letters go back once its tasks are gone too: redriven
            // while one still runs, a message could be received and failed by it again.
            let ids: Vec<String> = if bad_tasks > 0 {
                Vec::new()
            } else {
                self.queue
                    .dead_letters()?
                    .into_iter()
                    .filter(|d| d.last_receiver.as_deref().is_some_and(is_bad))
                    .map(|d| d.message_id)
                    .collect()
            };
            if !ids.is_empty() {
                let moved = self.queue.redrive(&ids)? as i64;
                rb.redriven += moved;
                changed = true;
                self.store.lock().unwrap().event(
                    Some(rb.execution_id),
                    "redrive",
                    ACTOR_ENGINE,
                    &format!("redrove {moved} message(s) {} dead-lettered back to the queue", rb.revision),
                )?;
            }
            // A failure counts once, whatever happened to the message next: handed back,
            // expired, or still held when the tasks were gone (released by coalmine).
            // Dead-lettering and redriving follow a failure; they are not more of them.
            let (mut received, mut returned, mut expired, mut dead) = (0i64, 0i64, 0i64, 0i64);
            for c in telemetry.iter().filter(|c| bad_keys.contains(&c.access_key_id)) {
                received += c.received as i64;
                returned += c.returned as i64;
                expired += c.expired as i64;
                dead += c.dead_lettered as i64;
            }
            // Counts only grow: the queue forgets a consumer's telemetry half an hour after its
            // last activity, while a rollback is followed for the DLQ's retention.
            let (received, returned, expired, dead) =
                (received.max(rb.received), returned.max(rb.returned), expired.max(rb.expired), dead.max(rb.dead_lettered));
            let failed = returned + expired + rb.released;
            if (received, failed, returned, expired, dead) != (rb.received, rb.failed, rb.returned, rb.expired, rb.dead_lettered) {
                (rb.received, rb.failed, rb.returned, rb.expired, rb.dead_lettered) = (received, failed, returned, expired, dead);
                changed = true;
            }
            // Every message the bad revision dead-lettered is either redriven or still waiting
            // in the DLQ to be; anything else is lost.
            let waiting = self
                .queue
                .dead_letters()?
                .into_iter()
                .filter(|d| d.last_receiver.as_deref().is_some_and(is_bad))
                .count() as i64;
            let lost = (rb.dead_lettered - rb.redriven - waiting).max(0);
            if lost != rb.lost {
                rb.lost = lost;
                changed = true;
            }
            if changed {
                self.store.lock().unwrap().update_rollback(&rb)?;
            }
        }
        Ok(())
    }

    // ----- services -----------------------------------------------------------------------

    pub(crate) fn spec_tasks(&self, service: &str) -> u32 {
        match service {
            "primary" => self.spec.services.primary.tasks,
            _ => self.spec.services.canary.tasks,
        }
    }

    /// Make the runtime's services match the desired state in the store.
    fn reconcile_services(&self) -> Result<(), PipelineError> {
        let store = self.store.lock().unwrap();
        // Rollbacks still under way: revision -> whether an alarm decided it.
        let rollback_revs: HashMap<String, bool> = store
            .rollbacks(None)?
            .into_iter()
            .filter(|r| r.canary_back_ms.is_none())
            .map(|r| (r.revision, r.actor.starts_with("alarm:")))
            .collect();
        for name in ["primary", "canary"] {
            let Some((revision, tasks)) = store.service(name)? else { continue };
            let current = self.runtime.spec(name);
            let same = current
                .as_ref()
                .is_some_and(|c| c.revision.name == revision && c.desired == tasks);
            if same {
                continue;
            }
            // A circuit breaker may have put the service back by itself: accept that as the
            // new desired state rather than fight it.
            if let (Some(c), Some(st)) = (&current, self.runtime.service(name)) {
                let breaker_undid = st
                    .deployments
                    .iter()
                    .rev()
                    .find(|d| d.revision == revision)
                    .is_some_and(|d| d.state == DeploymentState::Failed && d.rolled_back_to.is_some());
                if breaker_undid && c.revision.name != revision {
                    store.set_service(name, &c.revision.name, c.desired)?;
                    store.event(
                        None,
                        "circuit-breaker",
                        ACTOR_ENGINE,
                        &format!("{name} went back to {} by itself after {revision} failed to start", c.revision.name),
                    )?;
                    continue;
                }
            }
            let mut spec = self.service_spec(&store, name, &revision, tasks);
            // Rolling back a canary: stop the bad tasks at once instead of waiting for the
            // replacements to become healthy.
            // When an alarm decided it, the bad tasks get only the short rollback grace.
            let rolling_back = current.as_ref().and_then(|c| rollback_revs.get(&c.revision.name));
            if name == "canary" && rolling_back.is_some() {
                spec.minimum_healthy_percent = 0;
                if rolling_back == Some(&true) {
                    spec.stop_timeout = spec.stop_timeout.min(self.spec.run.rollback_stop_timeout);
                }
            }
            self.runtime.apply(spec)?;
        }
        Ok(())
    }

    fn service_spec(&self, store: &Store, name: &str, revision: &str, tasks: u32) -> ServiceSpec {
        // The [run] settings of the revision's own commit, when it carried a coalmine.toml.
        let own = store
            .kv_get(&format!("run:{revision}"))
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str::<coalmine_spec::RunSpec>(&j).ok());
        let run = own.as_ref().unwrap_or(&self.spec.run);
        ServiceSpec {
            name: name.into(),
            revision: RevisionSpec {
                name: revision.into(),
                dir: self.paths.artifacts(revision),
                command: run.command.clone(),
                env: run.env.clone(),
            },
            desired: tasks,
            minimum_healthy_percent: run.minimum_healthy_percent,
            maximum_percent: run.maximum_percent,
            healthy_after: run.healthy_after,
            health_command: run.health_command.clone(),
            stop_timeout: run.stop_timeout,
            circuit_breaker_threshold: None,
            queue: self.queue_env.clone(),
        }
    }

    // ----- commands -----------------------------------------------------------------------

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

pub(crate) fn parse_kind(stage: &StageRow) -> StageKind {
    serde_json::from_str(&stage.kind).unwrap_or(StageKind::Source)
}

fn short(commit: &str) -> String {
    commit.chars().take(12).collect()
}

fn comment_suffix(comment: &str) -> String {
    if comment.is_empty() {
        String::new()
    } else {
        format!(": \"{comment}\"")
    }
}
