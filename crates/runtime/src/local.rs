//! The local runtime: tasks are processes on this machine.
//!
//! One supervisor thread runs a single-threaded tokio runtime. It owns every task process,
//! wakes only on a message (apply, scale, shutdown), a child's exit, a health-check result or
//! the next timer (a task becoming healthy, a back-off ending, a stop timeout), reconciles
//! every service toward its desired state, and publishes a status snapshot that
//! [`Runtime::service`] reads without waiting. All processes are started from that thread,
//! so `PR_SET_PDEATHSIG` ties them to it: when coalmine exits or is killed, they die.
//!
//! Files under the state folder: `logs/tasks/<service>/<task>.log` (see [`logs`]) and
//! `runtime/` (lock, task pids, task counter; see [`state`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{
    rolling,
    DeploymentState, DeploymentStatus, RevisionSpec, Runtime, RuntimeError, ServiceSpec, ServiceStatus, TaskIdentity,
    TaskKeys, TaskState, TaskStatus,
};

pub mod logs;
pub mod process;
pub mod state;

pub use logs::{LogFollower, LogLine};

/// Tuning of the local runtime. The defaults suit production use; tests shorten them.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Back-off before the second consecutive restart of a failing task; it doubles for each
    /// further failure. The first restart is immediate.
    pub restart_backoff_base: Duration,
    /// Longest back-off between restarts.
    pub restart_backoff_max: Duration,
    /// A task's log file is rotated when it reaches this size.
    pub log_max_bytes: u64,
    /// Rotated log files kept per task (`.log.1` ... `.log.<n>`).
    pub log_keep: usize,
    /// Time between health-command runs while a task is not yet healthy.
    pub health_check_interval: Duration,
    /// A health command that runs longer fails.
    pub health_check_timeout: Duration,
    /// Consecutive failed health checks after which a task is stopped and replaced
    /// (and counted as a failed launch by the circuit breaker).
    pub health_check_retries: u32,
    /// Where each task's access key and random secret (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`) are registered while the task exists, from just before its
    /// first start to its final exit. `None`: the secrets are made but registered nowhere.
    pub task_keys: Option<Arc<dyn TaskKeys>>,
    /// A command each task runs behind, as ECS runs a sidecar beside the app: the task's
    /// command is appended as `bash -c "exec <command>"` (e.g. `coalmine proxy ... --`). With
    /// it the task keeps coalmine's AWS credentials and gets no AWS endpoint variables (the
    /// sidecar sets the app's).
    pub sidecar: Option<Vec<String>>,
}

/// With a sidecar, SIGKILL comes this much after the stop timeout: the app gets its whole stop
/// timeout and the sidecar (the queue proxy) still has time to wait for a long poll the app
/// left in flight (up to 21 s), hand back what the app held and send its final report — as on
/// ECS, where the sidecar container has its own, longer one. A proxy with nothing in flight
/// exits at once.
pub const SIDECAR_STOP_MARGIN: Duration = Duration::from_secs(25);

impl LocalOptions {
    /// How long a task of a service with `stop_timeout` may take to stop before SIGKILL.
    pub fn kill_after(&self, stop_timeout: Duration) -> Duration {
        if self.sidecar.is_some() {
            stop_timeout + SIDECAR_STOP_MARGIN
        } else {
            stop_timeout
        }
    }
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            restart_backoff_base: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(30),
            log_max_bytes: 10 << 20,
            log_keep: 2,
            health_check_interval: Duration::from_secs(1),
            health_check_timeout: Duration::from_secs(10),
            health_check_retries: 3,
            task_keys: None,
            sidecar: None,
        }
    }
}

/// Runs services as supervised processes on this machine.
pub struct LocalRuntime {
    state_dir: PathBuf,
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Mutex<Published>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Published {
    services: BTreeMap<String, (ServiceStatus, ServiceSpec)>,
    shut_down: bool,
}

type Reply = std_mpsc::Sender<Result<(), RuntimeError>>;

enum Msg {
    Apply(Box<ServiceSpec>, Reply),
    Scale(String, u32, Reply),
    Shutdown(Reply),
    Exited { service: String, task: String, serial: u64, exit: String, output: Vec<String> },
    Health { service: String, task: String, serial: u64, ok: bool },
}

impl LocalRuntime {
    /// Start a local runtime keeping its files under `state_dir` (`.coalmine/`). Kills task
    /// processes a previous run left behind. Fails if another runtime uses the same folder.
    /// Usable from sync code and from inside a tokio runtime (it runs its own thread).
    pub fn new(state_dir: &Path) -> Result<LocalRuntime, RuntimeError> {
        LocalRuntime::with_options(state_dir, LocalOptions::default())
    }

    pub fn with_options(state_dir: &Path, options: LocalOptions) -> Result<LocalRuntime, RuntimeError> {
        std::fs::create_dir_all(state_dir).map_err(|e| RuntimeError::Io { path: state_dir.to_path_buf(), source: e })?;
        let state_dir = state_dir.canonicalize().map_err(|e| RuntimeError::Io { path: state_dir.to_path_buf(), source: e })?;
        let (files, next_task) = state::StateFiles::open(&state_dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Published::default()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RuntimeError::Start)?;
        let mut sup = Supervisor {
            state_dir: state_dir.clone(),
            options,
            files,
            next_task,
            next_serial: 1,
            services: BTreeMap::new(),
            tx: tx.clone(),
            shared: shared.clone(),
            shutdown_replies: Vec::new(),
            shutting_down: false,
            pids_dirty: true,
            registered: std::collections::HashSet::new(),
        };
        let thread = std::thread::Builder::new()
            .name("coalmine-runtime".into())
            .spawn(move || rt.block_on(sup.run(rx)))
            .map_err(RuntimeError::Start)?;
        Ok(LocalRuntime { state_dir, tx, shared, thread: Mutex::new(Some(thread)) })
    }

    /// The state folder this runtime uses (absolute).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The last `lines` lines of a task's log, or of every log of a service's tasks.
    pub fn tail_log(&self, task_or_service: &str, lines: usize) -> Result<Vec<LogLine>, RuntimeError> {
        logs::tail(&self.state_dir, task_or_service, lines)
    }

    /// Follow a task's or service's logs from now on; call [`LogFollower::poll`] on a timer.
    pub fn follow_log(&self, task_or_service: &str) -> Result<LogFollower, RuntimeError> {
        LogFollower::new(&self.state_dir, task_or_service)
    }

    fn call(&self, make: impl FnOnce(Reply) -> Msg) -> Result<(), RuntimeError> {
        let (rtx, rrx) = std_mpsc::channel();
        self.tx.send(make(rtx)).map_err(|_| RuntimeError::ShuttingDown)?;
        rrx.recv().unwrap_or(Err(RuntimeError::ShuttingDown))
    }
}

impl Runtime for LocalRuntime {
    fn apply(&self, spec: ServiceSpec) -> Result<(), RuntimeError> {
        validate(&spec)?;
        self.call(|r| Msg::Apply(Box::new(spec), r))
    }

    fn scale(&self, service: &str, desired: u32) -> Result<(), RuntimeError> {
        self.call(|r| Msg::Scale(service.to_string(), desired, r))
    }

    fn service(&self, service: &str) -> Option<ServiceStatus> {
        self.shared.lock().unwrap().services.get(service).map(|(s, _)| s.clone())
    }

    fn services(&self) -> Vec<ServiceStatus> {
        self.shared.lock().unwrap().services.values().map(|(s, _)| s.clone()).collect()
    }

    fn spec(&self, service: &str) -> Option<ServiceSpec> {
        self.shared.lock().unwrap().services.get(service).map(|(_, s)| s.clone())
    }

    fn task_log(&self, task: &str) -> Option<PathBuf> {
        let known = self.shared.lock().unwrap().services.values().any(|(s, _)| s.tasks.iter().any(|t| t.id == task));
        let path = logs::task_log_path(&self.state_dir, task)?;
        (known || path.exists()).then_some(path)
    }

    /// The tasks' log files: of the tasks the service runs now, or of its previous revision's.
    fn service_logs(&self, service: &str, previous: bool, lines: usize) -> Option<Result<Vec<(String, String)>, RuntimeError>> {
        let Some(st) = self.service(service) else { return Some(Err(RuntimeError::UnknownService(service.to_string()))) };
        let files = if previous {
            logs::previous_files(&self.state_dir, service, &st.revision)
        } else {
            Ok(st.tasks.iter().filter_map(|t| self.task_log(&t.id).map(|p| (t.id.clone(), p))).collect())
        };
        Some(files.map(|f| logs::tail_files(f, lines).into_iter().map(|l| (l.task, l.line)).collect()))
    }

    fn shutdown(&self) {
        if self.shared.lock().unwrap().shut_down {
            return;
        }
        let _ = self.call(Msg::Shutdown);
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Check a spec before it reaches the supervisor; errors name the field and the fix.
pub fn validate(spec: &ServiceSpec) -> Result<(), RuntimeError> {
    let invalid = |reason: String| Err(RuntimeError::Invalid { service: spec.name.clone(), reason });
    if spec.name.is_empty() || !spec.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return invalid("the name must be non-empty and made of a-z, 0-9 and `-`".into());
    }
    let rev = &spec.revision;
    if rev.name.is_empty() || rev.name.contains(['.', ' ', '/']) {
        return invalid(format!("revision name `{}` must be non-empty, without `.`, `/` or spaces", rev.name));
    }
    if rev.command.trim().is_empty() {
        return invalid("revision.command is empty; set the command that starts the worker".into());
    }
    if !rev.artifact.dir.is_dir() {
        return invalid(format!("revision directory {} does not exist; build the revision first", rev.artifact.dir.display()));
    }
    if spec.maximum_percent < 100 {
        return invalid(format!("maximum_percent is {}; it must be at least 100", spec.maximum_percent));
    }
    if spec.minimum_healthy_percent > 100 {
        return invalid(format!("minimum_healthy_percent is {}; it must be at most 100", spec.minimum_healthy_percent));
    }
    let (min, max) = bounds(spec);
    if spec.desired > 0 && max <= min {
        return invalid(format!(
            "with desired {} a rolling deployment could never start: minimum_healthy_percent {} keeps {min} tasks and maximum_percent {} allows {max}; lower the first or raise the second",
            spec.desired, spec.minimum_healthy_percent, spec.maximum_percent
        ));
    }
    Ok(())
}

/// ECS rounding: the healthy minimum rounds up, the maximum rounds down.
fn bounds(spec: &ServiceSpec) -> (usize, usize) {
    rolling::bounds(spec.desired, spec.minimum_healthy_percent, spec.maximum_percent)
}

fn breaker_threshold(spec: &ServiceSpec) -> u32 {
    spec.circuit_breaker_threshold.unwrap_or_else(|| spec.desired.div_ceil(2).clamp(3, 200)).max(1)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Pending,
    Running,
    Stopping,
    BackingOff,
}

struct Task {
    id: String,
    revision: Arc<RevisionSpec>,
    access_key_id: String,
    /// The task's `AWS_SECRET_ACCESS_KEY`: random, kept for its restarts, never logged.
    secret: String,
    state: St,
    serial: u64,
    pid: Option<u32>,
    start_ticks: u64,
    started_at: Instant,
    started_at_ms: u64,
    restarts: u32,
    consecutive_failures: u32,
    last_exit: Option<String>,
    last_output: Vec<String>,
    restart_at: Option<Instant>,
    stop_deadline: Option<Instant>,
    killed: bool,
    restart_after_stop: bool,
    health_in_flight: bool,
    next_health_at: Option<Instant>,
    health_failures: u32,
}

struct Service {
    spec: ServiceSpec,
    rev: Arc<RevisionSpec>,
    /// The revision of the last COMPLETED deployment: where the circuit breaker goes back to.
    stable: Option<Arc<RevisionSpec>>,
    deployments: Vec<DeploymentStatus>,
    /// Failed launches of the newest deployment's tasks.
    failures: u32,
    is_rollback: bool,
    tasks: Vec<Task>,
    exits_by_revision: BTreeMap<String, u64>,
}

struct Supervisor {
    state_dir: PathBuf,
    options: LocalOptions,
    files: state::StateFiles,
    next_task: u64,
    next_serial: u64,
    services: BTreeMap<String, Service>,
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Mutex<Published>>,
    shutdown_replies: Vec<Reply>,
    shutting_down: bool,
    pids_dirty: bool,
    /// Access key ids registered with `options.task_keys`.
    registered: std::collections::HashSet<String>,
}

const MAX_DEPLOYMENTS_KEPT: usize = 20;

impl Supervisor {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut replies: Vec<(Reply, Result<(), RuntimeError>)> = Vec::new();
        loop {
            let deadline = self.next_deadline();
            let first = match deadline {
                Some(d) => tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(d) => None,
                },
                None => rx.recv().await,
            };
            if let Some(m) = first {
                self.handle(m, &mut replies);
            }
            while let Ok(m) = rx.try_recv() {
                self.handle(m, &mut replies);
            }
            self.reconcile(Instant::now());
            self.forget_keys();
            self.publish();
            for (r, res) in replies.drain(..) {
                let _ = r.send(res);
            }
            if self.shutting_down && self.services.values().all(|s| s.tasks.is_empty()) {
                break;
            }
        }
        self.forget_keys();
        self.shared.lock().unwrap().shut_down = true;
        // Drain the health checks and log pumps still queued, then answer.
        for r in self.shutdown_replies.drain(..) {
            let _ = r.send(Ok(()));
        }
        rx.close();
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Apply(_, r) | Msg::Scale(_, _, r) => {
                    let _ = r.send(Err(RuntimeError::ShuttingDown));
                }
                Msg::Shutdown(r) => {
                    let _ = r.send(Ok(()));
                }
                _ => {}
            }
        }
    }

    fn handle(&mut self, m: Msg, replies: &mut Vec<(Reply, Result<(), RuntimeError>)>) {
        match m {
            Msg::Apply(spec, r) => {
                let res = if self.shutting_down { Err(RuntimeError::ShuttingDown) } else { self.apply(*spec) };
                replies.push((r, res));
            }
            Msg::Scale(name, desired, r) => {
                let res = if self.shutting_down {
                    Err(RuntimeError::ShuttingDown)
                } else {
                    match self.services.get_mut(&name) {
                        Some(svc) => {
                            let mut spec = svc.spec.clone();
                            spec.desired = desired;
                            validate(&spec).map(|_| svc.spec = spec)
                        }
                        None => Err(RuntimeError::UnknownService(name)),
                    }
                };
                replies.push((r, res));
            }
            Msg::Shutdown(r) => {
                self.shutting_down = true;
                self.shutdown_replies.push(r);
            }
            Msg::Exited { service, task, serial, exit, output } => self.on_exit(&service, &task, serial, exit, output),
            Msg::Health { service, task, serial, ok } => self.on_health(&service, &task, serial, ok),
        }
    }

    fn apply(&mut self, spec: ServiceSpec) -> Result<(), RuntimeError> {
        let now = now_ms();
        match self.services.get_mut(&spec.name) {
            None => {
                let rev = Arc::new(spec.revision.clone());
                let dep = DeploymentStatus {
                    id: 1,
                    revision: rev.name.clone(),
                    state: DeploymentState::InProgress,
                    reason: format!("creating service with {} tasks of revision {}", spec.desired, rev.name),
                    rolled_back_to: None,
                    started_at_ms: now,
                    finished_at_ms: None,
                };
                tracing::info!(service = %spec.name, revision = %rev.name, desired = spec.desired, "service created");
                self.services.insert(
                    spec.name.clone(),
                    Service {
                        spec,
                        rev,
                        stable: None,
                        deployments: vec![dep],
                        failures: 0,
                        is_rollback: false,
                        tasks: Vec::new(),
                        exits_by_revision: BTreeMap::new(),
                    },
                );
            }
            Some(svc) => {
                if spec.revision != *svc.rev {
                    let id = svc.deployments.last().map(|d| d.id + 1).unwrap_or(1);
                    if let Some(last) = svc.deployments.last_mut() {
                        if last.state == DeploymentState::InProgress {
                            last.state = DeploymentState::Failed;
                            last.reason = format!("superseded by deployment {id} (revision {})", spec.revision.name);
                            last.finished_at_ms = Some(now);
                        }
                    }
                    tracing::info!(service = %spec.name, from = %svc.rev.name, to = %spec.revision.name, "rolling deployment started");
                    // Reuse the Arc of a revision some tasks still run, so they count as new.
                    svc.rev = svc
                        .tasks
                        .iter()
                        .find(|t| *t.revision == spec.revision)
                        .map(|t| t.revision.clone())
                        .unwrap_or_else(|| Arc::new(spec.revision.clone()));
                    svc.deployments.push(DeploymentStatus {
                        id,
                        revision: spec.revision.name.clone(),
                        state: DeploymentState::InProgress,
                        reason: format!("rolling {} tasks to revision {}", spec.desired, spec.revision.name),
                        rolled_back_to: None,
                        started_at_ms: now,
                        finished_at_ms: None,
                    });
                    if svc.deployments.len() > MAX_DEPLOYMENTS_KEPT {
                        svc.deployments.remove(0);
                    }
                    svc.failures = 0;
                    svc.is_rollback = false;
                }
                svc.spec = spec;
            }
        }
        Ok(())
    }

    /// Remove the keys of tasks that are gone (exited for good, or stopped), so that they stop
    /// working at once.
    fn forget_keys(&mut self) {
        let Some(keys) = self.options.task_keys.clone() else { return };
        if self.registered.is_empty() {
            return;
        }
        let live: std::collections::HashSet<&str> =
            self.services.values().flat_map(|s| s.tasks.iter()).map(|t| t.access_key_id.as_str()).collect();
        let gone: Vec<String> = self.registered.iter().filter(|k| !live.contains(k.as_str())).cloned().collect();
        for k in gone {
            keys.remove(&k);
            self.registered.remove(&k);
            tracing::debug!(access_key_id = %k, "task key removed");
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for svc in self.services.values() {
            for t in &svc.tasks {
                match t.state {
                    St::BackingOff => consider(t.restart_at),
                    St::Stopping if !t.killed => consider(t.stop_deadline),
                    St::Pending if !t.health_in_flight => {
                        let ready = t.started_at + svc.spec.healthy_after;
                        consider(Some(t.next_health_at.map_or(ready, |h| h.max(ready))));
                    }
                    _ => {}
                }
            }
        }
        next
    }

    fn on_exit(&mut self, service: &str, task: &str, serial: u64, exit: String, output: Vec<String>) {
        let now = Instant::now();
        let opts = self.options.clone();
        let Some(svc) = self.services.get_mut(service) else { return };
        let Some(i) = svc.tasks.iter().position(|t| t.id == task && t.serial == serial) else { return };
        self.pids_dirty = true;
        let t = &mut svc.tasks[i];
        if let Some(pid) = t.pid.take() {
            // Whatever the task started in its group goes with it.
            process::signal_group(pid, Signal::SIGKILL);
        }
        t.last_exit = Some(exit.clone());
        t.last_output = output;
        t.health_in_flight = false;
        if t.state == St::Stopping {
            tracing::debug!(service, task, %exit, "task stopped");
            if t.restart_after_stop && !self.shutting_down && t.revision == svc.rev {
                t.state = St::BackingOff;
                t.restart_at = Some(now + backoff(&opts, t.consecutive_failures));
            } else {
                svc.tasks.remove(i);
            }
            return;
        }
        let was_healthy = t.state == St::Running;
        *svc.exits_by_revision.entry(t.revision.name.clone()).or_default() += 1;
        tracing::warn!(service, task, revision = %t.revision.name, %exit, "task exited");
        if self.shutting_down || !Arc::ptr_eq(&t.revision, &svc.rev) {
            svc.tasks.remove(i);
            return;
        }
        t.consecutive_failures = if was_healthy { 1 } else { t.consecutive_failures + 1 };
        t.state = St::BackingOff;
        t.restart_at = Some(now + backoff(&opts, t.consecutive_failures));
        if !was_healthy {
            let what = if t.last_output.is_empty() {
                format!("{exit} (no output)")
            } else {
                format!("{exit}; last output: {}", t.last_output.join(" ⏎ "))
            };
            count_failure(svc, &what);
        }
    }

    fn on_health(&mut self, service: &str, task: &str, serial: u64, ok: bool) {
        let retries = self.options.health_check_retries;
        let interval = self.options.health_check_interval;
        let Some(svc) = self.services.get_mut(service) else { return };
        let Some(i) = svc.tasks.iter().position(|t| t.id == task && t.serial == serial) else { return };
        let t = &mut svc.tasks[i];
        t.health_in_flight = false;
        if t.state != St::Pending {
            return;
        }
        if ok {
            t.state = St::Running;
            t.consecutive_failures = 0;
            t.health_failures = 0;
            return;
        }
        t.health_failures += 1;
        t.next_health_at = Some(Instant::now() + interval);
        if t.health_failures >= retries {
            tracing::warn!(service, task, "health check failed {retries} times; replacing the task");
            let reason = format!("health check failed {retries} times");
            t.last_exit = Some(reason.clone());
            t.consecutive_failures += 1;
            t.restart_after_stop = true;
            let timeout = self.options.kill_after(svc.spec.stop_timeout);
            stop_task(t, timeout);
            if Arc::ptr_eq(&svc.tasks[i].revision, &svc.rev) {
                count_failure(svc, &reason);
            }
        }
    }

    fn reconcile(&mut self, now: Instant) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            self.reconcile_service(&name, now);
        }
    }

    fn reconcile_service(&mut self, name: &str, now: Instant) {
        let mut svc = self.services.remove(name).expect("service exists");
        let timeout = self.options.kill_after(svc.spec.stop_timeout);
        if needs_rollback(&svc) {
            roll_back(name, &mut svc);
        }

        // Stop timeouts.
        for t in svc.tasks.iter_mut() {
            if t.state == St::Stopping && !t.killed && t.stop_deadline.is_some_and(|d| d <= now) {
                if let Some(pid) = t.pid {
                    tracing::warn!(service = name, task = %t.id, pid, "task ignored SIGTERM for the stop timeout; sending SIGKILL");
                    process::signal_group(pid, Signal::SIGKILL);
                }
                t.killed = true;
            }
        }

        if self.shutting_down {
            svc.tasks.retain(|t| t.state != St::BackingOff);
            for t in svc.tasks.iter_mut() {
                if t.state != St::Stopping {
                    t.restart_after_stop = false;
                    stop_task(t, timeout);
                }
            }
            self.pids_dirty = true;
            self.services.insert(name.to_string(), svc);
            return;
        }

        // Back-offs that ended: restart tasks of the current revision, drop the others.
        let before = svc.tasks.len();
        svc.tasks.retain(|t| t.state != St::BackingOff || Arc::ptr_eq(&t.revision, &svc.rev));
        if svc.tasks.len() != before {
            self.pids_dirty = true;
        }
        let mut restart = Vec::new();
        for (i, t) in svc.tasks.iter().enumerate() {
            if t.state == St::BackingOff && t.restart_at.is_some_and(|d| d <= now) {
                restart.push(i);
            }
        }

        for i in restart {
            svc.tasks[i].restarts += 1;
            self.launch(name, &mut svc, i, now);
        }

        // Health: promote tasks that stayed up long enough (and pass the health command).
        for i in 0..svc.tasks.len() {
            let t = &mut svc.tasks[i];
            if t.state != St::Pending || t.health_in_flight || now < t.started_at + svc.spec.healthy_after {
                continue;
            }
            match svc.spec.health_command.clone() {
                None => {
                    t.state = St::Running;
                    t.consecutive_failures = 0;
                }
                Some(cmd) => {
                    if t.next_health_at.is_some_and(|h| h > now) {
                        continue;
                    }
                    t.health_in_flight = true;
                    self.run_health_check(name, &svc, i, cmd);
                }
            }
        }

        // Rolling: the plan (crate::rolling), applied.
        let (min, max) = bounds(&svc.spec);
        let desired = svc.spec.desired as usize;
        let views: Vec<rolling::TaskView> = svc
            .tasks
            .iter()
            .map(|t| rolling::TaskView {
                current: Arc::ptr_eq(&t.revision, &svc.rev),
                phase: match t.state {
                    St::Pending => rolling::Phase::Pending,
                    St::Running => rolling::Phase::Running,
                    St::BackingOff => rolling::Phase::BackingOff,
                    St::Stopping => rolling::Phase::Stopping,
                },
                n: task_n(&t.id),
            })
            .collect();
        let plan = rolling::plan(&views, desired, min, max);
        for &i in &plan.stop {
            stop_task(&mut svc.tasks[i], timeout);
        }
        for &i in &plan.drop {
            svc.tasks[i].state = St::Stopping; // removed below
            svc.tasks[i].pid = None;
        }
        if !plan.drop.is_empty() || !plan.stop.is_empty() {
            svc.tasks.retain(|t| !(t.state == St::Stopping && t.pid.is_none()));
            self.pids_dirty = true;
        }
        for _ in 0..plan.start {
            let n = self.next_task;
            self.next_task += 1;
            let id = format!("{name}-{n}");
            let access_key_id =
                TaskIdentity { service: name.to_string(), revision: svc.rev.name.clone(), task: id.clone() }.access_key_id();
            svc.tasks.push(Task {
                id,
                revision: svc.rev.clone(),
                access_key_id,
                secret: crate::random_secret(),
                state: St::Pending,
                serial: 0,
                pid: None,
                start_ticks: 0,
                started_at: now,
                started_at_ms: now_ms(),
                restarts: 0,
                consecutive_failures: 0,
                last_exit: None,
                last_output: Vec::new(),
                restart_at: None,
                stop_deadline: None,
                killed: false,
                restart_after_stop: false,
                health_in_flight: false,
                next_health_at: None,
                health_failures: 0,
            });
            let i = svc.tasks.len() - 1;
            self.launch(name, &mut svc, i, now);
        }

        // Deployment state.
        let all_current = svc.tasks.iter().all(|t| Arc::ptr_eq(&t.revision, &svc.rev));
        let running = svc.tasks.iter().filter(|t| t.state == St::Running).count();
        if let Some(dep) = svc.deployments.last_mut() {
            if dep.state == DeploymentState::InProgress && all_current && running == desired && svc.tasks.len() == desired {
                dep.state = DeploymentState::Completed;
                dep.reason = if svc.is_rollback {
                    format!("rolled back: {desired} tasks of revision {} healthy", svc.rev.name)
                } else {
                    format!("{desired} tasks of revision {} healthy", svc.rev.name)
                };
                dep.finished_at_ms = Some(now_ms());
                svc.stable = Some(svc.rev.clone());
                tracing::info!(service = name, revision = %svc.rev.name, "deployment completed");
            }
        }

        svc.tasks.retain(|t| !(t.state == St::Stopping && t.pid.is_none()));
        if needs_rollback(&svc) {
            self.services.insert(name.to_string(), svc);
            // Reconcile again at once toward the old revision.
            return self.reconcile_service(name, now);
        }
        self.services.insert(name.to_string(), svc);
    }

    fn task_env(&self, name: &str, svc: &Service, t: &Task) -> BTreeMap<String, String> {
        let spec = &svc.spec;
        let mut env = t.revision.env.clone();
        let q = &spec.queue;
        let own = [
            ("AWS_ACCESS_KEY_ID", t.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", t.secret.as_str()),
            ("AWS_ENDPOINT_URL", q.endpoint_url.as_str()),
            ("AWS_ENDPOINT_URL_SQS", q.endpoint_url.as_str()),
        ];
        if self.options.sidecar.is_none() {
            env.extend(own.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        for (k, v) in [
            ("COALMINE_SERVICE", name),
            ("COALMINE_REVISION", t.revision.name.as_str()),
            ("COALMINE_TASK", t.id.as_str()),
            ("AWS_REGION", q.region.as_str()),
            ("AWS_DEFAULT_REGION", q.region.as_str()),
            ("QUEUE", q.queue.as_str()),
            ("QUEUE_URL", q.queue_url.as_str()),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    /// Start (or restart) the process of `svc.tasks[i]`.
    fn launch(&mut self, name: &str, svc: &mut Service, i: usize, now: Instant) {
        let env = self.task_env(name, svc, &svc.tasks[i]);
        let serial = self.next_serial;
        self.next_serial += 1;
        self.pids_dirty = true;
        let log_path = logs::task_log_path(&self.state_dir, &svc.tasks[i].id).expect("task ids are <service>-<n>");
        let t = &mut svc.tasks[i];
        if let Some(keys) = &self.options.task_keys {
            if self.registered.insert(t.access_key_id.clone()) {
                keys.register(&t.access_key_id, &t.secret);
                tracing::debug!(service = name, task = %t.id, access_key_id = %t.access_key_id, "task key registered");
            }
        }
        t.serial = serial;
        t.started_at = now;
        t.started_at_ms = now_ms();
        t.state = St::Pending;
        t.restart_at = None;
        t.stop_deadline = None;
        t.killed = false;
        t.restart_after_stop = false;
        t.health_in_flight = false;
        t.next_health_at = None;
        t.health_failures = 0;
        match process::spawn_task(&t.revision.artifact.dir, &t.revision.command, &env, self.options.sidecar.as_deref()) {
            Ok(started) => {
                t.pid = Some(started.pid);
                t.start_ticks = process::proc_stat(started.pid).map(|s| s.start_ticks).unwrap_or(0);
                tracing::debug!(service = name, task = %t.id, pid = started.pid, revision = %t.revision.name, "task started");
                let header = format!(
                    "--- coalmine: task {} (revision {}) started, pid {}, at {} ms since epoch ---\n",
                    t.id, t.revision.name, started.pid, t.started_at_ms
                );
                let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
                let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
                let tail = Arc::new(Mutex::new(logs::OutputTail::default()));
                tokio::spawn(logs::pump(
                    started.output,
                    log_path,
                    header,
                    tail.clone(),
                    eof_tx,
                    exit_rx,
                    self.options.log_max_bytes,
                    self.options.log_keep,
                ));
                let tx = self.tx.clone();
                let (service, task) = (name.to_string(), t.id.clone());
                let mut child = started.child;
                let pid = started.pid;
                tokio::spawn(async move {
                    let exit = match child.wait().await {
                        Ok(st) => process::describe_exit(&st),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    // Whatever the task started in its group goes with it; then its output
                    // ends and the last lines are complete.
                    process::signal_group(pid, Signal::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(2), eof_rx).await;
                    let output = tail.lock().unwrap().take();
                    let _ = exit_tx.send(exit.clone());
                    let _ = tx.send(Msg::Exited { service, task, serial, exit, output });
                });
            }
            Err(e) => {
                let exit = format!("failed to start `bash -c \"exec {}\"` in {}: {e}", t.revision.command, t.revision.artifact.dir.display());
                tracing::warn!(service = name, task = %t.id, "{exit}");
                t.pid = None;
                t.last_exit = Some(exit.clone());
                t.consecutive_failures += 1;
                t.state = St::BackingOff;
                t.restart_at = Some(now + backoff(&self.options, t.consecutive_failures));
                *svc.exits_by_revision.entry(t.revision.name.clone()).or_default() += 1;
                if Arc::ptr_eq(&svc.tasks[i].revision, &svc.rev) {
                    count_failure(svc, &exit);
                }
            }
        }
    }

    fn run_health_check(&self, name: &str, svc: &Service, i: usize, cmd: String) {
        let t = &svc.tasks[i];
        let mut env = self.task_env(name, svc, t);
        env.insert("COALMINE_TASK_PID".into(), t.pid.map(|p| p.to_string()).unwrap_or_default());
        let tx = self.tx.clone();
        let (service, task, serial) = (name.to_string(), t.id.clone(), t.serial);
        let timeout = self.options.health_check_timeout;
        let child = process::spawn_check(&t.revision.artifact.dir, &cmd, &env);
        tokio::spawn(async move {
            let ok = match child {
                Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
                    Ok(Ok(st)) => st.success(),
                    Ok(Err(_)) => false,
                    Err(_) => {
                        if let Some(pid) = child.id() {
                            process::signal_group(pid, Signal::SIGKILL);
                        }
                        let _ = child.wait().await;
                        false
                    }
                },
                Err(e) => {
                    tracing::warn!(service = %service, task = %task, error = %e, "cannot run the health command");
                    false
                }
            };
            let _ = tx.send(Msg::Health { service, task, serial, ok });
        });
    }

    fn publish(&mut self) {
        let mut out = BTreeMap::new();
        for (name, svc) in &self.services {
            out.insert(name.clone(), (status(name, svc), svc.spec.clone()));
        }
        self.shared.lock().unwrap().services = out;
        if self.pids_dirty {
            self.pids_dirty = false;
            let tasks = self
                .services
                .values()
                .flat_map(|s| s.tasks.iter())
                .filter_map(|t| t.pid.map(|pid| state::TaskRecord { id: t.id.clone(), pid, start_ticks: t.start_ticks }))
                .collect();
            let file = state::TasksFile { supervisor_pid: std::process::id(), next_task: self.next_task, tasks };
            if let Err(e) = self.files.write(&file) {
                tracing::warn!(error = %e, "cannot record task pids");
            }
        }
    }
}

fn task_n(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn backoff(opts: &LocalOptions, consecutive_failures: u32) -> Duration {
    if consecutive_failures <= 1 {
        return Duration::ZERO;
    }
    let shift = (consecutive_failures - 2).min(20);
    opts.restart_backoff_base.saturating_mul(1 << shift).min(opts.restart_backoff_max)
}

fn stop_task(t: &mut Task, timeout: Duration) {
    match t.pid {
        Some(pid) => {
            process::signal_group(pid, Signal::SIGTERM);
            t.state = St::Stopping;
            t.stop_deadline = Some(Instant::now() + timeout);
            t.killed = false;
        }
        None => {
            // Nothing running (backing off): mark for removal.
            t.state = St::Stopping;
            t.killed = true;
        }
    }
}

/// A task of the newest deployment failed to start or to become healthy: count it and trip
/// the circuit breaker at the threshold.
fn count_failure(svc: &mut Service, what: &str) {
    let threshold = breaker_threshold(&svc.spec);
    let Some(dep) = svc.deployments.last_mut() else { return };
    if dep.state != DeploymentState::InProgress {
        return;
    }
    svc.failures += 1;
    if svc.failures < threshold {
        return;
    }
    dep.state = DeploymentState::Failed;
    dep.finished_at_ms = Some(now_ms());
    let base = format!(
        "circuit breaker: {} task launches of revision {} failed (threshold {threshold}); last: {what}",
        svc.failures, dep.revision
    );
    match &svc.stable {
        Some(stable) if !svc.is_rollback && **stable != *svc.rev => {
            dep.rolled_back_to = Some(stable.name.clone());
            dep.reason = format!("{base}; rolling back to revision {}", stable.name);
        }
        _ => {
            dep.reason = format!("{base}; no earlier healthy revision to roll back to, still retrying");
        }
    }
}

/// The newest deployment failed with a rollback target that is not yet the service's revision.
fn needs_rollback(svc: &Service) -> bool {
    !svc.is_rollback
        && svc.deployments.last().is_some_and(|d| d.state == DeploymentState::Failed && d.rolled_back_to.is_some())
        && svc.stable.as_ref().is_some_and(|s| **s != *svc.rev)
}

/// Circuit breaker with rollback: put the service back on its last stable revision.
fn roll_back(name: &str, svc: &mut Service) {
    let stable = svc.stable.clone().expect("needs_rollback checked it");
    let id = svc.deployments.last().map(|d| d.id + 1).unwrap_or(1);
    let failed_rev = svc.rev.name.clone();
    tracing::warn!(service = name, from = %failed_rev, to = %stable.name, "circuit breaker tripped: rolling back");
    svc.rev = svc.tasks.iter().find(|t| *t.revision == *stable).map(|t| t.revision.clone()).unwrap_or(stable);
    svc.spec.revision = (*svc.rev).clone();
    svc.deployments.push(DeploymentStatus {
        id,
        revision: svc.rev.name.clone(),
        state: DeploymentState::InProgress,
        reason: format!("circuit breaker rollback from revision {failed_rev}"),
        rolled_back_to: None,
        started_at_ms: now_ms(),
        finished_at_ms: None,
    });
    if svc.deployments.len() > MAX_DEPLOYMENTS_KEPT {
        svc.deployments.remove(0);
    }
    svc.failures = 0;
    svc.is_rollback = true;
}

fn status(name: &str, svc: &Service) -> ServiceStatus {
    let tasks: Vec<TaskStatus> = svc
        .tasks
        .iter()
        .filter(|t| !(t.state == St::Stopping && t.pid.is_none()))
        .map(|t| TaskStatus {
            id: t.id.clone(),
            pid: t.pid,
            revision: t.revision.name.clone(),
            state: match t.state {
                St::Pending => TaskState::Pending,
                St::Running => TaskState::Running,
                St::Stopping => TaskState::Stopping,
                St::BackingOff => TaskState::BackingOff,
            },
            access_key_id: t.access_key_id.clone(),
            started_at_ms: t.started_at_ms,
            restarts: t.restarts,
            last_exit: t.last_exit.clone(),
            last_output: t.last_output.clone(),
        })
        .collect();
    ServiceStatus::from_tasks(name, &svc.rev.name, svc.spec.desired, svc.deployments.clone(), tasks, svc.exits_by_revision.clone())
}
