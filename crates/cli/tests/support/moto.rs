//! moto's server (CloudFormation, SQS, ECS, IAM, CloudWatch Logs, ... on a local port) and
//! cfn-lint, from the Python virtual environment `target/pyenv/aws` pinned by
//! `tests/python/requirements-aws.txt`.
//!
//! The environment is created here when missing or out of date (`scripts/pyenv.sh` makes it up
//! front); without Python 3 with `venv`, or without access to PyPI, the tests that need it fail
//! and say so. A test can take it as `support::moto` or on its own with
//! `#[path = "support/moto.rs"] mod moto;` (it brings `support/pyenv.rs` along).

#![allow(dead_code)]

#[path = "pyenv.rs"]
mod pyenv;
#[allow(unused_imports)]
pub use pyenv::{python_dir, run_checked, run_with_timeout};
use pyenv::{python_env, target_dir, AWS};

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long moto's server may take to say where it listens and to answer (importing moto on a
/// loaded 2-core machine takes seconds).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The access key, secret and region to give clients of moto (any values work; these are the
/// ones moto's documentation uses).
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

/// The folder of the environment: `<target>/pyenv/aws`.
pub fn aws_env_dir() -> PathBuf {
    target_dir().join("pyenv").join(AWS.name)
}

/// The environment's Python interpreter (boto3 and moto import in it), creating or refreshing
/// the environment first (safe from parallel tests and processes).
pub fn aws_python() -> PathBuf {
    python_env(&AWS)
}

/// The environment's `cfn-lint` executable.
pub fn cfn_lint() -> PathBuf {
    let python = aws_python();
    let exe = python.parent().expect("bin folder").join("cfn-lint");
    assert!(exe.exists(), "{} is missing: delete {} and run scripts/pyenv.sh again", exe.display(), aws_env_dir().display());
    exe
}

/// A running moto server on 127.0.0.1 at a port the OS chose, with its own (empty) state.
/// Killed on drop; it also stops by itself when the test process dies (its stdin closes).
pub struct Moto {
    /// `http://127.0.0.1:<port>`: give it to clients as `AWS_ENDPOINT_URL` / `endpoint_url`.
    pub endpoint: String,
    /// The port it listens on.
    pub port: u16,
    child: Child,
    /// Held open: moto's process exits when it closes.
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Moto {
    /// Start moto's server and wait (with a deadline, polling its endpoint) until it answers.
    pub fn start() -> Moto {
        Moto::start_with(false, &[])
    }

    /// moto's server with the stand-in for what its ECS does not model (deployments that roll
    /// out, tasks that run and exit, the circuit breaker: `tests/python/ecs_standin.py`).
    /// `env`: the stand-in's settings, e.g. `STANDIN_ROLLOUT_SECONDS`.
    pub fn start_with_ecs_rollouts(env: &[(&str, &str)]) -> Moto {
        Moto::start_with(true, env)
    }

    fn start_with(ecs_rollouts: bool, standin_env: &[(&str, &str)]) -> Moto {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let python = aws_python();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("moto");
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let log = dir.join(format!("moto-{}-{}.log", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        let log_file = File::create(&log).unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
        let mut child = Command::new(&python)
            .arg(python_dir().join("moto_server.py"))
            .arg("0")
            .args(ecs_rollouts.then_some("--ecs-rollouts"))
            .envs(standin_env.iter().copied())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start moto's server with {}: {err}", python.display()));
        let stdin = child.stdin.take();

        // The first stdout line says where it listens; keep draining the rest.
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "moto's server printed no `listening on` line within {START_TIMEOUT:?} ({other:?}).\n--- its log ({})\n{}",
                    log.display(),
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let endpoint = line
            .strip_prefix("listening on ")
            .filter(|url| url.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("unexpected first line from moto's server: {line:?}"))
            .trim()
            .to_string();
        let port: u16 = endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .filter(|p| *p != 0)
            .unwrap_or_else(|| panic!("no port in moto's address {endpoint:?}"));
        let moto = Moto { endpoint, port, child, stdin, log };
        moto.wait_until_answering();
        moto
    }

    /// Poll moto's own API (`/moto-api/data.json`) until it answers 200, or panic at the deadline.
    fn wait_until_answering(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match http_get(self.port, "/moto-api/data.json") {
                Ok((200, _)) => return,
                Ok((status, body)) => format!("HTTP {status}: {}", body.chars().take(200).collect::<String>()),
                Err(err) => err.to_string(),
            };
            if Instant::now() > deadline {
                panic!("moto's server at {} did not answer within {START_TIMEOUT:?} (last: {last})\n--- its log\n{}", self.endpoint, self.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// moto's log (stderr) so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The environment a client (boto3, the AWS CLI, an AWS SDK) needs to talk to this server
    /// and nothing else: endpoint, fake credentials, region, and no shared config or profile.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        let nowhere = Path::new(env!("CARGO_TARGET_TMPDIR")).join("moto/no-aws-config").display().to_string();
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_CONFIG_FILE", nowhere.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// `command` with [`Moto::client_env`] set and the variables that would point elsewhere removed.
    pub fn configure<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        for (key, value) in self.client_env() {
            command.env(key, value);
        }
        command.env_remove("AWS_PROFILE").env_remove("AWS_SESSION_TOKEN").env_remove("AWS_ENDPOINT_URL_SQS")
    }

    /// Run a Python script file with the environment's interpreter against this server;
    /// panic with its output and moto's log when it fails or runs past `timeout`. Returns stdout.
    pub fn run_python(&self, script: &Path, args: &[&str], timeout: Duration) -> String {
        let python = aws_python();
        let mut command = Command::new(&python);
        command.arg(script).args(args).env("PYTHONUNBUFFERED", "1").env("PYTHONDONTWRITEBYTECODE", "1");
        self.configure(&mut command);
        let shown = format!("{} {}", script.display(), args.join(" "));
        let (status, stdout, stderr) =
            run_with_timeout(&mut command, timeout).unwrap_or_else(|err| panic!("cannot run {shown}: {err}"));
        match status {
            Some(status) if status.success() => stdout,
            Some(status) => panic!("{shown} failed ({status})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- moto's log\n{}", self.log()),
            None => panic!("{shown} ran past {timeout:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- moto's log\n{}", self.log()),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port`: status and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {:?}", response.chars().take(80).collect::<String>())))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
