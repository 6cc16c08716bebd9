//! The validated description of an app: what `coalmine.toml` says, with every default filled in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use coalmine_analysis::duration::serde_str;
use coalmine_analysis::AlarmSpec;
use serde::{Deserialize, Serialize};

/// One app, as described by its `coalmine.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// The app's name: lowercase letters, digits and `-`.
    pub app: String,
    /// The folder holding `coalmine.toml`; relative paths of the file are resolved against it,
    /// and coalmine keeps its state in `<root>/.coalmine/`.
    pub root: PathBuf,
    pub source: SourceSpec,
    pub build: BuildSpec,
    pub run: RunSpec,
    pub queue: QueueSpec,
    pub services: ServicesSpec,
    pub server: ServerSpec,
    /// Where the tasks run; default: local processes.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    pub steps: Vec<Step>,
    pub alarms: Vec<AlarmSpec>,
}

/// Where the app's commits come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub repo: Repo,
    /// `None`: the repository's current branch (its `HEAD`), resolved when coalmine starts.
    pub branch: Option<String>,
    /// How often the branch is polled; default 5 s.
    #[serde(with = "serde_str")]
    pub poll_interval: Duration,
}

/// A git repository: a local folder (resolved against the folder of `coalmine.toml`) or a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Repo {
    Path(PathBuf),
    Url(String),
}

impl Repo {
    /// What to give `git clone` / `git fetch`.
    pub fn location(&self) -> String {
        match self {
            Repo::Path(p) => p.display().to_string(),
            Repo::Url(u) => u.clone(),
        }
    }
}

/// How a commit becomes a revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// The buildspec's path inside the checked-out commit (relative to the checkout's root);
    /// default `buildspec.yml`.
    pub buildspec: PathBuf,
    /// Default 60 min (CodeBuild's default).
    #[serde(with = "serde_str")]
    pub timeout: Duration,
}

/// How a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The command line, run in the revision's artifact folder.
    pub command: String,
    /// Extra environment of every task.
    pub env: BTreeMap<String, String>,
    /// Grace between SIGTERM and SIGKILL; default 30 s (ECS's default).
    #[serde(with = "serde_str")]
    pub stop_timeout: Duration,
    /// Grace between SIGTERM and SIGKILL for the bad canary's tasks when an alarm rolls it
    /// back; default 3 s. What they still hold is handed back to the queue once they are gone.
    #[serde(with = "serde_str")]
    pub rollback_stop_timeout: Duration,
    /// A command whose success says a task is healthy; without it a task is healthy once it
    /// has stayed up for `healthy_after`.
    pub health_command: Option<String>,
    /// Default 2 s.
    #[serde(with = "serde_str")]
    pub healthy_after: Duration,
    /// During a deployment, the share of the desired tasks that must stay healthy; default 100.
    pub minimum_healthy_percent: u32,
    /// During a deployment, the most tasks that may run, as a share of the desired; default 200.
    pub maximum_percent: u32,
}

/// The queue the app consumes and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSpec {
    /// Default: the app's name.
    pub name: String,
    /// Default 300 s.
    #[serde(with = "serde_str")]
    pub visibility_timeout: Duration,
    /// Default `<app>-dlq`.
    pub dlq: String,
    /// Receives before a message goes to the DLQ; default 1.
    pub max_receive_count: u32,
    /// Default 60 min.
    #[serde(with = "serde_str")]
    pub dlq_retention: Duration,
    /// An external SQS endpoint; `None` runs the embedded queue.
    pub endpoint: Option<String>,
    /// The embedded queue's port; default 9324.
    pub port: u16,
    /// Default `us-east-1`.
    pub region: String,
    /// The embedded queue's account id in queue URLs and ARNs (12 digits); default
    /// `000000000000`.
    #[serde(default = "default_account_id")]
    pub account_id: String,
    /// Whether the embedded queue under `coalmine up` checks every request's signature against
    /// the keys it knows (each task's, coalmine's own, the user's in `.coalmine/credentials`);
    /// default true.
    #[serde(default = "default_true")]
    pub verify_signatures: bool,
}

fn default_account_id() -> String {
    "000000000000".into()
}

fn default_true() -> bool {
    true
}

/// Where the two services' tasks run: `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RuntimeSpec {
    /// Local processes, supervised by `coalmine up` (the default).
    #[default]
    Local,
    /// Two ECS services on Fargate, as in the guidance. `coalmine synth aws` creates them;
    /// `coalmine up` releases onto them (`coalmine_runtime::ecs`).
    Ecs(EcsSpec),
}

impl RuntimeSpec {
    /// `local` or `ecs`.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeSpec::Local => "local",
            RuntimeSpec::Ecs(_) => "ecs",
        }
    }

    pub fn ecs(&self) -> Option<&EcsSpec> {
        match self {
            RuntimeSpec::Ecs(e) => Some(e),
            RuntimeSpec::Local => None,
        }
    }
}

/// The ECS side of `[runtime] kind = "ecs"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcsSpec {
    /// The ECS cluster; default: the app's name.
    pub cluster: String,
    /// Default: `[queue] region`.
    pub region: String,
    /// An ECS API endpoint other than the region's (moto, LocalStack); default none.
    pub endpoint: Option<String>,
    /// Default: the app's name (the guidance's high-capacity service).
    pub primary_service: String,
    /// Default: `<app>-canary` (the guidance's low-capacity service).
    pub canary_service: String,
    /// The app's container in the task definition; default: the app's name.
    pub container: String,
    /// The image of the coalmine proxy sidecar (an image holding the `coalmine` binary);
    /// default: the `coalmine` tag of the app's own ECR repository.
    pub proxy_image: Option<String>,
    /// The loopback port the proxy listens on, which the app reaches as `AWS_ENDPOINT_URL_SQS`;
    /// default 9325 (`coalmine proxy`'s).
    pub proxy_port: u16,
    /// Fargate task size: CPU units (256 = 1/4 vCPU); default 256.
    pub cpu: u32,
    /// Fargate task size: MiB; default 512.
    pub memory: u32,
    /// How long CloudWatch Logs keeps the tasks' logs, in days; default 7.
    pub log_retention_days: u32,
}

impl EcsSpec {
    /// The defaults for `app`, with the services in `region`.
    pub fn default_for(app: &str, region: &str) -> EcsSpec {
        EcsSpec {
            cluster: app.to_string(),
            region: region.to_string(),
            endpoint: None,
            primary_service: app.to_string(),
            canary_service: format!("{app}-canary"),
            container: app.to_string(),
            proxy_image: None,
            proxy_port: 9325,
            cpu: 256,
            memory: 512,
            log_retention_days: 7,
        }
    }
}

/// The two services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesSpec {
    /// Default 3 tasks.
    pub primary: ServiceSpec,
    /// Default 1 task.
    pub canary: ServiceSpec,
}

impl ServicesSpec {
    pub fn get(&self, name: ServiceName) -> &ServiceSpec {
        match name {
            ServiceName::Primary => &self.primary,
            ServiceName::Canary => &self.canary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub tasks: u32,
}

/// The control plane's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// Default 7070.
    pub port: u16,
    /// Default 127.0.0.1.
    pub bind: IpAddr,
}

/// `primary` or `canary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceName {
    Primary,
    Canary,
}

impl ServiceName {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Primary => "primary",
            ServiceName::Canary => "canary",
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an `analysis` step does when its verdicts pass for its whole duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Promote {
    /// Passing verdicts over the duration complete the step by themselves (the automatic
    /// mode of Argo Rollouts and Flagger). The default.
    Auto,
    /// The verdicts are shown, but the step ends only when a person approves.
    Manual,
}

/// One release step. Default: deploy canary (10 min), approval (7 days), deploy primary (15 min).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Put the execution's revision on a service and wait for steady state within `timeout`.
    Deploy {
        service: ServiceName,
        #[serde(with = "serde_str")]
        timeout: Duration,
    },
    /// Wait for a person to approve or reject; the timeout rejects.
    Approval {
        #[serde(with = "serde_str")]
        timeout: Duration,
    },
    /// Wait this long (alarms keep watching).
    Pause {
        #[serde(with = "serde_str")]
        duration: Duration,
    },
    /// Set a service's task count.
    Scale { service: ServiceName, tasks: u32 },
    /// Judge the canary for `duration`; see [`Promote`].
    Analysis {
        #[serde(with = "serde_str")]
        duration: Duration,
        promote: Promote,
    },
}

impl Step {
    /// A short label: `deploy canary`, `approval`, `pause 30s`, `scale canary to 2`, `analysis 2m`.
    pub fn label(&self) -> String {
        use coalmine_analysis::duration::format;
        match self {
            Step::Deploy { service, .. } => format!("deploy {service}"),
            Step::Approval { .. } => "approval".to_string(),
            Step::Pause { duration } => format!("pause {}", format(*duration)),
            Step::Scale { service, tasks } => format!("scale {service} to {tasks}"),
            Step::Analysis { duration, .. } => format!("analysis {}", format(*duration)),
        }
    }
}

/// The steps used when `coalmine.toml` has none, as in the guidance.
pub fn default_steps() -> Vec<Step> {
    vec![
        Step::Deploy {
            service: ServiceName::Canary,
            timeout: Duration::from_secs(10 * 60),
        },
        Step::Approval {
            timeout: Duration::from_secs(7 * 86_400),
        },
        Step::Deploy {
            service: ServiceName::Primary,
            timeout: Duration::from_secs(15 * 60),
        },
    ]
}
