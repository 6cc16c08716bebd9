//! In-memory stand-ins for everything the [`Engine`] drives, and a [`Fixture`] wiring them to
//! an engine with a [`ManualClock`]: the release engine tested alone, one [`Engine::tick`] at
//! a time, with no process, git, queue server or waiting.
//!
//! - [`FakeSource`]: commits the test pushes; a checkout writes the files the test gave.
//! - [`FakeBuilder`]: succeeds (copying the checkout into the artifact folder) or fails as
//!   told, at once.
//! - [`FakeQueue`]: a queue that conserves messages. The test sends, receives, deletes and
//!   fails messages in the name of a consumer (a task's access key id); the per-consumer
//!   telemetry follows from that. Release and redrive move messages and return counts.
//! - [`FakeRuntime`]: services whose tasks become healthy at once, after their
//!   `healthy_after` on the clock, or when the test says; task exits and failed deployments
//!   (the circuit breaker) are injected by the test.
//!
//! Each fake is a cheap handle (`Clone` shares the state), so the test keeps one and gives the
//! engine another. Every fake reads time from the same [`Clock`] as the engine: deployments,
//! telemetry and stage starts are on one time line.
//!
//! The engine still runs builds on a thread of their own (the fake build returns at once, but
//! its result reaches the engine asynchronously): [`Fixture::tick_until`] ticks until a
//! condition holds, with a generous deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coalmine_runtime::{
    Artifact, DeploymentState, DeploymentStatus, QueueEnv, RevisionSpec, Runtime, RuntimeError, ServiceSpec, ServiceStatus,
    TaskIdentity, TaskState, TaskStatus,
};
use coalmine_spec::AppSpec;

use crate::build::{BuildRequest, Builder, Built, Cancel};
use crate::clock::{Clock, ManualClock};
use crate::queue_admin::{ConsumerCounts, DeadLetter, InFlight, QueueAdminError, QueueControl, TelemetrySource, QueueDepth, RedriveAll};
use crate::source::{Commit, Source};
use crate::store::{status, ExecutionRow, Store};
use crate::{Engine, EngineParts, Paths, PipelineError};

// ----- source ------------------------------------------------------------------------------

#[derive(Default)]
struct SourceState {
    commits: Vec<(Commit, BTreeMap<PathBuf, String>)>,
    error: Option<String>,
    checkouts: Vec<String>,
}

/// A branch whose commits the test pushes.
#[derive(Clone, Default)]
pub struct FakeSource {
    inner: Arc<Mutex<SourceState>>,
}

impl FakeSource {
    pub fn new() -> FakeSource {
        FakeSource::default()
    }

    /// Push a commit holding a `buildspec.yml` and a `REVISION` file (its id); it becomes the
    /// branch's newest.
    pub fn push(&self, message: &str) -> Commit {
        self.push_files(message, &[])
    }

    /// Push a commit holding these files (relative path, text) besides the defaults of
    /// [`FakeSource::push`] (which they may replace).
    pub fn push_files(&self, message: &str, files: &[(&str, &str)]) -> Commit {
        let mut st = self.inner.lock().unwrap();
        let n = st.commits.len() as u64 + 1;
        // 40 hex digits, unique in their first 12 (the revision name).
        let id = format!("c0ffee{n:06x}{:028x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let commit = Commit { id: id.clone(), message: message.to_string() };
        let mut tree = BTreeMap::new();
        tree.insert(PathBuf::from("buildspec.yml"), "version: 0.2\nphases:\n  build:\n    commands: [\"true\"]\nartifacts:\n  files: ['**/*']\n".to_string());
        tree.insert(PathBuf::from("REVISION"), id);
        for (path, text) in files {
            tree.insert(PathBuf::from(path), text.to_string());
        }
        st.commits.push((commit.clone(), tree));
        commit
    }

    /// Make [`Source::newest`] fail with this message (`None`: work again).
    pub fn set_error(&self, error: Option<&str>) {
        self.inner.lock().unwrap().error = error.map(str::to_string);
    }

    /// The commits checked out so far, in order.
    pub fn checkouts(&self) -> Vec<String> {
        self.inner.lock().unwrap().checkouts.clone()
    }
}

impl Source for FakeSource {
    fn newest(&self) -> Result<Commit, PipelineError> {
        let st = self.inner.lock().unwrap();
        if let Some(e) = &st.error {
            return Err(PipelineError::Source(e.clone()));
        }
        st.commits.last().map(|(c, _)| c.clone()).ok_or_else(|| PipelineError::Source("the branch has no commits".into()))
    }

    fn checkout(&self, commit: &str, dest: &Path) -> Result<(), PipelineError> {
        let mut st = self.inner.lock().unwrap();
        if dest.exists() {
            return Err(PipelineError::Source(format!("checkout: {} already exists", dest.display())));
        }
        let Some((_, tree)) = st.commits.iter().find(|(c, _)| c.id == commit) else {
            return Err(PipelineError::Source(format!("checkout: no commit {commit}")));
        };
        for (path, text) in tree {
            let file = dest.join(path);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
            }
            std::fs::write(&file, text).map_err(|e| PipelineError::io(&file, e))?;
        }
        std::fs::create_dir_all(dest).map_err(|e| PipelineError::io(dest, e))?;
        st.checkouts.push(commit.to_string());
        Ok(())
    }

    fn read_file(&self, commit: &str, path: &Path) -> Result<Option<String>, PipelineError> {
        let st = self.inner.lock().unwrap();
        let Some((_, tree)) = st.commits.iter().find(|(c, _)| c.id == commit) else {
            return Err(PipelineError::Source(format!("no commit {commit}")));
        };
        Ok(tree.get(path).cloned())
    }
}

// ----- builder -----------------------------------------------------------------------------

#[derive(Default)]
struct BuilderState {
    failing: BTreeMap<String, String>,
    fail_all: Option<String>,
    builds: Vec<BuildRequest>,
}

/// A build that takes no time: copies the checkout into the artifact folder, or fails as told.
#[derive(Clone, Default)]
pub struct FakeBuilder {
    inner: Arc<Mutex<BuilderState>>,
}

impl FakeBuilder {
    pub fn new() -> FakeBuilder {
        FakeBuilder::default()
    }

    /// Builds of `revision` fail with `error` (`None`: succeed again).
    pub fn fail_revision(&self, revision: &str, error: Option<&str>) {
        let mut st = self.inner.lock().unwrap();
        match error {
            Some(e) => st.failing.insert(revision.to_string(), e.to_string()),
            None => st.failing.remove(revision),
        };
    }

    /// Every build fails with `error` (`None`: succeed again).
    pub fn fail_all(&self, error: Option<&str>) {
        self.inner.lock().unwrap().fail_all = error.map(str::to_string);
    }

    /// The builds asked for so far, in order.
    pub fn builds(&self) -> Vec<BuildRequest> {
        self.inner.lock().unwrap().builds.clone()
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<usize, PipelineError> {
    std::fs::create_dir_all(to).map_err(|e| PipelineError::io(to, e))?;
    let mut n = 0;
    for entry in std::fs::read_dir(from).map_err(|e| PipelineError::io(from, e))? {
        let entry = entry.map_err(|e| PipelineError::io(from, e))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            n += copy_tree(&path, &dest)?;
        } else {
            std::fs::copy(&path, &dest).map_err(|e| PipelineError::io(&path, e))?;
            n += 1;
        }
    }
    Ok(n)
}

impl Builder for FakeBuilder {
    fn build(&self, req: &BuildRequest, cancel: &Cancel) -> Result<Built, PipelineError> {
        let failure = {
            let mut st = self.inner.lock().unwrap();
            st.builds.push(req.clone());
            st.fail_all.clone().or_else(|| st.failing.get(&req.revision).cloned())
        };
        if cancel.is_cancelled() {
            return Err(PipelineError::Build("cancelled".into()));
        }
        if let Some(dir) = req.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        }
        std::fs::write(&req.log_path, format!("fake build {} of {}\n", req.build_number, req.revision))
            .map_err(|e| PipelineError::io(&req.log_path, e))?;
        if let Some(e) = failure {
            return Err(PipelineError::Build(e));
        }
        if !req.src_dir.is_dir() {
            return Err(PipelineError::Build(format!("no checkout at {}", req.src_dir.display())));
        }
        let files = copy_tree(&req.src_dir, &req.artifact_dir)?;
        Ok(Built { summary: format!("built {} (fake), {files} artifact file(s)", req.revision), artifact: Artifact::folder(&req.artifact_dir) })
    }
}

// ----- queue -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Place {
    Visible,
    InFlight { key: String, since_ms: u64 },
    Dead { last_receiver: Option<String>, released: bool },
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ev {
    Received,
    Deleted { latency_ms: f64 },
    Returned,
    Released,
    Expired,
    DeadLettered,
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    messages: BTreeMap<String, Place>,
    /// (time, consumer, what)
    events: Vec<(u64, String, Ev)>,
    unavailable: Option<String>,
}

/// Where every message sent to a [`FakeQueue`] is now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    pub sent: u64,
    pub visible: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub deleted: u64,
}

impl QueueTotals {
    /// Every message sent is in exactly one place.
    pub fn conserved(&self) -> bool {
        self.sent == self.visible + self.in_flight + self.dead + self.deleted
    }
}

/// A queue and its DLQ, in memory. Messages are never created or lost by the queue itself:
/// only [`FakeQueue::send`] adds them, and every operation moves them between places.
#[derive(Clone)]
pub struct FakeQueue {
    inner: Arc<Mutex<QueueState>>,
    clock: Arc<dyn Clock>,
}

/// A consumer's first deletes in a telemetry window that the latency alarm leaves out (as the
/// embedded queue's adapter does).
const WARMUP_MESSAGES: usize = coalmine_analysis::consumer::WARMUP_MESSAGES as usize;

impl FakeQueue {
    pub fn new(clock: Arc<dyn Clock>) -> FakeQueue {
        FakeQueue { inner: Arc::new(Mutex::new(QueueState::default())), clock }
    }

    /// Send `n` messages; returns their ids.
    pub fn send(&self, n: usize) -> Vec<String> {
        let mut st = self.inner.lock().unwrap();
        (0..n)
            .map(|_| {
                st.next_id += 1;
                let id = format!("m{:06}", st.next_id);
                st.messages.insert(id.clone(), Place::Visible);
                id
            })
            .collect()
    }

    /// `consumer` (a task's access key id) receives up to `n` visible messages; returns how many.
    pub fn receive(&self, consumer: &str, n: usize) -> usize {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        let ids: Vec<String> =
            st.messages.iter().filter(|(_, p)| **p == Place::Visible).map(|(id, _)| id.clone()).take(n).collect();
        for id in &ids {
            st.messages.insert(id.clone(), Place::InFlight { key: consumer.to_string(), since_ms: now });
            st.events.push((now, consumer.to_string(), Ev::Received));
        }
        ids.len()
    }

    /// Move up to `n` of the messages `consumer` holds to `to`, recording `evs` for each.
    fn settle(&self, consumer: &str, n: usize, to: impl Fn() -> Place, evs: &[Ev]) -> usize {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        let held: Vec<(String, u64)> = st
            .messages
            .iter()
            .filter_map(|(id, p)| match p {
                Place::InFlight { key, since_ms } if key == consumer => Some((id.clone(), *since_ms)),
                _ => None,
            })
            .take(n)
            .collect();
        for (id, since) in &held {
            st.messages.insert(id.clone(), to());
            for ev in evs {
                let ev = match ev {
                    Ev::Deleted { .. } => Ev::Deleted { latency_ms: now.saturating_sub(*since) as f64 },
                    other => *other,
                };
                st.events.push((now, consumer.to_string(), ev));
            }
        }
        held.len()
    }

    /// `consumer` deletes (processes) up to `n` of the messages it holds; returns how many.
    pub fn delete(&self, consumer: &str, n: usize) -> usize {
        self.settle(consumer, n, || Place::Deleted, &[Ev::Deleted { latency_ms: 0.0 }])
    }

    /// `consumer` hands up to `n` of its messages back (visibility 0): failed attempts.
    pub fn give_back(&self, consumer: &str, n: usize) -> usize {
        self.settle(consumer, n, || Place::Visible, &[Ev::Returned])
    }

    /// Up to `n` of `consumer`'s messages reach their visibility timeout: failed attempts.
    pub fn expire(&self, consumer: &str, n: usize) -> usize {
        self.settle(consumer, n, || Place::Visible, &[Ev::Expired])
    }

    /// `consumer` fails up to `n` of its messages and they go to the DLQ (a max receive count
    /// of 1): a failed attempt, then a dead letter whose last receiver is `consumer`.
    pub fn fail_to_dlq(&self, consumer: &str, n: usize) -> usize {
        let key = consumer.to_string();
        self.settle(consumer, n, move || Place::Dead { last_receiver: Some(key.clone()), released: false }, &[Ev::Returned, Ev::DeadLettered])
    }

    /// `consumer`'s task stops holding up to `n` messages, unprocessed: its proxy hands them
    /// back and, as SQS counts that receive, they reach the DLQ (a max receive count of 1)
    /// with `consumer` as their last receiver, released rather than failed.
    pub fn release_to_dlq(&self, consumer: &str, n: usize) -> usize {
        let key = consumer.to_string();
        self.settle(consumer, n, move || Place::Dead { last_receiver: Some(key.clone()), released: true }, &[Ev::Released, Ev::DeadLettered])
    }

    /// Send `ok + failed` messages; `consumer` receives them, deletes `ok` and hands `failed` back.
    pub fn process(&self, consumer: &str, ok: usize, failed: usize) {
        self.send(ok + failed);
        self.receive(consumer, ok + failed);
        self.delete(consumer, ok);
        self.give_back(consumer, failed);
    }

    /// Make every call of the engine fail with this message (`None`: work again).
    pub fn set_unavailable(&self, error: Option<&str>) {
        self.inner.lock().unwrap().unavailable = error.map(str::to_string);
    }

    /// Where the messages are.
    pub fn totals(&self) -> QueueTotals {
        let st = self.inner.lock().unwrap();
        let mut t = QueueTotals { sent: st.next_id, ..Default::default() };
        for p in st.messages.values() {
            match p {
                Place::Visible => t.visible += 1,
                Place::InFlight { .. } => t.in_flight += 1,
                Place::Dead { .. } => t.dead += 1,
                Place::Deleted => t.deleted += 1,
            }
        }
        t
    }

    /// How many messages `consumer` holds now.
    pub fn held_by(&self, consumer: &str) -> usize {
        let st = self.inner.lock().unwrap();
        st.messages.values().filter(|p| matches!(p, Place::InFlight { key, .. } if key == consumer)).count()
    }

    fn check(&self) -> Result<std::sync::MutexGuard<'_, QueueState>, QueueAdminError> {
        let st = self.inner.lock().unwrap();
        match &st.unavailable {
            Some(e) => Err(QueueAdminError(e.clone())),
            None => Ok(st),
        }
    }
}

impl QueueControl for FakeQueue {
    fn depth(&self) -> Result<QueueDepth, QueueAdminError> {
        drop(self.check()?);
        let t = self.totals();
        let now = self.clock.now_ms();
        let st = self.inner.lock().unwrap();
        let oldest = st
            .messages
            .values()
            .filter_map(|p| match p {
                Place::InFlight { since_ms, .. } => Some(now.saturating_sub(*since_ms)),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        Ok(QueueDepth { visible: t.visible, in_flight: t.in_flight, delayed: 0, oldest_age_ms: oldest, dlq_visible: t.dead, dlq_in_flight: 0, backend: "fake".into(), lacks: Vec::new() })
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueAdminError> {
        let st = self.check()?;
        Ok(st
            .messages
            .iter()
            .filter_map(|(id, p)| match p {
                Place::Dead { last_receiver, released } => {
                    Some(DeadLetter { message_id: id.clone(), last_receiver: last_receiver.clone(), released_at_stop: *released })
                }
                _ => None,
            })
            .collect())
    }

    fn redrive(&self, message_ids: &[String]) -> Result<usize, QueueAdminError> {
        let mut st = self.check()?;
        let mut moved = 0;
        for id in message_ids {
            if let Some(p @ Place::Dead { .. }) = st.messages.get_mut(id) {
                *p = Place::Visible;
                moved += 1;
            }
        }
        Ok(moved)
    }

    fn redrive_all(&self) -> Result<RedriveAll, QueueAdminError> {
        let ids: Vec<String> = self.dead_letters()?.into_iter().map(|d| d.message_id).collect();
        let moved = self.redrive(&ids)? as u64;
        Ok(RedriveAll { moved: Some(moved), move_task: None, how: format!("moved {moved} message(s)") })
    }

    fn release_in_flight(&self, access_key_ids: &[String]) -> Result<usize, QueueAdminError> {
        let now = self.clock.now_ms();
        let mut st = self.check()?;
        let keys: BTreeSet<&String> = access_key_ids.iter().collect();
        let mut released = Vec::new();
        for p in st.messages.values_mut() {
            if let Place::InFlight { key, .. } = p {
                if keys.contains(key) {
                    released.push(key.clone());
                    *p = Place::Visible;
                }
            }
        }
        let n = released.len();
        for key in released {
            st.events.push((now, key, Ev::Released));
        }
        Ok(n)
    }
}

impl TelemetrySource for FakeQueue {
    fn consumers(&self, since_ms: u64) -> Result<Vec<ConsumerCounts>, QueueAdminError> {
        let st = self.check()?;
        let mut by: BTreeMap<&str, ConsumerCounts> = BTreeMap::new();
        // Messages received since each consumer's last success: a run of failures counts no
        // more of them than that (as the embedded queue's admin counts it).
        let mut received_since: BTreeMap<&str, u64> = BTreeMap::new();
        for (at, key, ev) in st.events.iter().filter(|(at, _, _)| *at >= since_ms) {
            let c = by.entry(key.as_str()).or_insert_with(|| ConsumerCounts { access_key_id: key.clone(), ..Default::default() });
            let since = received_since.entry(key.as_str()).or_default();
            match ev {
                Ev::Received => {
                    c.received += 1;
                    *since += 1;
                }
                Ev::Deleted { latency_ms } => {
                    c.deleted += 1;
                    if c.latencies_ms.len() >= WARMUP_MESSAGES as u64 {
                        c.warm_latencies_ms.add(*latency_ms, 1);
                    }
                    c.latencies_ms.add(*latency_ms, 1);
                    c.last_success_ms = Some(*at);
                    c.failures_since_success = 0;
                    *since = 0;
                }
                Ev::Returned => {
                    c.returned += 1;
                    c.failures_since_success += 1;
                }
                Ev::Expired => {
                    c.expired += 1;
                    c.failures_since_success += 1;
                }
                Ev::Released => c.released += 1,
                Ev::DeadLettered => c.dead_lettered += 1,
            }
        }
        for (key, c) in by.iter_mut() {
            c.failures_since_success = c.failures_since_success.min(received_since.get(key).copied().unwrap_or(0));
        }
        Ok(by.into_values().collect())
    }

    fn in_flight(&self) -> Result<Vec<InFlight>, QueueAdminError> {
        let st = self.check()?;
        Ok(st
            .messages
            .iter()
            .filter_map(|(id, p)| match p {
                Place::InFlight { key, since_ms } => {
                    Some(InFlight { message_id: id.clone(), access_key_id: key.clone(), received_at_ms: *since_ms })
                }
                _ => None,
            })
            .collect())
    }
}

// ----- runtime -----------------------------------------------------------------------------

/// When a [`FakeRuntime`]'s new tasks become healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// As soon as they start.
    Immediate,
    /// Once they have been up for their service's `healthy_after`, on the clock.
    AfterGrace,
    /// When the test calls [`FakeRuntime::make_healthy`].
    Manual,
}

struct FakeTask {
    n: u64,
    revision: String,
    state: TaskState,
    started_at_ms: u64,
    restarts: u32,
    last_exit: Option<String>,
    service: String,
}

impl FakeTask {
    fn id(&self) -> String {
        format!("{}-{}", self.service, self.n)
    }
    fn key(&self) -> String {
        TaskIdentity { service: self.service.clone(), revision: self.revision.clone(), task: self.id() }.access_key_id()
    }
}

struct FakeService {
    spec: ServiceSpec,
    /// The revision of the last completed deployment: where a failed one goes back to.
    stable: Option<RevisionSpec>,
    deployments: Vec<DeploymentStatus>,
    tasks: Vec<FakeTask>,
    exits_by_revision: BTreeMap<String, u64>,
}

struct RuntimeState {
    services: BTreeMap<String, FakeService>,
    next_task: u64,
    health: Health,
    health_of: BTreeMap<String, Health>,
    applied: Vec<ServiceSpec>,
    shut_down: bool,
    /// Services whose replaced tasks stay `Stopping` until [`FakeRuntime::finish_stopping`].
    lingering: BTreeSet<String>,
}

/// Services of tasks that exist only in memory. A new revision replaces a service's tasks at
/// once (old ones stop, new ones start) in a new deployment, which completes when every task
/// is healthy ([`Health`]) or fails when the test says ([`FakeRuntime::fail_deployment`]).
#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Mutex<RuntimeState>>,
    clock: Arc<dyn Clock>,
}

impl FakeRuntime {
    /// New tasks become healthy as soon as they start.
    pub fn new(clock: Arc<dyn Clock>) -> FakeRuntime {
        FakeRuntime {
            inner: Arc::new(Mutex::new(RuntimeState {
                services: BTreeMap::new(),
                next_task: 0,
                health: Health::Immediate,
                health_of: BTreeMap::new(),
                applied: Vec::new(),
                shut_down: false,
                lingering: BTreeSet::new(),
            })),
            clock,
        }
    }

    /// When new tasks of every service become healthy.
    pub fn set_health(&self, health: Health) {
        self.inner.lock().unwrap().health = health;
    }

    /// When new tasks of `service` become healthy (overrides [`FakeRuntime::set_health`]).
    pub fn set_service_health(&self, service: &str, health: Health) {
        self.inner.lock().unwrap().health_of.insert(service.to_string(), health);
    }

    /// Every task of `service` that is not healthy yet becomes healthy.
    pub fn make_healthy(&self, service: &str) {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        if let Some(svc) = st.services.get_mut(service) {
            for t in &mut svc.tasks {
                if t.state == TaskState::Pending {
                    t.state = TaskState::Running;
                }
            }
            complete_if_healthy(svc, now);
        }
    }

    /// From now on, the tasks a new revision replaces in `service` stay `Stopping` (as tasks
    /// finishing their grace do) until [`FakeRuntime::finish_stopping`].
    pub fn linger_on_stop(&self, service: &str) {
        self.inner.lock().unwrap().lingering.insert(service.to_string());
    }

    /// The `Stopping` tasks of `service` are gone; returns how many.
    pub fn finish_stopping(&self, service: &str) -> usize {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        let Some(svc) = st.services.get_mut(service) else { return 0 };
        let before = svc.tasks.len();
        svc.tasks.retain(|t| t.state != TaskState::Stopping);
        complete_if_healthy(svc, now);
        before - svc.tasks.len()
    }

    /// Every task of `service` exits once (a crash) and is restarted; returns how many exited.
    pub fn exit_tasks(&self, service: &str) -> usize {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        let health = st.health_of.get(service).copied().unwrap_or(st.health);
        let Some(svc) = st.services.get_mut(service) else { return 0 };
        for t in &mut svc.tasks {
            *svc.exits_by_revision.entry(t.revision.clone()).or_default() += 1;
            t.restarts += 1;
            t.last_exit = Some("exit 1".into());
            t.started_at_ms = now;
            t.state = TaskState::Pending;
        }
        let n = svc.tasks.len();
        refresh(svc, health, now);
        n
    }

    /// The newest deployment of `service`, if in progress, fails (`reason`); like the
    /// circuit breaker, the service goes back to its last completed revision when it has one.
    /// Returns whether a deployment failed.
    pub fn fail_deployment(&self, service: &str, reason: &str) -> bool {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        let health = st.health_of.get(service).copied().unwrap_or(st.health);
        let RuntimeState { services, next_task, .. } = &mut *st;
        let Some(svc) = services.get_mut(service) else { return false };
        let Some(dep) = svc.deployments.last_mut() else { return false };
        if dep.state != DeploymentState::InProgress {
            return false;
        }
        dep.state = DeploymentState::Failed;
        dep.finished_at_ms = Some(now);
        dep.reason = reason.to_string();
        let back = svc.stable.clone().filter(|s| *s != svc.spec.revision);
        if let Some(stable) = back {
            dep.rolled_back_to = Some(stable.name.clone());
            let failed = svc.spec.revision.name.clone();
            svc.spec.revision = stable;
            start_deployment(svc, next_task, now, format!("circuit breaker rollback from revision {failed}"));
            refresh(svc, health, now);
        }
        true
    }

    /// Every spec applied, in order.
    pub fn applied(&self) -> Vec<ServiceSpec> {
        self.inner.lock().unwrap().applied.clone()
    }

    /// The access key ids of `service`'s tasks now (all revisions).
    pub fn task_keys(&self, service: &str) -> Vec<String> {
        let st = self.inner.lock().unwrap();
        st.services.get(service).map(|s| s.tasks.iter().map(FakeTask::key).collect()).unwrap_or_default()
    }

    fn health_for(st: &RuntimeState, service: &str) -> Health {
        st.health_of.get(service).copied().unwrap_or(st.health)
    }
}

/// Replace every task of `svc` with new ones of its spec's revision, in a new deployment.
fn start_deployment(svc: &mut FakeService, next_task: &mut u64, now: u64, reason: String) {
    let id = svc.deployments.last().map(|d| d.id + 1).unwrap_or(1);
    if let Some(last) = svc.deployments.last_mut() {
        if last.state == DeploymentState::InProgress {
            last.state = DeploymentState::Failed;
            last.reason = format!("superseded by deployment {id} (revision {})", svc.spec.revision.name);
            last.finished_at_ms = Some(now);
        }
    }
    svc.deployments.push(DeploymentStatus {
        id,
        revision: svc.spec.revision.name.clone(),
        state: DeploymentState::InProgress,
        reason,
        rolled_back_to: None,
        started_at_ms: now,
        finished_at_ms: None,
    });
    svc.tasks.clear();
    for _ in 0..svc.spec.desired {
        *next_task += 1;
        svc.tasks.push(new_task(&svc.spec, *next_task, now));
    }
}

fn new_task(spec: &ServiceSpec, n: u64, now: u64) -> FakeTask {
    FakeTask {
        n,
        revision: spec.revision.name.clone(),
        state: TaskState::Pending,
        started_at_ms: now,
        restarts: 0,
        last_exit: None,
        service: spec.name.clone(),
    }
}

fn refresh(svc: &mut FakeService, health: Health, now: u64) {
    let grace = svc.spec.healthy_after.as_millis() as u64;
    for t in &mut svc.tasks {
        let healthy = match health {
            Health::Immediate => true,
            Health::AfterGrace => now >= t.started_at_ms + grace,
            Health::Manual => false,
        };
        if t.state == TaskState::Pending && healthy {
            t.state = TaskState::Running;
        }
    }
    complete_if_healthy(svc, now);
}

fn complete_if_healthy(svc: &mut FakeService, now: u64) {
    let all = svc.tasks.len() as u32 == svc.spec.desired
        && svc.tasks.iter().all(|t| t.state == TaskState::Running && t.revision == svc.spec.revision.name);
    if let Some(dep) = svc.deployments.last_mut() {
        if dep.state == DeploymentState::InProgress && all {
            dep.state = DeploymentState::Completed;
            dep.finished_at_ms = Some(now);
            svc.stable = Some(svc.spec.revision.clone());
        }
    }
}

fn status_of(name: &str, svc: &FakeService) -> ServiceStatus {
    let tasks: Vec<TaskStatus> = svc
        .tasks
        .iter()
        .map(|t| TaskStatus {
            id: t.id(),
            pid: None,
            revision: t.revision.clone(),
            state: t.state,
            access_key_id: t.key(),
            started_at_ms: t.started_at_ms,
            restarts: t.restarts,
            last_exit: t.last_exit.clone(),
            last_output: Vec::new(),
        })
        .collect();
    ServiceStatus::from_tasks(name, &svc.spec.revision.name, svc.spec.desired, svc.deployments.clone(), tasks, svc.exits_by_revision.clone())
}

impl Runtime for FakeRuntime {
    fn apply(&self, spec: ServiceSpec) -> Result<(), RuntimeError> {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        if st.shut_down {
            return Err(RuntimeError::ShuttingDown);
        }
        if spec.name.is_empty() || spec.revision.name.is_empty() {
            return Err(RuntimeError::Invalid { service: spec.name.clone(), reason: "empty name or revision".into() });
        }
        st.applied.push(spec.clone());
        let health = FakeRuntime::health_for(&st, &spec.name);
        let name = spec.name.clone();
        let RuntimeState { services, next_task, lingering, .. } = &mut *st;
        match services.get_mut(&name) {
            None => {
                let mut svc = FakeService {
                    spec,
                    stable: None,
                    deployments: Vec::new(),
                    tasks: Vec::new(),
                    exits_by_revision: BTreeMap::new(),
                };
                let reason = format!("creating service with {} tasks of revision {}", svc.spec.desired, svc.spec.revision.name);
                start_deployment(&mut svc, next_task, now, reason);
                refresh(&mut svc, health, now);
                services.insert(name, svc);
            }
            Some(svc) => {
                if spec.revision != svc.spec.revision {
                    let reason = format!("rolling {} tasks to revision {}", spec.desired, spec.revision.name);
                    svc.spec = spec;
                    let replaced = if lingering.contains(&name) { std::mem::take(&mut svc.tasks) } else { Vec::new() };
                    start_deployment(svc, next_task, now, reason);
                    svc.tasks.extend(replaced.into_iter().map(|t| FakeTask { state: TaskState::Stopping, ..t }));
                } else {
                    svc.spec = spec;
                    scale_tasks(svc, next_task, now);
                }
                refresh(svc, health, now);
            }
        }
        Ok(())
    }

    fn scale(&self, service: &str, desired: u32) -> Result<(), RuntimeError> {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        let health = FakeRuntime::health_for(&st, service);
        let RuntimeState { services, next_task, .. } = &mut *st;
        let svc = services.get_mut(service).ok_or_else(|| RuntimeError::UnknownService(service.to_string()))?;
        svc.spec.desired = desired;
        scale_tasks(svc, next_task, now);
        refresh(svc, health, now);
        Ok(())
    }

    fn service(&self, service: &str) -> Option<ServiceStatus> {
        let now = self.clock.now_ms();
        let mut st = self.inner.lock().unwrap();
        let health = FakeRuntime::health_for(&st, service);
        let svc = st.services.get_mut(service)?;
        refresh(svc, health, now);
        Some(status_of(service, svc))
    }

    fn services(&self) -> Vec<ServiceStatus> {
        let names: Vec<String> = self.inner.lock().unwrap().services.keys().cloned().collect();
        names.iter().filter_map(|n| self.service(n)).collect()
    }

    fn spec(&self, service: &str) -> Option<ServiceSpec> {
        self.inner.lock().unwrap().services.get(service).map(|s| s.spec.clone())
    }

    fn task_log(&self, _task: &str) -> Option<PathBuf> {
        None
    }

    fn shutdown(&self) {
        let mut st = self.inner.lock().unwrap();
        st.shut_down = true;
        for svc in st.services.values_mut() {
            svc.tasks.clear();
        }
    }
}

/// Start or stop tasks of the current revision until `desired` run (newest stop first).
fn scale_tasks(svc: &mut FakeService, next_task: &mut u64, now: u64) {
    while (svc.tasks.len() as u32) > svc.spec.desired {
        svc.tasks.pop();
    }
    while (svc.tasks.len() as u32) < svc.spec.desired {
        *next_task += 1;
        svc.tasks.push(new_task(&svc.spec, *next_task, now));
    }
}

// ----- fixture -----------------------------------------------------------------------------

/// The smallest `coalmine.toml` the fixture starts from.
pub const MINIMAL_SPEC: &str = "app = \"app\"\n[run]\ncommand = \"./worker\"\n";

/// An engine over the fakes, with a manual clock (the shape of Argo Rollouts' `newFixture`).
/// `root` holds `.coalmine/` (the store, artifacts, build logs); give it a fresh folder.
pub struct Fixture {
    pub clock: ManualClock,
    pub source: FakeSource,
    pub builder: FakeBuilder,
    pub queue: FakeQueue,
    pub runtime: FakeRuntime,
    pub spec: AppSpec,
    pub paths: Paths,
    pub engine: Arc<Engine>,
    /// The builder as the current engine holds it: its count tells when the engine's build
    /// threads are done (each holds a clone until it has cleaned up).
    builder_handle: Arc<dyn Builder>,
}

/// How long [`Fixture::tick_until`] waits (wall time) for builds to come back: generous, the
/// machine may be loaded.
pub const TICK_DEADLINE: Duration = Duration::from_secs(60);

impl Fixture {
    /// The fixture with [`MINIMAL_SPEC`]: default steps (deploy canary, approval, deploy
    /// primary) and default alarms; 3 primary tasks, 1 canary task.
    pub fn new(root: &Path) -> Result<Fixture, PipelineError> {
        Fixture::with_spec(root, |_| {})
    }

    /// The fixture with [`MINIMAL_SPEC`] changed by `edit` (steps, alarms, task counts...).
    pub fn with_spec(root: &Path, edit: impl FnOnce(&mut AppSpec)) -> Result<Fixture, PipelineError> {
        let file = root.join("coalmine.toml");
        let mut spec = coalmine_spec::parse(MINIMAL_SPEC, &file.to_string_lossy())
            .map_err(|d| PipelineError::Refused(format!("the fixture's spec is invalid:\n{d}")))?;
        edit(&mut spec);
        let clock = ManualClock::default();
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let source = FakeSource::new();
        let builder = FakeBuilder::new();
        let queue = FakeQueue::new(shared.clone());
        let runtime = FakeRuntime::new(shared);
        let paths = Paths { root: root.join(".coalmine") };
        let builder_handle: Arc<dyn Builder> = Arc::new(builder.clone());
        let engine = Engine::open(Fixture::parts_of(&spec, &paths, &clock, &source, &builder_handle, &queue, &runtime))?;
        Ok(Fixture { clock, source, builder, queue, runtime, spec, paths, engine, builder_handle })
    }

    fn parts_of(
        spec: &AppSpec,
        paths: &Paths,
        clock: &ManualClock,
        source: &FakeSource,
        builder: &Arc<dyn Builder>,
        queue: &FakeQueue,
        runtime: &FakeRuntime,
    ) -> EngineParts {
        EngineParts {
            spec: spec.clone(),
            paths: paths.clone(),
            runtime: Arc::new(runtime.clone()),
            queue: Arc::new(queue.clone()),
            telemetry: Arc::new(queue.clone()),
            source: Box::new(source.clone()),
            builder: builder.clone(),
            queue_env: QueueEnv {
                endpoint_url: "http://127.0.0.1:1".into(),
                region: "us-east-1".into(),
                queue: spec.queue.name.clone(),
                queue_url: format!("http://127.0.0.1:1/000000000000/{}", spec.queue.name),
            },
            build_env: BTreeMap::new(),
            clock: Arc::new(clock.clone()),
        }
    }

    /// Stop the engine and open a new one on the same store, as a restart of `coalmine up`
    /// does; the runtime keeps its services (as ECS does). Waits for the old engine's build
    /// threads to finish first.
    pub fn restart(&mut self) -> Result<(), PipelineError> {
        let handle: Arc<dyn Builder> = Arc::new(self.builder.clone());
        let engine = Engine::open(Fixture::parts_of(
            &self.spec,
            &self.paths,
            &self.clock,
            &self.source,
            &handle,
            &self.queue,
            &self.runtime,
        ))?;
        let old = std::mem::replace(&mut self.engine, engine);
        let old_handle = std::mem::replace(&mut self.builder_handle, handle);
        drop(old);
        let deadline = Instant::now() + TICK_DEADLINE;
        while Arc::strong_count(&old_handle) > 1 {
            assert!(Instant::now() < deadline, "the old engine's build threads did not finish");
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// [`Fixture::restart`] with a new, empty runtime, as the local runtime is after a restart
    /// (its tasks died with the process).
    pub fn restart_with_fresh_runtime(&mut self) -> Result<(), PipelineError> {
        self.runtime.shutdown();
        self.runtime = FakeRuntime::new(Arc::new(self.clock.clone()));
        self.restart()
    }

    /// One pass of the engine.
    pub fn tick(&self) -> Result<(), PipelineError> {
        self.engine.tick()
    }

    /// Tick until `done` holds (without moving the clock), failing on an engine error; panics
    /// after [`TICK_DEADLINE`] of wall time, with the engine's status.
    pub fn tick_until(&self, what: &str, mut done: impl FnMut(&Fixture) -> bool) -> Result<(), PipelineError> {
        let deadline = Instant::now() + TICK_DEADLINE;
        loop {
            self.tick()?;
            if done(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; status: {:#?}", self.engine.status().map(|s| s.execution));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Push a commit and tell the engine to look (as a webhook would).
    pub fn commit(&self, message: &str) -> Commit {
        let c = self.source.push(message);
        self.engine.trigger();
        c
    }

    /// A separate connection to the engine's store, for reading what the engine wrote.
    pub fn store(&self) -> Result<Store, PipelineError> {
        Store::open_with_clock(&self.paths.state_db(), Arc::new(self.clock.clone()))
    }

    /// Execution `id` as stored.
    pub fn execution(&self, id: i64) -> Result<ExecutionRow, PipelineError> {
        self.store()?.execution(id)?.ok_or(PipelineError::NoSuchExecution(id))
    }

    /// The execution of `commit` (the newest one, if retried).
    pub fn execution_of(&self, commit: &Commit) -> Result<Option<ExecutionRow>, PipelineError> {
        self.store()?.execution_for_commit(&commit.id)
    }

    /// The status of stage `name` of execution `id`.
    pub fn stage_status(&self, id: i64, name: &str) -> Result<Option<crate::store::Status>, PipelineError> {
        Ok(self.store()?.stages(id)?.into_iter().find(|s| s.name == name).map(|s| s.status))
    }

    /// Whether execution `id` waits for a decision now.
    pub fn is_awaiting(&self, id: i64) -> bool {
        self.engine.awaiting_approval().ok().flatten().is_some_and(|e| e.id == id)
    }

    /// Whether execution `id` has ended (any status but queued or in progress).
    pub fn has_ended(&self, id: i64) -> bool {
        self.execution(id).is_ok_and(|e| e.status != status::QUEUED && e.status != status::IN_PROGRESS)
    }

    /// The revision the primary was last released with.
    pub fn primary_revision(&self) -> Option<String> {
        self.store().ok()?.kv_get("primary_revision").ok()?
    }

    /// The revision a service should run, per the store.
    pub fn desired_revision(&self, service: &str) -> Option<String> {
        self.store().ok()?.service(service).ok()?.map(|(r, _)| r)
    }

    /// The revision a service is (being) deployed to, per the runtime.
    pub fn running_revision(&self, service: &str) -> Option<String> {
        self.runtime.spec(service).map(|s| s.revision.name)
    }

    /// The access key id of the canary's first task running `revision`.
    pub fn canary_key(&self, revision: &str) -> Option<String> {
        self.runtime
            .task_keys("canary")
            .into_iter()
            .find(|k| TaskIdentity::parse(k).is_some_and(|id| id.revision == revision))
    }

    /// Release a first revision (the bootstrap: both services) and return its commit.
    pub fn bootstrap(&self) -> Result<Commit, PipelineError> {
        let c = self.commit("first version");
        self.tick_until("the bootstrap release to succeed", |f| {
            f.execution_of(&c).ok().flatten().is_some_and(|e| e.status == status::SUCCEEDED)
        })?;
        Ok(c)
    }
}
