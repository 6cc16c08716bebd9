use std::path::PathBuf;
use std::time::Duration;

use coalmine_spec::*;

const MINIMAL: &str = "app = \"sample-app\"\n[run]\ncommand = \"./sample-app\"\n";

fn errors(src: &str) -> Diagnostics {
    match parse(src, "coalmine.toml") {
        Ok(s) => panic!("expected diagnostics, parsed {s:#?}"),
        Err(d) => d,
    }
}

/// The single diagnostic for a field path, with its position.
fn one<'a>(d: &'a Diagnostics, path: &str) -> &'a Diagnostic {
    let found: Vec<_> = d.iter().filter(|x| x.path == path).collect();
    assert_eq!(found.len(), 1, "expected one diagnostic at {path}, got:\n{d}");
    found[0]
}

fn pos(d: &Diagnostic) -> (usize, usize) {
    (d.line, d.column)
}

#[test]
fn minimal_file_gets_the_guidance_defaults() {
    let s = parse(MINIMAL, "dir/coalmine.toml").unwrap();
    assert_eq!(s.app, "sample-app");
    assert_eq!(s.root, PathBuf::from("dir"));
    assert_eq!(s.source.repo, Repo::Path(PathBuf::from("dir")));
    assert_eq!(s.source.branch, None, "the repository's current branch");
    assert_eq!(s.source.poll_interval, Duration::from_secs(5));
    assert_eq!(s.build.buildspec, PathBuf::from("buildspec.yml"));
    assert_eq!(s.build.timeout, Duration::from_secs(3600));
    assert_eq!(s.run.command, "./sample-app");
    assert_eq!(s.run.stop_timeout, Duration::from_secs(30));
    assert_eq!((s.run.minimum_healthy_percent, s.run.maximum_percent), (100, 200));
    assert_eq!(s.queue.name, "sample-app");
    assert_eq!(s.queue.dlq, "sample-app-dlq");
    assert_eq!(s.queue.visibility_timeout, Duration::from_secs(300));
    assert_eq!(s.queue.max_receive_count, 1);
    assert_eq!(s.queue.dlq_retention, Duration::from_secs(3600));
    assert_eq!(s.queue.endpoint, None);
    assert_eq!(s.queue.port, 9324);
    assert_eq!(s.queue.region, "us-east-1");
    assert_eq!(s.services.primary.tasks, 3);
    assert_eq!(s.services.canary.tasks, 1);
    assert_eq!(s.server.port, 7070);
    assert_eq!(s.server.bind.to_string(), "127.0.0.1");
    assert_eq!(
        s.steps,
        vec![
            Step::Deploy { service: ServiceName::Canary, timeout: Duration::from_secs(600) },
            Step::Approval { timeout: Duration::from_secs(7 * 86400) },
            Step::Deploy { service: ServiceName::Primary, timeout: Duration::from_secs(900) },
        ]
    );
    assert_eq!(s.alarms, default_alarms());
    assert_eq!(s.alarms.len(), 4, "every kind but the guidance's dlq-depth, which is opt-in");
}

#[test]
fn default_toml_parses_back_to_the_defaults() {
    let text = default_toml("sample-app");
    let from_template = parse(&text, "coalmine.toml").unwrap_or_else(|d| panic!("{d}"));
    let from_minimal = parse(MINIMAL, "coalmine.toml").unwrap();
    assert_eq!(from_template, from_minimal);
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 20, "the template explains itself");
    // Another name flows into the queue names.
    let other = parse(&default_toml("billing"), "coalmine.toml").unwrap();
    assert_eq!(other.queue.name, "billing");
    assert_eq!(other.queue.dlq, "billing-dlq");
    assert_eq!(other.run.command, "./billing");
}

#[test]
fn full_file_with_every_section() {
    let src = r#"
app = "worker-1"
[source]
repo = "https://example.com/x.git"
branch = "release"
poll_interval = "1s"
[build]
buildspec = "ci/buildspec.yml"
timeout = "10m"
[run]
command = "./worker --fast"
env = { WORK_MS = "1000", FAIL_RATE = "0.01" }
stop_timeout = "5s"
health_command = "test -f ready"
healthy_after = "500ms"
minimum_healthy_percent = 50
maximum_percent = 150
[queue]
name = "jobs"
visibility_timeout = "30s"
dlq = "jobs-dead"
max_receive_count = 3
dlq_retention = "2h"
endpoint = "https://sqs.eu-west-1.amazonaws.com"
port = 0
region = "eu-west-1"
[services.primary]
tasks = 4
[services.canary]
tasks = 2
[server]
port = 0
bind = "::1"
[[steps]]
deploy = "canary"
timeout = "1m"
[[steps]]
pause = "30s"
[[steps]]
scale = "canary"
tasks = 3
[[steps]]
analysis = "2m"
promote = "manual"
[[steps]]
approval = "manual"
[[steps]]
deploy = "primary"
[[alarms]]
kind = "failure-ratio"
confidence = 0.95
[[alarms]]
kind = "latency"
percentile = 99
factor = 3
[[alarms]]
kind = "latency"
percentile = 50
"#;
    let s = parse(src, "/srv/app/coalmine.toml").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(s.source.repo, Repo::Url("https://example.com/x.git".into()));
    assert_eq!(s.source.repo.location(), "https://example.com/x.git");
    assert_eq!(s.source.poll_interval, Duration::from_secs(1));
    assert_eq!(s.build.buildspec, PathBuf::from("ci/buildspec.yml"));
    assert_eq!(s.run.env.get("WORK_MS").map(String::as_str), Some("1000"));
    assert_eq!(s.run.health_command.as_deref(), Some("test -f ready"));
    assert_eq!(s.run.healthy_after, Duration::from_millis(500));
    assert_eq!(s.queue.max_receive_count, 3);
    assert_eq!(s.queue.endpoint.as_deref(), Some("https://sqs.eu-west-1.amazonaws.com"));
    assert_eq!(s.queue.port, 0);
    assert_eq!(s.server.bind.to_string(), "::1");
    assert_eq!(s.services.get(ServiceName::Canary).tasks, 2);
    assert_eq!(
        s.steps,
        vec![
            Step::Deploy { service: ServiceName::Canary, timeout: Duration::from_secs(60) },
            Step::Pause { duration: Duration::from_secs(30) },
            Step::Scale { service: ServiceName::Canary, tasks: 3 },
            Step::Analysis { duration: Duration::from_secs(120), promote: Promote::Manual },
            Step::Approval { timeout: Duration::from_secs(7 * 86400) },
            Step::Deploy { service: ServiceName::Primary, timeout: Duration::from_secs(900) },
        ]
    );
    assert_eq!(s.steps[2].label(), "scale canary to 3");
    assert_eq!(
        s.alarms,
        vec![
            AlarmSpec::FailureRatio { min_sample: 20, confidence: 0.95, consecutive_failures: 3 },
            AlarmSpec::Latency { percentile: 99.0, factor: 3.0, min_sample: 20 },
            AlarmSpec::Latency { percentile: 50.0, factor: 2.0, min_sample: 20 },
        ]
    );
}

#[test]
fn empty_alarm_list_turns_alarms_off_and_analysis_defaults_to_auto() {
    let src = format!("alarms = []\n{MINIMAL}[[steps]]\ndeploy = \"canary\"\n[[steps]]\nanalysis = \"5m\"\n[[steps]]\ndeploy = \"primary\"\n");
    let s = parse(&src, "coalmine.toml").unwrap_or_else(|d| panic!("{d}"));
    assert!(s.alarms.is_empty());
    assert_eq!(s.steps[1], Step::Analysis { duration: Duration::from_secs(300), promote: Promote::Auto });
}

#[test]
fn spec_serializes_to_json_with_readable_durations() {
    let s = parse(MINIMAL, "coalmine.toml").unwrap();
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["queue"]["visibility_timeout"], "5m");
    assert_eq!(j["steps"][0]["step"], "deploy");
    assert_eq!(j["steps"][0]["service"], "canary");
    assert_eq!(j["steps"][0]["timeout"], "10m");
    assert_eq!(j["steps"][1]["timeout"], "7d");
    assert_eq!(j["alarms"][0]["kind"], "failure-ratio");
    assert_eq!(j["alarms"][0]["min_sample"], 20);
    assert_eq!(j["source"]["repo"]["path"], ".");
    let back: AppSpec = serde_json::from_value(j).unwrap();
    assert_eq!(back, s);
}

#[test]
fn zero_tasks_with_position_and_hint() {
    let src = format!("{MINIMAL}[services.canary]\ntasks = 0\n");
    let d = errors(&src);
    let e = one(&d, "services.canary.tasks");
    assert_eq!(pos(e), (5, 9));
    assert!(e.message.contains("zero tasks"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("at least one task"));
    let text = d.to_string();
    assert!(text.contains(" --> coalmine.toml:5:9\n  |\n5 | tasks = 0\n  |         ^ services.canary.tasks\n  = help: "), "{text}");
}

#[test]
fn canary_larger_than_primary() {
    let src = format!("{MINIMAL}[services.primary]\ntasks = 2\n[services.canary]\ntasks = 3\n");
    let d = errors(&src);
    let e = one(&d, "services.canary.tasks");
    assert_eq!(pos(e), (7, 9));
    assert!(e.message.contains("more tasks (3) than the primary (2)"), "{e}");
}

#[test]
fn steps_without_primary_deploy() {
    let src = format!("{MINIMAL}[[steps]]\ndeploy = \"canary\"\n[[steps]]\napproval = \"manual\"\n");
    let d = errors(&src);
    let e = one(&d, "steps");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("never deploy the primary"));
    assert!(e.hint.as_deref().unwrap().contains("deploy = \"primary\""));
}

#[test]
fn primary_before_canary_and_duplicates() {
    let src = format!(
        "{MINIMAL}[[steps]]\ndeploy = \"primary\"\n[[steps]]\ndeploy = \"canary\"\n[[steps]]\ndeploy = \"primary\"\n"
    );
    let d = errors(&src);
    let e = one(&d, "steps[1].deploy");
    assert_eq!(pos(e), (7, 10));
    assert!(e.message.contains("after the primary"), "{e}");
    let e = one(&d, "steps[2].deploy");
    assert!(e.message.contains("already deployed by steps[0]"), "{e}");
}

#[test]
fn step_shape_errors() {
    let src = format!(
        "{MINIMAL}[[steps]]\ndeploy = \"canry\"\n[[steps]]\ndeploy = \"canary\"\ntasks = 2\n[[steps]]\npause = \"30s\"\napproval = \"manual\"\n[[steps]]\nscale = \"canary\"\n[[steps]]\nanalysis = \"1m\"\npromote = \"sometimes\"\n[[steps]]\ntimeout = \"1m\"\n[[steps]]\ndeploy = \"primary\"\ntimeout = \"0s\"\n"
    );
    let d = errors(&src);
    let e = one(&d, "steps[0].deploy");
    assert_eq!(e.hint.as_deref(), Some("did you mean \"canary\"?"));
    let e = one(&d, "steps[1].tasks");
    assert!(e.message.contains("does not apply to a `deploy` step"), "{e}");
    let e = one(&d, "steps[2].pause");
    assert!(e.message.contains("both `approval` and `pause`") || e.message.contains("both `pause` and `approval`"), "{e}");
    let e = one(&d, "steps[3].scale");
    assert!(e.message.contains("needs `tasks`"), "{e}");
    let e = one(&d, "steps[4].promote");
    assert!(e.hint.as_deref().unwrap().contains("\"auto\" or \"manual\""));
    let e = one(&d, "steps[5]");
    assert!(e.message.contains("nothing to do"), "{e}");
    let e = one(&d, "steps[6].timeout");
    assert!(e.message.contains("longer than zero"), "{e}");
    // Sorted by position.
    let lines: Vec<usize> = d.iter().map(|x| x.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn queue_limits() {
    let src = format!("{MINIMAL}[queue]\nmax_receive_count = 0\nvisibility_timeout = \"13h\"\ndlq = \"sample-app\"\nendpoint = \"sqs.amazonaws.com\"\n");
    let d = errors(&src);
    let e = one(&d, "queue.max_receive_count");
    assert_eq!(pos(e), (5, 21));
    assert!(e.message.contains("1 to 1000"), "{e}");
    let e = one(&d, "queue.visibility_timeout");
    assert_eq!(pos(e), (6, 22));
    assert!(e.message.contains("longer than 12h"), "{e}");
    let e = one(&d, "queue.dlq");
    assert!(e.message.contains("same name as the queue"), "{e}");
    let e = one(&d, "queue.endpoint");
    assert!(e.message.contains("not an http(s) URL"), "{e}");
}

#[test]
fn bad_duration_names_the_accepted_forms() {
    let src = format!("{MINIMAL}stop_timeout = \"30 seconds\"\n");
    let d = errors(&src);
    let e = one(&d, "run.stop_timeout");
    assert_eq!(pos(e), (4, 16));
    assert!(e.hint.as_deref().unwrap().contains("\"500ms\", \"10s\", \"5m\", \"2h\" or \"7d\""), "{e}");
    // A number where a duration string belongs.
    let d = errors("app = \"a\"\n[source]\npoll_interval = 5\n[run]\ncommand = \"x\"\n");
    let e = one(&d, "source.poll_interval");
    assert_eq!(pos(e), (3, 17));
    assert!(e.message.contains("invalid type"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("\"10s\""));
}

#[test]
fn unknown_keys_suggest_near_misses() {
    let d = errors(&format!("{MINIMAL}[services.canary]\ntaks = 1\n"));
    let e = one(&d, "services.canary.taks");
    assert_eq!(pos(e), (5, 1));
    assert_eq!(e.message, "unknown key `taks`");
    assert_eq!(e.hint.as_deref(), Some("did you mean `tasks`?"));

    let d = errors(&format!("{MINIMAL}[servics.canary]\ntasks = 1\n"));
    let e = one(&d, "servics");
    assert_eq!(pos(e), (4, 2));
    assert_eq!(e.hint.as_deref(), Some("did you mean `services`?"));

    let d = errors(&format!("{MINIMAL}[queue]\nbananas = 1\n"));
    let e = one(&d, "queue.bananas");
    assert!(e.hint.as_deref().unwrap().contains("the keys here are `name`"), "{e}");
}

#[test]
fn top_level_key_under_a_table_says_to_move_it() {
    let d = errors(&format!("{MINIMAL}alarms = []\n"));
    let e = one(&d, "run.alarms");
    assert!(e.hint.as_deref().unwrap().contains("move it above"), "{e}");
}

#[test]
fn every_unknown_key_is_reported_at_once() {
    let src = format!("{MINIMAL}stop_timout = \"5s\"\n[queue]\nnmae = \"q\"\n[services.canary]\ntaks = 1\n[[steps]]\ndeploi = \"canary\"\n[[alarms]]\nkind = \"hung\"\nmin_msec = 5\n");
    let d = errors(&src);
    let got: Vec<(&str, usize, usize, Option<&str>)> =
        d.iter().map(|x| (x.path.as_str(), x.line, x.column, x.hint.as_deref())).collect();
    assert_eq!(
        got,
        vec![
            ("run.stop_timout", 4, 1, Some("did you mean `stop_timeout`?")),
            ("queue.nmae", 6, 1, Some("did you mean `name`?")),
            ("services.canary.taks", 8, 1, Some("did you mean `tasks`?")),
            ("steps[0].deploi", 10, 1, Some("did you mean `deploy`?")),
            ("alarms[0].min_msec", 13, 1, Some("did you mean `min_ms`?")),
        ]
    );
}

#[test]
fn wrong_types() {
    let d = errors(&format!("{MINIMAL}[services.canary]\ntasks = \"one\"\n"));
    let e = one(&d, "services.canary.tasks");
    assert_eq!(pos(e), (5, 9));
    assert!(e.message.contains("invalid type: string \"one\""), "{e}");

    let d = errors(&format!("{MINIMAL}[services.canary]\ntasks = -1\n"));
    assert!(one(&d, "services.canary.tasks").hint.as_deref().unwrap().contains("0 or more"));

    let d = errors("app = \"x\"\nrun = \"./x\"\n");
    let e = one(&d, "run");
    assert_eq!(e.message, "invalid type: string \"./x\", expected a table");
    assert!(e.hint.as_deref().unwrap().contains("`[run]` section"), "{e}");

    let d = errors(&format!("{MINIMAL}[server]\nport = 70000\n"));
    assert_eq!(one(&d, "server.port").hint.as_deref(), Some("use a whole number from 0 to 65535"));

    let d = errors(&format!("{MINIMAL}[steps]\ndeploy = \"canary\"\n"));
    assert!(one(&d, "steps").hint.as_deref().unwrap().contains("`[[steps]]` table"));

    let d = errors(&format!("{MINIMAL}env = {{ WORK_MS = 1000 }}\n"));
    let e = &d.0[0];
    assert!(e.path.starts_with("run.env"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("quote the value"), "{e}");
}

#[test]
fn syntax_error_has_a_position() {
    let d = errors("app = \"a\"\n[run\ncommand = \"x\"\n");
    assert_eq!(d.len(), 1);
    assert_eq!(d.0[0].line, 2);
}

#[test]
fn missing_app_and_run() {
    let d = errors("[services.canary]\ntasks = 1\n");
    assert!(one(&d, "app").hint.as_deref().unwrap().contains("app = "));
    assert!(one(&d, "run.command").hint.as_deref().unwrap().contains("[run]"));
    let d = errors("app = \"Bad_Name\"\n[run]\ncommand = \"x\"\n");
    let e = one(&d, "app");
    assert_eq!(pos(e), (1, 7));
}

#[test]
fn alarm_errors() {
    let src = format!(
        "{MINIMAL}[[alarms]]\nkind = \"dlq-dept\"\n[[alarms]]\nkind = \"crashes\"\nfactor = 2\n[[alarms]]\nkind = \"failure-ratio\"\nconfidence = 1.5\n[[alarms]]\nkind = \"failure-ratio\"\n[[alarms]]\nthreshold = 3\n"
    );
    let d = errors(&src);
    let e = one(&d, "alarms[0].kind");
    assert_eq!(pos(e), (5, 8));
    assert_eq!(e.message, "unknown alarm kind `dlq-dept`");
    assert_eq!(e.hint.as_deref(), Some("did you mean \"dlq-depth\"?"));
    assert!(one(&d, "alarms[1].factor").message.contains("does not apply to a `crashes` alarm"));
    assert!(one(&d, "alarms[2].confidence").message.contains("outside 0.5 to 1"));
    assert!(one(&d, "alarms[3].kind").message.contains("another is at alarms[2]"));
    assert!(one(&d, "alarms[4]").message.contains("no `kind`"));

    // Unknown keys stop the parse at the first (serde's rule); that one is located.
    let d = errors(&format!("{MINIMAL}[[alarms]]\nkind = \"latency\"\nfactr = 2\n"));
    let e = one(&d, "alarms[0].factr");
    assert_eq!(pos(e), (6, 1));
    assert_eq!(e.hint.as_deref(), Some("did you mean `factor`?"));
}

#[test]
fn exact_duplicate_alarm_is_refused_but_variants_are_fine() {
    let src = format!("{MINIMAL}[[alarms]]\nkind = \"dlq-depth\"\n[[alarms]]\nkind = \"dlq-depth\"\n");
    let d = errors(&src);
    assert!(one(&d, "alarms[1].kind").message.contains("repeats alarms[0]"));
    let src = format!("{MINIMAL}[[alarms]]\nkind = \"dlq-depth\"\n[[alarms]]\nkind = \"dlq-depth\"\nthreshold = 0\nperiod = \"1m\"\n");
    assert_eq!(parse(&src, "coalmine.toml").unwrap().alarms.len(), 2);
}

#[test]
fn load_resolves_paths_against_the_file_folder() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("app");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("coalmine.toml"), format!("{MINIMAL}[source]\nrepo = \"../repo\"\n")).unwrap();
    let s = load(&sub.join("coalmine.toml")).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(s.root, sub);
    assert_eq!(s.source.repo, Repo::Path(sub.join("../repo")));

    let missing = load(&dir.path().join("nope.toml")).unwrap_err();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing.0[0].line, 0);
    assert!(missing.0[0].hint.as_deref().unwrap().contains("coalmine init"));
    assert!(missing.to_string().starts_with("error: cannot read"));
}

#[test]
fn many_problems_are_all_reported_and_counted() {
    let src = "app = \"a\"\n[run]\ncommand = \"x\"\n[services.primary]\ntasks = 0\n[queue]\nmax_receive_count = 0\n";
    let d = errors(src);
    assert_eq!(d.len(), 2);
    assert!(d.to_string().ends_with("error: 2 problems found"));
}

/// The files shipped with the sample app are valid.
#[test]
fn sample_app_files_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample-app");
    let spec = load(&dir.join("coalmine.toml")).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(spec.app, "sample-app");
    assert_eq!(spec.run.command, "./sample-app");
    let b = load_buildspec(&dir.join(&spec.build.buildspec)).unwrap_or_else(|d| panic!("{d}"));
    assert!(b.phases.build.is_some());
    assert_eq!(b.artifacts.unwrap().files, vec!["sample-app"]);
}

#[test]
fn queue_account_id_and_signature_checks() {
    let s = parse(MINIMAL, "coalmine.toml").unwrap();
    assert_eq!(s.queue.account_id, "000000000000");
    assert!(s.queue.verify_signatures, "signatures are checked by default");

    let s = parse(&format!("{MINIMAL}[queue]\naccount_id = \"123456789012\"\nverify_signatures = false\n"), "coalmine.toml").unwrap();
    assert_eq!(s.queue.account_id, "123456789012");
    assert!(!s.queue.verify_signatures);

    for bad in ["12345", "1234567890123", "12345678901x"] {
        let d = errors(&format!("{MINIMAL}[queue]\naccount_id = \"{bad}\"\n"));
        let e = one(&d, "queue.account_id");
        assert_eq!(pos(e), (5, 14), "{e}");
        assert!(e.message.contains(bad), "{e}");
        assert!(e.hint.as_deref().unwrap().contains("12 digits"), "{e}");
        assert!(e.to_string().contains("coalmine.toml"), "names the file: {e}");
    }
    let d = errors(&format!("{MINIMAL}[queue]\naccount_id = 123456789012\n"));
    one(&d, "queue.account_id");
}
