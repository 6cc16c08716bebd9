//! The runtime: where a service's tasks run.
//!
//! [`Runtime`] is the small interface the pipeline drives, in ECS's words: a **service** keeps
//! `desired` **tasks** of one **revision** running; changing the revision starts a rolling
//! **deployment** bounded by `minimum_healthy_percent` / `maximum_percent`; a deployment whose
//! new tasks keep failing trips the **circuit breaker** and the service rolls back by itself.
//!
//! Backends, one file each: [`local`] (processes on this machine) and [`ecs`] (two ECS services).
//!
//! Every call is cheap and non-blocking: the backend reconciles in the background and the
//! caller polls [`Runtime::service`] for progress (level-triggered, like the pipeline).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod artifact;
pub mod ecs;
pub mod local;
pub mod rolling;

pub use artifact::{Artifact, ArtifactError};

/// Errors a runtime returns.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unknown service `{0}`")]
    UnknownService(String),
    #[error("invalid service definition for `{service}`: {reason}")]
    Invalid { service: String, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime is shutting down")]
    ShuttingDown,
    #[error("the state folder {path} is used by another coalmine runtime (pid {}); stop that one first or use another state folder", pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()))]
    StateInUse { path: PathBuf, pid: Option<u32> },
    #[error("no logs for `{target}` under {dir}: name a service (`primary`) or a task (`primary-3`) that has run")]
    NoLogs { target: String, dir: PathBuf },
    /// Nothing to show for a logs request (no previous revision, say); the text says why.
    #[error("{0}")]
    NothingToShow(String),
    #[error("{0}")]
    Backend(String),
    #[error("cannot start the runtime's supervisor thread: {0}")]
    Start(std::io::Error),
}

/// One built version of the app as a runtime sees it: what the build made and how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSpec {
    /// Revision name (a short commit id), e.g. `3f2a9c1d04be`.
    pub name: String,
    /// The build's output: local tasks start in its folder, ECS runs its image.
    #[serde(flatten)]
    pub artifact: Artifact,
    /// Command run through `bash -c` in the artifact's folder (the shell `exec`s it, so the
    /// task's pid is the app's); on ECS the container's command (empty: the image's).
    pub command: String,
    /// Extra environment for every task of this revision.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// What a service should be: the desired state the runtime reconciles toward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// `primary` or `canary` (any name made of `[a-z0-9-]`).
    pub name: String,
    pub revision: RevisionSpec,
    pub desired: u32,
    /// ECS `minimumHealthyPercent` (default 100).
    #[serde(default = "default_min_healthy")]
    pub minimum_healthy_percent: u32,
    /// ECS `maximumPercent` (default 200).
    #[serde(default = "default_max_percent")]
    pub maximum_percent: u32,
    /// A task is healthy once it has stayed up this long (and `health_command` passed).
    #[serde(default = "default_health_grace", with = "duration_ms")]
    pub healthy_after: Duration,
    /// Optional health check, run through `bash -c` in the revision's directory with the
    /// task's environment plus `COALMINE_TASK_PID`; exit 0 means healthy.
    #[serde(default)]
    pub health_command: Option<String>,
    /// SIGTERM, then SIGKILL after this long (ECS default 30 s).
    #[serde(default = "default_stop_timeout", with = "duration_ms")]
    pub stop_timeout: Duration,
    /// Failed task launches of a deployment before the circuit breaker trips.
    /// `None`: ECS's rule, half the desired count, at least 3 (ECS caps it at 200).
    #[serde(default)]
    pub circuit_breaker_threshold: Option<u32>,
    /// Queue wiring handed to every task: `AWS_ENDPOINT_URL_SQS`, `AWS_REGION`, `QUEUE`.
    pub queue: QueueEnv,
}

/// How tasks reach the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEnv {
    pub endpoint_url: String,
    pub region: String,
    /// The queue's name (the `QUEUE` variable).
    pub queue: String,
    /// Also exported as `QUEUE_URL`.
    pub queue_url: String,
}

/// ECS deployment rollout states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentState {
    InProgress,
    Completed,
    Failed,
}

/// One deployment of a service (the newest is last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub id: u64,
    pub revision: String,
    pub state: DeploymentState,
    /// Why it is in that state, e.g. "3 tasks failed to start (circuit breaker)".
    pub reason: String,
    /// Set when the circuit breaker rolled the service back to this revision.
    pub rolled_back_to: Option<String>,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Started, not yet healthy.
    Pending,
    /// Healthy.
    Running,
    /// SIGTERM sent, waiting for it to exit.
    Stopping,
    /// Exited; waiting for its back-off before a replacement starts.
    BackingOff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// `<service>-<n>`, unique for the life of the state folder.
    pub id: String,
    pub pid: Option<u32>,
    pub revision: String,
    pub state: TaskState,
    /// The task's own `AWS_ACCESS_KEY_ID`; see [`TaskIdentity`].
    pub access_key_id: String,
    pub started_at_ms: u64,
    pub restarts: u32,
    /// e.g. "exit 1" or "signal 9".
    pub last_exit: Option<String>,
    /// The last lines (at most 5) the task's previous process wrote before it exited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_output: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// The revision the service is (being) deployed to.
    pub revision: String,
    pub desired: u32,
    pub running: u32,
    pub pending: u32,
    /// True when the newest deployment is COMPLETED and `running == desired` on its revision.
    pub steady: bool,
    pub deployments: Vec<DeploymentStatus>,
    pub tasks: Vec<TaskStatus>,
    /// Task exits (crashes or kills not asked for) since the service was created, per revision.
    pub exits_by_revision: BTreeMap<String, u64>,
}

impl ServiceStatus {
    /// A service's status from its tasks: the running and pending counts, and steady when the
    /// newest deployment completed and exactly `desired` tasks run, all on `revision`.
    pub fn from_tasks(
        name: &str,
        revision: &str,
        desired: u32,
        deployments: Vec<DeploymentStatus>,
        tasks: Vec<TaskStatus>,
        exits_by_revision: BTreeMap<String, u64>,
    ) -> ServiceStatus {
        let running = tasks.iter().filter(|t| t.state == TaskState::Running).count() as u32;
        let pending = tasks.iter().filter(|t| matches!(t.state, TaskState::Pending | TaskState::BackingOff)).count() as u32;
        let steady = deployments.last().is_some_and(|d| d.state == DeploymentState::Completed)
            && running == desired
            && tasks.len() as u32 == desired
            && tasks.iter().all(|t| t.revision == revision);
        ServiceStatus {
            name: name.to_string(),
            revision: revision.to_string(),
            desired,
            running,
            pending,
            steady,
            deployments,
            tasks,
            exits_by_revision,
        }
    }
}

/// The identity encoded in a task's access key id: `CM.<service>.<revision>.<task-number>`.
/// The queue sees only the access key id; this recovers who made the call, even for tasks
/// that no longer exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIdentity {
    pub service: String,
    pub revision: String,
    pub task: String,
}

impl TaskIdentity {
    pub fn access_key_id(&self) -> String {
        let n = self.task.rsplit('-').next().unwrap_or(&self.task);
        format!("CM.{}.{}.{}", self.service, self.revision, n)
    }

    pub fn parse(access_key_id: &str) -> Option<TaskIdentity> {
        let mut parts = access_key_id.split('.');
        if parts.next()? != "CM" {
            return None;
        }
        let service = parts.next()?.to_string();
        let revision = parts.next()?.to_string();
        let n = parts.next()?;
        if parts.next().is_some() || service.is_empty() || revision.is_empty() {
            return None;
        }
        Some(TaskIdentity { task: format!("{service}-{n}"), service, revision })
    }
}

/// Where a runtime registers each task's access key and secret while the task runs, and
/// removes them when it stops: under `coalmine up`, the keys the embedded queue accepts.
pub trait TaskKeys: Send + Sync + std::fmt::Debug {
    fn register(&self, access_key_id: &str, secret: &str);
    fn remove(&self, access_key_id: &str);
}

/// A fresh random secret access key: 40 characters of `A-Za-z0-9` (as AWS's are long), from
/// the kernel's random source.
pub fn random_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 40];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most the given length into the buffer.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("the kernel's random source failed: {}", std::io::Error::last_os_error());
        }
    }
    // (62 does not divide 256, so the first 8 characters are a little likelier; the secret
    // still carries over 230 bits.)
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Where services run. One file per backend.
pub trait Runtime: Send + Sync {
    /// Create or update a service. A new revision starts a rolling deployment; a new desired
    /// count alone scales. Returns at once; poll [`Runtime::service`] for progress.
    fn apply(&self, spec: ServiceSpec) -> Result<(), RuntimeError>;
    /// Change the desired count, keeping the revision.
    fn scale(&self, service: &str, desired: u32) -> Result<(), RuntimeError>;
    /// The service's current status, or `None` if it does not exist.
    fn service(&self, service: &str) -> Option<ServiceStatus>;
    /// Every service's status.
    fn services(&self) -> Vec<ServiceStatus>;
    /// The desired spec last applied to a service (after a circuit-breaker rollback, the
    /// revision it went back to).
    fn spec(&self, service: &str) -> Option<ServiceSpec>;
    /// Where a task's log is; `None` for unknown tasks.
    fn task_log(&self, task: &str) -> Option<PathBuf>;
    /// The last `lines` lines of each of a service's tasks as `(task, line)`, in task order;
    /// with `previous`, of the tasks of the revision the service ran before. Each backend reads
    /// its own log source (local: the task log files; ECS: CloudWatch Logs). `None`: this
    /// backend keeps no logs.
    fn service_logs(&self, _service: &str, _previous: bool, _lines: usize) -> Option<Result<Vec<(String, String)>, RuntimeError>> {
        None
    }
    /// Stop every task (SIGTERM, then SIGKILL after each service's stop timeout) and wait.
    fn shutdown(&self);
}

fn default_min_healthy() -> u32 {
    100
}
fn default_max_percent() -> u32 {
    200
}
fn default_health_grace() -> Duration {
    Duration::from_secs(2)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Serde helper: durations as integer milliseconds.
pub mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_key_round_trip() {
        let id = TaskIdentity { service: "canary".into(), revision: "3f2a9c1d04be".into(), task: "canary-7".into() };
        let key = id.access_key_id();
        assert_eq!(key, "CM.canary.3f2a9c1d04be.7");
        assert_eq!(TaskIdentity::parse(&key), Some(id));
        assert_eq!(TaskIdentity::parse("AKIDEXAMPLE"), None);
        assert_eq!(TaskIdentity::parse("CM.a.b.c.d"), None);
    }

    #[test]
    fn secrets_are_random_and_plain() {
        let (a, b) = (random_secret(), random_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }
}
