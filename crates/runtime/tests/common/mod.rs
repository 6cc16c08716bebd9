//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coalmine_runtime::{Artifact, QueueEnv, RevisionSpec, ServiceSpec};

pub fn programs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("programs")
}

pub fn program(name: &str) -> String {
    format!("bash {}", programs().join(name).display())
}

pub fn revision(name: &str, dir: &Path, command: &str) -> RevisionSpec {
    RevisionSpec { name: name.into(), artifact: Artifact::folder(dir), command: command.into(), env: BTreeMap::new() }
}

pub fn service(name: &str, revision: RevisionSpec, desired: u32) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        revision,
        desired,
        minimum_healthy_percent: 100,
        maximum_percent: 200,
        healthy_after: Duration::from_millis(200),
        health_command: None,
        stop_timeout: Duration::from_secs(5),
        circuit_breaker_threshold: None,
        queue: QueueEnv {
            endpoint_url: "http://127.0.0.1:9324".into(),
            region: "us-east-1".into(),
            queue: "sample-app".into(),
            queue_url: "http://127.0.0.1:9324/000000000000/sample-app".into(),
        },
    }
}

/// Poll `cond` every 5 ms until it returns `Some` or `timeout` passes (then panic with `what`).
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
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

pub fn alive(pid: u32) -> bool {
    coalmine_runtime::local::process::alive(pid)
}

/// Pids of live (non-zombie) processes whose environment contains `KEY=VALUE`.
pub fn pids_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// A value unique to one test, to find its processes in /proc.
pub fn token() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{}-{}", std::process::id(), t, N.fetch_add(1, Ordering::Relaxed))
}
