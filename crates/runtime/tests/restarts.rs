//! Hundreds of restarts leak no descriptors and leave no zombies. Alone in its test binary so
//! that no other test opens descriptors or starts processes meanwhile.

mod common;

use std::time::Duration;

use coalmine_runtime::local::{LocalOptions, LocalRuntime};
use coalmine_runtime::Runtime;
use common::*;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| coalmine_runtime::local::process::proc_stat(pid).is_some_and(|s| s.ppid == me && s.state == 'Z'))
        .collect()
}

#[test]
fn hundreds_of_restarts_leak_no_fds_and_leave_no_zombies() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let opts = LocalOptions {
        restart_backoff_base: Duration::from_millis(1),
        restart_backoff_max: Duration::from_millis(2),
        ..LocalOptions::default()
    };
    let rt = LocalRuntime::with_options(state.path(), opts).unwrap();
    let mut spec = service("primary", revision("rev1", app.path(), "echo bye"), 4);
    spec.circuit_breaker_threshold = Some(1_000_000);
    rt.apply(spec).unwrap();
    let restarts = || rt.service("primary").map(|s| s.tasks.iter().map(|t| t.restarts).sum::<u32>()).unwrap_or(0);
    let drained = || rt.service("primary").filter(|s| s.tasks.is_empty()).map(|_| ());
    // Warm up (runtime threads, first pipes), stop everything, then take the baseline.
    wait_for("first restarts", Duration::from_secs(30), || (restarts() >= 20).then_some(()));
    rt.scale("primary", 0).unwrap();
    wait_for("no tasks", Duration::from_secs(30), drained);
    wait_for("no zombies", Duration::from_secs(30), || zombie_children().is_empty().then_some(()));
    // The log pumps of the last processes end just after them: wait for the count to settle.
    let mut last = usize::MAX;
    let baseline = wait_for("descriptor count to settle", Duration::from_secs(30), || {
        let n = fd_count();
        let settled = (n == last).then_some(n);
        last = n;
        std::thread::sleep(Duration::from_millis(20)); // spacing between two samples
        settled
    });

    rt.scale("primary", 4).unwrap();
    let mut max_zombies = 0;
    let mut max_fds = 0;
    wait_for("400 restarts", Duration::from_secs(60), || {
        max_zombies = max_zombies.max(zombie_children().len());
        max_fds = max_fds.max(fd_count());
        (restarts() >= 420).then_some(())
    });
    assert!(max_zombies <= 4, "{max_zombies} zombie children at once");
    // Each live task holds a pidfd, its pipe's read end and its log file, plus the pipes of a
    // spawn in progress: bounded, whatever the number of restarts.
    assert!(max_fds <= baseline + 4 * 6, "descriptors grew from {baseline} to {max_fds} during the restarts");
    let s = rt.service("primary").unwrap();
    assert!(s.exits_by_revision["rev1"] >= 440);
    assert!(s.tasks.iter().any(|t| t.last_exit.as_deref() == Some("exit 0")));
    rt.scale("primary", 0).unwrap();
    wait_for("no tasks", Duration::from_secs(30), drained);
    wait_for("no zombies", Duration::from_secs(30), || zombie_children().is_empty().then_some(()));
    wait_for("descriptors back to the baseline", Duration::from_secs(30), || (fd_count() <= baseline).then_some(()));
}
