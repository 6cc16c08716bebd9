//! The ECS backend through what moto's ECS does not model, on moto's server with the stand-in
//! of `tests/python/ecs_standin.py` (deployments that roll out, tasks that run and exit, the
//! deployment circuit breaker with rollback, the awslogs lines of each task): a revision whose
//! app exits at start is failed and rolled back by ECS's circuit breaker, and the runtime
//! records it as the local runtime records its own (the deployment Failed, rolled back to the
//! revision before, the service's desired spec back on that revision, the exits counted), and
//! reads the tasks' logs from CloudWatch Logs.

#[path = "../../cli/tests/support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use coalmine_runtime::ecs::{EcsConfig, EcsRuntime};
use coalmine_runtime::{Artifact, DeploymentState, QueueEnv, RevisionSpec, Runtime, ServiceSpec, ServiceStatus};
use coalmine_spec::EcsSpec;

const APP: &str = "sample-app";
const REPO: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app";

fn revision(root: &Path, name: &str, env: &[(&str, &str)]) -> RevisionSpec {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("imagedefinitions.json"), format!(r#"[{{"name":"{APP}","imageUri":"{REPO}:{name}"}}]"#)).unwrap();
    RevisionSpec { name: name.into(), artifact: Artifact::read(&dir).unwrap(), command: String::new(), env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>() }
}

fn spec(revision: RevisionSpec) -> ServiceSpec {
    ServiceSpec {
        name: "canary".into(),
        revision,
        desired: 1,
        minimum_healthy_percent: 100,
        maximum_percent: 200,
        healthy_after: Duration::from_secs(2),
        health_command: None,
        stop_timeout: Duration::from_secs(30),
        circuit_breaker_threshold: None,
        queue: QueueEnv { endpoint_url: String::new(), region: "us-east-1".into(), queue: String::new(), queue_url: String::new() },
    }
}

fn wait(ecs: &EcsRuntime, what: &str, ok: impl Fn(&ServiceStatus) -> bool) -> ServiceStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = ecs.service("canary").filter(|st| ok(st)) {
            return st;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:#?} (error {:?})", ecs.service("canary"), ecs.last_error("canary"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "end-to-end: the ECS backend on moto's server with the rollout stand-in (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn a_circuit_breaker_rollback_by_ecs_is_recorded_and_the_logs_read() {
    // The breaker trips at the second failed task (ECS's own minimum is 3; fewer keeps it quick).
    let server = moto::Moto::start_with_ecs_rollouts(&[("STANDIN_ROLLOUT_SECONDS", "1"), ("STANDIN_CIRCUIT_BREAKER_FAILURES", "2")]);
    for (k, v) in server.client_env() {
        // One test in this binary: nothing else reads the environment meanwhile.
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_PROFILE");
    std::env::remove_var("AWS_SESSION_TOKEN");
    server.run_python(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/ecs_guidance.py"), &[APP], Duration::from_secs(120));

    let mut ecs_spec = EcsSpec::default_for(APP, "us-east-1");
    ecs_spec.endpoint = Some(server.endpoint.clone());
    let mut cfg = EcsConfig::new(APP, ecs_spec);
    cfg.poll_interval = Duration::from_millis(200);
    let ecs = EcsRuntime::start(cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // A good revision rolls out: the deployment completes, its task runs.
    ecs.apply(spec(revision(tmp.path(), "good", &[]))).unwrap();
    let st = wait(&ecs, "the good revision to be steady", |st| st.revision == "good" && st.steady);
    assert_eq!(st.tasks.len(), 1, "{st:#?}");
    assert!(st.tasks[0].id.starts_with("arn:aws:ecs:us-east-1:"), "{st:#?}");
    assert_eq!(st.deployments.last().map(|d| d.state), Some(DeploymentState::Completed), "{st:#?}");

    // A revision whose app exits at start: ECS's circuit breaker fails it and rolls back.
    ecs.apply(spec(revision(tmp.path(), "bad", &[("STANDIN_EXIT_CODE", "3")]))).unwrap();
    let st = wait(&ecs, "the circuit breaker's rollback to be seen", |st| {
        st.deployments.iter().any(|d| d.revision == "bad" && d.state == DeploymentState::Failed) && st.revision == "good" && st.steady
    });
    let failed = st.deployments.iter().find(|d| d.revision == "bad").unwrap();
    assert_eq!(failed.rolled_back_to.as_deref(), Some("good"), "{st:#?}");
    assert!(failed.reason.contains("circuit breaker") && failed.reason.contains("task(s) failed"), "{st:#?}");
    assert!(st.exits_by_revision.get("bad").is_some_and(|n| *n >= 2), "each failed task is an exit: {st:#?}");
    assert!(st.tasks.iter().all(|t| t.revision == "good"), "{st:#?}");
    assert_eq!(ecs.spec("canary").unwrap().revision.name, "good", "the desired spec follows ECS's rollback");

    // The logs: the running task's, and the previous revision's (the exits), from CloudWatch Logs.
    let now = ecs.service_logs("canary", false, 50).expect("ECS reads logs itself").unwrap();
    assert!(!now.is_empty() && now.iter().all(|(task, line)| !task.contains('/') && line.contains("task started (") && line.contains(":good)")), "{now:?}");
    let previous = ecs.service_logs("canary", true, 50).unwrap().unwrap();
    assert!(previous.iter().any(|(_, line)| line.contains("exits with code 3")), "{previous:?}");
    assert!(previous.iter().all(|(_, line)| !line.contains(":good)")), "only the bad revision's tasks: {previous:?}");
    ecs.shutdown();
}
