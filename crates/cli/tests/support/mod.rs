//! Shared pieces of the end-to-end tests: a git repository of a tiny app in a temporary
//! folder, the real `coalmine` binary running `up` on it, and polling with deadlines.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
pub use common::*;
pub mod moto;
pub mod pyenv;

pub const BIN: &str = env!("CARGO_BIN_EXE_coalmine");

/// A tiny worker: it does not consume the queue, it just runs (or crashes, per revision).
pub const WORKER_OK: &str = "#!/usr/bin/env bash\necho \"worker $COALMINE_TASK of $COALMINE_REVISION up\"\nexec sleep 100000\n";
pub const WORKER_CRASH: &str = "#!/usr/bin/env bash\necho crashing\nexit 3\n";

pub const BUILDSPEC: &str = r#"version: 0.2
env:
  variables:
    GREETING: hello
phases:
  build:
    commands:
      - mkdir -p out
      - cp worker.sh out/worker.sh
      - echo "$CODEBUILD_RESOLVED_SOURCE_VERSION $GREETING" > out/commit.txt
artifacts:
  files:
    - out/*
  discard-paths: yes
"#;

pub fn coalmine_toml(extra: &str) -> String {
    format!(
        r#"app = "tiny"
{extra}
[source]
repo = "repo"
branch = "main"
poll_interval = "200ms"

[run]
command = "./worker.sh"
healthy_after = "300ms"
stop_timeout = "2s"

[services.primary]
tasks = 2

[services.canary]
tasks = 1
"#
    )
}

/// An app folder: `coalmine.toml` beside a git repository `repo/` of the tiny worker.
pub struct App {
    pub dir: tempfile::TempDir,
    pub up: Option<Child>,
}

impl App {
    pub fn new(extra_toml: &str) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = App { dir, up: None };
        std::fs::write(app.path().join("coalmine.toml"), coalmine_toml(extra_toml)).unwrap();
        let repo = app.repo();
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "--quiet", "--initial-branch=main"]);
        git(&repo, &["config", "user.email", "dev@example.com"]);
        git(&repo, &["config", "user.name", "Dev"]);
        app
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.path().join("repo")
    }

    /// Commit a worker script and the buildspec; returns the short commit id (the revision).
    pub fn commit(&self, worker: &str, buildspec: &str, message: &str) -> String {
        let repo = self.repo();
        std::fs::write(repo.join("worker.sh"), worker).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(repo.join("worker.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(repo.join("buildspec.yml"), buildspec).unwrap();
        std::fs::write(repo.join("message.txt"), message).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "--quiet", "-m", message]);
        let id = git(&repo, &["rev-parse", "HEAD"]);
        id.trim().chars().take(12).collect()
    }

    /// Start `coalmine up` (free ports) and wait until its API answers.
    pub fn start(&mut self) {
        self.start_env(&[]);
    }

    /// [`App::start`] with extra environment for `up`.
    pub fn start_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.path().join("up.log")).unwrap();
        let child = Command::new(BIN)
            .args(["up", "--queue-port", "0", "--api-port", "0"])
            .envs(env.iter().copied())
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start coalmine up");
        let pid = child.id();
        self.up = Some(child);
        let info = self.path().join(".coalmine/up.json");
        wait_for("coalmine up to write up.json", Duration::from_secs(30), || {
            std::fs::read_to_string(&info)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .filter(|v| v["pid"].as_u64() == Some(pid as u64))
                .map(|_| ())
        }, || self.up_log());
        wait_for("the API to answer", Duration::from_secs(30), || self.status_opt().map(|_| ()), || self.up_log());
    }

    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.path().join("up.log")).unwrap_or_default()
    }

    /// kill -9 the running `up`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.up.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop `up` cleanly (SIGTERM) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.up.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("coalmine up did not stop within 60 s of SIGTERM\n{}", self.up_log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Run a CLI command in the app folder.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).current_dir(self.path()).output().expect("run coalmine")
    }

    pub fn status_opt(&self) -> Option<Value> {
        status_json(Path::new(BIN), self.path())
    }

    pub fn status(&self) -> Value {
        self.status_opt().unwrap_or_else(|| panic!("status failed\n{}", self.up_log()))
    }

    /// Poll `status` until `pred` holds.
    pub fn wait_status(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, timeout, || self.status_opt().filter(|v| pred(v)), || {
            format!("last status: {}\n--- up.log ---\n{}", self.status_opt().map(|v| v.to_string()).unwrap_or_default(), self.up_log())
        })
    }

    pub fn execution(&self, id: i64) -> Value {
        let out = self.cli(&["history", "--output", "json", "-n", "100"]);
        let all: Value = serde_json::from_slice(&out.stdout).expect("history json");
        all.as_array().unwrap().iter().find(|e| e["id"] == id).cloned().expect("execution in history")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

