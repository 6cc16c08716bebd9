//! The embedded queue with clients we did not write: boto3 and the AWS CLI of today (the AWS
//! JSON 1.0 protocol) and the boto3 and AWS CLI from before SQS moved to JSON (the query
//! protocol with XML responses), each running the scripts in `tests/python/` against the real
//! `coalmine queue serve` process.
//!
//! The clients live in two Python virtual environments under `target/pyenv/` (`current`,
//! `legacy`), pinned by `tests/python/requirements-*.txt`. They are created here when missing
//! or out of date (`scripts/pyenv.sh` runs `ensure_python_envs` alone to do only that); without
//! Python 3 with `venv`, or without access to PyPI, these tests fail and say so.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

#[path = "support/pyenv.rs"]
mod pyenv;
use pyenv::*;

/// How long one client script may run before it counts as hung.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Which protocol the environment's botocore speaks for SQS, read from its service model.
fn botocore_protocol(python: &Path) -> String {
    let out = run_checked(
        Command::new(python).args([
            "-c",
            "import boto3, botocore; c = boto3.client('sqs', region_name='us-east-1', \
             aws_access_key_id='a', aws_secret_access_key='b'); \
             print(botocore.__version__, c.meta.service_model.protocol)",
        ]),
        Duration::from_secs(120),
        "boto3 does not import: delete target/pyenv and run scripts/pyenv.sh again.",
    );
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// A running `coalmine queue serve` on a port the OS chose, with its own data folder.
struct Server {
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start() -> Server {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("queue-clients-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        if base.exists() {
            fs::remove_dir_all(&base).expect("remove a stale test folder");
        }
        let data_dir = base.join("data");
        fs::create_dir_all(&data_dir).expect("create the data folder");
        let log = base.join("server.log");
        let log_file = File::create(&log).expect("create the server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_coalmine"))
            .args(["queue", "serve", "--port", "0", "--data-dir"])
            .arg(&data_dir)
            .env("COALMINE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start coalmine queue serve");

        // The first stdout line says where it listens; keep draining the rest.
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(60));
        let line = match first {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "coalmine queue serve printed no `listening on` line ({other:?}).\n--- its log\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let endpoint = line
            .strip_prefix("listening on ")
            .filter(|url| url.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("unexpected first line from coalmine queue serve: {line:?}"))
            .trim()
            .to_string();
        Server { child, endpoint, data_dir: base, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.data_dir);
    }
}

/// Run one script of `tests/python/` with the environment's Python against a fresh server;
/// panic with its output and the server's log when it fails.
fn run_script(env: &PyEnv, script: &str, extra_env: &[(&str, &str)]) -> String {
    let python = python_env(env);
    let server = Server::start();
    let no_config = server.data_dir.join("no-aws-config");
    let mut command = Command::new(&python);
    command
        .arg(python_dir().join(script))
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_ACCESS_KEY_ID", "AKIDCLIENTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "client-test-secret")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", &no_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &no_config)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let (status, stdout, stderr) = run_with_timeout(&mut command, SCRIPT_TIMEOUT)
        .unwrap_or_else(|err| panic!("cannot run {script} with {}: {err}", python.display()));
    let verdict = match status {
        Some(status) if status.success() => None,
        Some(status) => Some(format!("{script} ({} environment) failed: {status}", env.name)),
        None => Some(format!("{script} ({} environment) ran past {SCRIPT_TIMEOUT:?}", env.name)),
    };
    if let Some(verdict) = verdict {
        panic!("{verdict}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}", server.log());
    }
    println!("{stdout}");
    stdout
}

#[test]
#[ignore = "end-to-end: the queue with boto3 and the AWS CLI (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn ensure_python_envs() {
    for env in [&CURRENT, &LEGACY] {
        let python = python_env(env);
        assert_eq!(
            botocore_protocol(&python),
            env.protocol,
            "the {} environment's botocore should speak the {} protocol; check {}",
            env.name,
            env.protocol,
            env.requirements
        );
    }
}

#[test]
#[ignore = "end-to-end: the queue with boto3 and the AWS CLI (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn boto3_current_over_json() {
    let out = run_script(&CURRENT, "sqs_boto3.py", &[("COALMINE_EXPECT_PROTOCOL", "json")]);
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
#[ignore = "end-to-end: the queue with boto3 and the AWS CLI (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn aws_cli_over_json() {
    let out = run_script(&CURRENT, "sqs_awscli.py", &[("COALMINE_EXPECT_PROTOCOL", "json")]);
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
#[ignore = "end-to-end: the queue with boto3 and the AWS CLI (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn aws_cli_legacy_over_query() {
    let out = run_script(&LEGACY, "sqs_awscli.py", &[("COALMINE_EXPECT_PROTOCOL", "query")]);
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

/// The query protocol on the wire (form requests, XML answers, error documents), with the
/// standard library's HTTP client and XML parser.
#[test]
#[ignore = "end-to-end: the queue with boto3 and the AWS CLI (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn query_protocol_on_the_wire() {
    let out = run_script(&LEGACY, "sqs_query_raw.py", &[]);
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
#[ignore = "end-to-end: the queue with boto3 and the AWS CLI (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn boto3_legacy_over_query() {
    let out = run_script(&LEGACY, "sqs_boto3.py", &[("COALMINE_EXPECT_PROTOCOL", "query")]);
    assert!(out.contains(" passed, 0 failed"), "{out}");
}
