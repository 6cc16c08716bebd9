//! moto's server (CloudFormation, SQS, ECS, IAM, CloudWatch Logs, ... on a local port) and
//! cfn-lint, from the Python virtual environment `target/pyenv/aws` pinned by
//! `tests/python/requirements-aws.txt`.
//!
//! The environment is created here when missing or out of date (`scripts/pyenv.sh` makes it up
//! front); without Python 3 with `venv`, or without access to PyPI, the tests that need it fail
//! and say so. Self-contained (standard library only), so a test can take it as
//! `support::moto` or on its own with `#[path = "support/moto.rs"] mod moto;`.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long creating the environment (pip install from PyPI) may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// How long moto's server may take to say where it listens and to answer (importing moto on a
/// loaded 2-core machine takes seconds).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The access key, secret and region to give clients of moto (any values work; these are the
/// ones moto's documentation uses).
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python_dir() -> PathBuf {
    repo_root().join("tests/python")
}

/// The workspace's target folder (`CARGO_TARGET_TMPDIR` is `<target>/tmp`).
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(Path::to_path_buf).unwrap_or_else(|| repo_root().join("target"))
}

/// The folder of the environment: `<target>/pyenv/aws`.
pub fn aws_env_dir() -> PathBuf {
    target_dir().join("pyenv/aws")
}

/// The environment's Python interpreter (boto3 and moto import in it), creating or refreshing
/// the environment first. Safe from parallel tests and parallel processes: a lock file
/// serialises creation.
pub fn aws_python() -> PathBuf {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    let dir = aws_env_dir();
    let root = dir.parent().expect("pyenv folder").to_path_buf();
    fs::create_dir_all(&root).unwrap_or_else(|err| panic!("cannot create {}: {err}", root.display()));
    let lock_path = root.join(".aws.lock");
    let lock = File::create(&lock_path).unwrap_or_else(|err| panic!("cannot create {}: {err}", lock_path.display()));
    lock.lock().unwrap_or_else(|err| panic!("cannot lock {}: {err}", lock_path.display()));

    let requirements_path = python_dir().join("requirements-aws.txt");
    let requirements = fs::read_to_string(&requirements_path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", requirements_path.display()));
    let python = dir.join("bin/python");
    let marker = dir.join(".coalmine-requirements");
    if python.exists() && fs::read_to_string(&marker).ok().as_deref() == Some(requirements.as_str()) {
        return python;
    }

    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|err| panic!("cannot remove the stale {}: {err}", dir.display()));
    }
    let interpreter = std::env::var("COALMINE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    eprintln!("creating the Python environment {} (requirements-aws.txt: moto, cfn-lint)", dir.display());
    run_checked(
        Command::new(&interpreter).arg("-m").arg("venv").arg(&dir),
        INSTALL_TIMEOUT,
        "The AWS tests need Python 3 with venv (Debian: apt-get install python3 python3-venv; \
         or set COALMINE_PYTHON to an interpreter).",
    );
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet", "-r"])
            .arg(&requirements_path),
        INSTALL_TIMEOUT,
        "pip could not install moto and cfn-lint: PyPI must be reachable (check the network or pip's \
         index settings), then run scripts/pyenv.sh again.",
    );
    fs::write(&marker, &requirements).unwrap_or_else(|err| panic!("cannot write {}: {err}", marker.display()));
    python
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
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let python = aws_python();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("moto");
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let log = dir.join(format!("moto-{}-{}.log", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        let log_file = File::create(&log).unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
        let mut child = Command::new(&python)
            .arg(python_dir().join("moto_server.py"))
            .arg("0")
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

/// Run a command to completion within `timeout`, capturing its output; panic with the command,
/// its output and `fix` when it cannot start, times out or fails.
pub fn run_checked(command: &mut Command, timeout: Duration, fix: &str) -> String {
    let shown = format!("{command:?}");
    let (status, stdout, stderr) =
        run_with_timeout(command, timeout).unwrap_or_else(|err| panic!("cannot run {shown}: {err}. {fix}"));
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => panic!("{shown} failed ({status}).\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n{fix}"),
        None => panic!("{shown} did not finish within {timeout:?}.\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n{fix}"),
    }
}

/// Run a command, collecting stdout and stderr; `None` as status when it ran past `timeout`
/// (it is killed then).
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> std::io::Result<(Option<ExitStatus>, String, String)> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
