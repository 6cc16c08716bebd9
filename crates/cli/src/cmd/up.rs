//! `coalmine up`: run everything for the app in this folder — the embedded queue, the two
//! services on the runtime `[runtime]` names (local processes, or the ECS services), the release
//! pipeline and the control-plane API.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use coalmine_pipeline::build::BuildspecBuilder;
use coalmine_pipeline::source::GitSource;
use coalmine_pipeline::{Engine, EngineParts, Paths};
use coalmine_queue::{Broker, BrokerConfig, Credentials};
use coalmine_runtime::ecs::{EcsConfig, EcsRuntime};
use coalmine_runtime::local::{LocalOptions, LocalRuntime};
use coalmine_runtime::{QueueEnv, Runtime, TaskKeys};

use crate::embedded::EmbeddedQueue;
use crate::sqs_admin::SqsQueue;
use crate::workspace::{self, UpInfo};

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// The app's coalmine.toml.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Port of the embedded queue (default: [queue] port, 9324; 0 picks a free one).
    #[arg(long)]
    pub queue_port: Option<u16>,
    /// Port of the API and dashboard (default: [server] port, 7070; 0 picks a free one).
    #[arg(long)]
    pub api_port: Option<u16>,
    /// Address the API and dashboard listen on (default: [server] bind, 127.0.0.1). Any other
    /// address exposes them to the network: coalmine warns, and /metrics needs the token.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// A host name the API and dashboard answer to besides IP addresses and `localhost` (other
    /// names are refused, a guard against DNS rebinding). Repeat for several.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,
}

/// What a running `up` is made of; `demo` drives one in-process.
pub struct Running {
    pub engine: Arc<Engine>,
    pub runtime: Arc<dyn Runtime>,
    /// The embedded queue; `None` on an external SQS.
    pub broker: Option<Broker>,
    pub queue_url: String,
    pub queue_endpoint: String,
    /// The API's address for clients on this machine.
    pub api: String,
    /// Where others reach it, when it listens beyond loopback (the machine's address).
    pub public_api: Option<String>,
    pub token: String,
    /// The keys the embedded queue accepts (checked unless `[queue] verify_signatures =
    /// false`): the tasks' (registered by the runtime), the user's and `coalmine send`'s from
    /// `.coalmine/credentials`. In-process clients add theirs.
    pub queue_keys: Credentials,
    stop: Arc<AtomicBool>,
    loop_thread: Option<std::thread::JoinHandle<()>>,
    info_path: PathBuf,
}

impl Running {
    /// Stop the pipeline and every task (SIGTERM, then SIGKILL after the stop timeout).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.engine.wake();
        if let Some(t) = self.loop_thread.take() {
            let _ = t.join();
        }
        self.runtime.shutdown();
        let _ = std::fs::remove_file(&self.info_path);
    }
}

/// Start everything; must be called inside a tokio runtime.
pub async fn start(args: &UpArgs) -> anyhow::Result<Running> {
    let mut spec = workspace::load_spec(args.file.as_deref())?;
    let branch = coalmine_pipeline::source::resolve_branch(&spec.source.repo.location(), spec.source.branch.as_deref())
        .map_err(|e| match e {
            coalmine_pipeline::PipelineError::Source(m) => anyhow::anyhow!("coalmine.toml {m}"),
            e => anyhow::anyhow!(e),
        })?;
    spec.source.branch = Some(branch.clone());
    let state = spec.root.join(".coalmine");
    for warning in workspace::secure_state_dir(&state)? {
        eprintln!("{warning}");
    }
    let token = workspace::ensure_token(&state)?;
    let info_path = state.join("up.json");
    if let Ok(text) = std::fs::read_to_string(&info_path) {
        if let Ok(info) = serde_json::from_str::<UpInfo>(&text) {
            if info.pid != std::process::id() && workspace::process_alive(info.pid) {
                anyhow::bail!(
                    "coalmine is already running for this app (pid {}, API {}); stop it with `coalmine down` first",
                    info.pid,
                    info.api
                );
            }
        }
    }
    // The queue: the embedded one, or an external SQS (`[queue] endpoint`, or ECS) that the
    // tasks reach through their queue proxies.
    let queue_keys = workspace::ensure_queue_credentials(&state)?;
    let external = spec.queue.endpoint.is_some() || spec.runtime.ecs().is_some();
    type Queue = (Arc<dyn coalmine_pipeline::QueueControl>, Arc<dyn coalmine_pipeline::TelemetrySource>);
    let (broker, queue_endpoint, queue_url, (queue_control, telemetry)): (Option<Broker>, String, String, Queue) =
        if external {
            let (sqs, differences) = tokio::task::block_in_place(|| SqsQueue::connect(&spec, &state)).with_context(|| {
                format!(
                    "cannot set up the queues on SQS ({}); check the endpoint, the region and the AWS credentials (environment, profile or role)",
                    spec.queue.endpoint.clone().unwrap_or_else(|| format!("region {}", spec.queue.region))
                )
            })?;
            for d in differences {
                eprintln!("warning: {d} (the queue is used as it is; change it, or coalmine.toml, to match)");
            }
            let endpoint = spec.queue.endpoint.clone().unwrap_or_else(|| coalmine_proxy::aws_endpoint(&spec.queue.region));
            let url = sqs.queue_url.clone();
            let sqs = Arc::new(sqs);
            (None, endpoint, url, (sqs.clone(), sqs))
        } else {
            // The embedded queue: it checks every request's signature against the keys it knows.
            let mut qcfg = BrokerConfig::new(state.clone());
            qcfg.account_id = spec.queue.account_id.clone();
            qcfg.region = spec.queue.region.clone();
            if spec.queue.verify_signatures {
                qcfg.credentials = Some(queue_keys.clone());
            } else {
                tracing::warn!("[queue] verify_signatures = false: the embedded queue accepts any access key and secret");
            }
            let broker = Broker::open(qcfg).with_context(|| format!("cannot open the queue's data in {}", state.display()))?;
            let qport = args.queue_port.unwrap_or(spec.queue.port);
            let qlistener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], qport))).await.with_context(|| {
                format!("cannot listen on 127.0.0.1:{qport} for the queue: is another coalmine or SQS emulator running? Set [queue] port in coalmine.toml, or pass --queue-port 0")
            })?;
            let qaddr = qlistener.local_addr()?;
            let queue_endpoint = format!("http://{qaddr}");
            {
                let b = broker.clone();
                tokio::spawn(async move {
                    if let Err(e) = b.serve(qlistener).await {
                        tracing::error!("queue server stopped: {e}");
                    }
                });
            }
            let queue_url = ensure_queues(&broker, &spec, &queue_endpoint)?;
            let admin = Arc::new(EmbeddedQueue { broker: broker.clone(), queue: spec.queue.name.clone(), dlq: spec.queue.dlq.clone() });
            (Some(broker), queue_endpoint, queue_url, (admin.clone(), admin))
        };

    // The runtime, the pipeline.
    let (runtime, queue_env) = runtime_for(&spec, &state, &queue_endpoint, &queue_url, &queue_keys)?;
    let paths = Paths { root: state.clone() };
    // (The runtime's lock is held now: no other coalmine runs here.)
    let left = coalmine_pipeline::build::kill_leftover_builds(&paths.build_log(0).with_file_name(""));
    if left > 0 {
        tracing::warn!(count = left, "killed build processes a previous coalmine run left behind");
    }
    let source = GitSource::new(spec.source.repo.location(), branch, paths.source_mirror());
    // `COALMINE_BUILD_<NAME>=value` in coalmine's environment sets `<NAME>` for the builds
    // (e.g. COALMINE_BUILD_CARGO_TARGET_DIR to share compiled dependencies between revisions).
    let build_env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("COALMINE_BUILD_").map(|n| (n.to_string(), v)))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    let engine = Engine::open(EngineParts {
        queue_env,
        spec: spec.clone(),
        paths,
        runtime: runtime.clone(),
        queue: queue_control,
        telemetry,
        source: Box::new(source),
        builder: Arc::new(BuildspecBuilder),
        build_env,
        clock: coalmine_pipeline::system_clock(),
    })?;

    // The databases exist now: owner only, like the folder.
    let _ = workspace::secure_state_dir(&state)?;

    // The API.
    let bind = args.bind.unwrap_or(spec.server.bind);
    let aport = args.api_port.unwrap_or(spec.server.port);
    let alistener = tokio::net::TcpListener::bind(SocketAddr::new(bind, aport)).await.with_context(|| {
        format!("cannot listen on {bind}:{aport} for the API: set [server] port in coalmine.toml, or pass --api-port 0")
    })?;
    let local = alistener.local_addr()?;
    let (api, public_api) = if bind.is_loopback() {
        (format!("http://{local}"), None)
    } else {
        if let Some(w) = coalmine_server::bind_warning(bind) {
            eprintln!("{w}");
        }
        let here = if bind.is_unspecified() { SocketAddr::new(loopback_like(bind), local.port()) } else { local };
        let there = if bind.is_unspecified() { machine_address().unwrap_or(bind) } else { bind };
        (format!("http://{here}"), Some(format!("http://{}", SocketAddr::new(there, local.port()))))
    };
    let exposure = coalmine_server::Exposure { public: !bind.is_loopback(), allowed_hosts: args.allow_host.clone() };
    let router = coalmine_server::router_with(engine.clone(), token.clone(), exposure);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(alistener, router).await {
            tracing::error!("API server stopped: {e}");
        }
    });
    let info = UpInfo { pid: std::process::id(), api: api.clone(), queue: queue_endpoint.clone() };
    std::fs::write(&info_path, serde_json::to_string_pretty(&info)?)?;

    let stop = Arc::new(AtomicBool::new(false));
    let loop_thread = Some(engine.spawn(stop.clone()));
    Ok(Running { engine, runtime, broker, queue_url, queue_endpoint, api, public_api, token, queue_keys, stop, loop_thread, info_path })
}

fn loopback_like(bind: IpAddr) -> IpAddr {
    match bind {
        IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    }
}

/// This machine's address on its default route (what others would connect to), found the
/// usual way: a UDP socket "connected" to a documentation address sends nothing but gets the
/// local address the kernel would use.
fn machine_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// The runtime `[runtime]` names, and the queue wiring its tasks get: the local runtime's
/// tasks use the embedded queue; ECS tasks use the SQS of `[queue] endpoint`, keeping the queue
/// URL their task definition has (the stack's queue).
fn runtime_for(
    spec: &coalmine_spec::AppSpec,
    state: &std::path::Path,
    queue_endpoint: &str,
    queue_url: &str,
    queue_keys: &Credentials,
) -> anyhow::Result<(Arc<dyn Runtime>, QueueEnv)> {
    let q = &spec.queue;
    match &spec.runtime {
        coalmine_spec::RuntimeSpec::Local => {
            let options = match &q.endpoint {
                // An external SQS: each task runs behind its own queue proxy, as on ECS.
                Some(endpoint) => LocalOptions { sidecar: Some(proxy_sidecar(spec, endpoint)?), ..LocalOptions::default() },
                None => LocalOptions { task_keys: Some(Arc::new(QueueKeys(queue_keys.clone()))), ..LocalOptions::default() },
            };
            let runtime = LocalRuntime::with_options(state, options).context("cannot start the local runtime")?;
            let env = QueueEnv {
                endpoint_url: queue_endpoint.to_string(),
                region: q.region.clone(),
                queue: q.name.clone(),
                queue_url: queue_url.to_string(),
            };
            Ok((Arc::new(runtime), env))
        }
        coalmine_spec::RuntimeSpec::Ecs(ecs) => {
            let mut config = EcsConfig::new(&spec.app, ecs.clone());
            config.state_dir = Some(state.to_path_buf());
            let runtime = EcsRuntime::start(config).with_context(|| {
                format!(
                    "cannot start the ECS runtime (cluster `{}`, region {}{})",
                    ecs.cluster,
                    ecs.region,
                    ecs.endpoint.as_deref().map(|e| format!(", endpoint {e}")).unwrap_or_default()
                )
            })?;
            let env = QueueEnv {
                endpoint_url: q.endpoint.clone().unwrap_or_else(|| format!("https://sqs.{}.amazonaws.com", q.region)),
                region: q.region.clone(),
                queue: q.name.clone(),
                queue_url: String::new(),
            };
            Ok((Arc::new(runtime), env))
        }
    }
}

/// The command a local task runs behind on an external SQS: `coalmine proxy` with the
/// queue's endpoint and region; the task's identity comes from its COALMINE_* variables.
fn proxy_sidecar(spec: &coalmine_spec::AppSpec, endpoint: &str) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find coalmine's own executable to run the queue proxies")?;
    // The proxy waits for its app as long as the app's stop timeout (a rolled-back canary's
    // shorter one included), then hands back what the app held and reports it: the runtime
    // sends SIGKILL only `SIDECAR_STOP_MARGIN` later (`LocalOptions::kill_after`).
    let grace = spec.run.stop_timeout.min(spec.run.rollback_stop_timeout).max(std::time::Duration::from_secs(1));
    Ok(vec![
        exe.display().to_string(),
        "proxy".into(),
        "--port".into(),
        "0".into(),
        "--upstream".into(),
        endpoint.to_string(),
        "--region".into(),
        spec.queue.region.clone(),
        "--app".into(),
        spec.app.clone(),
        "--grace".into(),
        format!("{}ms", grace.as_millis()),
        "--".into(),
    ])
}

/// The runtime registers each task's key with the embedded queue while the task exists.
#[derive(Debug)]
struct QueueKeys(Credentials);

impl TaskKeys for QueueKeys {
    fn register(&self, access_key_id: &str, secret: &str) {
        self.0.insert(access_key_id, secret);
    }
    fn remove(&self, access_key_id: &str) {
        self.0.remove(access_key_id);
    }
}

/// Create the DLQ and the app's queue with the spec's attributes (idempotent).
fn ensure_queues(broker: &Broker, spec: &coalmine_spec::AppSpec, endpoint: &str) -> anyhow::Result<String> {
    use std::collections::BTreeMap;
    let q = &spec.queue;
    let dlq_attrs = BTreeMap::from([("MessageRetentionPeriod".to_string(), q.dlq_retention.as_secs().to_string())]);
    broker
        .ensure_queue(&q.dlq, &dlq_attrs)
        .with_context(|| format!("cannot create the dead-letter queue `{}`", q.dlq))?;
    let dlq_arn = coalmine_queue::arn_of(&q.region, &q.account_id, &q.dlq);
    let attrs = BTreeMap::from([
        ("VisibilityTimeout".to_string(), q.visibility_timeout.as_secs().to_string()),
        (
            "RedrivePolicy".to_string(),
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": q.max_receive_count}).to_string(),
        ),
    ]);
    broker
        .ensure_queue(&q.name, &attrs)
        .with_context(|| format!("cannot create the queue `{}`", q.name))?;
    Ok(format!("{endpoint}/{}/{}", q.account_id, q.name))
}

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let running = start(&args).await?;
        let spec = running.engine.spec().clone();
        println!("coalmine up: {}", spec.app);
        println!("  queue      {}  (queue `{}`, DLQ `{}`)", running.queue_endpoint, spec.queue.name, spec.queue.dlq);
        if running.broker.is_none() {
            println!("  telemetry  {}  (the tasks' queue proxies report here)", coalmine_proxy::telemetry_queue_name(&spec.app));
        } else if spec.queue.verify_signatures {
            println!(
                "  your key   .coalmine/credentials  (AWS_SHARED_CREDENTIALS_FILE=.coalmine/credentials aws --endpoint-url {} sqs ...)",
                running.queue_endpoint
            );
        }
        match &running.public_api {
            None => {
                println!("  dashboard  {}", coalmine_server::dashboard_url(&running.api, &running.token));
                println!("  API        {}/api/v1  (token in .coalmine/token)", running.api);
            }
            Some(public) => {
                println!("  dashboard  {}  (from this machine: {})", coalmine_server::dashboard_url(public, &running.token), running.api);
                println!("  API        {public}/api/v1  (token in .coalmine/token; /metrics needs it too)");
            }
        }
        println!("  watching   branch `{}` of {}", spec.source.branch.as_deref().unwrap_or_default(), spec.source.repo.location());
        if let Some(ecs) = spec.runtime.ecs() {
            println!(
                "  runtime    ECS cluster `{}` in {}: services `{}` (primary) and `{}` (canary)",
                ecs.cluster, ecs.region, ecs.primary_service, ecs.canary_service
            );
        }
        println!("Ctrl-C stops everything.");
        let engine = running.engine.clone();
        let printer = tokio::spawn(async move { print_events(engine).await });
        wait_for_signal().await;
        printer.abort();
        if spec.runtime.ecs().is_some() {
            println!("stopping: the ECS services keep running as they are");
        } else {
            println!("stopping: tasks get SIGTERM, then SIGKILL after the stop timeout");
        }
        tokio::task::spawn_blocking(move || running.shutdown()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Print every pipeline event as it happens.
pub async fn print_events(engine: Arc<Engine>) {
    let mut last = engine.events_after(0).ok().and_then(|e| e.last().map(|e| e.id)).unwrap_or(0);
    loop {
        if let Ok(events) = engine.events_after(last) {
            for e in events {
                last = e.id;
                let exec = e.execution_id.map(|i| format!("#{i} ")).unwrap_or_default();
                println!("{} {exec}{}: {}", crate::output::clock(e.at_ms), e.kind, e.reason);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
