//! The local runtime through the real binary (`coalmine supervise`): no task outlives a
//! killed coalmine, and a restart never doubles the tasks.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A scratch folder removed on drop (std only: this test binary keeps to the CLI's dependencies).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("coalmine-rt-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(p.join("app")).unwrap();
        Scratch(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// (pid, ppid) of live processes whose environment holds TEST_TOKEN=<token>.
fn tasks_with_token(token: &str) -> Vec<(u32, u32)> {
    let needle = format!("TEST_TOKEN={token}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f[0] != "Z" {
            out.push((pid, f[1].parse().unwrap()));
        }
    }
    out
}

fn write_services(path: &Path, app: &Path, token: &str, desired: u32) {
    let json = serde_json::json!([{
        "name": "primary",
        "revision": {
            "name": "rev1",
            "dir": app,
            "command": "sleep 100000",
            "env": { "TEST_TOKEN": token }
        },
        "desired": desired,
        "healthy_after": 100,
        "stop_timeout": 2000,
        "queue": {
            "endpoint_url": "http://127.0.0.1:9324",
            "region": "us-east-1",
            "queue": "sample-app",
            "queue_url": "http://127.0.0.1:9324/000000000000/sample-app"
        }
    }]);
    std::fs::write(path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

struct Supervisor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn start(services: &Path, state: &Path) -> Supervisor {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coalmine"))
        .arg("supervise")
        .arg(services)
        .arg("--state")
        .arg(state)
        .arg("--json")
        .arg("--interval")
        .arg("0.05")
        .env("COALMINE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("coalmine binary starts");
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Supervisor { child, lines }
}

impl Supervisor {
    /// Wait for a JSON status line saying the service is steady.
    fn wait_steady(&self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.lines.recv_timeout(left).expect("a steady status line before the deadline");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                if v["steady"] == true {
                    return v;
                }
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kill_9_leaves_no_orphan_and_restart_does_not_double() {
    let dir = Scratch::new("kill9");
    let app = dir.path().join("app");
    let state = dir.path().join("state");
    let services = dir.path().join("services.json");
    let token = format!("kill9-{}", std::process::id());
    write_services(&services, &app, &token, 3);

    let mut first = start(&services, &state);
    let status = first.wait_steady(Duration::from_secs(20));
    assert_eq!(status["running"], 3);
    let tasks = tasks_with_token(&token);
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    assert!(tasks.iter().all(|&(_, ppid)| ppid == first.child.id()), "tasks are children of the supervisor");

    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    wait_for("every task to die with the supervisor", Duration::from_secs(30), || tasks_with_token(&token).is_empty().then_some(()));

    // Restart on the same state folder while sampling the process count.
    let second = start(&services, &state);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = tasks_with_token(&token).len();
        assert!(n <= 3, "{n} tasks after a restart: the count doubled");
        if let Ok(l) = second.lines.try_recv() {
            if serde_json::from_str::<serde_json::Value>(&l).is_ok_and(|v| v["steady"] == true) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the restarted supervisor did not reach steady state");
        std::thread::sleep(Duration::from_millis(2));
    }
    let tasks = tasks_with_token(&token);
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|&(_, ppid)| ppid == second.child.id()));
    // Task numbers continue from the first run.
    let ids: Vec<String> = std::fs::read_dir(state.join("logs/tasks/primary"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 6, "six distinct task logs over two runs: {ids:?}");
}

#[test]
fn sigterm_stops_every_task_and_exits_cleanly() {
    let dir = Scratch::new("term");
    let app = dir.path().join("app");
    let state = dir.path().join("state");
    let services = dir.path().join("services.json");
    let token = format!("term-{}", std::process::id());
    write_services(&services, &app, &token, 2);
    let mut sup = start(&services, &state);
    sup.wait_steady(Duration::from_secs(20));
    assert_eq!(tasks_with_token(&token).len(), 2);
    let sent = Command::new("kill").arg("-TERM").arg(sup.child.id().to_string()).status().unwrap();
    assert!(sent.success());
    let status = wait_for("supervisor exit", Duration::from_secs(30), || sup.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    assert!(tasks_with_token(&token).is_empty());
    let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("runtime/tasks.json")).unwrap()).unwrap();
    assert_eq!(recorded["tasks"].as_array().unwrap().len(), 0, "no task left recorded after a clean stop");
}

#[test]
fn second_supervisor_on_the_same_state_is_refused() {
    let dir = Scratch::new("lock");
    let app = dir.path().join("app");
    let state = dir.path().join("state");
    let services = dir.path().join("services.json");
    let token = format!("lock-{}", std::process::id());
    write_services(&services, &app, &token, 1);
    let first = start(&services, &state);
    first.wait_steady(Duration::from_secs(20));
    let out = Command::new(env!("CARGO_BIN_EXE_coalmine"))
        .args(["supervise"])
        .arg(&services)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("used by another coalmine runtime"), "{err}");
    assert_eq!(tasks_with_token(&token).len(), 1);
}
