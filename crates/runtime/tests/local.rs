//! The local runtime with real processes.

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use coalmine_runtime::local::{LocalOptions, LocalRuntime};
use coalmine_runtime::{DeploymentState, Runtime, RuntimeError, TaskIdentity, TaskState};
use common::*;

fn running_pids(rt: &LocalRuntime, service: &str) -> Vec<u32> {
    rt.service(service)
        .map(|s| s.tasks.iter().filter(|t| t.state == TaskState::Running).filter_map(|t| t.pid).collect())
        .unwrap_or_default()
}

fn wait_steady(rt: &LocalRuntime, service: &str, revision: &str, timeout: Duration) {
    wait_for(&format!("{service} steady on {revision}"), timeout, || {
        rt.service(service).filter(|s| s.steady && s.revision == revision).map(|_| ())
    });
}

#[test]
fn tasks_get_identity_environment_directory_and_own_process_group() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    // A descriptor opened without O_CLOEXEC (dup never sets it) must not reach the tasks.
    let leaky = unsafe { libc::dup(2) };
    assert!(leaky > 2);
    let mut rev = revision("rev1", app.path(), &program("env_then_sleep.sh"));
    rev.env.insert("ENV_OUT".into(), out.path().display().to_string());
    rev.env.insert("APP_SETTING".into(), "42".into());
    rt.apply(service("primary", rev, 2)).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));

    let status = rt.service("primary").unwrap();
    assert_eq!((status.desired, status.running, status.pending), (2, 2, 0));
    let keys: BTreeSet<_> = status.tasks.iter().map(|t| t.access_key_id.clone()).collect();
    assert_eq!(keys.len(), 2, "access key ids are unique per task");
    for t in &status.tasks {
        let path = out.path().join(format!("{}.env", t.id));
        let text = wait_for("env file", Duration::from_secs(30), || std::fs::read_to_string(&path).ok());
        let get = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or_else(|| panic!("{k} missing in {text}")).to_string()
        };
        assert_eq!(get("COALMINE_SERVICE"), "primary");
        assert_eq!(get("COALMINE_REVISION"), "rev1");
        assert_eq!(get("COALMINE_TASK"), t.id);
        assert_eq!(get("AWS_ACCESS_KEY_ID"), t.access_key_id);
        let ident = TaskIdentity::parse(&t.access_key_id).unwrap();
        assert_eq!((ident.service.as_str(), ident.revision.as_str(), ident.task.as_str()), ("primary", "rev1", t.id.as_str()));
        assert!(!get("AWS_SECRET_ACCESS_KEY").is_empty());
        assert_eq!(get("AWS_REGION"), "us-east-1");
        assert_eq!(get("AWS_ENDPOINT_URL_SQS"), "http://127.0.0.1:9324");
        assert_eq!(get("QUEUE"), "sample-app");
        assert_eq!(get("QUEUE_URL"), "http://127.0.0.1:9324/000000000000/sample-app");
        assert_eq!(get("APP_SETTING"), "42");
        assert_eq!(get("PWD_ACTUAL"), app.path().canonicalize().unwrap().display().to_string());
        // bash exec'd the program: the task's pid is the script's, and it leads its own group.
        let pid = t.pid.unwrap();
        assert_eq!(get("PID"), pid.to_string());
        let st = coalmine_runtime::local::process::proc_stat(pid).unwrap();
        assert_eq!(st.pgrp, pid, "task leads its own process group");
        assert_eq!(st.ppid, std::process::id());
        assert!(rt.task_log(&t.id).unwrap().ends_with(format!("logs/tasks/primary/{}.log", t.id)));
        let fds: BTreeSet<String> =
            std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(fds, ["0", "1", "2"].into_iter().map(String::from).collect(), "task inherited descriptors");
    }
    unsafe { libc::close(leaky) };
}

#[test]
fn crashed_task_is_replaced_in_under_a_second_and_count_is_kept() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    rt.apply(service("primary", revision("rev1", app.path(), "sleep 100000"), 3)).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    let before = rt.service("primary").unwrap();
    let victim = before.tasks[1].clone();
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.pid.unwrap() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let replaced = wait_for("replacement process", Duration::from_secs(20), || {
        let s = rt.service("primary")?;
        let t = s.tasks.iter().find(|t| t.id == victim.id)?;
        (t.pid.is_some() && t.pid != victim.pid).then(|| t.clone())
    });
    let latency = killed_at.elapsed();
    // The first restart is not delayed by back-off (the benchmark measures how fast it is).
    assert!(latency < Duration::from_secs(10), "replacement took {latency:?}");
    assert_eq!(replaced.restarts, 1);
    assert_eq!(replaced.last_exit.as_deref(), Some("signal 9"));
    assert!(alive(replaced.pid.unwrap()));
    let s = rt.service("primary").unwrap();
    assert_eq!(s.tasks.len(), 3);
    assert_eq!(s.exits_by_revision.get("rev1"), Some(&1));
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
}

#[test]
fn rolling_deploy_never_drops_below_minimum_healthy() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let tok = token();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut rev1 = revision("rev1", app.path(), "sleep 100000");
    rev1.env.insert("TEST_TOKEN".into(), tok.clone());
    let mut spec = service("primary", rev1, 3);
    spec.healthy_after = Duration::from_millis(500);
    rt.apply(spec.clone()).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));

    let mut rev2 = revision("rev2", app.path(), "sleep 100001");
    rev2.env.insert("TEST_TOKEN".into(), tok.clone());
    spec.revision = rev2;
    rt.apply(spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut samples = 0;
    let mut max_processes = 0;
    loop {
        let s = rt.service("primary").unwrap();
        // Healthy tasks per the runtime, each backed by a live process.
        let healthy: Vec<u32> = running_pids(&rt, "primary").into_iter().filter(|&p| alive(p)).collect();
        assert!(healthy.len() >= 3, "only {} healthy tasks during the deploy: {:?}", healthy.len(), s.tasks);
        let procs = pids_with_env("TEST_TOKEN", &tok).len();
        max_processes = max_processes.max(procs);
        assert!(procs <= 6, "{procs} processes exceed maximum_percent 200");
        samples += 1;
        if s.steady && s.revision == "rev2" {
            break;
        }
        assert!(Instant::now() < deadline, "deployment did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(samples > 20, "too few samples ({samples}) to trust the check");
    assert!(max_processes > 3, "the new tasks started alongside the old ones");
    let s = rt.service("primary").unwrap();
    assert!(s.tasks.iter().all(|t| t.revision == "rev2"));
    let dep = s.deployments.last().unwrap();
    assert_eq!((dep.id, dep.state, dep.revision.as_str()), (2, DeploymentState::Completed, "rev2"));
    // Old processes are gone.
    wait_for("only 3 processes", Duration::from_secs(30), || (pids_with_env("TEST_TOKEN", &tok).len() == 3).then_some(()));
}

#[test]
fn rolling_deploy_within_maximum_percent_100_keeps_half_healthy() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let tok = token();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut rev1 = revision("rev1", app.path(), "sleep 100000");
    rev1.env.insert("TEST_TOKEN".into(), tok.clone());
    let mut spec = service("primary", rev1, 4);
    spec.minimum_healthy_percent = 50;
    spec.maximum_percent = 100;
    spec.healthy_after = Duration::from_millis(300);
    rt.apply(spec.clone()).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    let mut rev2 = spec.revision.clone();
    rev2.name = "rev2".into();
    rev2.command = "sleep 100001".into();
    spec.revision = rev2;
    rt.apply(spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = rt.service("primary").unwrap();
        let healthy = running_pids(&rt, "primary").into_iter().filter(|&p| alive(p)).count();
        assert!(healthy >= 2, "{healthy} healthy tasks, minimum is 2: {:?}", s.tasks);
        let live = s.tasks.iter().filter(|t| t.state != TaskState::Stopping).count();
        assert!(live <= 4, "{live} tasks exceed maximum_percent 100");
        if s.steady && s.revision == "rev2" {
            break;
        }
        assert!(Instant::now() < deadline, "deployment did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn crash_loop_trips_the_circuit_breaker_and_rolls_back() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut spec = service("canary", revision("good", app.path(), "sleep 100000"), 2);
    spec.healthy_after = Duration::from_millis(300);
    rt.apply(spec.clone()).unwrap();
    wait_steady(&rt, "canary", "good", Duration::from_secs(30));
    let good_pids = running_pids(&rt, "canary");

    spec.revision = revision("bad", app.path(), &program("crash_after.sh"));
    rt.apply(spec).unwrap();
    let s = wait_for("rollback to complete", Duration::from_secs(20), || {
        let s = rt.service("canary")?;
        (s.steady && s.revision == "good" && s.deployments.len() == 3).then_some(s)
    });
    let failed = &s.deployments[1];
    assert_eq!(failed.revision, "bad");
    assert_eq!(failed.state, DeploymentState::Failed);
    assert_eq!(failed.rolled_back_to.as_deref(), Some("good"));
    assert!(failed.reason.contains("circuit breaker") && failed.reason.contains("exit 3"), "{}", failed.reason);
    let rollback = &s.deployments[2];
    assert_eq!((rollback.revision.as_str(), rollback.state), ("good", DeploymentState::Completed));
    assert!(*s.exits_by_revision.get("bad").unwrap() >= 3, "threshold max(3, 2/2) = 3: {:?}", s.exits_by_revision);
    assert_eq!(rt.spec("canary").unwrap().revision.name, "good");
    // The healthy old tasks were never stopped: minimum healthy 100 %.
    assert_eq!(running_pids(&rt, "canary").iter().copied().collect::<BTreeSet<_>>(), good_pids.into_iter().collect());
    assert!(s.tasks.iter().all(|t| t.revision == "good"));
}

#[test]
fn first_deployment_crash_loop_fails_without_rollback_and_keeps_retrying() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let opts = LocalOptions { restart_backoff_base: Duration::from_millis(20), ..LocalOptions::default() };
    let rt = LocalRuntime::with_options(state.path(), opts).unwrap();
    let mut spec = service("primary", revision("bad", app.path(), "exit 7"), 1);
    spec.circuit_breaker_threshold = Some(4);
    rt.apply(spec).unwrap();
    let s = wait_for("deployment failed", Duration::from_secs(30), || {
        rt.service("primary").filter(|s| s.deployments[0].state == DeploymentState::Failed)
    });
    assert!(s.deployments[0].reason.contains("4 task launches"), "{}", s.deployments[0].reason);
    assert_eq!(s.deployments[0].rolled_back_to, None);
    assert!(!s.steady);
    wait_for("more restarts after the breaker", Duration::from_secs(30), || {
        rt.service("primary").filter(|s| s.tasks[0].restarts >= 6).map(|_| ())
    });
}

#[test]
fn task_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut spec = service("primary", revision("rev1", app.path(), &program("ignore_term.sh")), 1);
    spec.stop_timeout = Duration::from_millis(800);
    rt.apply(spec).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    let pid = running_pids(&rt, "primary")[0];
    let t0 = Instant::now();
    rt.scale("primary", 0).unwrap();
    wait_for("task in Stopping", Duration::from_secs(30), || {
        rt.service("primary").filter(|s| s.tasks.first().is_some_and(|t| t.state == TaskState::Stopping)).map(|_| ())
    });
    wait_for("task killed", Duration::from_secs(20), || (!alive(pid)).then_some(()));
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(750), "the task died after {took:?}, before the stop timeout: SIGTERM was not ignored?");
    assert!(took < Duration::from_secs(15), "SIGKILL came {took:?} after the stop");
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    assert!(rt.service("primary").unwrap().tasks.is_empty());
}

#[test]
fn sigterm_stops_a_cooperative_task_at_once() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut spec = service("primary", revision("rev1", app.path(), "sleep 100000"), 1);
    spec.stop_timeout = Duration::from_secs(30);
    rt.apply(spec).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    let pid = running_pids(&rt, "primary")[0];
    let t0 = Instant::now();
    rt.shutdown();
    assert!(!alive(pid));
    // Well within the 30 s stop timeout: SIGTERM did it.
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(matches!(rt.apply(service("x", revision("r", app.path(), "true"), 1)), Err(RuntimeError::ShuttingDown)));
}

#[test]
fn scale_up_and_down_keeps_the_revision() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    rt.apply(service("primary", revision("rev1", app.path(), "sleep 100000"), 1)).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    rt.scale("primary", 4).unwrap();
    assert_eq!(rt.service("primary").unwrap().desired, 4);
    wait_for("4 running", Duration::from_secs(30), || rt.service("primary").filter(|s| s.running == 4 && s.steady).map(|_| ()));
    let all: Vec<u32> = running_pids(&rt, "primary");
    rt.scale("primary", 2).unwrap();
    let s = wait_for("2 running", Duration::from_secs(30), || rt.service("primary").filter(|s| s.tasks.len() == 2 && s.steady));
    assert_eq!(s.deployments.len(), 1, "scaling is not a deployment");
    assert_eq!(s.revision, "rev1");
    wait_for("2 processes", Duration::from_secs(30), || (all.iter().filter(|&&p| alive(p)).count() == 2).then_some(()));
    assert!(matches!(rt.scale("nope", 1), Err(RuntimeError::UnknownService(_))));
}

#[test]
fn invalid_specs_are_rejected_with_the_reason() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut spec = service("primary", revision("rev1", app.path(), "sleep 1"), 2);
    spec.maximum_percent = 100;
    let err = rt.apply(spec).unwrap_err().to_string();
    assert!(err.contains("maximum_percent") && err.contains("could never start"), "{err}");
    let err = rt.apply(service("Bad Name", revision("rev1", app.path(), "sleep 1"), 1)).unwrap_err().to_string();
    assert!(err.contains("a-z"), "{err}");
    let err = rt.apply(service("primary", revision("rev1", &app.path().join("missing"), "sleep 1"), 1)).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(rt.service("primary").is_none());
}

#[test]
fn health_command_gates_healthy() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut spec = service("primary", revision("rev1", app.path(), "sleep 100000"), 1);
    spec.healthy_after = Duration::from_millis(50);
    // Healthy once the file named after the task's pid exists (relative to the revision dir).
    spec.health_command = Some("test -e ready-$COALMINE_TASK_PID".into());
    rt.apply(spec).unwrap();
    let pid = wait_for("task started", Duration::from_secs(30), || rt.service("primary")?.tasks.first()?.pid);
    // Pending while the check fails (one interval is 1 s, retries 3: it stays for > 1 s).
    wait_for("first failed check", Duration::from_secs(30), || {
        rt.service("primary").filter(|s| s.tasks[0].state == TaskState::Pending).map(|_| ())
    });
    std::fs::write(app.path().join(format!("ready-{pid}")), "").unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    assert_eq!(running_pids(&rt, "primary"), vec![pid], "the same process became healthy");
}

#[test]
fn failing_health_checks_replace_the_task_and_trip_the_breaker() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let opts = LocalOptions {
        health_check_interval: Duration::from_millis(20),
        restart_backoff_base: Duration::from_millis(10),
        ..LocalOptions::default()
    };
    let rt = LocalRuntime::with_options(state.path(), opts).unwrap();
    let mut spec = service("primary", revision("good", app.path(), "sleep 100000"), 1);
    spec.healthy_after = Duration::from_millis(50);
    rt.apply(spec.clone()).unwrap();
    wait_steady(&rt, "primary", "good", Duration::from_secs(30));
    spec.revision = revision("unhealthy", app.path(), "sleep 100001");
    spec.health_command = Some("exit 1".into());
    rt.apply(spec).unwrap();
    let s = wait_for("rollback", Duration::from_secs(20), || {
        rt.service("primary").filter(|s| s.deployments.len() == 3 && s.steady && s.revision == "good")
    });
    assert!(s.deployments[1].reason.contains("health check failed"), "{}", s.deployments[1].reason);
}

#[test]
fn logs_are_written_rotated_tailed_and_followed() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let opts = LocalOptions { log_max_bytes: 64 * 1024, ..LocalOptions::default() };
    let rt = LocalRuntime::with_options(state.path(), opts).unwrap();
    let mut rev = revision("rev1", app.path(), &program("chatty.sh"));
    rev.env.insert("LINES_TO_PRINT".into(), "3000".into());
    rt.apply(service("primary", rev, 1)).unwrap();
    let task = wait_for("task", Duration::from_secs(30), || Some(rt.service("primary")?.tasks.first()?.id.clone()));
    let log = rt.task_log(&task).unwrap();
    assert_eq!(log, state.path().canonicalize().unwrap().join(format!("logs/tasks/primary/{task}.log")));
    let last = format!("line 3000 of {task} ");
    wait_for("all lines logged", Duration::from_secs(30), || {
        let t = rt.tail_log(&task, 1).ok()?;
        t.first().filter(|l| l.line.starts_with(&last)).map(|_| ())
    });
    // ~3000 * 90 bytes = 270 KiB through a 64 KiB cap: rotated, capped, 2 files kept.
    let rotated1 = log.with_extension("log.1");
    assert!(rotated1.exists());
    assert!(log.with_extension("log.2").exists());
    assert!(!log.with_extension("log.3").exists());
    for p in [&log, &rotated1] {
        assert!(std::fs::metadata(p).unwrap().len() <= 64 * 1024);
    }
    let tail = rt.tail_log("primary", 5).unwrap();
    assert_eq!(tail.len(), 5);
    assert!(tail[0].line.starts_with(&format!("line 2996 of {task} ")), "{:?}", tail[0]);
    assert!(tail.iter().all(|l| l.task == task));

    // Follow picks up a restart's output (a new header line) after the process is killed.
    let mut follower = rt.follow_log("primary").unwrap();
    assert!(follower.poll().is_empty());
    let pid = rt.service("primary").unwrap().tasks[0].pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut seen = Vec::new();
    wait_for("followed lines", Duration::from_secs(30), || {
        seen.extend(follower.poll());
        seen.iter().any(|l| l.line.starts_with(&last)).then_some(())
    });
    assert!(seen.iter().any(|l| l.line.contains("coalmine: task") && l.line.contains("started")));
    assert!(seen.iter().any(|l| l.line == "--- coalmine: process ended: signal 9 ---"), "{seen:?}");
    assert!(matches!(rt.tail_log("nothing-here", 5), Err(RuntimeError::NoLogs { .. })));
}

#[test]
fn one_runtime_per_state_folder_and_leftovers_are_killed() {
    let state = tempfile::tempdir().unwrap();
    {
        let _rt = LocalRuntime::new(state.path()).unwrap();
        assert!(matches!(LocalRuntime::new(state.path()), Err(RuntimeError::StateInUse { pid: Some(_), .. })));
    }
    // A process recorded as a task by a previous run that is still alive: a new runtime kills it.
    let mut leftover = std::process::Command::new("sleep").arg("100000").process_group(0).spawn().unwrap();
    let pid = leftover.id();
    let start_ticks = coalmine_runtime::local::process::proc_stat(pid).unwrap().start_ticks;
    let file = state.path().join("runtime/tasks.json");
    let mut recorded: coalmine_runtime::local::state::TasksFile = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    recorded.tasks.push(coalmine_runtime::local::state::TaskRecord { id: "primary-1".into(), pid, start_ticks });
    // And one whose pid was reused by another process: left alone.
    let mut innocent = std::process::Command::new("sleep").arg("100000").spawn().unwrap();
    recorded.tasks.push(coalmine_runtime::local::state::TaskRecord { id: "primary-2".into(), pid: innocent.id(), start_ticks: 1 });
    std::fs::write(&file, serde_json::to_vec(&recorded).unwrap()).unwrap();
    let _rt = LocalRuntime::new(state.path()).unwrap();
    let status = leftover.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    assert!(innocent.try_wait().unwrap().is_none(), "a process that only shares the pid must survive");
    innocent.kill().unwrap();
    innocent.wait().unwrap();
}

#[test]
fn task_numbers_are_not_reused_across_runs() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let first: BTreeSet<String> = {
        let rt = LocalRuntime::new(state.path()).unwrap();
        rt.apply(service("primary", revision("rev1", app.path(), "sleep 100000"), 2)).unwrap();
        let s = wait_for("2 tasks", Duration::from_secs(30), || rt.service("primary").filter(|s| s.tasks.len() == 2));
        s.tasks.into_iter().map(|t| t.id).collect()
    };
    let rt = LocalRuntime::new(state.path()).unwrap();
    rt.apply(service("primary", revision("rev1", app.path(), "sleep 100000"), 2)).unwrap();
    let s = wait_for("2 tasks", Duration::from_secs(30), || rt.service("primary").filter(|s| s.tasks.len() == 2));
    assert!(s.tasks.iter().all(|t| !first.contains(&t.id)), "{first:?} vs {:?}", s.tasks);
}

#[test]
fn reapplying_the_same_spec_changes_nothing() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let spec = service("primary", revision("rev1", app.path(), "sleep 100000"), 2);
    rt.apply(spec.clone()).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    let before = rt.service("primary").unwrap();
    for _ in 0..20 {
        rt.apply(spec.clone()).unwrap();
    }
    let after = rt.service("primary").unwrap();
    assert_eq!(after.deployments, before.deployments);
    assert_eq!(after.tasks, before.tasks);
    assert_eq!(rt.spec("primary").unwrap(), spec);
}

#[test]
fn a_newer_revision_supersedes_a_deployment_in_progress() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    let mut spec = service("primary", revision("rev1", app.path(), "sleep 100000"), 2);
    spec.healthy_after = Duration::from_millis(300);
    rt.apply(spec.clone()).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    spec.revision = revision("rev2", app.path(), "sleep 100002");
    spec.healthy_after = Duration::from_secs(3600);
    rt.apply(spec.clone()).unwrap();
    wait_for("rev2 tasks pending", Duration::from_secs(30), || {
        rt.service("primary").filter(|s| s.tasks.iter().filter(|t| t.revision == "rev2" && t.pid.is_some()).count() == 2).map(|_| ())
    });
    spec.revision = revision("rev3", app.path(), "sleep 100003");
    spec.healthy_after = Duration::from_millis(300);
    rt.apply(spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = rt.service("primary").unwrap();
        assert!(s.running >= 2, "healthy rev1 tasks were stopped too early: {:?}", s.tasks);
        if s.steady && s.revision == "rev3" {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(s.deployments[1].state, DeploymentState::Failed);
    assert!(s.deployments[1].reason.contains("superseded"), "{}", s.deployments[1].reason);
    assert_eq!(s.deployments[2].state, DeploymentState::Completed);
    assert!(s.tasks.iter().all(|t| t.revision == "rev3"));
}

#[test]
fn rollback_starts_the_old_revision_again_when_its_tasks_are_gone() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();
    // minimum healthy 0 %: the old tasks are stopped at once when the deployment starts.
    let mut spec = service("canary", revision("good", app.path(), "sleep 100000"), 1);
    spec.minimum_healthy_percent = 0;
    spec.maximum_percent = 100;
    spec.healthy_after = Duration::from_millis(100);
    rt.apply(spec.clone()).unwrap();
    wait_steady(&rt, "canary", "good", Duration::from_secs(30));
    let old_pid = running_pids(&rt, "canary")[0];
    spec.revision = revision("bad", app.path(), "exit 1");
    rt.apply(spec).unwrap();
    wait_for("old task stopped", Duration::from_secs(30), || (!alive(old_pid)).then_some(()));
    let s = wait_for("rolled back", Duration::from_secs(20), || {
        rt.service("canary").filter(|s| s.steady && s.revision == "good" && s.deployments.len() == 3)
    });
    assert_eq!(s.deployments[1].rolled_back_to.as_deref(), Some("good"));
    let t = &s.tasks[0];
    assert!(t.pid.is_some_and(|p| p != old_pid && alive(p)));
    assert_eq!(t.revision, "good");
}

/// Task keys recorded as the runtime registers and removes them.
#[derive(Debug, Default)]
struct Keys(std::sync::Mutex<std::collections::BTreeMap<String, String>>);

impl coalmine_runtime::TaskKeys for Keys {
    fn register(&self, access_key_id: &str, secret: &str) {
        self.0.lock().unwrap().insert(access_key_id.to_string(), secret.to_string());
    }
    fn remove(&self, access_key_id: &str) {
        self.0.lock().unwrap().remove(access_key_id);
    }
}

#[test]
fn each_task_has_its_own_secret_registered_while_it_exists() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let keys = std::sync::Arc::new(Keys::default());
    let opts = LocalOptions { task_keys: Some(keys.clone()), ..LocalOptions::default() };
    let rt = LocalRuntime::with_options(state.path(), opts).unwrap();
    let mut rev = revision("rev1", app.path(), &program("env_then_sleep.sh"));
    rev.env.insert("ENV_OUT".into(), out.path().display().to_string());
    rt.apply(service("primary", rev, 2)).unwrap();
    wait_steady(&rt, "primary", "rev1", Duration::from_secs(30));
    let status = rt.service("primary").unwrap();
    let mut secrets = BTreeSet::new();
    for t in &status.tasks {
        let path = out.path().join(format!("{}.env", t.id));
        let text = wait_for("env file", Duration::from_secs(30), || std::fs::read_to_string(&path).ok());
        let secret = text.lines().find_map(|l| l.strip_prefix("AWS_SECRET_ACCESS_KEY=")).unwrap().to_string();
        assert_eq!(keys.0.lock().unwrap().get(&t.access_key_id), Some(&secret), "the task's own secret is registered");
        assert!(secret.len() >= 32);
        secrets.insert(secret);
    }
    assert_eq!(secrets.len(), 2, "every task has a secret of its own");
    let json = serde_json::to_string(&status).unwrap();
    assert!(secrets.iter().all(|s| !json.contains(s.as_str())), "the status shows no secret");

    // a stopped task's key is removed; the others stay
    rt.scale("primary", 1).unwrap();
    let s = wait_for("1 task", Duration::from_secs(30), || rt.service("primary").filter(|s| s.tasks.len() == 1 && s.steady));
    let left = &s.tasks[0].access_key_id;
    wait_for("the stopped task's key removed", Duration::from_secs(30), || {
        let k = keys.0.lock().unwrap();
        (k.len() == 1 && k.contains_key(left)).then_some(())
    });
    rt.shutdown();
    assert!(keys.0.lock().unwrap().is_empty(), "no key outlives its task");
}
