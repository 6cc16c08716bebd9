//! The template of `coalmine synth aws`, checked without AWS: snapshots of its text (reviewed
//! on change: `COALMINE_UPDATE_SNAPSHOTS=1 cargo test -p coalmine-synth` rewrites them, then
//! `git diff` shows what changed), what it takes from coalmine.toml, and its IAM grants.
//! cfn-lint and moto's CloudFormation check the same templates in `crates/cli/tests/synth_aws.rs`.

use std::path::{Path, PathBuf};

use coalmine_spec::{default_toml_aws, parse, AppSpec};
use coalmine_synth::{aws_template, policy, Options, SynthError, Template, Vpc};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn full_source() -> String {
    std::fs::read_to_string(fixtures().join("full.toml")).unwrap()
}

fn spec(src: &str) -> AppSpec {
    parse(src, "coalmine.toml").unwrap_or_else(|d| panic!("{d}"))
}

fn default_spec() -> (AppSpec, String) {
    let src = default_toml_aws("sample-app", "us-east-1");
    (spec(&src), src)
}

fn synth(spec: &AppSpec, src: &str, vpc: Vpc, controller: bool) -> Template {
    aws_template(spec, &Options { vpc, controller, toml_source: Some(src.to_string()) }).unwrap()
}

/// Compare with the checked-in file, or rewrite it when COALMINE_UPDATE_SNAPSHOTS is set.
fn snapshot(name: &str, text: &str) {
    let path = fixtures().join(name);
    if std::env::var_os("COALMINE_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != text {
        let first = expected.lines().zip(text.lines()).position(|(a, b)| a != b).unwrap_or(expected.lines().count().min(text.lines().count()));
        panic!(
            "the template differs from {} from line {}:\n  expected: {:?}\n  actual:   {:?}\nIf the change is intended: COALMINE_UPDATE_SNAPSHOTS=1 cargo test -p coalmine-synth --test template, then review `git diff`.",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            text.lines().nth(first)
        );
    }
}

#[test]
fn snapshot_of_the_default_file() {
    let (spec, src) = default_spec();
    snapshot("default.yml", &synth(&spec, &src, Vpc::New, false).to_yaml().unwrap());
}

#[test]
fn snapshot_of_every_option() {
    let src = full_source();
    snapshot("full.yml", &synth(&spec(&src), &src, Vpc::Existing, true).to_yaml().unwrap());
}

#[test]
fn same_file_same_text() {
    let src = full_source();
    let s = spec(&src);
    let a = synth(&s, &src, Vpc::New, true).to_yaml().unwrap();
    let b = synth(&spec(&src), &src, Vpc::New, true).to_yaml().unwrap();
    assert_eq!(a, b);
}

fn props<'a>(t: &'a Template, name: &str) -> &'a Value {
    &t.resources.get(name).unwrap_or_else(|| panic!("no resource {name}")).properties
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["Environment"].as_array().unwrap().iter().map(|e| (e["Name"].as_str().unwrap().to_string(), e["Value"].clone())).collect()
}

#[test]
fn the_guidance_settings_by_default() {
    let (spec, src) = default_spec();
    let t = synth(&spec, &src, Vpc::New, false);
    assert_eq!(props(&t, "Queue")["VisibilityTimeout"], 300);
    assert_eq!(props(&t, "Queue")["RedrivePolicy"]["maxReceiveCount"], 1);
    assert_eq!(props(&t, "DeadLetterQueue")["MessageRetentionPeriod"], 3600);
    assert_eq!(props(&t, "TelemetryQueue")["QueueName"], "sample-app-coalmine-telemetry");
    assert_eq!(props(&t, "PrimaryService")["ServiceName"], "sample-app");
    assert_eq!(props(&t, "CanaryService")["ServiceName"], "sample-app-canary");
    assert_eq!(t.parameters["PrimaryTaskCount"]["Default"], 3);
    assert_eq!(t.parameters["CanaryTaskCount"]["Default"], 1);
    assert_eq!(props(&t, "CanaryService")["DeploymentConfiguration"]["DeploymentCircuitBreaker"], json!({"Enable": true, "Rollback": true}));
    assert_eq!(props(&t, "LogGroup")["RetentionInDays"], 7);
    // Two public subnets in two availability zones, as the guidance.
    assert_eq!(props(&t, "PublicSubnet1")["AvailabilityZone"]["Fn::Select"][0], 0);
    assert_eq!(props(&t, "PublicSubnet2")["AvailabilityZone"]["Fn::Select"][0], 1);
    assert!(!t.resources.keys().any(|k| k.starts_with("Controller")));
    for output in ["QueueUrl", "ClusterName", "PrimaryServiceName", "CanaryServiceName", "RepositoryUri"] {
        assert!(t.outputs.contains_key(output), "no output {output}");
    }
}

#[test]
fn the_task_definition_puts_the_proxy_in_front_of_the_app() {
    let src = full_source();
    let t = synth(&spec(&src), &src, Vpc::Existing, false);
    let td = props(&t, "TaskDefinition");
    assert_eq!((td["Cpu"].as_str(), td["Memory"].as_str()), (Some("1024"), Some("2048")));
    let containers = td["ContainerDefinitions"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    let (proxy, app) = (&containers[0], &containers[1]);
    assert_eq!(proxy["Name"], "coalmine-proxy");
    assert_eq!(proxy["Image"], "123456789012.dkr.ecr.eu-west-1.amazonaws.com/coalmine:0.1.0");
    assert_eq!(app["Name"], "worker");
    assert_eq!(app["DependsOn"], json!([{"ContainerName": "coalmine-proxy", "Condition": "START"}]));
    let env = env_of(app);
    assert!(env.contains(&("AWS_ENDPOINT_URL_SQS".into(), json!("http://127.0.0.1:4000"))), "{env:?}");
    assert!(env.contains(&("WORK_MS".into(), json!("250"))), "{env:?}");
    assert!(env.contains(&("QUEUE".into(), json!("billing-jobs"))), "{env:?}");
    assert_eq!(proxy["Command"], json!(["proxy", "--port", "4000", "--telemetry-queue", {"Ref": "TelemetryQueue"}]));
    assert!(env_of(proxy).contains(&("COALMINE_APP".into(), json!("billing"))));
    assert_eq!(app["Command"], json!(["/app/worker", "--concurrency", "8"]));
    assert_eq!(app["StopTimeout"], 90);
    assert_eq!(app["HealthCheck"]["Command"], json!(["CMD-SHELL", "test -f /tmp/healthy"]));
    assert_eq!(app["HealthCheck"]["StartPeriod"], 20);
    // Both containers log to the app's group.
    for c in containers {
        assert_eq!(c["LogConfiguration"]["Options"]["awslogs-group"], json!({"Ref": "LogGroup"}));
    }
    let deployment = &props(&t, "PrimaryService")["DeploymentConfiguration"];
    assert_eq!((deployment["MinimumHealthyPercent"].as_u64(), deployment["MaximumPercent"].as_u64()), (Some(50), Some(150)));
    assert_eq!(props(&t, "Queue")["RedrivePolicy"]["maxReceiveCount"], 3);
    assert_eq!(props(&t, "DeadLetterQueue")["MessageRetentionPeriod"], 4 * 86_400);
    // Existing network: parameters, no VPC.
    assert!(t.parameters.contains_key("Subnets") && t.parameters.contains_key("SecurityGroups"));
    assert!(!t.resources.contains_key("Vpc"));
    assert_eq!(props(&t, "CanaryService")["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"], json!({"Ref": "Subnets"}));
}

/// Every action the template grants comes from `policy` (the lists that say who uses it and
/// why), and only the actions that have no resource-level permissions are granted on `*`.
#[test]
fn every_iam_action_is_a_named_one_on_named_resources() {
    let known: Vec<&str> = policy::ALL.iter().flat_map(|l| l.iter().copied()).collect();
    let src = full_source();
    for vpc in [Vpc::New, Vpc::Existing] {
        let t = synth(&spec(&src), &src, vpc, true);
        let grants = t.iam_grants();
        assert!(grants.len() > 20, "{grants:?}");
        for (role, action, resource) in &grants {
            assert!(known.contains(&action.as_str()), "{role} grants {action}, which no list in policy.rs names");
            if resource == "\"*\"" {
                assert!(
                    policy::ECR_LOGIN.contains(&action.as_str()) || policy::CONTROLLER_TASK_DEFINITIONS.contains(&action.as_str()),
                    "{role} grants {action} on every resource"
                );
            }
        }
        // Every listed action is used somewhere (no list is stale).
        for action in &known {
            assert!(grants.iter().any(|(_, a, _)| a == action), "policy.rs lists {action}, which the template does not grant");
        }
        // The tasks reach exactly the queue and the telemetry queue.
        let task: Vec<&String> = grants.iter().filter(|(r, _, _)| r == "TaskRole").map(|(_, _, res)| res).collect();
        let mut resources: Vec<&str> = task.iter().map(|s| s.as_str()).collect();
        resources.sort();
        resources.dedup();
        assert_eq!(resources, vec![r#"{"Fn::GetAtt":["Queue","Arn"]}"#, r#"{"Fn::GetAtt":["TelemetryQueue","Arn"]}"#]);
    }
}

#[test]
fn controller_runs_with_its_file_and_state_on_efs() {
    let src = full_source();
    let t = synth(&spec(&src), &src, Vpc::New, true);
    let td = props(&t, "ControllerTaskDefinition");
    assert_eq!(td["TaskRoleArn"], json!({"Fn::GetAtt": ["ControllerRole", "Arn"]}));
    let c = &td["ContainerDefinitions"][0];
    assert!(env_of(c).contains(&("COALMINE_TOML".into(), json!(src))));
    assert_eq!(c["MountPoints"][0]["ContainerPath"], "/srv/coalmine");
    assert!(c["Command"][0].as_str().unwrap().contains("coalmine up --file /srv/coalmine/coalmine.toml"));
    assert_eq!(td["Volumes"][0]["EFSVolumeConfiguration"]["TransitEncryption"], "ENABLED");
    let svc = props(&t, "ControllerService");
    assert_eq!(svc["DesiredCount"], 1);
    // Never two controllers at once.
    assert_eq!(svc["DeploymentConfiguration"]["MaximumPercent"], 100);
    assert_eq!(svc["DeploymentConfiguration"]["MinimumHealthyPercent"], 0);
    // Only the controller reaches the file system.
    let ingress = &props(&t, "FileSystemSecurityGroup")["SecurityGroupIngress"];
    assert_eq!(ingress.as_array().unwrap().len(), 1);
    assert_eq!(ingress[0]["SourceSecurityGroupId"], json!({"Ref": "ControllerSecurityGroup"}));
}

#[test]
fn controller_needs_a_repository_url() {
    let (spec, src) = default_spec();
    let err = aws_template(&spec, &Options { vpc: Vpc::New, controller: true, toml_source: Some(src) }).unwrap_err();
    assert!(matches!(err, SynthError::ControllerNeedsUrl(_)), "{err}");
    assert!(err.hint().contains("[source] repo"));
}

#[test]
fn a_queue_outside_amazon_sqs_is_refused() {
    let src = default_toml_aws("a", "us-east-1").replace("endpoint = \"https://sqs.us-east-1.amazonaws.com\"", "endpoint = \"http://127.0.0.1:4566\"");
    let err = aws_template(&spec(&src), &Options::default()).unwrap_err();
    assert!(matches!(err, SynthError::ForeignQueueEndpoint(_)), "{err}");
}

#[test]
fn a_local_file_gets_the_ecs_defaults() {
    let src = coalmine_spec::default_toml("sample-app");
    let t = synth(&spec(&src), &src, Vpc::New, false);
    assert_eq!(props(&t, "Cluster")["ClusterName"], "sample-app");
    assert_eq!(props(&t, "CanaryService")["ServiceName"], "sample-app-canary");
    // The local command runs in an artifact folder, not in the image: the image's CMD starts it.
    let app = &props(&t, "TaskDefinition")["ContainerDefinitions"][1];
    assert_eq!(app["Name"], "sample-app");
    assert!(app.get("Command").is_none(), "{app}");
}
