//! The controller's IAM policy for the ECS backend (`crates/runtime/iam/ecs-controller.json`)
//! lists exactly the actions `src/ecs.rs` calls, and `coalmine synth aws`'s controller role
//! grants them all. The task role's (`iam/ecs-task.json`: the app and the proxy sidecar) is
//! the one of `coalmine synth aws`.

use std::collections::BTreeSet;
use std::path::Path;

/// `describe_task_definition` -> `DescribeTaskDefinition`.
fn camel(op: &str) -> String {
    op.split('_').map(|w| {
        let mut c = w.chars();
        c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
    }).collect()
}

/// The SDK operations called in `source`: `.client` (ECS) or `.logs` (CloudWatch Logs) followed
/// by `.<operation>()`, across line breaks and whitespace.
fn sdk_calls(source: &str) -> BTreeSet<String> {
    let compact: String = source.split_whitespace().collect();
    let mut calls = BTreeSet::new();
    for (field, service) in [(".client.", "ecs"), (".logs.", "logs")] {
        let mut rest = compact.as_str();
        while let Some(i) = rest.find(field) {
            rest = &rest[i + field.len()..];
            let op: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            assert!(rest[op.len()..].starts_with("()"), "an SDK call not of the form `{field}<operation>()` near `{}`", &rest[..rest.len().min(60)]);
            calls.insert(format!("{service}:{}", camel(&op)));
        }
    }
    calls
}

fn policy_actions(policy: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for st in policy["Statement"].as_array().expect("Statement list") {
        assert_eq!(st["Effect"], "Allow");
        match &st["Action"] {
            serde_json::Value::String(a) => {
                out.insert(a.clone());
            }
            serde_json::Value::Array(list) => out.extend(list.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("Action is neither a string nor a list: {other}"),
        }
    }
    out
}

#[test]
fn the_policy_lists_exactly_the_calls_of_the_ecs_backend() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/ecs.rs")).unwrap();
    let calls = sdk_calls(&source);
    // The scan sees every call (a check of the check).
    for expected in ["ecs:DescribeServices", "ecs:UpdateService", "ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition", "ecs:ListTasks", "ecs:DescribeTasks", "logs:GetLogEvents"] {
        assert!(calls.contains(expected), "the scan missed {expected}: {calls:?}");
    }
    let policy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("iam/ecs-controller.json")).unwrap()).unwrap();
    let granted = policy_actions(&policy);

    let mut needed = calls.clone();
    // Registering a task definition with a task role and an execution role passes them.
    if calls.contains("ecs:RegisterTaskDefinition") {
        needed.insert("iam:PassRole".into());
    }
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(missing.is_empty(), "src/ecs.rs calls {missing:?}, which iam/ecs-controller.json does not grant");
    let unused: Vec<_> = granted.difference(&needed).collect();
    assert!(unused.is_empty(), "iam/ecs-controller.json grants {unused:?}, which src/ecs.rs never calls");

    // The controller role of `coalmine synth aws` grants them too.
    let synth: BTreeSet<&str> = coalmine_synth::policy::ALL.iter().flat_map(|l| l.iter().copied()).collect();
    for action in &needed {
        assert!(synth.contains(action.as_str()), "coalmine synth aws's controller role lacks {action}");
    }
    // ...and no ECS or CloudWatch Logs action the backend does not call.
    use coalmine_synth::policy::{CONTROLLER_LOGS, CONTROLLER_SERVICES, CONTROLLER_TASKS, CONTROLLER_TASK_DEFINITIONS};
    let synth_ecs: BTreeSet<String> =
        [CONTROLLER_SERVICES, CONTROLLER_TASK_DEFINITIONS, CONTROLLER_TASKS, CONTROLLER_LOGS].iter().flat_map(|l| l.iter().map(|a| a.to_string())).collect();
    assert_eq!(synth_ecs, calls, "coalmine synth aws's controller role (ECS, logs) against the backend's calls");
}

#[test]
fn the_scan_finds_calls_split_over_lines() {
    let src = "self.client\n    .update_service()\n    .cluster(x)\n; let y = backend .client .list_tasks ( ); self\n  .logs\n  .get_log_events()";
    let calls = sdk_calls(src);
    assert_eq!(calls.into_iter().collect::<Vec<_>>(), ["ecs:ListTasks", "ecs:UpdateService", "logs:GetLogEvents"]);
}

#[test]
fn the_task_role_policy_is_the_one_synth_grants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("iam/ecs-task.json")).unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let actions = |i: usize| policy_actions(&serde_json::json!({ "Statement": [statements[i].clone()] }));
    let set = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(actions(0), set(coalmine_synth::policy::TASK_QUEUE), "the queue statement");
    assert_eq!(actions(1), set(coalmine_synth::policy::TASK_TELEMETRY), "the telemetry statement");
    assert_eq!(statements.len(), 2);
}
