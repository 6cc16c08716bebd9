//! No orphans: what a task or a build command starts dies with it — a task started through a
//! wrapper that does not `exec`, a build step that backgrounds a child — also when `coalmine
//! up` itself is killed with SIGKILL (the next start kills what is left) and when the group's
//! leader is already gone.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(90);

/// A wrapper that does not `exec`: the worker is its child, in its process group.
const WRAPPER: &str = "#!/usr/bin/env bash\nsleep 100000 &\necho \"child $!\"\nwait\n";

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("");
            state != "Z" && state != "X"
        })
        .unwrap_or(false)
}

/// The numbers after `tag ` in `text`.
fn pids(text: &str, tag: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.strip_prefix(tag)?.trim().parse().ok()).collect()
}

fn task_logs(app: &App) -> String {
    let mut out = String::new();
    for service in ["primary", "canary"] {
        let dir = app.path().join(".coalmine/logs/tasks").join(service);
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

fn wait_gone(what: &str, pids: &[u32], app: &App) {
    wait_for(what, T, || (!pids.iter().any(|&p| alive(p))).then_some(()), || {
        format!("still alive: {:?}\n{}", pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>(), app.up_log())
    });
}

#[test]
fn a_wrapper_tasks_child_is_killed_after_kill_9_of_coalmine_and_on_stop() {
    let mut app = App::new("");
    app.commit(WRAPPER, BUILDSPEC, "a wrapper that does not exec");
    app.start();
    app.wait_status("both services steady", T, |v| {
        exec_status(v) == "Succeeded" && service_steady(v, "primary") && service_steady(v, "canary")
    });
    let children = wait_for("three tasks to start their child", T, || Some(pids(&task_logs(&app), "child ")).filter(|p| p.len() == 3), || task_logs(&app));
    assert!(children.iter().all(|&p| alive(p)));

    app.kill9();
    // The wrappers die with coalmine; their children do not (nothing can make them, short of a
    // cgroup): they run on, holding their task's identity...
    assert!(children.iter().all(|&p| alive(p)), "the children outlive the killed coalmine until it starts again");
    // ...until coalmine starts again: it kills whatever is left of its tasks' groups.
    app.start();
    wait_gone("the previous run's task children to be killed", &children, &app);
    assert!(app.up_log().contains("killed task processes a previous coalmine run left behind"), "{}", app.up_log());

    // Stopping coalmine takes the new tasks' children too.
    app.wait_status("both services steady again", T, |v| service_steady(v, "primary") && service_steady(v, "canary"));
    let now: Vec<u32> = wait_for("the new tasks' children", T, || {
        Some(pids(&task_logs(&app), "child ").into_iter().filter(|p| !children.contains(p)).collect::<Vec<_>>()).filter(|p| p.len() == 3)
    }, || task_logs(&app));
    app.stop();
    wait_gone("the tasks' children to stop with coalmine", &now, &app);
}

#[test]
fn a_build_steps_background_child_is_killed_when_the_step_ends_and_after_kill_9() {
    let mut app = App::new("");
    let leaves_a_child = BUILDSPEC.replace("      - mkdir -p out\n", "      - mkdir -p out\n      - sleep 100000 > /dev/null 2>&1 & echo \"bg $!\"\n");
    app.commit(WORKER_OK, &leaves_a_child, "a build that backgrounds a child");
    app.start();
    let v = app.wait_status("the first release", T, |v| exec_status(v) == "Succeeded" || exec_status(v) == "Failed");
    assert_eq!(exec_status(&v), "Succeeded", "{v}");
    let first = exec_id(&v);
    let log = std::fs::read_to_string(app.path().join(format!(".coalmine/logs/build/{}.log", exec_id(&v)))).unwrap();
    let bg = pids(&log, "bg ");
    assert_eq!(bg.len(), 1, "{log}");
    wait_gone("the build step's background child to be killed with its step", &bg, &app);

    // A build that is still running when coalmine is killed: its commands (a foreground one and
    // a background one; the shell that ran them dies with coalmine) are killed at the next start.
    let hangs = BUILDSPEC.replace(
        "      - mkdir -p out\n",
        "      - sleep 100000 > /dev/null 2>&1 & echo \"bg $!\"; sleep 100001 > /dev/null 2>&1 & echo \"fg $!\"; wait\n",
    );
    app.commit(WORKER_OK, &hangs, "a build that hangs");
    let v = app.wait_status("the second build to start", T, |v| exec_id(v) > first && exec_status(v) == "InProgress");
    let log_path = app.path().join(format!(".coalmine/logs/build/{}.log", exec_id(&v)));
    let left = wait_for("the build to start its commands", T, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let mut p = pids(&log, "bg ");
        p.extend(pids(&log, "fg "));
        (p.len() == 2).then_some(p)
    }, || app.up_log());
    app.kill9();
    assert!(left.iter().all(|&p| alive(p)), "the build's commands outlive the killed coalmine until it starts again");
    app.start();
    wait_gone("the killed run's build commands to be killed", &left, &app);
}
