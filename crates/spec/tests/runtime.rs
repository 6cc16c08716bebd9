//! `[runtime]`: local (the default) or ECS, with the guidance's names as defaults, and
//! diagnostics that point at the field.

use coalmine_spec::*;

const MINIMAL: &str = "app = \"sample-app\"\n[run]\ncommand = \"./sample-app\"\n";

fn errors(src: &str) -> Diagnostics {
    match parse(src, "coalmine.toml") {
        Ok(s) => panic!("expected diagnostics, parsed {s:#?}"),
        Err(d) => d,
    }
}

fn one<'a>(d: &'a Diagnostics, path: &str) -> &'a Diagnostic {
    let found: Vec<_> = d.iter().filter(|x| x.path == path).collect();
    assert_eq!(found.len(), 1, "expected one diagnostic at {path}, got:\n{d}");
    found[0]
}

#[test]
fn local_is_the_default() {
    assert_eq!(parse(MINIMAL, "coalmine.toml").unwrap().runtime, RuntimeSpec::Local);
    let s = parse(&format!("{MINIMAL}[runtime]\nkind = \"local\"\n"), "coalmine.toml").unwrap();
    assert_eq!(s.runtime, RuntimeSpec::Local);
    assert_eq!(s.runtime.kind(), "local");
}

#[test]
fn ecs_defaults_are_the_guidance_names() {
    let s = parse("app = \"sample-app\"\n[runtime]\nkind = \"ecs\"\n", "coalmine.toml").unwrap();
    let ecs = s.runtime.ecs().expect("ecs");
    assert_eq!(ecs, &EcsSpec::default_for("sample-app", "us-east-1"));
    assert_eq!(ecs.primary_service, "sample-app");
    assert_eq!(ecs.canary_service, "sample-app-canary");
    assert_eq!(ecs.container, "sample-app");
    assert_eq!(ecs.cluster, "sample-app");
    assert_eq!((ecs.cpu, ecs.memory, ecs.log_retention_days, ecs.proxy_port), (256, 512, 7, 9325));
    // On ECS the image says how a task starts: no [run] needed.
    assert_eq!(s.run.command, "");
}

#[test]
fn every_ecs_option() {
    let src = r#"app = "billing"
[run]
command = "/app/worker --fast"
stop_timeout = "60s"
[queue]
name = "billing-jobs"
[runtime]
kind = "ecs"
cluster = "workers"
region = "eu-west-1"
endpoint = "http://127.0.0.1:5000"
primary_service = "billing-main"
canary_service = "billing-small"
container = "worker"
proxy_image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/coalmine:1"
proxy_port = 4000
cpu = 1024
memory = 4096
log_retention = "30d"
"#;
    let s = parse(src, "coalmine.toml").unwrap();
    let ecs = s.runtime.ecs().unwrap();
    assert_eq!(
        ecs,
        &EcsSpec {
            cluster: "workers".into(),
            region: "eu-west-1".into(),
            endpoint: Some("http://127.0.0.1:5000".into()),
            primary_service: "billing-main".into(),
            canary_service: "billing-small".into(),
            container: "worker".into(),
            proxy_image: Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com/coalmine:1".into()),
            proxy_port: 4000,
            cpu: 1024,
            memory: 4096,
            log_retention_days: 30,
        }
    );
    // The queue follows the services' region when the file gives it only once.
    assert_eq!(s.queue.region, "eu-west-1");
    // It serialises with its kind, and back.
    let json = serde_json::to_value(&s.runtime).unwrap();
    assert_eq!(json["kind"], "ecs");
    assert_eq!(json["canary_service"], "billing-small");
    assert_eq!(serde_json::from_value::<RuntimeSpec>(json).unwrap(), s.runtime);
}

#[test]
fn unknown_kind_suggests_one() {
    let d = errors(&format!("{MINIMAL}[runtime]\nkind = \"esc\"\n"));
    let e = one(&d, "runtime.kind");
    assert_eq!((e.line, e.column), (5, 8));
    assert_eq!(e.hint.as_deref(), Some("did you mean \"ecs\"?"));
    let d = errors(&format!("{MINIMAL}[runtime]\ncluster = \"x\"\n"));
    let e = one(&d, "runtime.kind");
    assert_eq!(e.line, 4);
    assert!(e.hint.as_deref().unwrap().contains("kind = \\\"ecs\\\"") || e.hint.as_deref().unwrap().contains("kind = \"ecs\""), "{e}");
}

#[test]
fn ecs_options_on_a_local_runtime_are_refused() {
    let d = errors(&format!("{MINIMAL}[runtime]\nkind = \"local\"\ncluster = \"x\"\ncpu = 512\n"));
    let e = one(&d, "runtime.cluster");
    assert_eq!((e.line, e.column), (6, 11));
    assert!(e.message.contains("applies to `kind = \"ecs\"`"), "{e}");
    one(&d, "runtime.cpu");
}

#[test]
fn unknown_runtime_key_suggests_near_miss() {
    let d = errors(&format!("{MINIMAL}[runtime]\nkind = \"ecs\"\ncanary_sevice = \"x\"\n"));
    let e = one(&d, "runtime.canary_sevice");
    assert_eq!(e.hint.as_deref(), Some("did you mean `canary_service`?"));
}

#[test]
fn ecs_names_sizes_and_retention_are_checked() {
    let src = "app = \"a\"\n[runtime]\nkind = \"ecs\"\ncluster = \"my cluster\"\ncanary_service = \"a\"\ncontainer = \"coalmine-proxy\"\ncpu = 256\nmemory = 4096\nlog_retention = \"8d\"\nproxy_port = 0\nendpoint = \"localhost:5000\"\n";
    let d = errors(src);
    let e = one(&d, "runtime.cluster");
    assert_eq!((e.line, e.column), (4, 11));
    assert!(e.hint.as_deref().unwrap().contains("ECS's rule"), "{e}");
    assert!(one(&d, "runtime.canary_service").message.contains("both the service `a`"));
    assert!(one(&d, "runtime.container").message.contains("proxy sidecar"));
    let e = one(&d, "runtime.memory");
    assert_eq!(e.line, 8);
    assert_eq!(e.hint.as_deref(), Some("with cpu = 256, use memory = 512, 1024, 2048 (MiB)"));
    let e = one(&d, "runtime.log_retention");
    assert!(e.hint.as_deref().unwrap().contains("1, 3, 5, 7, 14"), "{e}");
    one(&d, "runtime.proxy_port");
    one(&d, "runtime.endpoint");

    let d = errors("app = \"a\"\n[runtime]\nkind = \"ecs\"\ncpu = 300\n");
    assert!(one(&d, "runtime.cpu").hint.as_deref().unwrap().contains("256, 512, 1024"));
    let d = errors("app = \"a\"\n[runtime]\nkind = \"ecs\"\ncpu = 2048\nmemory = 2048\n");
    assert_eq!(one(&d, "runtime.memory").hint.as_deref(), Some("with cpu = 2048, use memory = 4096 to 16384 in steps of 1024 (MiB)"));
}

#[test]
fn ecs_limits_on_run_and_region() {
    let src = "app = \"a\"\n[run]\ncommand = \"sh -c 'echo $X'\"\nstop_timeout = \"5m\"\n[queue]\nregion = \"us-east-1\"\n[runtime]\nkind = \"ecs\"\nregion = \"eu-west-1\"\n";
    let d = errors(src);
    assert!(one(&d, "run.command").message.contains("split at spaces"));
    assert!(one(&d, "run.stop_timeout").message.contains("Fargate's maximum of 120s"));
    let e = one(&d, "runtime.region");
    assert_eq!((e.line, e.column), (9, 10));
    assert!(e.message.contains("the queue is in `us-east-1`"), "{e}");
    // The same command and stop timeout are fine on the local runtime.
    parse("app = \"a\"\n[run]\ncommand = \"sh -c 'echo $X'\"\nstop_timeout = \"5m\"\n", "coalmine.toml").unwrap();
}

#[test]
fn init_aws_file_parses_to_the_ecs_defaults() {
    let s = parse(&default_toml_aws("sample-app", "eu-central-1"), "coalmine.toml").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(s.runtime, RuntimeSpec::Ecs(EcsSpec::default_for("sample-app", "eu-central-1")));
    assert_eq!(s.queue.region, "eu-central-1");
    assert_eq!(s.queue.endpoint.as_deref(), Some("https://sqs.eu-central-1.amazonaws.com"));
    assert_eq!(s.run.command, "");
    // Everything else as in the local file.
    let local = parse(&default_toml("sample-app"), "coalmine.toml").unwrap();
    assert_eq!((s.services, s.steps, s.alarms), (local.services, local.steps, local.alarms));
    assert_eq!(local.runtime, RuntimeSpec::Local);
}

#[test]
fn a_queue_url_names_the_endpoint_the_queue_and_the_region() {
    let spec = parse(&format!("{MINIMAL}[queue]\nurl = \"https://sqs.eu-west-1.amazonaws.com/123456789012/orders-in\"\n"), "coalmine.toml").unwrap();
    assert_eq!(spec.queue.endpoint.as_deref(), Some("https://sqs.eu-west-1.amazonaws.com"));
    assert_eq!(spec.queue.name, "orders-in");
    assert_eq!(spec.queue.region, "eu-west-1");
    let local = parse(&format!("{MINIMAL}[queue]\nurl = \"http://127.0.0.1:4566/000000000000/orders\"\n"), "coalmine.toml").unwrap();
    assert_eq!(local.queue.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
    assert_eq!(local.queue.region, "us-east-1");
    let both = errors(&format!("{MINIMAL}[queue]\nurl = \"http://127.0.0.1:4566/000000000000/orders\"\nname = \"x\"\n"));
    assert!(one(&both, "queue.url").message.contains("`name` or `endpoint` is set too"), "{both:?}");
    let bad = errors(&format!("{MINIMAL}[queue]\nurl = \"orders\"\n"));
    assert!(one(&bad, "queue.url").message.contains("not a queue URL"), "{bad:?}");
}
