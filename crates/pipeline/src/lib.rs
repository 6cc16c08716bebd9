//! The release pipeline: executions and their stages, the durable store (`state.db`), the
//! source watcher, the build runner, approvals, alarms and the message-aware rollback.
//!
//! The [`Engine`] is level-triggered: the desired state and every transition live in SQLite,
//! and one loop reconciles the world (the runtime's services, the queue) toward it. A restart
//! at any point resumes where it was.

pub mod build;
pub mod clock;
mod engine;
pub mod queue_admin;
pub mod source;
pub mod store;
pub mod testing;
mod view;

use std::path::{Path, PathBuf};

pub use clock::{system_clock, Clock, ManualClock, SystemClock};
pub use engine::{Engine, EngineParts, Paths};
pub use queue_admin::{QueueControl, TelemetrySource};
pub use view::{ExecutionView, ServiceView, StatusView};

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("state database {path}: {source}")]
    StoreOpen {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("source: {0}")]
    Source(String),
    #[error("build failed: {0}")]
    Build(String),
    #[error("runtime: {0}")]
    Runtime(#[from] coalmine_runtime::RuntimeError),
    #[error(transparent)]
    Queue(#[from] queue_admin::QueueAdminError),
    /// A request that cannot be carried out as asked (stale approval, nothing to roll back...).
    #[error("{0}")]
    Refused(String),
    #[error("no execution #{0}")]
    NoSuchExecution(i64),
}

impl PipelineError {
    pub(crate) fn store(path: &Path, source: rusqlite::Error) -> Self {
        PipelineError::StoreOpen { path: path.to_path_buf(), source }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        PipelineError::Io { path: path.to_path_buf(), source }
    }
}

/// Unix time in milliseconds, from the machine's clock (what [`SystemClock`] reads; the engine
/// reads its [`Clock`] instead).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
