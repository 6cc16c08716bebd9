//! `coalmine synth aws` and `coalmine init --aws` through the real binary: the templates pass
//! cfn-lint (errors, warnings and informational checks), and CloudFormation on moto's server
//! creates them; what it made is read back through each service's API (SQS, ECS, IAM, ECR,
//! CloudWatch Logs, EFS) and the stack is deleted.
//!
//! Where moto does not model something, the tests say so and check it elsewhere:
//! - moto's CloudFormation drops these properties: a task definition's `Cpu`, `NetworkMode`,
//!   `TaskRoleArn`, `ExecutionRoleArn`, `RequiresCompatibilities` and EFS volume settings; a
//!   service's `LaunchType`, `DeploymentConfiguration` (the circuit breaker) and
//!   `NetworkConfiguration`. They are checked in the template (`crates/synth/tests/template.rs`)
//!   and by cfn-lint's schemas here.
//! - moto's `Fn::GetAtt` of a log group's `Arn` lacks the `:*` that AWS's has.
//! - moto keeps an inline role policy given by CloudFormation as Python text, not JSON
//!   (`tests/python/synth_stack.py` reads either).
//! - Deleting a stack on moto leaves the ECS cluster, services and task definitions (moto has no
//!   CloudFormation delete for them), and a new VPC's route table, so moto then refuses to delete
//!   the VPC (`DependencyViolation`). The queues, roles, repository and log group are deleted.

#[path = "support/moto.rs"]
mod moto;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_coalmine");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("synth-aws-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn coalmine(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(dir).env("NO_COLOR", "1").output().expect("run coalmine")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `coalmine init --aws` in a new folder named `app`; returns the folder.
fn init_aws(name: &str) -> PathBuf {
    let dir = scratch(name).join("sample-app");
    std::fs::create_dir_all(&dir).unwrap();
    ok(coalmine(&["init", "--aws"], &dir), "coalmine init --aws");
    dir
}

/// A folder holding the coalmine.toml with every option set.
fn full_app(name: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::copy(repo_root().join("crates/synth/tests/fixtures/full.toml"), dir.join("coalmine.toml")).unwrap();
    dir
}

/// `coalmine synth aws --output stack.yml ARGS` in `dir`; returns the template's path.
fn synth(dir: &Path, args: &[&str]) -> PathBuf {
    let mut all = vec!["synth", "aws", "--output", "stack.yml"];
    all.extend_from_slice(args);
    let out = coalmine(&all, dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out, &format!("coalmine {}", all.join(" ")));
    assert!(stderr.contains("aws cloudformation deploy --region ") && stderr.contains("--template-file stack.yml"), "{stderr}");
    dir.join("stack.yml")
}

/// cfn-lint with its informational checks too: nothing at all may be reported.
fn lint(template: &Path) {
    let out = Command::new(moto::cfn_lint())
        .args(["--include-checks", "I", "--"])
        .arg(template)
        .output()
        .expect("run cfn-lint");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "cfn-lint on {} ({}):\n{text}", template.display(), out.status);
}

#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn cfn_lint_passes_every_variant() {
    // `coalmine init` (a local runtime: the ECS defaults) and `coalmine init --aws`.
    let local = scratch("lint-local").join("sample-app");
    std::fs::create_dir_all(&local).unwrap();
    ok(coalmine(&["init"], &local), "coalmine init");
    let out = coalmine(&["synth", "aws", "--output", "stack.yml"], &local);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `[runtime] kind = \"ecs\"`"), "{out:?}");
    ok(out, "synth on the local file");
    lint(&local.join("stack.yml"));

    let aws = init_aws("lint-aws");
    let template = synth(&aws, &[]);
    lint(&template);
    // The binary writes what the snapshot holds.
    let snapshot = std::fs::read_to_string(repo_root().join("crates/synth/tests/fixtures/default.yml")).unwrap();
    assert_eq!(std::fs::read_to_string(&template).unwrap(), snapshot);

    let full = full_app("lint-full");
    for args in [&["--vpc", "existing", "--controller"][..], &["--vpc", "new", "--controller"], &["--vpc", "existing"]] {
        let template = synth(&full, args);
        lint(&template);
        if args == ["--vpc", "existing", "--controller"] {
            let snapshot = std::fs::read_to_string(repo_root().join("crates/synth/tests/fixtures/full.yml")).unwrap();
            assert_eq!(std::fs::read_to_string(&template).unwrap(), snapshot);
        }
    }
}

/// cfn-lint does find problems: a template with an out-of-range retention fails it.
#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn cfn_lint_refuses_a_broken_template() {
    let dir = init_aws("lint-broken");
    let template = synth(&dir, &[]);
    let text = std::fs::read_to_string(&template).unwrap().replace("RetentionInDays: 7", "RetentionInDays: 8");
    std::fs::write(&template, text).unwrap();
    let out = Command::new(moto::cfn_lint()).arg("--").arg(&template).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("E3030"), "{out:?}");
}

/// Create the stack on a fresh moto server, read everything back, delete it.
fn stack_on_moto(template: &Path, name: &str, extra: &[&str]) -> Value {
    let moto = moto::Moto::start();
    let mut args = vec![template.to_str().unwrap(), name];
    args.extend_from_slice(extra);
    let out = moto.run_python(&repo_root().join("tests/python/synth_stack.py"), &args, Duration::from_secs(600));
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(report["status"], "CREATE_COMPLETE", "the stack was not created:\n{report:#}\n--- moto's log\n{}", moto.log());
    report
}

fn env_map(container: &Value) -> serde_json::Map<String, Value> {
    container["environment"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone())).collect()
}

fn statements(report: &Value, role: &str) -> Vec<Value> {
    let policies = report["roles"][role]["policies"].as_object().unwrap_or_else(|| panic!("no role {role}: {:#}", report["roles"]));
    policies.values().flat_map(|p| p["Statement"].as_array().unwrap().clone()).collect()
}

/// The (sorted) actions the role allows on `resource`.
fn actions_on(statements: &[Value], resource: &str) -> Vec<String> {
    let mut out: Vec<String> = statements
        .iter()
        .filter(|s| match &s["Resource"] {
            Value::Array(items) => items.iter().any(|r| r == resource),
            r => r == resource,
        })
        .flat_map(|s| s["Action"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn queue_arn(report: &Value, output: &str) -> String {
    let key = match output {
        "QueueUrl" => "QueueUrl",
        "DeadLetterQueueUrl" => "DeadLetterQueueUrl",
        _ => "TelemetryQueueUrl",
    };
    report["queues"][key]["QueueArn"].as_str().unwrap().to_string()
}

/// What every variant has: the queues wired to each other, the task definition's two containers
/// wired to the queues, the roles on exactly these resources, and a clean delete of what moto
/// deletes.
fn check_common(r: &Value, app: &str, container: &str, proxy_port: u16, tasks: (u64, u64), services: (&str, &str)) {
    let outputs = &r["outputs"];
    let (queue, dlq, telemetry) = (queue_arn(r, "QueueUrl"), queue_arn(r, "DeadLetterQueueUrl"), queue_arn(r, "TelemetryQueueUrl"));
    let redrive: Value = serde_json::from_str(r["queues"]["QueueUrl"]["RedrivePolicy"].as_str().unwrap()).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], dlq.as_str());
    assert!(telemetry.ends_with(&format!(":{app}-coalmine-telemetry")), "{telemetry}");
    assert_eq!(r["queues"]["TelemetryQueueUrl"]["MessageRetentionPeriod"], "3600");

    // The services: names and counts (moto keeps those).
    assert_eq!(outputs["PrimaryServiceName"], services.0);
    assert_eq!(outputs["CanaryServiceName"], services.1);
    assert_eq!(r["services"][services.0]["desiredCount"], tasks.0);
    assert_eq!(r["services"][services.1]["desiredCount"], tasks.1);
    let td_arn = r["services"][services.0]["taskDefinition"].as_str().unwrap();
    assert_eq!(r["services"][services.1]["taskDefinition"], td_arn, "both services start on one task definition");

    // The task definition: the proxy, then the app, which depends on it and reaches SQS through it.
    let td = &r["task_definitions"][app];
    let containers = td["containerDefinitions"].as_array().unwrap();
    let names: Vec<&str> = containers.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["coalmine-proxy", container]);
    let (proxy, worker) = (&containers[0], &containers[1]);
    assert_eq!(worker["dependsOn"], json!([{"containerName": "coalmine-proxy", "condition": "START"}]));
    let env = env_map(worker);
    assert_eq!(env["AWS_ENDPOINT_URL_SQS"], format!("http://127.0.0.1:{proxy_port}"));
    assert_eq!(env["QUEUE_URL"], outputs["QueueUrl"]);
    assert_eq!(env["AWS_REGION"], moto::REGION);
    let penv = env_map(proxy);
    assert_eq!(
        proxy["command"],
        json!(["proxy", "--port", proxy_port.to_string(), "--telemetry-queue", outputs["TelemetryQueueUrl"]])
    );
    assert_eq!(penv["COALMINE_APP"], app);
    assert_eq!(penv["COALMINE_PROXY_UPSTREAM"], format!("https://sqs.{}.amazonaws.com", moto::REGION));
    assert_eq!(worker["image"], format!("{}:latest", outputs["RepositoryUri"].as_str().unwrap()));
    for c in containers {
        assert_eq!(c["logConfiguration"]["logDriver"], "awslogs");
        assert_eq!(c["logConfiguration"]["options"]["awslogs-group"], format!("/ecs/{app}"));
    }

    // The task role: consume the queue, send telemetry; nothing else, nowhere else.
    let task = statements(r, "TaskRole");
    assert_eq!(
        actions_on(&task, &queue),
        ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]
    );
    assert_eq!(actions_on(&task, &telemetry), ["sqs:GetQueueUrl", "sqs:SendMessage"]);
    assert_eq!(task.len(), 2, "{task:#?}");
    assert!(actions_on(&task, &dlq).is_empty(), "the tasks do not touch the DLQ");
    assert_eq!(r["roles"]["TaskRole"]["assume"]["Statement"][0]["Principal"]["Service"], "ecs-tasks.amazonaws.com");

    // The execution role: pull from the repository, write to the log group.
    let exec = statements(r, "ExecutionRole");
    let repo = r["repositories"].as_array().unwrap().iter().find(|x| x["repositoryName"] == app).expect("the repository");
    assert_eq!(actions_on(&exec, repo["repositoryArn"].as_str().unwrap()), ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]);
    let group = r["log_groups"].as_array().unwrap().iter().find(|g| g["logGroupName"] == format!("/ecs/{app}")).expect("the log group");
    // `Fn::GetAtt LogGroup.Arn` is the group's ARN with `:*` on AWS (which covers its streams);
    // moto gives it without, as DescribeLogGroups' `logGroupArn`.
    assert_eq!(actions_on(&exec, group["logGroupArn"].as_str().unwrap()), ["logs:CreateLogStream", "logs:PutLogEvents"]);
    assert_eq!(actions_on(&exec, "*"), ["ecr:GetAuthorizationToken"]);

    // Deleted: what moto deletes (see the top of this file for what it does not).
    let after = &r["after_delete"];
    assert_eq!(after["queues"], json!([]), "{after:#}");
    assert_eq!(after["roles"], json!([]), "{after:#}");
    assert_eq!(after["repositories"], json!([]), "{after:#}");
    assert_eq!(after["log_groups"], json!([]), "{after:#}");
}

#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn default_stack_on_moto() {
    let dir = init_aws("moto-default");
    let template = synth(&dir, &[]);
    let r = stack_on_moto(&template, "sample-app", &[]);
    check_common(&r, "sample-app", "sample-app", 9325, (3, 1), ("sample-app", "sample-app-canary"));
    // The guidance's queue settings.
    assert_eq!(r["queues"]["QueueUrl"]["VisibilityTimeout"], "300");
    let redrive: Value = serde_json::from_str(r["queues"]["QueueUrl"]["RedrivePolicy"].as_str().unwrap()).unwrap();
    assert_eq!(redrive["maxReceiveCount"], 1);
    assert_eq!(r["queues"]["DeadLetterQueueUrl"]["MessageRetentionPeriod"], "3600");
    assert_eq!(r["log_groups"][0]["retentionInDays"], 7);
    assert_eq!(r["outputs"]["ClusterName"], "sample-app");
    assert_eq!(r["clusters"][0]["clusterName"], "sample-app");
    // The proxy's image: the `coalmine` tag of the app's repository.
    let proxy = &r["task_definitions"]["sample-app"]["containerDefinitions"][0];
    assert_eq!(proxy["image"], format!("{}:coalmine", r["outputs"]["RepositoryUri"].as_str().unwrap()));
    // Two public subnets of a new VPC.
    let subnets: Vec<&Value> = r["resources"].as_object().unwrap().values().filter(|x| x["type"] == "AWS::EC2::Subnet").collect();
    assert_eq!(subnets.len(), 2);
    // moto leaves the VPC's route table and then refuses the VPC (see the top of this file).
    let error = r["delete_error"].as_str().unwrap_or("");
    assert!(error.is_empty() || error.contains("DependencyViolation"), "{error}");
}

#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn every_option_with_the_controller_on_moto() {
    let dir = full_app("moto-full");
    let template = synth(&dir, &["--vpc", "existing", "--controller"]);
    let r = stack_on_moto(&template, "billing", &["--existing-network", "PrimaryTaskCount=5"]);
    check_common(&r, "billing", "worker", 4000, (5, 2), ("billing-main", "billing-small"));
    assert_eq!(r["delete_error"], Value::Null, "with an existing network moto deletes the whole stack");
    assert_eq!(r["queues"]["QueueUrl"]["VisibilityTimeout"], "120");
    let redrive: Value = serde_json::from_str(r["queues"]["QueueUrl"]["RedrivePolicy"].as_str().unwrap()).unwrap();
    assert_eq!(redrive["maxReceiveCount"], 3);
    assert_eq!(r["queues"]["DeadLetterQueueUrl"]["MessageRetentionPeriod"], (4 * 86_400).to_string());
    assert_eq!(r["log_groups"][0]["retentionInDays"], 30);
    assert_eq!(r["outputs"]["ClusterName"], "workers");
    let worker = &r["task_definitions"]["billing"]["containerDefinitions"][1];
    assert_eq!(env_map(worker)["WORK_MS"], "250");
    assert_eq!(worker["command"], json!(["/app/worker", "--concurrency", "8"]));
    assert_eq!(worker["stopTimeout"], 90);
    assert_eq!(worker["healthCheck"]["command"], json!(["CMD-SHELL", "test -f /tmp/healthy"]));
    assert_eq!(r["task_definitions"]["billing"]["memory"], "2048");
    let proxy = &r["task_definitions"]["billing"]["containerDefinitions"][0];
    assert_eq!(proxy["image"], "123456789012.dkr.ecr.eu-west-1.amazonaws.com/coalmine:0.1.0");
    // The proxy image is in another repository: the execution role may pull from it too.
    let exec = statements(&r, "ExecutionRole");
    assert_eq!(actions_on(&exec, "arn:aws:ecr:eu-west-1:123456789012:repository/coalmine").len(), 3);

    // The controller: one task, its own task definition with the file and the state volume.
    assert_eq!(r["services"]["billing-coalmine"]["desiredCount"], 1);
    let controller = &r["task_definitions"]["billing-coalmine"]["containerDefinitions"][0];
    let toml = std::fs::read_to_string(dir.join("coalmine.toml")).unwrap();
    assert_eq!(env_map(controller)["COALMINE_TOML"], toml.as_str());
    assert_eq!(controller["mountPoints"][0]["containerPath"], "/srv/coalmine");
    assert_eq!(r["file_system"]["mount_targets"].as_array().unwrap().len(), 2);
    let subnets: Vec<&Value> = r["file_system"]["mount_targets"].as_array().unwrap().iter().map(|m| &m["SubnetId"]).collect();
    let given: Vec<&Value> = r["network"]["subnets"].as_array().unwrap().iter().collect();
    assert_eq!(subnets, given, "one mount target in each given subnet");
    assert_eq!(r["file_system"]["access_points"][0]["RootDirectory"]["Path"], "/coalmine");
    // Its role: the two services, the queues, the telemetry queue, the file system; no more.
    let role = statements(&r, "ControllerRole");
    let service = |name: &str| format!("arn:aws:ecs:{}:123456789012:service/workers/{name}", moto::REGION);
    assert_eq!(actions_on(&role, &service("billing-main")), ["ecs:DescribeServices", "ecs:UpdateService"]);
    assert_eq!(actions_on(&role, &service("billing-small")), ["ecs:DescribeServices", "ecs:UpdateService"]);
    assert!(actions_on(&role, &queue_arn(&r, "DeadLetterQueueUrl")).contains(&"sqs:StartMessageMoveTask".to_string()));
    assert_eq!(
        actions_on(&role, &queue_arn(&r, "TelemetryQueueUrl")),
        ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]
    );
    let fs_id = r["outputs"]["ControllerFileSystemId"].as_str().unwrap();
    let fs_arn = format!("arn:aws:elasticfilesystem:{}:123456789012:file-system/{fs_id}", moto::REGION);
    assert_eq!(actions_on(&role, &fs_arn), ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]);
    let pass = role.iter().find(|s| s["Action"] == json!(["iam:PassRole"])).expect("PassRole");
    assert_eq!(pass["Condition"]["StringEquals"]["iam:PassedToService"], "ecs-tasks.amazonaws.com");
    assert_eq!(pass["Resource"].as_array().unwrap().len(), 2);
}

#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn controller_in_a_new_vpc_on_moto() {
    let dir = full_app("moto-controller-new-vpc");
    let template = synth(&dir, &["--controller"]);
    let r = stack_on_moto(&template, "billing", &[]);
    check_common(&r, "billing", "worker", 4000, (6, 2), ("billing-main", "billing-small"));
    assert_eq!(r["services"]["billing-coalmine"]["desiredCount"], 1);
    // The file system is reachable from both new subnets.
    let mut mounted: Vec<&str> = r["file_system"]["mount_targets"].as_array().unwrap().iter().map(|m| m["SubnetId"].as_str().unwrap()).collect();
    let mut made: Vec<&str> = ["PublicSubnet1", "PublicSubnet2"].iter().map(|k| r["resources"][k]["id"].as_str().unwrap()).collect();
    mounted.sort();
    made.sort();
    assert_eq!(mounted, made);
    let error = r["delete_error"].as_str().unwrap_or("");
    assert!(error.is_empty() || error.contains("DependencyViolation"), "{error}");
}

#[test]
fn init_aws_writes_a_file_that_validates_and_a_buildspec_for_images() {
    let dir = init_aws("init");
    let toml = std::fs::read_to_string(dir.join("coalmine.toml")).unwrap();
    assert!(toml.contains("kind = \"ecs\""), "{toml}");
    assert!(toml.contains("endpoint = \"https://sqs.us-east-1.amazonaws.com\""), "{toml}");
    let out = ok(coalmine(&["validate"], &dir), "coalmine validate");
    assert!(out.contains("coalmine.toml: valid") && out.contains("buildspec.yml: valid"), "{out}");
    assert!(out.contains("runtime ecs: cluster `sample-app`, services `sample-app` and `sample-app-canary`"), "{out}");
    let buildspec = std::fs::read_to_string(dir.join("buildspec.yml")).unwrap();
    for needle in ["docker build", "docker push", "imagedefinitions.json", "CONTAINER_NAME: \"sample-app\"", "aws ecr get-login-password"] {
        assert!(buildspec.contains(needle), "no {needle:?} in\n{buildspec}");
    }
    // Another region, and a second run leaves the files as they are.
    let other = scratch("init-region").join("w");
    std::fs::create_dir_all(&other).unwrap();
    ok(coalmine(&["init", "--aws", "--region", "eu-west-1"], &other), "init --aws --region");
    let toml = std::fs::read_to_string(other.join("coalmine.toml")).unwrap();
    assert!(toml.contains("region = \"eu-west-1\"") && toml.contains("sqs.eu-west-1.amazonaws.com"), "{toml}");
    let out = coalmine(&["synth", "aws", "--output", "stack.yml"], &other);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out, "synth in eu-west-1");
    assert!(stderr.contains("aws cloudformation deploy --region eu-west-1 "), "{stderr}");
    let again = ok(coalmine(&["init", "--aws"], &other), "init --aws again");
    assert!(again.contains("exists; left as it is"), "{again}");
    let out = coalmine(&["init", "--aws", "--region", "EU WEST"], &scratch("init-bad"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an AWS region"), "{out:?}");
}

/// The buildspec of `init --aws`, run by coalmine's build stage as a commit's build: it logs in
/// to ECR, builds, pushes both tags and writes imagedefinitions.json for the app's container,
/// which becomes the revision's artifact. `docker` and `aws` are scripts here that record their
/// arguments (there is no registry or docker daemon on this machine).
#[test]
fn aws_buildspec_builds_pushes_and_writes_imagedefinitions() {
    use coalmine_pipeline::build::{BuildRequest, Builder, BuildspecBuilder, Cancel};
    use std::os::unix::fs::PermissionsExt;

    let dir = init_aws("buildspec");
    let bin = dir.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("calls.log");
    for (name, body) in [
        ("aws", "if [ \"$1\" = sts ]; then echo 123456789012; else echo token; fi"),
        ("docker", "if [ \"$1\" = login ]; then cat > /dev/null; fi"),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/usr/bin/env bash\necho \"{name} $*\" >> {}\n{body}\n", calls.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let state = dir.join(".coalmine");
    let request = BuildRequest {
        app: "sample-app".into(),
        execution_id: 1,
        build_number: 1,
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        branch: "main".into(),
        revision: "r1".into(),
        src_dir: dir.clone(),
        buildspec: dir.join("buildspec.yml"),
        log_path: state.join("build.log"),
        artifact_dir: state.join("artifacts/r1"),
        timeout: Duration::from_secs(120),
        env: [("PATH".to_string(), format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))].into(),
    };
    let result = BuildspecBuilder.build(&request, &Cancel::default());
    let log = std::fs::read_to_string(&request.log_path).unwrap_or_default();
    result.unwrap_or_else(|e| panic!("the build failed: {e}\n--- log\n{log}"));
    let written = std::fs::read_to_string(request.artifact_dir.join("imagedefinitions.json")).unwrap();
    let definitions: Value = serde_json::from_str(&written).unwrap();
    let uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sample-app";
    assert_eq!(definitions, json!([{"name": "sample-app", "imageUri": format!("{uri}:0123456")}]));
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert!(calls.contains("docker login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com"), "{calls}");
    assert!(calls.contains(&format!("docker build -t {uri}:latest -t {uri}:0123456 .")), "{calls}");
    assert!(calls.contains(&format!("docker push {uri}:0123456")) && calls.contains(&format!("docker push {uri}:latest")), "{calls}");
}

#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn up_on_ecs_reaches_the_cluster_and_says_what_is_missing() {
    let moto = moto::Moto::start();
    moto.run_python(&repo_root().join("tests/python/ecs_guidance.py"), &["other-app"], Duration::from_secs(120));
    let dir = init_aws("up");
    let path = dir.join("coalmine.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let with_endpoint = |cluster: &str| {
        toml.replacen("kind = \"ecs\"\n", &format!("kind = \"ecs\"\nendpoint = \"{}\"\n", moto.endpoint), 1)
            .replacen("endpoint = \"https://sqs.us-east-1.amazonaws.com\"", &format!("endpoint = \"{}\"", moto.endpoint), 1)
            .replacen("cluster = \"sample-app\"", &format!("cluster = \"{cluster}\""), 1)
    };
    let up = |dir: &Path| {
        let mut command = Command::new(BIN);
        command.args(["up", "--queue-port", "0", "--api-port", "0"]).current_dir(dir).env("NO_COLOR", "1");
        moto.configure(&mut command);
        let (status, _stdout, stderr) = moto::run_with_timeout(&mut command, Duration::from_secs(120)).unwrap();
        (status.expect("up ends by itself when the cluster is wrong"), stderr)
    };

    // No such cluster: the error names the cluster, the region and the endpoint.
    std::fs::write(&path, with_endpoint("sample-app")).unwrap();
    let (status, stderr) = up(&dir);
    assert!(!status.success());
    assert!(stderr.contains("cannot start the ECS runtime (cluster `sample-app`, region us-east-1, endpoint http://127.0.0.1:"), "{stderr}");

    // The cluster exists, the services do not: says which, and how to make them.
    std::fs::write(&path, with_endpoint("other-app")).unwrap();
    let (status, stderr) = up(&dir);
    assert!(!status.success());
    assert!(stderr.contains("service `sample-app` not found in cluster `other-app`"), "{stderr}");
    assert!(stderr.contains("coalmine synth aws"), "{stderr}");
}

#[test]
fn synth_errors_say_the_fix() {
    // The controller needs a repository URL.
    let dir = init_aws("errors");
    let out = coalmine(&["synth", "aws", "--controller"], &dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[source] repo") && stderr.contains("help:"), "{stderr}");
    // A bad file: the diagnostics with their position.
    std::fs::write(dir.join("coalmine.toml"), "app = \"a\"\n[runtime]\nkind = \"esc\"\n").unwrap();
    let out = coalmine(&["synth", "aws"], &dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("coalmine.toml:3:8") && stderr.contains("did you mean \"ecs\""), "{stderr}");
}

#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn json_format_for_scripts() {
    let dir = init_aws("json");
    let out = ok(coalmine(&["synth", "aws", "--format", "json"], &dir), "synth --format json");
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["AWSTemplateFormatVersion"], "2010-09-09");
    assert_eq!(t["Resources"]["Queue"]["Properties"]["VisibilityTimeout"], 300);
    assert_eq!(t["Outputs"]["QueueUrl"]["Value"], json!({"Ref": "Queue"}));
}

/// Releases on the stack `coalmine synth aws` made, on moto's server with the stand-in for what
/// moto's ECS does not model (`tests/python/ecs_standin.py`: deployments roll out, tasks run and
/// exit, the circuit breaker). `coalmine up` with `[runtime] kind = "ecs"`:
/// 1. builds the first commit (the `init --aws` buildspec, with `docker` and `aws` as recording
///    scripts), registers the next task definition revision (the image of the commit, its
///    revision on the app and the proxy sidecar; read back from ECS) and puts it on the canary
///    service, then the primary (a first release has nothing to be compared with);
/// 2. a second commit: the canary's deployment completes, the primary waits for the approval,
///    `coalmine approve` puts the canary's task definition on the primary;
/// 3. a commit whose app exits at start (the stand-in's `STANDIN_EXIT_CODE`, set through the
///    commit's `[run] env`): its canary tasks stop with exit code 1, ECS's circuit breaker fails
///    the deployment and rolls the canary back, coalmine records that and ends the execution;
///    the canary runs the primary's task definition again and the primary never changed;
/// 4. `coalmine logs canary [--previous]` reads the tasks' lines from CloudWatch Logs.
///
/// No worker runs in the stand-in's tasks, so no proxy reports: the canary is judged on no
/// messages here (the proxy's telemetry path is tested against moto's SQS in canary_sqs.rs).
#[test]
#[ignore = "end-to-end: cfn-lint and moto's CloudFormation (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn releases_run_on_the_stack_on_moto() {
    use std::os::unix::fs::PermissionsExt;

    let moto = moto::Moto::start_with_ecs_rollouts(&[("STANDIN_ROLLOUT_SECONDS", "2")]);
    let dir = init_aws("pipeline");
    let template = synth(&dir, &[]);
    let out = moto.run_python(&repo_root().join("tests/python/synth_stack.py"), &[template.to_str().unwrap(), "sample-app", "--keep"], Duration::from_secs(600));
    let stack: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(stack["status"], "CREATE_COMPLETE", "{stack:#}");
    let cluster = stack["outputs"]["ClusterName"].as_str().unwrap().to_string();
    let (primary, canary) = (stack["outputs"]["PrimaryServiceName"].as_str().unwrap().to_string(), stack["outputs"]["CanaryServiceName"].as_str().unwrap().to_string());
    let services = || -> Value {
        let out = moto.run_python(&repo_root().join("tests/python/ecs_services.py"), &[&cluster, &primary, &canary], Duration::from_secs(120));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    };
    let before = services();

    // The app's repository: coalmine.toml pointed at moto, docker and aws as recording scripts.
    let path = dir.join("coalmine.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let toml = toml
        .replacen("kind = \"ecs\"\n", &format!("kind = \"ecs\"\nendpoint = \"{}\"\n", moto.endpoint), 1)
        .replacen("endpoint = \"https://sqs.us-east-1.amazonaws.com\"", &format!("endpoint = \"{}\"", moto.endpoint), 1);
    assert!(toml.matches(moto.endpoint.as_str()).count() == 2, "runtime and queue on moto: {toml}");
    std::fs::write(&path, toml).unwrap();
    let bin = dir.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in [("aws", "if [ \"$1\" = sts ]; then echo 123456789012; else echo token; fi"), ("docker", "if [ \"$1\" = login ]; then cat > /dev/null; fi")] {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(dir.join(".gitignore"), "fake-bin/\n.coalmine/\nstack.yml\n").unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first"]);
    let rev1 = git(&["rev-parse", "HEAD"])[..12].to_string();

    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let mut up = Command::new(BIN);
    up.args(["up", "--queue-port", "0", "--api-port", "0"])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    moto.configure(&mut up);
    struct Up(std::process::Child);
    impl Drop for Up {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut up = Up(up.spawn().expect("start coalmine up"));
    let status = |up: &mut Up| -> Value {
        if let Ok(Some(exit)) = up.0.try_wait() {
            panic!("coalmine up exited ({exit}):\n{}", std::fs::read_to_string(dir.join("up.log")).unwrap_or_default());
        }
        let out = coalmine(&["status", "--output", "json"], &dir);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let wait = |up: &mut Up, what: &str, ok: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        loop {
            let v = status(up);
            if ok(&v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; last status {v:#}\n--- up.log\n{}",
                std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let image = |s: &Value, service: &str| s[service]["containers"]["sample-app"]["image"].as_str().unwrap_or_default().to_string();
    let runs = |s: &Value, service: &str| s[service]["containers"]["sample-app"]["env"]["COALMINE_REVISION"].as_str().unwrap_or_default().to_string();
    let td = |s: &Value, service: &str| s[service]["task_definition"].as_str().unwrap().to_string();

    let stage = |v: &Value, name: &str| -> String {
        v["execution"]["stages"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).map(|s| s["status"].as_str().unwrap_or_default().to_string()).unwrap_or_default()
    };
    let service_status = |v: &Value, name: &str| -> Value {
        v["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).map(|s| s["status"].clone()).unwrap_or_default()
    };

    // 1. The first release goes to both services (nothing to compare a canary with yet).
    let v = wait(&mut up, "the first release on both services", &|v| v["execution"]["revision"] == rev1.as_str() && v["execution"]["status"] == "Succeeded");
    let s1 = services();
    assert_eq!(runs(&s1, &canary), rev1, "the canary runs the first release: {s1:#}");
    assert!(image(&s1, &canary).ends_with(&format!("/sample-app:{}", &rev1[..7])), "{s1:#}");
    assert_eq!(s1[&canary]["containers"]["coalmine-proxy"]["env"]["COALMINE_REVISION"], rev1.as_str(), "the sidecar reports the revision: {s1:#}");
    assert_ne!(td(&s1, &canary), td(&before, &canary), "a new task definition revision");
    assert_eq!(td(&s1, &primary), td(&s1, &canary), "one task definition for both: {s1:#}");
    assert_eq!((s1[&canary]["desired"].as_u64(), s1[&primary]["desired"].as_u64()), (Some(1), Some(3)), "{s1:#}");
    // The status is what ECS says: the deployment completed, the tasks running, named by ARN.
    let c = service_status(&v, "canary");
    let deployment = c["deployments"].as_array().and_then(|d| d.last()).cloned().unwrap_or_default();
    assert_eq!(deployment["state"], "COMPLETED", "{c:#}");
    assert_eq!(deployment["revision"], rev1.as_str(), "{c:#}");
    assert_eq!(c["steady"], true, "{c:#}");
    let tasks = c["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 1, "one canary task: {c:#}");
    assert!(tasks[0]["id"].as_str().is_some_and(|id| id.starts_with("arn:aws:ecs:")), "tasks are named by their ARN: {c:#}");
    assert_eq!(tasks[0]["revision"], rev1.as_str(), "{c:#}");
    assert_eq!(service_status(&v, "primary")["tasks"].as_array().map(Vec::len), Some(3), "{v:#}");

    // 2. A good release: the canary, then the approval, then the primary.
    std::fs::write(dir.join("CHANGES"), "v2\n").unwrap();
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "add", "CHANGES"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v2"]);
    let rev2 = git(&["rev-parse", "HEAD"])[..12].to_string();
    let v = wait(&mut up, "the second release's canary to be deployed and the approval to wait", &|v| {
        v["execution"]["revision"] == rev2.as_str() && stage(v, "Approval") == "InProgress"
    });
    assert_eq!(stage(&v, "Deploy canary"), "Succeeded", "{v:#}");
    let s2 = services();
    assert_eq!(runs(&s2, &canary), rev2, "{s2:#}");
    assert_eq!(td(&s2, &primary), td(&s1, &primary), "the primary waits for the approval: {s2:#}");
    ok(coalmine(&["approve", "-m", "canary looks right"], &dir), "coalmine approve");
    let v = wait(&mut up, "the second release on both services", &|v| v["execution"]["revision"] == rev2.as_str() && v["execution"]["status"] == "Succeeded");
    let s2 = services();
    assert_eq!(td(&s2, &primary), td(&s2, &canary), "the primary runs the canary's task definition: {s2:#}");
    assert_eq!(runs(&s2, &primary), rev2);
    assert_eq!(service_status(&v, "primary")["revision"], rev2.as_str(), "{v:#}");

    // 3. A release whose app exits at start.
    let toml = std::fs::read_to_string(&path).unwrap();
    assert!(toml.contains("\nenv = {}\n"), "the file init --aws wrote has an empty [run] env: {toml}");
    std::fs::write(&path, toml.replacen("\nenv = {}\n", "\nenv = { STANDIN_EXIT_CODE = \"1\" }\n", 1)).unwrap();
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "exits at start"]);
    let rev3 = git(&["rev-parse", "HEAD"])[..12].to_string();
    let v = wait(&mut up, "the third release to end", &|v| {
        v["execution"]["revision"] == rev3.as_str() && !matches!(v["execution"]["status"].as_str(), Some("InProgress") | None)
    });
    // coalmine's crash alarm (threshold 1) sees the first exits and rolls the canary back; ECS's
    // circuit breaker would have after 3 failed tasks, a few seconds later.
    assert_eq!(v["execution"]["status"], "RolledBack", "{v:#}");
    assert_eq!(stage(&v, "Deploy canary"), "Failed", "{v:#}");
    let history = ok(coalmine(&["history"], &dir), "coalmine history");
    assert!(history.contains("crashes") || history.contains("circuit breaker"), "why it ended: {history}");
    let text = ok(coalmine(&["status"], &dir), "coalmine status");
    assert!(text.lines().any(|l| l.contains("Deploy primary") && l.contains("Not run")), "the stage it never reached: {text}");
    let s3 = services();
    assert_eq!(td(&s3, &canary), td(&s2, &primary), "the canary is back on the primary's task definition: {s3:#}");
    assert_eq!(td(&s3, &primary), td(&s2, &primary), "the primary never changed: {s3:#}");
    let v = wait(&mut up, "the canary steady on the second release again", &|v| {
        let c = service_status(v, "canary");
        c["revision"] == rev2.as_str() && c["steady"] == true
    });
    let c = service_status(&v, "canary");
    let bad = c["deployments"].as_array().and_then(|d| d.iter().find(|d| d["revision"] == rev3.as_str())).cloned().unwrap_or_default();
    assert!(bad["state"] == "FAILED" || bad["reason"] == "replaced by a newer deployment", "the bad deployment ended: {c:#}");
    assert!(c["exits_by_revision"][&rev3].as_u64().is_some_and(|n| n >= 1), "its tasks' exits are counted: {c:#}");
    assert!(c["tasks"].as_array().is_some_and(|t| t.iter().all(|t| t["revision"] == rev2.as_str())), "{c:#}");

    // 4. The canary's logs, from CloudWatch Logs.
    let logs = ok(coalmine(&["logs", "canary"], &dir), "coalmine logs canary");
    assert!(logs.contains("task started"), "{logs}");
    let previous = ok(coalmine(&["logs", "canary", "--previous"], &dir), "coalmine logs canary --previous");
    assert!(previous.contains("exits with code 1"), "{previous}");

    drop(up);
    let out = moto.run_python(&repo_root().join("tests/python/synth_stack.py"), &["--delete", "sample-app"], Duration::from_secs(600));
    let deleted: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert!(deleted["after_delete"]["queues"].as_array().is_some_and(|q| q.is_empty()), "{deleted:#}");
}
