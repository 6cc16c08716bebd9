//! The release pipeline end to end: the real binary, real git repositories, real builds and
//! real processes. Each test runs its own `coalmine up` on free ports.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

fn bootstrap(app: &mut App) -> String {
    let rev = app.commit(WORKER_OK, BUILDSPEC, "first release");
    app.start();
    app.wait_status("the first release on both services", T, |v| {
        exec_status(v) == "Succeeded"
            && service_revision(v, "primary") == rev
            && service_revision(v, "canary") == rev
            && service_steady(v, "primary")
            && service_steady(v, "canary")
    });
    rev
}

#[test]
fn commit_build_canary_approve_primary() {
    let mut app = App::new("");
    let v1 = bootstrap(&mut app);
    let st = app.status();
    assert_eq!(st["primary_revision"], v1.as_str());
    // The artifact holds what the buildspec wrote, with CodeBuild's variables set.
    let artifact = std::fs::read_to_string(app.path().join(format!(".coalmine/artifacts/{v1}/commit.txt"))).unwrap();
    assert!(artifact.starts_with(&v1) && artifact.trim_end().ends_with("hello"), "artifact: {artifact}");

    let v2 = app.commit(WORKER_OK, BUILDSPEC, "second release");
    let v = app.wait_status("v2 on the canary, awaiting approval", T, waiting_for_approval);
    assert_eq!(service_revision(&v, "canary"), v2);
    assert_eq!(service_revision(&v, "primary"), v1, "the primary keeps v1 until approval");
    let id = exec_id(&v);

    let out = app.cli(&["approve", "-m", "looks good", "--actor", "alice"]);
    assert!(out.status.success(), "approve: {}", String::from_utf8_lossy(&out.stderr));
    let v = app.wait_status("v2 on both services", T, |v| exec_id(v) == id && exec_status(v) == "Succeeded");
    assert_eq!(service_revision(&v, "primary"), v2);
    assert_eq!(service_revision(&v, "canary"), v2);
    let e = app.execution(id);
    let approval = &e["approvals"][0];
    assert_eq!(approval["actor"], "alice");
    assert_eq!(approval["comment"], "looks good");
    assert_eq!(approval["revision"], v2.as_str());
    let names: Vec<&str> = e["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Source", "Build", "Deploy canary", "Approval", "Deploy primary"]);
    assert!(e["stages"].as_array().unwrap().iter().all(|s| s["status"] == "Succeeded"));

    // The build log is kept and served.
    let log = app.cli(&["logs", "build", &id.to_string()]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("[command] cp worker.sh out/worker.sh"));
}

#[test]
fn reject_puts_the_canary_back() {
    let mut app = App::new("");
    let v1 = bootstrap(&mut app);
    app.commit(WORKER_OK, BUILDSPEC, "doubtful change");
    let v = app.wait_status("awaiting approval", T, waiting_for_approval);
    let id = exec_id(&v);
    let out = app.cli(&["reject", &id.to_string(), "-m", "not today"]);
    assert!(out.status.success(), "reject: {}", String::from_utf8_lossy(&out.stderr));
    let v = app.wait_status("canary back on v1", T, |v| {
        exec_id(v) == id && exec_status(v) == "RolledBack" && service_revision(v, "canary") == v1 && service_steady(v, "canary")
    });
    assert_eq!(service_revision(&v, "primary"), v1);
    assert!(v["execution"]["reason"].as_str().unwrap().contains("not today"));
}

#[test]
fn newer_commit_supersedes_and_stale_approval_is_refused() {
    let mut app = App::new("");
    bootstrap(&mut app);
    app.commit(WORKER_OK, BUILDSPEC, "third");
    let v = app.wait_status("awaiting approval", T, waiting_for_approval);
    let old = exec_id(&v);
    let newest = app.commit(WORKER_OK, BUILDSPEC, "fourth");
    let v = app.wait_status("the newer execution awaiting approval", T, |v| exec_id(v) != old && waiting_for_approval(v));
    let new = exec_id(&v);
    assert_eq!(app.execution(old)["status"], "Superseded");

    // Approving the superseded execution is refused and approves nothing.
    let out = app.cli(&["approve", &old.to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Superseded") && err.contains(&format!("#{new}")), "message: {err}");
    let v = app.status();
    assert!(waiting_for_approval(&v) && exec_id(&v) == new, "the newer execution still waits");
    assert!(app.execution(new)["approvals"].as_array().unwrap().is_empty());

    let out = app.cli(&["approve", &new.to_string()]);
    assert!(out.status.success());
    let v = app.wait_status("the newest on both", T, |v| exec_id(v) == new && exec_status(v) == "Succeeded");
    assert_eq!(service_revision(&v, "primary"), newest);
}

#[test]
fn failed_build_fails_the_execution() {
    let mut app = App::new("");
    let v1 = bootstrap(&mut app);
    let bad = BUILDSPEC.replace("      - mkdir -p out\n", "      - echo compiling\n      - false\n      - mkdir -p out\n");
    app.commit(WORKER_OK, &bad, "broken build");
    let v = app.wait_status("the build to fail", T, |v| exec_status(v) == "Failed");
    let stages = v["execution"]["stages"].as_array().unwrap();
    assert_eq!(stages[1]["name"], "Build");
    assert_eq!(stages[1]["status"], "Failed");
    assert_eq!(service_revision(&v, "canary"), v1);
    let log = app.cli(&["logs", "build", &exec_id(&v).to_string()]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("compiling") && !log.contains("[command] mkdir -p out"), "build log: {log}");
}

#[test]
fn crash_looping_canary_trips_the_circuit_breaker() {
    // With no alarms, the runtime's circuit breaker is what stops a crash-looping canary.
    let mut app = App::new("alarms = []\n");
    let v1 = bootstrap(&mut app);
    app.commit(WORKER_CRASH, BUILDSPEC, "crashes at start");
    let v = app.wait_status("the execution to fail", Duration::from_secs(120), |v| exec_status(v) == "Failed");
    let reason = v["execution"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("circuit breaker"), "reason: {reason}");
    // A failed deployment is a rollback too: recorded with its reason and numbers.
    let rb = &v["execution"]["rollbacks"][0];
    assert_eq!(rb["to_revision"], v1.as_str(), "rollbacks: {}", v["execution"]["rollbacks"]);
    assert_eq!(rb["lost"], 0);
    app.wait_status("canary back on the primary's revision", T, |v| {
        service_revision(v, "canary") == v1 && service_steady(v, "canary")
    });
}

#[test]
fn canary_crashing_after_it_was_healthy_is_rolled_back_by_the_crash_alarm() {
    // Healthy after 300 ms, then it dies: the circuit breaker (launch failures) does not see
    // it; the crashes alarm does.
    let mut app = App::new("");
    let v1 = bootstrap(&mut app);
    app.commit("#!/usr/bin/env bash\nsleep 1\nexit 3\n", BUILDSPEC, "crashes after a second");
    let v = app.wait_status("the rollback", Duration::from_secs(60), |v| exec_status(v) == "RolledBack");
    let reason = v["execution"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("alarm crashes"), "reason: {reason}");
    let rb = &v["execution"]["rollbacks"][0];
    assert_eq!(rb["to_revision"], v1.as_str());
    assert!(rb["actor"].as_str().unwrap().starts_with("alarm:"));
    app.wait_status("canary back on the primary's revision", T, |v| {
        service_revision(v, "canary") == v1 && service_steady(v, "canary")
    });
}

#[test]
fn kill_9_while_awaiting_approval_resumes_the_same_execution() {
    let mut app = App::new("");
    bootstrap(&mut app);
    let v2 = app.commit(WORKER_OK, BUILDSPEC, "survives a crash");
    let v = app.wait_status("awaiting approval", T, waiting_for_approval);
    let id = exec_id(&v);
    app.kill9();
    app.start();
    let v = app.wait_status("the same execution awaiting approval", T, |v| waiting_for_approval(v) && service_steady(v, "canary"));
    assert_eq!(exec_id(&v), id);
    assert_eq!(service_revision(&v, "canary"), v2);
    let out = app.cli(&["approve", &id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    app.wait_status("released after the restart", T, |v| exec_id(v) == id && exec_status(v) == "Succeeded");
}

#[test]
fn kill_9_during_the_build_restarts_it() {
    let mut app = App::new("");
    bootstrap(&mut app);
    let slow = BUILDSPEC.replace("      - mkdir -p out\n", "      - touch \"$CODEBUILD_SRC_DIR/../../building-$CODEBUILD_BUILD_NUMBER\"\n      - sleep 3\n      - mkdir -p out\n");
    app.commit(WORKER_OK, &slow, "slow build");
    let marker = app.path().join(".coalmine");
    wait_for("the build to start", T, || {
        std::fs::read_dir(&marker).ok()?.flatten().any(|e| e.file_name().to_string_lossy().starts_with("building-")).then_some(())
    }, || app.up_log());
    app.kill9();
    app.start();
    let v = app.wait_status("the restarted build to reach approval", T, waiting_for_approval);
    let e = app.execution(exec_id(&v));
    assert!(
        e["events"].as_array().unwrap().iter().any(|ev| ev["kind"] == "build-restarted"),
        "events: {}",
        e["events"]
    );
}

#[test]
fn invalid_files_get_precise_diagnostics() {
    let app = App::new("");
    std::fs::write(
        app.path().join("coalmine.toml"),
        "app = \"tiny\"\n[run]\ncommand = \"./worker.sh\"\n[services.primary]\ntasks = 0\n[services.canary]\ntaks = 1\n",
    )
    .unwrap();
    let out = app.cli(&["validate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("coalmine.toml:"), "diagnostics name the file and line: {err}");
    assert!(err.contains("taks") || err.contains("tasks"), "diagnostics name the field: {err}");
    // `up` refuses to start on an invalid file.
    let out = app.cli(&["up", "--queue-port", "0", "--api-port", "0"]);
    assert!(!out.status.success());

    std::fs::write(app.path().join("coalmine.toml"), coalmine_toml("")).unwrap();
    std::fs::write(
        app.path().join("buildspec.yml"),
        "version: 0.2\nphases:\n  build:\n    commands:\n      - make\ncache:\n  paths:\n    - x\n",
    )
    .unwrap();
    let out = app.cli(&["validate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache") && err.contains("buildspec.yml:"), "unsupported key reported by name: {err}");
}

#[test]
fn rollback_and_stop_from_the_cli() {
    let mut app = App::new("");
    let v1 = bootstrap(&mut app);
    app.commit(WORKER_OK, BUILDSPEC, "to roll back");
    let v = app.wait_status("awaiting approval", T, waiting_for_approval);
    let id = exec_id(&v);
    let out = app.cli(&["rollback", "-m", "saw errors in the logs"]);
    assert!(out.status.success(), "rollback: {}", String::from_utf8_lossy(&out.stderr));
    let v = app.wait_status("canary back on v1", T, |v| {
        exec_id(v) == id && exec_status(v) == "RolledBack" && service_revision(v, "canary") == v1 && service_steady(v, "canary")
    });
    let rb = &v["execution"]["rollbacks"][0];
    assert_eq!(rb["reason"], "saw errors in the logs");
    assert_eq!(rb["lost"], 0);
    // Nothing is in progress now: a second rollback is refused with a clear message.
    let out = app.cli(&["rollback"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to roll back"));

    app.commit(WORKER_OK, BUILDSPEC, "to stop");
    let v = app.wait_status("awaiting approval", T, |v| exec_id(v) != id && waiting_for_approval(v));
    let id = exec_id(&v);
    let out = app.cli(&["stop", &id.to_string(), "-m", "wrong branch"]);
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    app.wait_status("stopped, canary back on v1", T, |v| {
        exec_id(v) == id && exec_status(v) == "Stopped" && service_revision(v, "canary") == v1
    });
    let history = String::from_utf8_lossy(&app.cli(&["history"]).stdout).into_owned();
    assert!(history.contains("Stopped") && history.contains("RolledBack") && history.contains("Succeeded"), "history: {history}");
}

#[test]
fn trigger_finds_a_commit_before_the_next_poll() {
    let mut app = App::new("");
    std::fs::write(app.path().join("coalmine.toml"), coalmine_toml("").replace("poll_interval = \"200ms\"", "poll_interval = \"1h\"")).unwrap();
    let rev = app.commit(WORKER_OK, BUILDSPEC, "first");
    app.start();
    app.wait_status("the first release", T, |v| exec_status(v) == "Succeeded" && service_revision(v, "canary") == rev);
    let rev2 = app.commit(WORKER_OK, BUILDSPEC, "second");
    let out = app.cli(&["trigger"]);
    assert!(out.status.success());
    app.wait_status("the second commit on the canary", T, |v| service_revision(v, "canary") == rev2);
}

#[test]
fn init_down_and_purge() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("worker");
    let out = std::process::Command::new(BIN).args(["init", "--example", "sample-app"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("src/main.rs").exists() && dir.join("Cargo.lock").exists());
    assert!(git(&dir, &["log", "--oneline"]).lines().count() == 1, "one commit");
    let out = std::process::Command::new(BIN).arg("validate").current_dir(&dir).output().unwrap();
    assert!(out.status.success(), "the sample app's files are valid: {}", String::from_utf8_lossy(&out.stderr));

    // init in a plain folder writes a coalmine.toml that validates once [run] command is set.
    let plain = tmp.path().join("my-app");
    std::fs::create_dir_all(&plain).unwrap();
    let out = std::process::Command::new(BIN).arg("init").current_dir(&plain).output().unwrap();
    assert!(out.status.success());
    let toml = std::fs::read_to_string(plain.join("coalmine.toml")).unwrap();
    assert!(toml.contains("app = \"my-app\""));
    // Not a git repository yet: nothing to release, and validate says how to fix it.
    let out = std::process::Command::new(BIN).arg("validate").current_dir(&plain).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("git init"), "{}", String::from_utf8_lossy(&out.stderr));
    git(&plain, &["init", "--quiet"]);
    git(&plain, &["-c", "user.email=dev@example.com", "-c", "user.name=Dev", "commit", "--quiet", "--allow-empty", "-m", "first"]);
    let out = std::process::Command::new(BIN).arg("validate").current_dir(&plain).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // down stops a running up and --purge removes its state.
    let mut app = App::new("");
    bootstrap(&mut app);
    let pid = app.up.as_ref().unwrap().id();
    let out = app.cli(&["down", "--purge"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = app.up.take().unwrap();
    assert!(child.wait().unwrap().success(), "up exits 0 after down");
    assert!(!app.path().join(".coalmine").exists());
    assert!(std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err());
}

#[test]
fn kill_9_during_the_canary_deploy_resumes_it() {
    let mut app = App::new("");
    // A slow health wait keeps the canary deploy in progress long enough to kill coalmine in it.
    std::fs::write(app.path().join("coalmine.toml"), coalmine_toml("").replace("healthy_after = \"300ms\"", "healthy_after = \"3s\"")).unwrap();
    bootstrap(&mut app);
    let v2 = app.commit(WORKER_OK, BUILDSPEC, "deploy interrupted");
    let v = app.wait_status("the canary deploy in progress", T, |v| {
        v["execution"]["stages"]
            .as_array()
            .is_some_and(|st| st.iter().any(|s| s["name"] == "Deploy canary" && s["status"] == "InProgress"))
    });
    let id = exec_id(&v);
    app.kill9();
    app.start();
    let v = app.wait_status("the same execution at approval", T, |v| waiting_for_approval(v) && service_steady(v, "canary"));
    assert_eq!(exec_id(&v), id);
    assert_eq!(service_revision(&v, "canary"), v2);
    let canary_tasks = v["services"].as_array().unwrap().iter().find(|s| s["name"] == "canary").unwrap()["status"]["tasks"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(canary_tasks, 1, "a restart never doubles the tasks");
}
