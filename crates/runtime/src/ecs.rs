//! The ECS backend: the two services of the guidance (`<app>` and `<app>-canary`) on one
//! cluster, driven through the ECS API.
//!
//! The [`Runtime`] words map one to one: a **revision** is an image, read from CodePipeline's
//! `imagedefinitions.json` in the revision's folder; **apply** registers a task definition
//! revision (the service's current one with the new image for the app container and the
//! coalmine proxy sidecar added or updated) and calls `UpdateService` with the deployment
//! configuration (minimum healthy / maximum percent, circuit breaker with rollback); progress,
//! the circuit breaker and its rollback come from `DescribeServices`; crashes from the stopped
//! tasks (`ListTasks` + `DescribeTasks`); the tasks' logs from CloudWatch Logs (the app
//! container's `awslogs` group and stream, as ECS's awslogs driver names them).
//!
//! The calls are made by one background thread with its own tokio runtime: [`Runtime::apply`]
//! queues a deploy and returns, [`Runtime::service`] answers from the last poll. The
//! interpretation of ECS's answers is pure ([`interpret_service`], [`is_crash`]) over
//! [`ServiceView`] and [`TaskView`], which deserialize from the ECS API's JSON.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use aws_sdk_ecs::types::{
    ContainerCondition, ContainerDefinition, ContainerDependency, DeploymentCircuitBreaker, DeploymentConfiguration,
    DesiredStatus, KeyValuePair, LogConfiguration, TaskDefinition,
};
use coalmine_spec::{EcsSpec, PROXY_CONTAINER};
use serde::Deserialize;

use crate::{
    DeploymentState, DeploymentStatus, Runtime, RuntimeError, ServiceSpec, ServiceStatus, TaskState, TaskStatus,
};

/// The app container's variable that names the coalmine revision of a task definition.
pub const REVISION_ENV: &str = "COALMINE_REVISION";
/// The proxy's variables (as `coalmine synth aws` writes them).
pub const PROXY_ENV_UPSTREAM: &str = "COALMINE_PROXY_UPSTREAM";
pub const PROXY_ENV_APP: &str = "COALMINE_APP";

/// Errors of the ECS backend.
#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    #[error(transparent)]
    Artifact(#[from] crate::ArtifactError),
    #[error("ECS {operation} failed: {message}")]
    Api { operation: &'static str, message: String },
    #[error("service `{service}` not found in cluster `{cluster}`: create the services first (`coalmine synth aws` writes them), or name yours in [runtime] primary_service / canary_service")]
    NoService { service: String, cluster: String },
    #[error("task definition {arn} has no container `{container}` (it has: {found}); set [runtime] container to the app's container")]
    NoContainer { arn: String, container: String, found: String },
    #[error("{0}")]
    NothingToShow(String),
}

impl From<EcsError> for RuntimeError {
    fn from(err: EcsError) -> RuntimeError {
        match err {
            EcsError::NothingToShow(why) => RuntimeError::NothingToShow(why),
            err => RuntimeError::Backend(err.to_string()),
        }
    }
}

fn api<E: std::error::Error + 'static>(operation: &'static str) -> impl FnOnce(aws_sdk_ecs::error::SdkError<E>) -> EcsError {
    move |err| {
        let message = match err.as_service_error() {
            Some(service) => format!("{service}"),
            None => format!("{}", aws_sdk_ecs::error::DisplayErrorContext(&err)),
        };
        EcsError::Api { operation, message }
    }
}

// ----- configuration ------------------------------------------------------------------------

/// What the backend needs besides the file's `[runtime]`.
#[derive(Debug, Clone)]
pub struct EcsConfig {
    pub app: String,
    pub ecs: EcsSpec,
    /// The telemetry queue the proxy reports to, for a sidecar added to a task definition that
    /// has none; default `<app>-coalmine-telemetry`.
    pub telemetry_queue: Option<String>,
    /// How often the services are described.
    pub poll_interval: Duration,
    /// The state folder (`.coalmine/`): its runtime lock is held while the runtime runs, so one
    /// controller releases an app at a time, as with the local runtime.
    pub state_dir: Option<PathBuf>,
}

impl EcsConfig {
    pub fn new(app: &str, ecs: EcsSpec) -> EcsConfig {
        EcsConfig { app: app.to_string(), ecs, telemetry_queue: None, poll_interval: Duration::from_secs(5), state_dir: None }
    }

    /// The ECS service behind a runtime service name (`primary`, `canary`).
    pub fn ecs_service(&self, name: &str) -> Option<&str> {
        match name {
            "primary" => Some(&self.ecs.primary_service),
            "canary" => Some(&self.ecs.canary_service),
            _ => None,
        }
    }

    /// The proxy's image: the file's, or the `coalmine` tag of the app image's repository.
    pub fn proxy_image(&self, app_image: &str) -> String {
        if let Some(image) = &self.ecs.proxy_image {
            return image.clone();
        }
        let repo = app_image.split('@').next().unwrap_or(app_image);
        let repo = match repo.rfind(':') {
            Some(i) if !repo[i..].contains('/') => &repo[..i],
            _ => repo,
        };
        format!("{repo}:coalmine")
    }
}

// ----- the task definition ------------------------------------------------------------------

fn env_get<'a>(c: &'a ContainerDefinition, name: &str) -> Option<&'a str> {
    c.environment().iter().find(|kv| kv.name() == Some(name)).and_then(|kv| kv.value())
}

fn env_set(env: &mut Vec<KeyValuePair>, name: &str, value: &str) {
    env.retain(|kv| kv.name() != Some(name));
    env.push(KeyValuePair::builder().name(name).value(value).build());
}

/// The coalmine revision a task definition runs: its app container's `COALMINE_REVISION`, or
/// else the tag of its image.
pub fn revision_of(td: &TaskDefinition, container: &str) -> String {
    let Some(app) = td.container_definitions().iter().find(|c| c.name() == Some(container)) else {
        return td.task_definition_arn().unwrap_or("unknown").rsplit('/').next().unwrap_or("unknown").to_string();
    };
    if let Some(rev) = env_get(app, REVISION_ENV) {
        return rev.to_string();
    }
    let image = app.image().unwrap_or("unknown");
    match image.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag.to_string(),
        _ => image.to_string(),
    }
}

/// The container definitions of the next revision: `current`'s, with `image` and the
/// revision's environment on the app container and the proxy sidecar added or updated.
pub fn next_containers(
    cfg: &EcsConfig,
    current: &TaskDefinition,
    spec: &ServiceSpec,
    image: &str,
) -> Result<Vec<ContainerDefinition>, EcsError> {
    let container = &cfg.ecs.container;
    let mut containers: Vec<ContainerDefinition> = current.container_definitions().to_vec();
    let Some(app_index) = containers.iter().position(|c| c.name() == Some(container.as_str())) else {
        return Err(EcsError::NoContainer {
            arn: current.task_definition_arn().unwrap_or_default().to_string(),
            container: container.clone(),
            found: containers.iter().filter_map(|c| c.name()).collect::<Vec<_>>().join(", "),
        });
    };
    let port = cfg.ecs.proxy_port;
    let region = &cfg.ecs.region;

    // The app container.
    let mut app = containers[app_index].clone();
    app.image = Some(image.to_string());
    let mut env = app.environment.take().unwrap_or_default();
    env_set(&mut env, "AWS_ENDPOINT_URL_SQS", &format!("http://127.0.0.1:{port}"));
    env_set(&mut env, "AWS_REGION", region);
    // An empty queue name or URL keeps the task definition's (the stack's own queue).
    if !spec.queue.queue.is_empty() {
        env_set(&mut env, "QUEUE", &spec.queue.queue);
    }
    if !spec.queue.queue_url.is_empty() {
        env_set(&mut env, "QUEUE_URL", &spec.queue.queue_url);
    }
    for (k, v) in &spec.revision.env {
        env_set(&mut env, k, v);
    }
    env_set(&mut env, REVISION_ENV, &spec.revision.name);
    env.sort_by(|a, b| a.name().cmp(&b.name()));
    app.environment = Some(env);
    let command = spec.revision.command.trim();
    if !command.is_empty() {
        app.command = Some(command.split_whitespace().map(str::to_string).collect());
    }
    let mut depends: Vec<ContainerDependency> =
        app.depends_on.take().unwrap_or_default().into_iter().filter(|d| d.container_name() != PROXY_CONTAINER).collect();
    depends.push(
        ContainerDependency::builder()
            .container_name(PROXY_CONTAINER)
            .condition(ContainerCondition::Start)
            .build()
            .expect("container name and condition are set"),
    );
    app.depends_on = Some(depends);
    app.stop_timeout = Some(spec.stop_timeout.as_secs().clamp(2, 120) as i32);
    let app_logs = app.log_configuration.clone();
    containers[app_index] = app;

    // The sidecar: update the image of the one there (keeping its command and environment, as
    // `coalmine synth aws` wrote them), or add one.
    let proxy_image = cfg.proxy_image(image);
    match containers.iter_mut().find(|c| c.name() == Some(PROXY_CONTAINER)) {
        Some(proxy) => {
            if cfg.ecs.proxy_image.is_some() {
                proxy.image = Some(proxy_image);
            }
            proxy.essential = Some(true);
        }
        None => {
            let telemetry = cfg.telemetry_queue.clone().unwrap_or_else(|| format!("{}-coalmine-telemetry", cfg.app));
            let logs = app_logs.map(|l| {
                let mut options = l.options().cloned().unwrap_or_default();
                if options.contains_key("awslogs-stream-prefix") {
                    options.insert("awslogs-stream-prefix".into(), PROXY_CONTAINER.into());
                }
                LogConfiguration::builder()
                    .log_driver(l.log_driver().clone())
                    .set_options(Some(options))
                    .build()
                    .expect("log driver is set")
            });
            let proxy = ContainerDefinition::builder()
                .name(PROXY_CONTAINER)
                .image(proxy_image)
                .essential(true)
                .entry_point("coalmine")
                .set_command(Some(vec!["proxy".into(), "--port".into(), port.to_string(), "--telemetry-queue".into(), telemetry]))
                .environment(KeyValuePair::builder().name(PROXY_ENV_UPSTREAM).value(format!("https://sqs.{region}.amazonaws.com")).build())
                .environment(KeyValuePair::builder().name(PROXY_ENV_APP).value(&cfg.app).build())
                .environment(KeyValuePair::builder().name("AWS_REGION").value(region).build())
                .stop_timeout(30)
                .set_log_configuration(logs)
                .build();
            containers.insert(0, proxy);
        }
    }
    // The sidecar reports the coalmine revision it serves, not the image's tag (what the task
    // metadata would give it). Not the service: both services run one task definition after a
    // promotion, so the service comes from the task metadata (the ECS service's name).
    let proxy = containers.iter_mut().find(|c| c.name() == Some(PROXY_CONTAINER)).expect("the sidecar is there");
    let mut env = proxy.environment.take().unwrap_or_default();
    env_set(&mut env, REVISION_ENV, &spec.revision.name);
    env.sort_by(|a, b| a.name().cmp(&b.name()));
    proxy.environment = Some(env);
    Ok(containers)
}

// ----- what ECS says, as data ---------------------------------------------------------------

/// The part of a `DescribeServices` service the backend reads (the API's JSON field names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceView {
    pub service_name: String,
    pub task_definition: String,
    pub desired_count: i64,
    pub running_count: i64,
    pub pending_count: i64,
    pub deployments: Vec<DeploymentView>,
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentView {
    pub id: String,
    /// PRIMARY, ACTIVE or INACTIVE.
    pub status: String,
    pub task_definition: String,
    pub desired_count: i64,
    pub pending_count: i64,
    pub running_count: i64,
    pub failed_tasks: i64,
    /// Unix seconds.
    pub created_at: f64,
    pub updated_at: f64,
    /// IN_PROGRESS, COMPLETED or FAILED (absent for services without the rolling update type).
    pub rollout_state: Option<String>,
    pub rollout_state_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EventView {
    pub id: String,
    pub created_at: f64,
    pub message: String,
}

/// The part of a `DescribeTasks` task the backend reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskView {
    pub task_arn: String,
    pub task_definition_arn: String,
    pub last_status: String,
    pub desired_status: String,
    pub health_status: Option<String>,
    pub started_at: Option<f64>,
    pub stopped_at: Option<f64>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub containers: Vec<ContainerView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerView {
    pub name: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub last_status: Option<String>,
}

fn secs(t: Option<&aws_sdk_ecs::primitives::DateTime>) -> f64 {
    t.map(|t| t.as_secs_f64()).unwrap_or(0.0)
}

impl From<&aws_sdk_ecs::types::Service> for ServiceView {
    fn from(s: &aws_sdk_ecs::types::Service) -> ServiceView {
        ServiceView {
            service_name: s.service_name().unwrap_or_default().to_string(),
            task_definition: s.task_definition().unwrap_or_default().to_string(),
            desired_count: s.desired_count().into(),
            running_count: s.running_count().into(),
            pending_count: s.pending_count().into(),
            deployments: s
                .deployments()
                .iter()
                .map(|d| DeploymentView {
                    id: d.id().unwrap_or_default().to_string(),
                    status: d.status().unwrap_or_default().to_string(),
                    task_definition: d.task_definition().unwrap_or_default().to_string(),
                    desired_count: d.desired_count().into(),
                    pending_count: d.pending_count().into(),
                    running_count: d.running_count().into(),
                    failed_tasks: d.failed_tasks().into(),
                    created_at: secs(d.created_at()),
                    updated_at: secs(d.updated_at()),
                    rollout_state: d.rollout_state().map(|r| r.as_str().to_string()),
                    rollout_state_reason: d.rollout_state_reason().map(str::to_string),
                })
                .collect(),
            events: s
                .events()
                .iter()
                .map(|e| EventView {
                    id: e.id().unwrap_or_default().to_string(),
                    created_at: secs(e.created_at()),
                    message: e.message().unwrap_or_default().to_string(),
                })
                .collect(),
        }
    }
}

impl From<&aws_sdk_ecs::types::Task> for TaskView {
    fn from(t: &aws_sdk_ecs::types::Task) -> TaskView {
        TaskView {
            task_arn: t.task_arn().unwrap_or_default().to_string(),
            task_definition_arn: t.task_definition_arn().unwrap_or_default().to_string(),
            last_status: t.last_status().unwrap_or_default().to_string(),
            desired_status: t.desired_status().unwrap_or_default().to_string(),
            health_status: t.health_status().map(|h| h.as_str().to_string()),
            started_at: t.started_at().map(|d| d.as_secs_f64()),
            stopped_at: t.stopped_at().map(|d| d.as_secs_f64()),
            stop_code: t.stop_code().map(|c| c.as_str().to_string()),
            stopped_reason: t.stopped_reason().map(str::to_string),
            containers: t
                .containers()
                .iter()
                .map(|c| ContainerView {
                    name: c.name().unwrap_or_default().to_string(),
                    exit_code: c.exit_code(),
                    reason: c.reason().map(str::to_string),
                    last_status: c.last_status().map(str::to_string),
                })
                .collect(),
        }
    }
}

// ----- interpretation -----------------------------------------------------------------------

/// The number of an ECS deployment id (`ecs-svc/9223370564343611322`), or a hash of it.
pub fn deployment_number(id: &str) -> u64 {
    if let Some(n) = id.rsplit('/').next().and_then(|n| n.parse().ok()) {
        return n;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Whether a stopped task is an exit nobody asked for: its essential container exited, it
/// failed to start, or the scheduler stopped it for failing health checks. Scale-ins,
/// replacements by a deployment and `StopTask` calls are not.
pub fn is_crash(task: &TaskView) -> bool {
    if task.last_status != "STOPPED" && task.desired_status != "STOPPED" {
        return false;
    }
    match task.stop_code.as_deref() {
        Some("EssentialContainerExited") | Some("TaskFailedToStart") => true,
        Some("ServiceSchedulerInitiated") => {
            task.stopped_reason.as_deref().is_some_and(|r| r.to_ascii_lowercase().contains("health check"))
        }
        _ => false,
    }
}

/// How a stopped task ended, e.g. "exit 1 (Essential container in task exited)".
pub fn exit_description(task: &TaskView, container: &str) -> String {
    let exit = task
        .containers
        .iter()
        .find(|c| c.name == container && c.exit_code.is_some())
        .or_else(|| task.containers.iter().find(|c| c.exit_code.is_some_and(|e| e != 0)))
        .and_then(|c| c.exit_code);
    let reason = task.stopped_reason.clone().unwrap_or_else(|| task.stop_code.clone().unwrap_or_default());
    match exit {
        Some(code) => format!("exit {code} ({reason})"),
        None => reason,
    }
}

fn ms(secs: f64) -> u64 {
    (secs * 1000.0).max(0.0) as u64
}

/// What the backend remembers of a service between polls: ECS forgets drained deployments
/// after a while and stopped tasks after about an hour.
#[derive(Debug, Clone, Default)]
pub struct ServiceMemory {
    /// Deployments seen, by ECS id.
    pub deployments: BTreeMap<String, DeploymentStatus>,
    /// Stopped tasks already counted, by ARN.
    pub stopped_seen: BTreeSet<String>,
    pub exits_by_revision: BTreeMap<String, u64>,
}

/// A service's status from what ECS says of it. `revision` maps task definition ARNs to
/// coalmine revisions (unknown ones show as the ARN's `family:revision`); `tasks` are the
/// service's running and stopped tasks; `memory` carries what earlier polls saw.
pub fn interpret_service(
    name: &str,
    view: &ServiceView,
    revision: &dyn Fn(&str) -> String,
    tasks: &[TaskView],
    memory: &mut ServiceMemory,
) -> ServiceStatus {
    let mut deployments: Vec<&DeploymentView> = view.deployments.iter().collect();
    deployments.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
    let primary = deployments.iter().find(|d| d.status == "PRIMARY").copied().or(deployments.last().copied());

    for (i, d) in deployments.iter().enumerate() {
        let state = match d.rollout_state.as_deref() {
            Some("COMPLETED") => DeploymentState::Completed,
            Some("FAILED") => DeploymentState::Failed,
            Some(_) => DeploymentState::InProgress,
            // Without a rollout state: done when the primary deployment runs all its tasks.
            None if d.status == "PRIMARY" && d.running_count == d.desired_count && d.pending_count == 0 => {
                DeploymentState::Completed
            }
            None if d.status == "PRIMARY" => DeploymentState::InProgress,
            None => DeploymentState::Completed,
        };
        // A failed deployment followed by a newer primary one: the circuit breaker (with
        // rollback) put the service back on the newer one's task definition.
        let rolled_back_to = match state {
            DeploymentState::Failed => deployments[i + 1..]
                .iter()
                .rev()
                .find(|n| n.status == "PRIMARY" && n.task_definition != d.task_definition)
                .map(|n| revision(&n.task_definition))
                .or_else(|| {
                    // The newer deployment may already be gone from the list; ECS's event says it.
                    view.events
                        .iter()
                        .any(|e| e.message.contains("rolling back") && e.message.contains(&d.id))
                        .then(|| revision(&view.task_definition))
                        .filter(|r| *r != revision(&d.task_definition))
                }),
            _ => None,
        };
        let reason = match (state, d.rollout_state_reason.as_deref()) {
            (_, Some(r)) if !r.is_empty() => {
                let failed = if d.failed_tasks > 0 { format!(" ({} task(s) failed)", d.failed_tasks) } else { String::new() };
                format!("{r}{failed}")
            }
            (DeploymentState::InProgress, _) => {
                format!("{} of {} task(s) running, {} pending, {} failed", d.running_count, d.desired_count, d.pending_count, d.failed_tasks)
            }
            (DeploymentState::Completed, _) => "completed".to_string(),
            (DeploymentState::Failed, _) => format!("{} task(s) failed to start", d.failed_tasks),
        };
        let finished = matches!(state, DeploymentState::Completed | DeploymentState::Failed).then(|| ms(d.updated_at));
        let entry = memory.deployments.entry(d.id.clone()).or_insert_with(|| DeploymentStatus {
            id: deployment_number(&d.id),
            revision: revision(&d.task_definition),
            state,
            reason: reason.clone(),
            rolled_back_to: None,
            started_at_ms: ms(d.created_at),
            finished_at_ms: None,
        });
        entry.state = state;
        entry.reason = reason;
        entry.finished_at_ms = finished;
        if rolled_back_to.is_some() {
            entry.rolled_back_to = rolled_back_to;
        }
    }
    // A deployment ECS no longer lists was drained by a newer one: it ended.
    let listed: BTreeSet<&str> = view.deployments.iter().map(|d| d.id.as_str()).collect();
    for (id, d) in memory.deployments.iter_mut() {
        if !listed.contains(id.as_str()) && d.state == DeploymentState::InProgress {
            d.state = DeploymentState::Completed;
            d.reason = "replaced by a newer deployment".into();
        }
    }

    let mut out_tasks = Vec::new();
    for t in tasks {
        let rev = revision(&t.task_definition_arn);
        if t.last_status == "STOPPED" {
            if memory.stopped_seen.insert(t.task_arn.clone()) && is_crash(t) {
                *memory.exits_by_revision.entry(rev).or_default() += 1;
            }
            continue;
        }
        let state = match t.last_status.as_str() {
            "RUNNING" if t.health_status.as_deref() != Some("UNHEALTHY") && t.desired_status != "STOPPED" => TaskState::Running,
            "DEACTIVATING" | "STOPPING" | "DEPROVISIONING" => TaskState::Stopping,
            _ if t.desired_status == "STOPPED" => TaskState::Stopping,
            _ => TaskState::Pending,
        };
        out_tasks.push(TaskStatus {
            id: t.task_arn.clone(),
            pid: None,
            revision: rev,
            state,
            access_key_id: String::new(),
            started_at_ms: t.started_at.map(ms).unwrap_or(0),
            restarts: 0,
            last_exit: None,
            // Task output is in CloudWatch Logs, which this runtime does not read yet.
            last_output: Vec::new(),
        });
    }

    let deployments_out: Vec<DeploymentStatus> = {
        let mut all: Vec<DeploymentStatus> = memory.deployments.values().cloned().collect();
        all.sort_by_key(|d| (d.started_at_ms, d.id));
        all
    };
    let current_revision = revision(&view.task_definition);
    let newest_done = primary.is_some_and(|p| {
        p.task_definition == view.task_definition
            && memory.deployments.get(&p.id).is_some_and(|d| d.state == DeploymentState::Completed)
    });
    ServiceStatus {
        name: name.to_string(),
        revision: current_revision,
        desired: view.desired_count.max(0) as u32,
        running: view.running_count.max(0) as u32,
        pending: view.pending_count.max(0) as u32,
        steady: newest_done && view.running_count == view.desired_count && view.pending_count == 0,
        deployments: deployments_out,
        tasks: out_tasks,
        exits_by_revision: memory.exits_by_revision.clone(),
    }
}

// ----- the API calls ------------------------------------------------------------------------

/// The ECS calls, async. [`EcsRuntime`] runs them on its own thread.
pub struct EcsBackend {
    pub client: aws_sdk_ecs::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub cfg: EcsConfig,
    task_definitions: Mutex<HashMap<String, TaskDefinition>>,
    /// Task definitions this backend registered, by (ECS service, revision, image): a deploy
    /// whose `UpdateService` failed reuses its registration when the loop tries again, instead
    /// of registering a new task definition revision on every pass.
    registered: Mutex<HashMap<(String, String, String), String>>,
}

impl EcsBackend {
    /// A client for the configured region (and endpoint), with the usual credential chain.
    pub async fn connect(cfg: EcsConfig) -> EcsBackend {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.ecs.region.clone()));
        if let Some(endpoint) = &cfg.ecs.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        EcsBackend {
            client: aws_sdk_ecs::Client::new(&shared),
            logs: aws_sdk_cloudwatchlogs::Client::new(&shared),
            cfg,
            task_definitions: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// `DescribeServices` of one ECS service.
    pub async fn describe_service(&self, ecs_name: &str) -> Result<aws_sdk_ecs::types::Service, EcsError> {
        let out = self
            .client
            .describe_services()
            .cluster(&self.cfg.ecs.cluster)
            .services(ecs_name)
            .send()
            .await
            .map_err(api("DescribeServices"))?;
        out.services()
            .iter()
            .find(|s| s.service_name() == Some(ecs_name) && s.status() != Some("INACTIVE"))
            .cloned()
            .ok_or_else(|| EcsError::NoService { service: ecs_name.to_string(), cluster: self.cfg.ecs.cluster.clone() })
    }

    /// `DescribeTaskDefinition`, cached (a registered revision never changes).
    pub async fn task_definition(&self, arn: &str) -> Result<TaskDefinition, EcsError> {
        if let Some(td) = self.task_definitions.lock().unwrap().get(arn) {
            return Ok(td.clone());
        }
        let out = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .map_err(api("DescribeTaskDefinition"))?;
        let td = out.task_definition().cloned().ok_or(EcsError::Api {
            operation: "DescribeTaskDefinition",
            message: format!("no task definition in the answer for {arn}"),
        })?;
        let mut cache = self.task_definitions.lock().unwrap();
        cache.insert(arn.to_string(), td.clone());
        if let Some(full) = td.task_definition_arn() {
            cache.insert(full.to_string(), td.clone());
        }
        Ok(td)
    }

    /// Put `spec`'s revision (image `image`) on its service: reuse a task definition that
    /// already runs it (the service's own, or the other service's, which is how a rollback puts
    /// the canary back on the primary's task definition), else register one; then
    /// `UpdateService`. Returns the task definition ARN.
    pub async fn deploy(&self, spec: &ServiceSpec, image: &str) -> Result<String, EcsError> {
        let ecs_name = self.cfg.ecs_service(&spec.name).ok_or_else(|| EcsError::Api {
            operation: "UpdateService",
            message: format!("no ECS service for `{}` (only primary and canary)", spec.name),
        })?;
        let service = self.describe_service(ecs_name).await?;
        let current_arn = service.task_definition().unwrap_or_default().to_string();
        let current = self.task_definition(&current_arn).await?;
        let other = if spec.name == "primary" { "canary" } else { "primary" };
        let other_name = self.cfg.ecs_service(other).expect("known service").to_string();
        let runs_it = |td: &TaskDefinition| {
            let app = td.container_definitions().iter().find(|c| c.name() == Some(self.cfg.ecs.container.as_str()));
            app.is_some_and(|a| a.image() == Some(image) && env_get(a, REVISION_ENV) == Some(spec.revision.name.as_str()))
                && td.container_definitions().iter().any(|c| c.name() == Some(PROXY_CONTAINER))
        };
        let mut arn = None;
        if runs_it(&current) {
            arn = Some(current_arn.clone());
        } else if let Ok(other_service) = self.describe_service(&other_name).await {
            let other_arn = other_service.task_definition().unwrap_or_default().to_string();
            if let Ok(td) = self.task_definition(&other_arn).await {
                if runs_it(&td) {
                    arn = Some(other_arn);
                }
            }
        }
        let key = (ecs_name.to_string(), spec.revision.name.clone(), image.to_string());
        let earlier = self.registered.lock().unwrap().get(&key).cloned();
        let arn = match arn.or(earlier) {
            Some(arn) => arn,
            None => {
                let arn = self.register(&current, spec, image).await?;
                self.registered.lock().unwrap().insert(key, arn.clone());
                arn
            }
        };
        let config = DeploymentConfiguration::builder()
            .minimum_healthy_percent(spec.minimum_healthy_percent as i32)
            .maximum_percent(spec.maximum_percent as i32)
            .deployment_circuit_breaker(DeploymentCircuitBreaker::builder().enable(true).rollback(true).build())
            .build();
        self.client
            .update_service()
            .cluster(&self.cfg.ecs.cluster)
            .service(ecs_name)
            .task_definition(&arn)
            .desired_count(spec.desired as i32)
            .deployment_configuration(config)
            .send()
            .await
            .map_err(api("UpdateService"))?;
        tracing::info!(service = ecs_name, task_definition = %arn, revision = %spec.revision.name, "service updated");
        Ok(arn)
    }

    /// `RegisterTaskDefinition`: `current` with the next containers.
    pub async fn register(&self, current: &TaskDefinition, spec: &ServiceSpec, image: &str) -> Result<String, EcsError> {
        let containers = next_containers(&self.cfg, current, spec, image)?;
        let family = current.family().unwrap_or(&self.cfg.app).to_string();
        let out = self
            .client
            .register_task_definition()
            .family(family)
            .set_task_role_arn(current.task_role_arn().map(str::to_string))
            .set_execution_role_arn(current.execution_role_arn().map(str::to_string))
            .set_network_mode(current.network_mode().cloned())
            .set_requires_compatibilities(Some(current.requires_compatibilities().to_vec()).filter(|v| !v.is_empty()))
            .set_cpu(current.cpu().map(str::to_string))
            .set_memory(current.memory().map(str::to_string))
            .set_volumes(Some(current.volumes().to_vec()).filter(|v| !v.is_empty()))
            .set_runtime_platform(current.runtime_platform().cloned())
            .set_ephemeral_storage(current.ephemeral_storage().cloned())
            .set_container_definitions(Some(containers))
            .send()
            .await
            .map_err(api("RegisterTaskDefinition"))?;
        let td = out.task_definition().cloned().ok_or(EcsError::Api {
            operation: "RegisterTaskDefinition",
            message: "no task definition in the answer".into(),
        })?;
        let arn = td.task_definition_arn().unwrap_or_default().to_string();
        self.task_definitions.lock().unwrap().insert(arn.clone(), td);
        tracing::info!(task_definition = %arn, revision = %spec.revision.name, "task definition registered");
        Ok(arn)
    }

    /// `UpdateService` with a new desired count only.
    pub async fn scale(&self, name: &str, desired: u32) -> Result<(), EcsError> {
        let ecs_name = self.cfg.ecs_service(name).unwrap_or(name);
        self.client
            .update_service()
            .cluster(&self.cfg.ecs.cluster)
            .service(ecs_name)
            .desired_count(desired as i32)
            .send()
            .await
            .map_err(api("UpdateService"))?;
        Ok(())
    }

    /// The service's tasks: `ListTasks` (running, and stopped) + `DescribeTasks`.
    pub async fn tasks(&self, ecs_name: &str) -> Result<Vec<TaskView>, EcsError> {
        let mut arns = Vec::new();
        for status in [DesiredStatus::Running, DesiredStatus::Stopped] {
            let out = self
                .client
                .list_tasks()
                .cluster(&self.cfg.ecs.cluster)
                .service_name(ecs_name)
                .desired_status(status)
                .send()
                .await
                .map_err(api("ListTasks"))?;
            arns.extend(out.task_arns().iter().cloned());
        }
        let mut tasks = Vec::new();
        for chunk in arns.chunks(100) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cfg.ecs.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(api("DescribeTasks"))?;
            tasks.extend(out.tasks().iter().map(TaskView::from));
        }
        Ok(tasks)
    }

    /// The last `lines` lines each of the app container's CloudWatch Logs stream of a service's
    /// tasks, as `(task id, line)`: the tasks of the revision the service runs (the running
    /// ones, else the last stopped ones), or with `previous` those of the revision it ran before.
    pub async fn service_logs(&self, name: &str, previous: bool, lines: usize) -> Result<Vec<(String, String)>, EcsError> {
        let ecs_name = self.cfg.ecs_service(name).unwrap_or(name).to_string();
        let service = self.describe_service(&ecs_name).await?;
        let current = revision_of(&self.task_definition(service.task_definition().unwrap_or_default()).await?, &self.cfg.ecs.container);
        let mut tasks = Vec::new();
        for t in self.tasks(&ecs_name).await? {
            let td = self.task_definition(&t.task_definition_arn).await?;
            tasks.push((revision_of(&td, &self.cfg.ecs.container), td, t));
        }
        // Newest first.
        tasks.sort_by(|a, b| b.2.started_at.unwrap_or(0.0).total_cmp(&a.2.started_at.unwrap_or(0.0)));
        let revision = if previous {
            match tasks.iter().find(|(rev, _, _)| *rev != current) {
                Some((rev, _, _)) => rev.clone(),
                None => return Err(EcsError::NothingToShow(format!("service `{name}` has run no revision but {current} in the tasks ECS still lists: there are no previous logs"))),
            }
        } else {
            current
        };
        let mine: Vec<&(String, TaskDefinition, TaskView)> = tasks.iter().filter(|(rev, _, _)| *rev == revision).collect();
        let running: Vec<_> = mine.iter().filter(|(_, _, t)| t.last_status != "STOPPED").copied().collect();
        // ECS lists stopped tasks for about an hour: the last few are enough to see why.
        let chosen: Vec<_> = if running.is_empty() { mine.into_iter().take(3).collect() } else { running };
        let mut out = Vec::new();
        for (_, td, task) in chosen.into_iter().rev() {
            let id = task.task_arn.rsplit('/').next().unwrap_or(&task.task_arn).to_string();
            let Some((group, stream)) = awslogs_stream(td, &self.cfg.ecs.container, &id) else {
                out.push((id, format!("(container `{}` does not log to CloudWatch Logs: its task definition has no awslogs configuration)", self.cfg.ecs.container)));
                continue;
            };
            let got = self
                .logs
                .get_log_events()
                .log_group_name(&group)
                .log_stream_name(&stream)
                .limit(lines.clamp(1, 10_000) as i32)
                .start_from_head(false)
                .send()
                .await;
            match got {
                Ok(events) => out.extend(events.events().iter().filter_map(|e| e.message()).map(|m| (id.clone(), m.trim_end().to_string()))),
                // A task that never started has no stream.
                Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => {
                    out.push((id.clone(), format!("(no log stream {stream} in {group} yet)")));
                }
                Err(e) => return Err(api("GetLogEvents")(e)),
            }
        }
        Ok(out)
    }

    /// One service's status, `memory` carrying what earlier polls saw.
    pub async fn status(&self, name: &str, memory: &mut ServiceMemory) -> Result<ServiceStatus, EcsError> {
        let ecs_name = self.cfg.ecs_service(name).unwrap_or(name).to_string();
        let service = self.describe_service(&ecs_name).await?;
        let view = ServiceView::from(&service);
        let tasks = self.tasks(&ecs_name).await?;
        let mut arns: BTreeSet<String> = view.deployments.iter().map(|d| d.task_definition.clone()).collect();
        arns.insert(view.task_definition.clone());
        arns.extend(tasks.iter().map(|t| t.task_definition_arn.clone()));
        let mut revisions = HashMap::new();
        for arn in arns.into_iter().filter(|a| !a.is_empty()) {
            let td = self.task_definition(&arn).await?;
            revisions.insert(arn, revision_of(&td, &self.cfg.ecs.container));
        }
        let lookup = |arn: &str| {
            revisions.get(arn).cloned().unwrap_or_else(|| arn.rsplit('/').next().unwrap_or(arn).to_string())
        };
        Ok(interpret_service(name, &view, &lookup, &tasks, memory))
    }
}

/// The CloudWatch Logs group and stream of `container` in task `task_id`, from the task
/// definition's awslogs options (`<prefix>/<container>/<task id>`, as ECS names streams).
pub fn awslogs_stream(td: &TaskDefinition, container: &str, task_id: &str) -> Option<(String, String)> {
    let c = td.container_definitions().iter().find(|c| c.name() == Some(container))?;
    let conf = c.log_configuration().filter(|l| l.log_driver().as_str() == "awslogs")?;
    let options = conf.options()?;
    let group = options.get("awslogs-group")?.clone();
    let stream = match options.get("awslogs-stream-prefix") {
        Some(prefix) => format!("{prefix}/{container}/{task_id}"),
        None => task_id.to_string(),
    };
    Some((group, stream))
}

// ----- the Runtime --------------------------------------------------------------------------

type LogLines = Result<Vec<(String, String)>, EcsError>;

enum Command {
    Apply(Box<ServiceSpec>, String),
    Scale(String, u32),
    Logs { service: String, previous: bool, lines: usize, reply: mpsc::Sender<LogLines> },
    Stop,
}

#[derive(Default)]
struct Shared {
    specs: HashMap<String, ServiceSpec>,
    /// Every revision spec applied, to answer `spec()` after a circuit-breaker rollback.
    revisions: HashMap<String, crate::RevisionSpec>,
    status: HashMap<String, ServiceStatus>,
    errors: HashMap<String, String>,
}

/// [`Runtime`] on ECS: a background thread deploys and polls; calls return at once.
pub struct EcsRuntime {
    _lock: Option<std::fs::File>,
    shared: Arc<Mutex<Shared>>,
    tx: Mutex<mpsc::Sender<Command>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    container: String,
}

impl EcsRuntime {
    /// Connect, describe both services once (failing with a clear error when the cluster or a
    /// service is missing), then keep polling every `cfg.poll_interval`.
    pub fn start(cfg: EcsConfig) -> Result<EcsRuntime, RuntimeError> {
        let lock = cfg.state_dir.as_deref().map(lock_state).transpose()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let container = cfg.ecs.container.clone();
        let worker_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("coalmine-ecs".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(RuntimeError::Start(e)));
                        return;
                    }
                };
                rt.block_on(run(cfg, worker_shared, rx, ready_tx));
            })
            .map_err(RuntimeError::Start)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(RuntimeError::ShuttingDown),
        }
        Ok(EcsRuntime { _lock: lock, shared, tx: Mutex::new(tx), thread: Mutex::new(Some(thread)), container })
    }

    /// The last error of a service's deploy or poll, if the last attempt failed.
    pub fn last_error(&self, service: &str) -> Option<String> {
        self.shared.lock().unwrap().errors.get(service).cloned()
    }
}

/// Take `<state>/runtime/lock` (the local runtime's lock too), writing our pid into it.
fn lock_state(state_dir: &Path) -> Result<std::fs::File, RuntimeError> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let dir = state_dir.join("runtime");
    std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io { path: dir.clone(), source })?;
    let path = dir.join("lock");
    let mut lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| RuntimeError::Io { path: path.clone(), source })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = lock.read_to_string(&mut holder);
        return Err(RuntimeError::StateInUse { path: state_dir.to_path_buf(), pid: holder.trim().parse().ok() });
    }
    lock.set_len(0).map_err(|source| RuntimeError::Io { path: path.clone(), source })?;
    let _ = write!(lock, "{}", std::process::id());
    Ok(lock)
}

async fn run(
    cfg: EcsConfig,
    shared: Arc<Mutex<Shared>>,
    rx: mpsc::Receiver<Command>,
    ready: mpsc::Sender<Result<(), RuntimeError>>,
) {
    let poll = cfg.poll_interval;
    let backend = EcsBackend::connect(cfg).await;
    let mut memory: HashMap<String, ServiceMemory> = HashMap::new();
    for name in ["primary", "canary"] {
        match backend.status(name, memory.entry(name.into()).or_default()).await {
            Ok(st) => {
                shared.lock().unwrap().status.insert(name.into(), st);
            }
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    // Deploys not yet done (retried every poll until ECS takes them).
    let mut pending: HashMap<String, (ServiceSpec, String)> = HashMap::new();
    let mut scales: HashMap<String, u32> = HashMap::new();
    let mut last_poll = std::time::Instant::now();
    loop {
        // Wait for a command or the next poll, without blocking the runtime's thread for long.
        let wait = poll.saturating_sub(last_poll.elapsed()).min(Duration::from_millis(100));
        match rx.recv_timeout(wait) {
            Ok(Command::Apply(spec, image)) => {
                scales.remove(&spec.name);
                pending.insert(spec.name.clone(), (*spec, image));
            }
            Ok(Command::Scale(name, n)) => {
                scales.insert(name, n);
            }
            Ok(Command::Logs { service, previous, lines, reply }) => {
                let _ = reply.send(backend.service_logs(&service, previous, lines).await);
            }
            Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        for (name, (spec, image)) in std::mem::take(&mut pending) {
            match backend.deploy(&spec, &image).await {
                Ok(_) => {
                    shared.lock().unwrap().errors.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "deploy failed; retrying at the next poll");
                    shared.lock().unwrap().errors.insert(name.clone(), e.to_string());
                    pending.insert(name, (spec, image));
                }
            }
        }
        for (name, n) in std::mem::take(&mut scales) {
            if let Err(e) = backend.scale(&name, n).await {
                tracing::warn!(service = %name, error = %e, "scale failed; retrying at the next poll");
                shared.lock().unwrap().errors.insert(name.clone(), e.to_string());
                scales.insert(name, n);
            }
        }
        if last_poll.elapsed() < poll {
            continue;
        }
        last_poll = std::time::Instant::now();
        for name in ["primary", "canary"] {
            let mem = memory.entry(name.into()).or_default();
            match backend.status(name, mem).await {
                Ok(st) => {
                    let mut s = shared.lock().unwrap();
                    // After a circuit-breaker rollback the desired spec is the revision it went back to.
                    let applied = s.specs.get(name).map(|sp| sp.revision.name.clone());
                    if let Some(applied) = applied {
                        let undone = st
                            .deployments
                            .iter()
                            .rev()
                            .find(|d| d.revision == applied)
                            .and_then(|d| d.rolled_back_to.clone().filter(|_| d.state == DeploymentState::Failed));
                        if let Some(back) = undone {
                            let rev = s.revisions.get(&back).cloned();
                            if let Some(spec) = s.specs.get_mut(name) {
                                spec.revision = rev.unwrap_or_else(|| crate::RevisionSpec {
                                    name: back.clone(),
                                    artifact: crate::Artifact::default(),
                                    command: spec.revision.command.clone(),
                                    env: spec.revision.env.clone(),
                                });
                            }
                        }
                    }
                    s.status.insert(name.into(), st);
                }
                Err(e) => {
                    tracing::warn!(service = name, error = %e, "describing the service failed");
                }
            }
        }
    }
}

impl Runtime for EcsRuntime {
    fn apply(&self, spec: ServiceSpec) -> Result<(), RuntimeError> {
        if spec.name != "primary" && spec.name != "canary" {
            return Err(RuntimeError::UnknownService(spec.name));
        }
        let image = spec.revision.artifact.image(&self.container).map_err(EcsError::from)?.to_string();
        {
            let mut s = self.shared.lock().unwrap();
            s.revisions.insert(spec.revision.name.clone(), spec.revision.clone());
            s.specs.insert(spec.name.clone(), spec.clone());
        }
        self.tx.lock().unwrap().send(Command::Apply(Box::new(spec), image)).map_err(|_| RuntimeError::ShuttingDown)
    }

    fn scale(&self, service: &str, desired: u32) -> Result<(), RuntimeError> {
        {
            let mut s = self.shared.lock().unwrap();
            let Some(spec) = s.specs.get_mut(service) else { return Err(RuntimeError::UnknownService(service.into())) };
            spec.desired = desired;
        }
        self.tx.lock().unwrap().send(Command::Scale(service.into(), desired)).map_err(|_| RuntimeError::ShuttingDown)
    }

    fn service(&self, service: &str) -> Option<ServiceStatus> {
        self.shared.lock().unwrap().status.get(service).cloned()
    }

    fn services(&self) -> Vec<ServiceStatus> {
        let s = self.shared.lock().unwrap();
        ["primary", "canary"].iter().filter_map(|n| s.status.get(*n).cloned()).collect()
    }

    fn spec(&self, service: &str) -> Option<ServiceSpec> {
        self.shared.lock().unwrap().specs.get(service).cloned()
    }

    /// ECS tasks log to CloudWatch Logs, not to a file here: see [`Runtime::service_logs`].
    fn task_log(&self, _task: &str) -> Option<PathBuf> {
        None
    }

    fn service_logs(&self, service: &str, previous: bool, lines: usize) -> Option<Result<Vec<(String, String)>, RuntimeError>> {
        let (reply, answer) = mpsc::channel();
        let command = Command::Logs { service: service.to_string(), previous, lines, reply };
        if self.tx.lock().unwrap().send(command).is_err() {
            return Some(Err(RuntimeError::ShuttingDown));
        }
        Some(match answer.recv_timeout(Duration::from_secs(60)) {
            Ok(lines) => lines.map_err(RuntimeError::from),
            Err(_) => Err(RuntimeError::Backend("CloudWatch Logs did not answer within 60 s".into())),
        })
    }

    /// Stops following the services; their tasks keep running on ECS.
    fn shutdown(&self) {
        let _ = self.tx.lock().unwrap().send(Command::Stop);
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

impl Drop for EcsRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}
