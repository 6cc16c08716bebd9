//! The ECS backend's reading of what ECS says, for what moto's server does not model: rollout
//! progress (IN_PROGRESS → COMPLETED), the deployment circuit breaker with rollback, stopped
//! tasks with exit codes. The inputs are `DescribeServices` / `DescribeTasks` JSON shaped like
//! the ECS API reference's examples (field names and value forms as there, our own values).
//! The imagedefinitions.json parser is checked here too.

use std::path::Path;

use coalmine_runtime::ecs::{
    deployment_number, exit_description, interpret_service, is_crash, EcsConfig, ServiceMemory,
    ServiceView, TaskView,
};
use coalmine_runtime::artifact::parse_image_definitions;
use coalmine_runtime::{Artifact, DeploymentState, TaskState};
use coalmine_spec::EcsSpec;
use serde_json::{json, Value};

const TD1: &str = "arn:aws:ecs:us-east-1:012345678910:task-definition/sample-app:2";
const TD2: &str = "arn:aws:ecs:us-east-1:012345678910:task-definition/sample-app:3";

fn rev(arn: &str) -> String {
    match arn {
        TD1 => "rev1".into(),
        TD2 => "rev2".into(),
        other => other.rsplit('/').next().unwrap().to_string(),
    }
}

/// One service of a `DescribeServices` answer, as the API reference's example shows it.
fn service(task_definition: &str, desired: i64, running: i64, pending: i64, deployments: Value, events: Value) -> ServiceView {
    let body = json!({
        "services": [{
            "serviceArn": "arn:aws:ecs:us-east-1:012345678910:service/sample-app/sample-app-canary",
            "serviceName": "sample-app-canary",
            "clusterArn": "arn:aws:ecs:us-east-1:012345678910:cluster/sample-app",
            "status": "ACTIVE",
            "taskDefinition": task_definition,
            "desiredCount": desired,
            "runningCount": running,
            "pendingCount": pending,
            "launchType": "FARGATE",
            "deploymentConfiguration": {
                "deploymentCircuitBreaker": { "enable": true, "rollback": true },
                "maximumPercent": 200,
                "minimumHealthyPercent": 100
            },
            "deployments": deployments,
            "events": events,
            "createdAt": 1.557128361E9,
        }],
        "failures": []
    });
    serde_json::from_value(body["services"][0].clone()).unwrap()
}

#[allow(clippy::too_many_arguments)] // one argument per field of the API's deployment object
fn deployment(id: &str, status: &str, td: &str, desired: i64, running: i64, pending: i64, failed: i64, created: f64, rollout: &str, reason: &str) -> Value {
    json!({
        "id": id,
        "status": status,
        "taskDefinition": td,
        "desiredCount": desired,
        "pendingCount": pending,
        "runningCount": running,
        "failedTasks": failed,
        "createdAt": created,
        "updatedAt": created + 60.0,
        "launchType": "FARGATE",
        "rolloutState": rollout,
        "rolloutStateReason": reason,
    })
}

#[test]
fn a_rolling_deployment_goes_from_in_progress_to_completed() {
    let mut memory = ServiceMemory::default();
    // DescribeServices while ECS replaces the rev1 task by a rev2 one.
    let during = service(
        TD2,
        1,
        1,
        1,
        json!([
            deployment("ecs-svc/9223370564341623665", "PRIMARY", TD2, 1, 0, 1, 0, 1.557130000E9, "IN_PROGRESS", "ECS deployment ecs-svc/9223370564341623665 in progress."),
            deployment("ecs-svc/9223370564343611322", "ACTIVE", TD1, 1, 1, 0, 0, 1.557128361E9, "COMPLETED", "ECS deployment ecs-svc/9223370564343611322 completed."),
        ]),
        json!([{ "id": "e1", "createdAt": 1.557130001E9, "message": "(service sample-app-canary) has started 1 tasks: (task 9b3d...)." }]),
    );
    let st = interpret_service("canary", &during, &rev, &[], &mut memory);
    assert_eq!(st.name, "canary");
    assert_eq!(st.revision, "rev2");
    assert!(!st.steady);
    assert_eq!(st.deployments.len(), 2);
    let newest = st.deployments.last().unwrap();
    assert_eq!((newest.revision.as_str(), newest.state, newest.id), ("rev2", DeploymentState::InProgress, 9223370564341623665));
    assert_eq!(newest.finished_at_ms, None);
    assert_eq!(st.deployments[0].state, DeploymentState::Completed);

    // Later: the old deployment is drained and gone from the answer; the new one is COMPLETED.
    let after = service(
        TD2,
        1,
        1,
        0,
        json!([deployment("ecs-svc/9223370564341623665", "PRIMARY", TD2, 1, 1, 0, 0, 1.557130000E9, "COMPLETED", "ECS deployment ecs-svc/9223370564341623665 completed.")]),
        json!([{ "id": "e2", "createdAt": 1.557130100E9, "message": "(service sample-app-canary) has reached a steady state." }]),
    );
    let st = interpret_service("canary", &after, &rev, &[], &mut memory);
    assert!(st.steady, "{st:?}");
    assert_eq!(st.deployments.len(), 2, "the drained deployment is remembered");
    let newest = st.deployments.last().unwrap();
    assert_eq!(newest.state, DeploymentState::Completed);
    assert_eq!(newest.finished_at_ms, Some(1_557_130_060_000));
    assert!(newest.rolled_back_to.is_none());

    // Running but not yet all tasks: not steady.
    let short = service(TD2, 2, 1, 1, json!([deployment("ecs-svc/9223370564341623665", "PRIMARY", TD2, 2, 1, 1, 0, 1.557130000E9, "COMPLETED", "")]), json!([]));
    assert!(!interpret_service("canary", &short, &rev, &[], &mut ServiceMemory::default()).steady);
}

#[test]
fn the_circuit_breaker_rollback_is_recognised() {
    let mut memory = ServiceMemory::default();
    // ECS's circuit breaker failed the rev2 deployment and started one back to rev1.
    let answer = service(
        TD1,
        1,
        0,
        1,
        json!([
            deployment("ecs-svc/9223370564340000001", "PRIMARY", TD1, 1, 0, 1, 0, 1.557131000E9, "IN_PROGRESS", "ECS deployment ecs-svc/9223370564340000001 in progress."),
            deployment("ecs-svc/9223370564341623665", "ACTIVE", TD2, 1, 0, 0, 3, 1.557130000E9, "FAILED", "ECS deployment circuit breaker: tasks failed to start."),
        ]),
        json!([
            { "id": "e3", "createdAt": 1.557131000E9, "message": "(service sample-app-canary) (deployment ecs-svc/9223370564341623665) deployment failed: tasks failed to start." },
            { "id": "e4", "createdAt": 1.557131001E9, "message": "(service sample-app-canary) rolling back to deployment ecs-svc/9223370564340000001." },
        ]),
    );
    let st = interpret_service("canary", &answer, &rev, &[], &mut memory);
    assert_eq!(st.revision, "rev1", "the service is back on rev1's task definition");
    let failed = st.deployments.iter().find(|d| d.revision == "rev2").unwrap();
    assert_eq!(failed.state, DeploymentState::Failed);
    assert_eq!(failed.rolled_back_to.as_deref(), Some("rev1"));
    assert!(failed.reason.contains("circuit breaker") && failed.reason.contains("3 task(s) failed"), "{}", failed.reason);
    assert!(!st.steady);

    // Once ECS drops the failed deployment from the answer, the record stays.
    let later = service(TD1, 1, 1, 0, json!([deployment("ecs-svc/9223370564340000001", "PRIMARY", TD1, 1, 1, 0, 0, 1.557131000E9, "COMPLETED", "")]), json!([]));
    let st = interpret_service("canary", &later, &rev, &[], &mut memory);
    let failed = st.deployments.iter().find(|d| d.revision == "rev2").unwrap();
    assert_eq!((failed.state, failed.rolled_back_to.as_deref()), (DeploymentState::Failed, Some("rev1")));
    assert!(st.steady);

    // Only the failed deployment listed, the rollback said by the events: still recognised.
    let events_only = service(
        TD1,
        1,
        0,
        0,
        json!([deployment("ecs-svc/9223370564341623665", "ACTIVE", TD2, 1, 0, 0, 3, 1.557130000E9, "FAILED", "ECS deployment circuit breaker: tasks failed to start.")]),
        json!([{ "id": "e4", "createdAt": 1.557131001E9, "message": "(service sample-app-canary) rolling back to deployment ecs-svc/9223370564340000001 after ecs-svc/9223370564341623665 failed." }]),
    );
    let st = interpret_service("canary", &events_only, &rev, &[], &mut ServiceMemory::default());
    assert_eq!(st.deployments[0].rolled_back_to.as_deref(), Some("rev1"));

    // A failed deployment without rollback (the breaker without rollback) has nothing to go back to.
    let no_rollback = service(
        TD2,
        1,
        0,
        0,
        json!([deployment("ecs-svc/9223370564341623665", "PRIMARY", TD2, 1, 0, 0, 3, 1.557130000E9, "FAILED", "ECS deployment circuit breaker: tasks failed to start.")]),
        json!([]),
    );
    let st = interpret_service("canary", &no_rollback, &rev, &[], &mut ServiceMemory::default());
    assert_eq!((st.deployments[0].state, st.deployments[0].rolled_back_to.as_deref()), (DeploymentState::Failed, None));
}

/// A task of a `DescribeTasks` answer, shaped like the API reference's example.
fn task(id: &str, td: &str, last: &str, desired: &str, stop_code: Option<&str>, reason: Option<&str>, exit: Option<i32>) -> TaskView {
    let mut t = json!({
        "taskArn": format!("arn:aws:ecs:us-east-1:012345678910:task/sample-app/{id}"),
        "clusterArn": "arn:aws:ecs:us-east-1:012345678910:cluster/sample-app",
        "taskDefinitionArn": td,
        "lastStatus": last,
        "desiredStatus": desired,
        "launchType": "FARGATE",
        "group": "service:sample-app-canary",
        "startedBy": "ecs-svc/9223370564341623665",
        "createdAt": 1.557134011644E9,
        "startedAt": 1.557134012E9,
        "containers": [
            { "name": "coalmine-proxy", "lastStatus": last, "exitCode": if last == "STOPPED" { json!(0) } else { Value::Null } },
            { "name": "sample-app", "lastStatus": last, "exitCode": exit.map(Value::from).unwrap_or(Value::Null) }
        ],
        "healthStatus": "UNKNOWN"
    });
    if let Some(code) = stop_code {
        t["stopCode"] = json!(code);
        t["stoppedAt"] = json!(1.557134100E9);
    }
    if let Some(r) = reason {
        t["stoppedReason"] = json!(r);
    }
    serde_json::from_value(json!({ "tasks": [t] })["tasks"][0].clone()).unwrap()
}

#[test]
fn stopped_tasks_count_as_crashes_only_when_nobody_asked() {
    let crashed = task("a1", TD2, "STOPPED", "STOPPED", Some("EssentialContainerExited"), Some("Essential container in task exited"), Some(1));
    let failed_start = task("a2", TD2, "STOPPED", "STOPPED", Some("TaskFailedToStart"), Some("CannotPullContainerError: pull image manifest has been retried 5 time(s)"), None);
    let unhealthy = task("a3", TD2, "STOPPED", "STOPPED", Some("ServiceSchedulerInitiated"), Some("Task failed container health checks"), Some(137));
    let scaled_in = task("a4", TD1, "STOPPED", "STOPPED", Some("ServiceSchedulerInitiated"), Some("Scaling activity initiated by (deployment ecs-svc/9223370564341623665)"), Some(0));
    let stopped_by_user = task("a5", TD1, "STOPPED", "STOPPED", Some("UserInitiated"), Some("Task stopped by user"), Some(143));
    let running = task("b1", TD2, "RUNNING", "RUNNING", None, None, None);
    let starting = task("b2", TD2, "PROVISIONING", "RUNNING", None, None, None);
    let stopping = task("b3", TD1, "DEACTIVATING", "STOPPED", None, None, None);

    assert!(is_crash(&crashed));
    assert!(is_crash(&failed_start));
    assert!(is_crash(&unhealthy));
    assert!(!is_crash(&scaled_in));
    assert!(!is_crash(&stopped_by_user));
    assert!(!is_crash(&running));
    assert_eq!(exit_description(&crashed, "sample-app"), "exit 1 (Essential container in task exited)");
    assert_eq!(exit_description(&unhealthy, "sample-app"), "exit 137 (Task failed container health checks)");
    assert!(exit_description(&failed_start, "sample-app").starts_with("CannotPullContainerError"));

    let view = service(TD2, 2, 1, 1, json!([deployment("ecs-svc/9223370564341623665", "PRIMARY", TD2, 2, 1, 1, 2, 1.557130000E9, "IN_PROGRESS", "")]), json!([]));
    let all = vec![crashed.clone(), failed_start, unhealthy, scaled_in, stopped_by_user, running, starting, stopping];
    let mut memory = ServiceMemory::default();
    let st = interpret_service("canary", &view, &rev, &all, &mut memory);
    assert_eq!(st.exits_by_revision.get("rev2"), Some(&3));
    assert_eq!(st.exits_by_revision.get("rev1"), None);
    assert_eq!(st.tasks.len(), 3, "stopped tasks are not listed as tasks");
    let by_id = |suffix: &str| st.tasks.iter().find(|t| t.id.ends_with(suffix)).unwrap();
    assert_eq!(by_id("/b1").state, TaskState::Running);
    assert_eq!(by_id("/b1").id, "arn:aws:ecs:us-east-1:012345678910:task/sample-app/b1", "tasks are named by their ARN");
    assert_eq!(by_id("/b1").started_at_ms, 1_557_134_012_000);
    assert_eq!(by_id("/b2").state, TaskState::Pending);
    assert_eq!(by_id("/b3").state, TaskState::Stopping);
    assert_eq!(by_id("/b3").revision, "rev1");

    // The next poll sees the same stopped tasks (ECS keeps them for a while): counted once.
    let st = interpret_service("canary", &view, &rev, &all, &mut memory);
    assert_eq!(st.exits_by_revision.get("rev2"), Some(&3));
    let another = task("a6", TD2, "STOPPED", "STOPPED", Some("EssentialContainerExited"), Some("Essential container in task exited"), Some(2));
    let st = interpret_service("canary", &view, &rev, &[crashed, another], &mut memory);
    assert_eq!(st.exits_by_revision.get("rev2"), Some(&4));
}

#[test]
fn imagedefinitions_json_as_codepipeline_reads_it() {
    let path = Path::new("/art/rev1/imagedefinitions.json");
    // The image of the app's container, as the ECS backend asks the build's artifact for it.
    let image = |text: &str| {
        parse_image_definitions(text, path)
            .and_then(|images| Artifact { dir: "/art/rev1".into(), images }.image("sample-app").map(str::to_string))
    };
    // As the guidance's buildspec writes it (printf, one line).
    let ok = r#"[{"name":"sample-app","imageUri":"123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app:3f2a9c1"}]"#;
    assert_eq!(image(ok).unwrap(), "123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app:3f2a9c1");
    let two = r#"[ {"name": "sidecar", "imageUri": "x:1"},
                  {"name": "sample-app", "imageUri": "repo@sha256:abc"} ]"#;
    assert_eq!(image(two).unwrap(), "repo@sha256:abc");

    let err = |text: &str| image(text).unwrap_err().to_string();
    let e = err("[{\"name\":\"sample-app\",\n \"imageUri\": }]");
    assert!(e.starts_with("/art/rev1/imagedefinitions.json: ") && e.contains("line 2") && e.contains("printf"), "{e}");
    let e = err(r#"{"name":"sample-app","imageUri":"x:1"}"#);
    assert!(e.contains("not a JSON list"), "{e}");
    let e = err(r#"[{"name":"sample-app"}]"#);
    assert!(e.contains("entry 0 (`sample-app`) has no \"imageUri\""), "{e}");
    let e = err(r#"[{"imageUri":"x:1"}]"#);
    assert!(e.contains("entry 0 has no \"name\""), "{e}");
    let e = err(r#"[{"name":"web","imageUri":"x:1"},{"name":"worker","imageUri":"y:1"}]"#);
    assert!(e.contains("no entry for the app's container `sample-app`") && e.contains("web, worker") && e.contains("[runtime] container"), "{e}");
    let e = err("[]");
    assert!(e.contains("named no image") && e.contains("`sample-app`"), "{e}");
    let e = err(r#"[{"name":"sample-app","imageUri":"x:1"},{"name":"sample-app","imageUri":"x:2"}]"#);
    assert!(e.contains("named twice"), "{e}");
    let e = err(r#"[{"name":"sample-app","imageUri":"x 1"}]"#);
    assert!(e.contains("not an image reference"), "{e}");
}

#[test]
fn small_readings() {
    assert_eq!(deployment_number("ecs-svc/9223370564341623665"), 9223370564341623665);
    assert_ne!(deployment_number("ecs-svc/abc"), deployment_number("ecs-svc/abd"));
    let mut cfg = EcsConfig::new("sample-app", EcsSpec::default_for("sample-app", "us-east-1"));
    assert_eq!(cfg.proxy_image("123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app:3f2a"), "123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app:coalmine");
    assert_eq!(cfg.proxy_image("localhost:5000/sample-app"), "localhost:5000/sample-app:coalmine");
    assert_eq!(cfg.proxy_image("repo/app@sha256:abc"), "repo/app:coalmine");
    cfg.ecs.proxy_image = Some("ghcr.io/x/coalmine:1".into());
    assert_eq!(cfg.proxy_image("anything:1"), "ghcr.io/x/coalmine:1");
    assert_eq!(cfg.ecs_service("primary"), Some("sample-app"));
    assert_eq!(cfg.ecs_service("canary"), Some("sample-app-canary"));
    assert_eq!(cfg.ecs_service("other"), None);
}
