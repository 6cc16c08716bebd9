//! Helpers shared by every end-to-end harness: git, polling with a deadline, and reading the
//! status JSON of `coalmine status --output json`.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(dir).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` until it returns `Some`, or panic after `timeout` with `context()`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `coalmine status --output json` in `dir`, or `None` when it fails (not up yet).
pub fn status_json(bin: &Path, dir: &Path) -> Option<Value> {
    let out = Command::new(bin).args(["status", "--output", "json"]).current_dir(dir).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

pub fn exec_id(v: &Value) -> i64 {
    v["execution"]["id"].as_i64().unwrap_or(-1)
}

pub fn exec_status(v: &Value) -> &str {
    v["execution"]["status"].as_str().unwrap_or("")
}

/// A service's runtime status (`Null` when it is not deployed yet).
pub fn service<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .map(|s| &s["status"])
        .unwrap_or(&Value::Null)
}

pub fn service_revision<'a>(v: &'a Value, name: &str) -> &'a str {
    service(v, name)["revision"].as_str().unwrap_or("")
}

pub fn service_steady(v: &Value, name: &str) -> bool {
    service(v, name)["steady"].as_bool().unwrap_or(false)
}

pub fn waiting_for_approval(v: &Value) -> bool {
    exec_status(v) == "InProgress"
        && v["execution"]["stages"]
            .as_array()
            .is_some_and(|st| st.iter().any(|s| s["name"] == "Approval" && s["status"] == "InProgress"))
}
