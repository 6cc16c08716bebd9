//! Supervisor figures, printed: overhead with 100 idle tasks (CPU % of one core, RSS), the
//! first-restart latency of a crashed task, and a rolling deploy of 3 tasks with a 2 s health
//! wait. Run: `cargo bench -p coalmine-runtime --bench supervisor`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coalmine_runtime::local::LocalRuntime;
use coalmine_runtime::{Artifact, QueueEnv, RevisionSpec, Runtime, ServiceSpec, TaskState};

fn spec(name: &str, rev: &str, dir: &std::path::Path, command: &str, desired: u32, healthy_after: Duration) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        revision: RevisionSpec { name: rev.into(), artifact: Artifact::folder(dir), command: command.into(), env: BTreeMap::new() },
        desired,
        minimum_healthy_percent: 100,
        maximum_percent: 200,
        healthy_after,
        health_command: None,
        stop_timeout: Duration::from_secs(5),
        circuit_breaker_threshold: None,
        queue: QueueEnv {
            endpoint_url: "http://127.0.0.1:9324".into(),
            region: "us-east-1".into(),
            queue: "bench".into(),
            queue_url: "http://127.0.0.1:9324/000000000000/bench".into(),
        },
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
}

fn main() {
    let state = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(state.path()).unwrap();

    // 1. 100 idle tasks.
    let t0 = Instant::now();
    rt.apply(spec("idle", "r1", app.path(), "sleep 100000", 100, Duration::from_millis(200))).unwrap();
    wait_for("100 tasks steady", Duration::from_secs(60), || rt.service("idle").filter(|s| s.steady).map(|_| ()));
    println!("start 100 tasks until steady (200 ms health wait): {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let window = Duration::from_secs(10);
    let (c0, w0) = (cpu_ticks(), Instant::now());
    std::thread::sleep(window); // measuring an idle window, not synchronising
    let (c1, w1) = (cpu_ticks(), Instant::now());
    let cpu = (c1 - c0) as f64 / ticks_per_s / (w1 - w0).as_secs_f64() * 100.0;
    println!("100 idle tasks: supervisor CPU {cpu:.2} % of one core over {:?}, RSS {:.1} MiB", window, rss_kib() as f64 / 1024.0);

    // 2. First-restart latency: kill -9 twenty different tasks, one at a time.
    let mut lat = Vec::new();
    let tasks = rt.service("idle").unwrap().tasks;
    for victim in tasks.iter().take(20) {
        let pid = victim.pid.unwrap();
        let t = Instant::now();
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let new_pid = wait_for("replacement", Duration::from_secs(5), || {
            let s = rt.service("idle")?;
            let tk = s.tasks.into_iter().find(|x| x.id == victim.id)?;
            tk.pid.filter(|&p| p != pid)
        });
        wait_for("replacement process", Duration::from_secs(5), || std::path::Path::new(&format!("/proc/{new_pid}")).exists().then_some(()));
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "first restart after kill -9 (20 tasks): median {:.2} ms, max {:.2} ms",
        lat[lat.len() / 2].as_secs_f64() * 1000.0,
        lat[lat.len() - 1].as_secs_f64() * 1000.0
    );
    rt.scale("idle", 0).unwrap();
    wait_for("idle service drained", Duration::from_secs(30), || rt.service("idle").filter(|s| s.tasks.is_empty()).map(|_| ()));

    // 3. Rolling deploy of 3 tasks with a 2 s health wait.
    let mut s = spec("primary", "r1", app.path(), "sleep 100000", 3, Duration::from_secs(2));
    rt.apply(s.clone()).unwrap();
    wait_for("primary steady", Duration::from_secs(20), || rt.service("primary").filter(|s| s.steady).map(|_| ()));
    s.revision.name = "r2".into();
    s.revision.command = "sleep 100001".into();
    let t = Instant::now();
    rt.apply(s).unwrap();
    let mut min_healthy = u32::MAX;
    wait_for("rolling deploy", Duration::from_secs(20), || {
        let st = rt.service("primary")?;
        min_healthy = min_healthy.min(st.tasks.iter().filter(|t| t.state == TaskState::Running).count() as u32);
        (st.steady && st.revision == "r2").then_some(())
    });
    println!(
        "rolling deploy of 3 tasks, 2 s health wait: {:.0} ms (fewest healthy tasks seen: {min_healthy})",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    rt.shutdown();
    println!("shutdown of 3 tasks: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
}
