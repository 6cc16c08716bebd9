//! The reconcile loop. One thread runs [`Engine::tick`] a few times a second (and at once when
//! a command arrives); commands from the API only record intent in the store and wake it.
//!
//! Here: the engine's parts, the loop and the tick. Each concern of a tick in a file of its own,
//! all `impl Engine`: `source` (commits become executions), `stages` (one step of an execution,
//! and how it ends), `alarms` (the judgement while the canary is watched), `rollback` (the
//! follow-up of a rollback: release, redrive), `services` (desired services onto the runtime),
//! `commands` (approve, reject, roll back, stop, trigger).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalmine_analysis::{Observation, Outcome, RevisionSample};
use coalmine_runtime::{Artifact, DeploymentState, QueueEnv, RevisionSpec, Runtime, ServiceSpec, TaskIdentity};
use coalmine_spec::{AppSpec, Promote, ServiceName, Step};
use serde::{Deserialize, Serialize};

use crate::build::{BuildRequest, Builder, Built, Cancel};
use crate::queue_admin::{QueueControl, TelemetrySource};
use crate::source::{Commit, Source};
use crate::store::{status, Status, ApprovalRow, ExecutionRow, RollbackRow, StageRow, Store, VerdictRow};
use crate::clock::Clock;
use crate::PipelineError;

mod alarms;
mod commands;
mod rollback;
mod services;
mod source;
mod stages;

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
    result: Arc<Mutex<Option<Result<Built, String>>>>,
}

/// What the engine is built from.
pub struct EngineParts {
    pub spec: AppSpec,
    pub paths: Paths,
    pub runtime: Arc<dyn Runtime>,
    pub queue: Arc<dyn QueueControl>,
    pub telemetry: Arc<dyn TelemetrySource>,
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
    pub(crate) queue: Arc<dyn QueueControl>,
    pub(crate) telemetry: Arc<dyn TelemetrySource>,
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
    last_released_redrive_ms: u64,
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
            telemetry: parts.telemetry,
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

    pub fn queue(&self) -> &Arc<dyn QueueControl> {
        &self.queue
    }

    pub fn telemetry(&self) -> &Arc<dyn TelemetrySource> {
        &self.telemetry
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

    /// Whether a step run every `every_ms` is due (`last` is when it last ran); if so, it runs now.
    fn due(&self, last: fn(&mut LoopState) -> &mut u64, every_ms: u64) -> bool {
        let now = self.now_ms();
        let mut ls = self.loop_state.lock().unwrap();
        let last = last(&mut ls);
        if now < *last + every_ms {
            return false;
        }
        *last = now;
        true
    }

    /// Messages held by tasks that no longer exist (stopped by a deployment, killed) go back
    /// to the queue now instead of after their visibility timeout.
    fn release_orphans(&self) -> Result<(), PipelineError> {
        if !self.due(|ls| &mut ls.last_orphan_check_ms, 2000) {
            return Ok(());
        }
        let live: std::collections::HashSet<String> = self
            .runtime
            .services()
            .into_iter()
            .flat_map(|s| s.tasks.into_iter().map(|t| t.access_key_id))
            .collect();
        let mut gone: Vec<String> = self
            .telemetry
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
        self.redrive_released()
    }

    /// On SQS a stopping task's proxy hands back what the task still held, and SQS counts that
    /// receive: with a max receive count of 1 such a message reaches the DLQ though nobody
    /// failed it. Those go back to the queue (every 10 s), as the embedded queue's release never
    /// sends them to the DLQ. Not a canary revision's while it is judged (a crashed canary's
    /// message waits for the verdict), nor a rolled-back one's: its rollback redrives what it
    /// held once its tasks are gone, and its report counts them.
    fn redrive_released(&self) -> Result<(), PipelineError> {
        if !self.due(|ls| &mut ls.last_released_redrive_ms, 10_000) {
            return Ok(());
        }
        // Canary revisions whose dead letters wait: the rolled-back ones and the one judged.
        let waiting: std::collections::HashSet<String> = {
            let store = self.store.lock().unwrap();
            let mut waiting: std::collections::HashSet<String> = store.rollbacks(None)?.into_iter().map(|r| r.revision).collect();
            if let (Some((canary, _)), primary) = (store.service("canary")?, store.kv_get("primary_revision")?) {
                if primary.as_deref() != Some(canary.as_str()) {
                    waiting.insert(canary);
                }
            }
            waiting
        };
        let ids: Vec<String> = self
            .queue
            .dead_letters()?
            .into_iter()
            .filter(|d| {
                d.released_at_stop
                    && d.last_receiver
                        .as_deref()
                        .and_then(TaskIdentity::parse)
                        .is_some_and(|id| !(id.service == "canary" && waiting.contains(&id.revision)))
            })
            .map(|d| d.message_id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let moved = self.queue.redrive(&ids)?;
        if moved > 0 {
            self.store.lock().unwrap().event(
                None,
                "redrive",
                ACTOR_ENGINE,
                &format!("redrove {moved} message(s) back to the queue that stopped tasks held and handed back unprocessed (the queue had counted that receive towards the DLQ)"),
            )?;
        }
        Ok(())
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
