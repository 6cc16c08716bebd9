//! The ECS backend against moto's server (ECS, EC2, IAM, CloudWatch Logs on a free port).
//!
//! What moto models and these tests check: the task definition revisions the backend registers
//! (field by field), which task definition each service is put on, its desired count and
//! deployment configuration. moto starts no task and never completes a deployment, so rollout
//! progress, task exits and the circuit breaker are checked in `ecs_interpretation.rs` against
//! responses shaped like the ECS API reference's examples.

#[path = "../../cli/tests/support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ContainerCondition, ContainerDefinition, TaskDefinition};
use coalmine_runtime::ecs::{EcsBackend, EcsConfig, EcsRuntime, REVISION_ENV};
use coalmine_runtime::{Artifact, QueueEnv, RevisionSpec, Runtime, ServiceSpec};
use coalmine_spec::{EcsSpec, PROXY_CONTAINER};

const APP: &str = "sample-app";
const REPO: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app";
const PROXY_IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/coalmine:1";
const QUEUE_URL: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/sample-app-queue";

fn revision(root: &Path, name: &str, body: Option<&str>) -> RevisionSpec {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let body = body.map(str::to_string).unwrap_or_else(|| format!(r#"[{{"name":"{APP}","imageUri":"{REPO}:{name}"}}]"#));
    std::fs::write(dir.join("imagedefinitions.json"), body).unwrap();
    RevisionSpec { name: name.into(), artifact: Artifact::read(&dir).unwrap(), command: String::new(), env: BTreeMap::from([("BATCH".into(), "10".into())]) }
}

fn spec(name: &str, revision: RevisionSpec, desired: u32, min_healthy: u32) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        revision,
        desired,
        minimum_healthy_percent: min_healthy,
        maximum_percent: 200,
        healthy_after: Duration::from_secs(2),
        health_command: None,
        stop_timeout: Duration::from_secs(30),
        circuit_breaker_threshold: None,
        queue: QueueEnv {
            endpoint_url: "https://sqs.us-east-1.amazonaws.com".into(),
            region: "us-east-1".into(),
            queue: "sample-app-queue".into(),
            queue_url: QUEUE_URL.into(),
        },
    }
}

fn env_of(c: &ContainerDefinition) -> BTreeMap<String, String> {
    c.environment().iter().map(|kv| (kv.name().unwrap().to_string(), kv.value().unwrap().to_string())).collect()
}

fn container<'a>(td: &'a TaskDefinition, name: &str) -> &'a ContainerDefinition {
    td.container_definitions().iter().find(|c| c.name() == Some(name)).unwrap_or_else(|| panic!("no container {name} in {td:?}"))
}

struct Fixture {
    backend: EcsBackend,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn service_td(&self, ecs_name: &str) -> String {
        self.rt.block_on(self.backend.describe_service(ecs_name)).unwrap().task_definition().unwrap().to_string()
    }
    fn td(&self, arn: &str) -> TaskDefinition {
        self.rt.block_on(async {
            self.backend.client.describe_task_definition().task_definition(arn).send().await.unwrap().task_definition().unwrap().clone()
        })
    }
    fn revisions_registered(&self) -> usize {
        self.rt.block_on(async {
            self.backend.client.list_task_definitions().family_prefix(APP).send().await.unwrap().task_definition_arns().len()
        })
    }
    /// Poll DescribeServices until `ecs_name` is on a task definition other than `before`.
    fn wait_for_new_td(&self, ecs_name: &str, before: &str, ecs: &EcsRuntime, service: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let now = self.service_td(ecs_name);
            if now != before {
                return now;
            }
            assert!(Instant::now() < deadline, "{ecs_name} still on {before} (backend error: {:?})", ecs.last_error(service));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_status(ecs: &EcsRuntime, service: &str, revision: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if ecs.service(service).is_some_and(|s| s.revision == revision) {
            return;
        }
        assert!(Instant::now() < deadline, "status of {service} never showed {revision}: {:?} (error {:?})", ecs.service(service), ecs.last_error(service));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "end-to-end: the ECS backend on moto's server (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn deploy_promote_and_roll_back_on_moto() {
    let server = moto::Moto::start();
    for (k, v) in server.client_env() {
        // One test in this binary: nothing else reads the environment meanwhile.
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_PROFILE");
    std::env::remove_var("AWS_SESSION_TOKEN");
    let setup = server.run_python(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/ecs_guidance.py"), &[APP], Duration::from_secs(120));
    let setup: serde_json::Value = serde_json::from_str(setup.trim()).unwrap();
    let initial_td = setup["task_definition"].as_str().unwrap().to_string();

    let mut ecs_spec = EcsSpec::default_for(APP, "us-east-1");
    ecs_spec.endpoint = Some(server.endpoint.clone());
    ecs_spec.proxy_image = Some(PROXY_IMAGE.into());
    let mut cfg = EcsConfig::new(APP, ecs_spec);
    cfg.telemetry_queue = Some("https://sqs.us-east-1.amazonaws.com/123456789012/sample-app-coalmine-telemetry".into());
    cfg.poll_interval = Duration::from_millis(200);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backend = rt.block_on(EcsBackend::connect(cfg.clone()));
    let fx = Fixture { backend, rt };
    let tmp = tempfile::tempdir().unwrap();

    // A missing service is a clear error at start.
    let mut wrong = cfg.clone();
    wrong.ecs.canary_service = "no-such-service".into();
    let err = EcsRuntime::start(wrong).err().expect("a missing service fails the start").to_string();
    assert!(err.contains("no-such-service") && err.contains("sample-app") && err.contains("canary_service"), "{err}");

    let state = tempfile::tempdir().unwrap();
    cfg.state_dir = Some(state.path().to_path_buf());
    let ecs = EcsRuntime::start(cfg.clone()).unwrap();
    // One controller per state folder.
    let err = EcsRuntime::start(cfg.clone()).err().expect("a second runtime on the same state folder is refused").to_string();
    assert!(err.contains("used by another coalmine runtime") && err.contains(&std::process::id().to_string()), "{err}");
    let primary = ecs.service("primary").expect("the primary's status after start");
    assert_eq!(primary.desired, 3);
    assert_eq!(primary.revision, "initial", "a task definition without COALMINE_REVISION shows its image tag");
    assert_eq!(ecs.service("canary").unwrap().desired, 1);

    // A revision without imagedefinitions.json, or without the app's container, is refused at once.
    let bad_dir = tmp.path().join("empty");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let err = ecs
        .apply(spec("canary", RevisionSpec { name: "x".into(), artifact: Artifact::read(&bad_dir).unwrap(), command: String::new(), env: BTreeMap::new() }, 1, 100))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&bad_dir.join("imagedefinitions.json").display().to_string()) && err.contains("buildspec"), "{err}");
    let other = revision(tmp.path(), "other", Some(r#"[{"name":"web","imageUri":"nginx:1"}]"#));
    let err = ecs.apply(spec("canary", other, 1, 100)).unwrap_err().to_string();
    assert!(err.contains("`sample-app`") && err.contains("web"), "{err}");

    // 1. The canary gets rev1: a new task definition revision, field by field.
    let rev1 = revision(tmp.path(), "rev1", None);
    ecs.apply(spec("canary", rev1.clone(), 1, 100)).unwrap();
    let canary_td = fx.wait_for_new_td("sample-app-canary", &initial_td, &ecs, "canary");
    assert_eq!(fx.service_td("sample-app"), initial_td, "the primary is untouched");
    let old = fx.td(&initial_td);
    let new = fx.td(&canary_td);
    assert_eq!(new.family(), Some(APP));
    assert_eq!(new.revision(), old.revision() + 1);
    assert_eq!(new.task_role_arn(), Some(setup["task_role"].as_str().unwrap()));
    assert_eq!(new.execution_role_arn(), Some(setup["execution_role"].as_str().unwrap()));
    assert_eq!(new.network_mode(), old.network_mode());
    assert_eq!(new.requires_compatibilities(), old.requires_compatibilities());
    assert_eq!((new.cpu(), new.memory()), (Some("256"), Some("512")));
    assert_eq!(new.container_definitions().len(), 2);

    let app = container(&new, APP);
    assert_eq!(app.image(), Some(format!("{REPO}:rev1").as_str()));
    assert_eq!(app.essential(), Some(true));
    let env = env_of(app);
    let expected: BTreeMap<String, String> = [
        ("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:9325"),
        ("AWS_REGION", "us-east-1"),
        ("BATCH", "10"),
        (REVISION_ENV, "rev1"),
        ("LOG_LEVEL", "info"),
        ("QUEUE", "sample-app-queue"),
        ("QUEUE_URL", QUEUE_URL),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, expected, "the app's environment: the old one, the queue wiring through the proxy, the revision");
    let depends = app.depends_on();
    assert_eq!(depends.len(), 1);
    assert_eq!(depends[0].container_name(), PROXY_CONTAINER);
    assert_eq!(depends[0].condition(), &ContainerCondition::Start);
    assert_eq!(app.stop_timeout(), Some(30));
    assert_eq!(app.log_configuration(), container(&old, APP).log_configuration(), "the app's logs stay where they were");

    let proxy = container(&new, PROXY_CONTAINER);
    assert_eq!(proxy.image(), Some(PROXY_IMAGE));
    assert_eq!(proxy.essential(), Some(true));
    assert_eq!(proxy.entry_point(), ["coalmine"]);
    assert_eq!(
        proxy.command(),
        ["proxy", "--port", "9325", "--telemetry-queue", "https://sqs.us-east-1.amazonaws.com/123456789012/sample-app-coalmine-telemetry"]
    );
    let penv = env_of(proxy);
    assert_eq!(penv.get("COALMINE_PROXY_UPSTREAM").map(String::as_str), Some("https://sqs.us-east-1.amazonaws.com"));
    assert_eq!(penv.get("COALMINE_APP").map(String::as_str), Some(APP));
    assert_eq!(penv.get("AWS_REGION").map(String::as_str), Some("us-east-1"));
    assert_eq!(penv.get("COALMINE_REVISION").map(String::as_str), Some("rev1"), "the sidecar reports the coalmine revision");
    let plog = proxy.log_configuration().expect("the sidecar logs like the app");
    assert_eq!(plog.options().unwrap().get("awslogs-group").map(String::as_str), Some("/ecs/sample-app"));
    assert_eq!(plog.options().unwrap().get("awslogs-stream-prefix").map(String::as_str), Some(PROXY_CONTAINER));

    // The service update: desired count and deployment configuration.
    let service = fx.rt.block_on(fx.backend.describe_service("sample-app-canary")).unwrap();
    assert_eq!(service.desired_count(), 1);
    if let Some(dc) = service.deployment_configuration() {
        assert_eq!(dc.minimum_healthy_percent(), Some(100));
        assert_eq!(dc.maximum_percent(), Some(200));
        let cb = dc.deployment_circuit_breaker().expect("circuit breaker set");
        assert!(cb.enable() && cb.rollback());
    } else {
        panic!("moto returned no deploymentConfiguration for the canary: {service:?}");
    }
    wait_status(&ecs, "canary", "rev1");
    assert_eq!(ecs.spec("canary").unwrap().revision.name, "rev1");

    // 2. Promote: the primary goes onto the canary's task definition, nothing new registered.
    let registered = fx.revisions_registered();
    ecs.apply(spec("primary", rev1.clone(), 3, 100)).unwrap();
    let primary_td = fx.wait_for_new_td("sample-app", &initial_td, &ecs, "primary");
    assert_eq!(primary_td, canary_td, "the primary runs the very task definition the canary was judged on");
    assert_eq!(fx.revisions_registered(), registered);
    wait_status(&ecs, "primary", "rev1");

    // 3. rev2 to the canary, then rolled back: the canary goes back to the primary's task definition.
    let rev2 = revision(tmp.path(), "rev2", None);
    ecs.apply(spec("canary", rev2, 1, 100)).unwrap();
    let rev2_td = fx.wait_for_new_td("sample-app-canary", &canary_td, &ecs, "canary");
    assert_eq!(container(&fx.td(&rev2_td), APP).image(), Some(format!("{REPO}:rev2").as_str()));
    assert_eq!(fx.revisions_registered(), registered + 1);
    wait_status(&ecs, "canary", "rev2");

    ecs.apply(spec("canary", rev1, 1, 0)).unwrap();
    let back = fx.wait_for_new_td("sample-app-canary", &rev2_td, &ecs, "canary");
    assert_eq!(back, primary_td, "rollback: the canary is on the primary's task definition");
    assert_eq!(fx.revisions_registered(), registered + 1, "a rollback registers nothing");
    let service = fx.rt.block_on(fx.backend.describe_service("sample-app-canary")).unwrap();
    assert_eq!(service.deployment_configuration().and_then(|d| d.minimum_healthy_percent()), Some(0));
    wait_status(&ecs, "canary", "rev1");

    // Scaling keeps the task definition.
    ecs.scale("canary", 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while fx.rt.block_on(fx.backend.describe_service("sample-app-canary")).unwrap().desired_count() != 2 {
        assert!(Instant::now() < deadline, "canary never scaled to 2 ({:?})", ecs.last_error("canary"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fx.service_td("sample-app-canary"), primary_td);
    ecs.shutdown();
}
