//! The Python virtual environments of the tests under `target/pyenv/` (`current`: boto3 and
//! the AWS CLI of today; `legacy`: from before SQS moved to JSON), pinned by
//! `tests/python/requirements-*.txt`, created when missing or out of date. Without Python 3
//! with `venv`, or without access to PyPI, the tests that need them fail and say so.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// How long creating one virtual environment (pip install from PyPI) may take.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

pub struct PyEnv {
    /// Folder name under `target/pyenv/`.
    pub name: &'static str,
    /// File under `tests/python/`.
    pub requirements: &'static str,
    /// The SQS protocol this environment's botocore speaks.
    pub protocol: &'static str,
}

pub const CURRENT: PyEnv = PyEnv { name: "current", requirements: "requirements-current.txt", protocol: "json" };
pub const LEGACY: PyEnv = PyEnv { name: "legacy", requirements: "requirements-legacy.txt", protocol: "query" };
/// moto's server and cfn-lint, for the AWS-facing tests (`support/moto.rs`).
pub const AWS: PyEnv = PyEnv { name: "aws", requirements: "requirements-aws.txt", protocol: "json" };

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn python_dir() -> PathBuf {
    repo_root().join("tests/python")
}

/// The workspace's target folder (`CARGO_TARGET_TMPDIR` is `<target>/tmp`).
pub fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(Path::to_path_buf).unwrap_or_else(|| repo_root().join("target"))
}

/// Run a command to completion within `timeout`, capturing its output; panic with the command,
/// its output and `fix` when it cannot start, times out or fails.
pub fn run_checked(command: &mut Command, timeout: Duration, fix: &str) -> String {
    let shown = format!("{command:?}");
    let (status, stdout, stderr) = run_with_timeout(command, timeout)
        .unwrap_or_else(|err| panic!("cannot run {shown}: {err}. {fix}"));
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
    let status = wait_with_deadline(&mut child, timeout)?;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

pub fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Poll the child until it exits or the deadline passes.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The Python interpreter of the environment, creating or refreshing the environment first.
/// Safe to call from parallel tests and parallel processes: a lock file serialises creation.
pub fn python_env(env: &PyEnv) -> PathBuf {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    let root = target_dir().join("pyenv");
    fs::create_dir_all(&root).unwrap_or_else(|err| panic!("cannot create {}: {err}", root.display()));
    let lock_path = root.join(format!(".{}.lock", env.name));
    let lock = File::create(&lock_path).unwrap_or_else(|err| panic!("cannot create {}: {err}", lock_path.display()));
    lock.lock().unwrap_or_else(|err| panic!("cannot lock {}: {err}", lock_path.display()));

    let requirements_path = python_dir().join(env.requirements);
    let requirements = fs::read_to_string(&requirements_path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", requirements_path.display()));
    let dir = root.join(env.name);
    let python = dir.join("bin/python");
    let marker = dir.join(".coalmine-requirements");
    if python.exists() && fs::read_to_string(&marker).ok().as_deref() == Some(requirements.as_str()) {
        return python;
    }

    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|err| panic!("cannot remove the stale {}: {err}", dir.display()));
    }
    let interpreter = std::env::var("COALMINE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    eprintln!("creating the Python environment {} ({})", dir.display(), env.requirements);
    run_checked(
        Command::new(&interpreter).arg("-m").arg("venv").arg(&dir),
        INSTALL_TIMEOUT,
        "The client tests need Python 3 with venv (Debian: apt-get install python3 python3-venv; \
         or set COALMINE_PYTHON to an interpreter).",
    );
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet", "-r"])
            .arg(&requirements_path),
        INSTALL_TIMEOUT,
        "pip could not install the pinned clients: PyPI must be reachable (check the network or pip's \
         index settings), then run scripts/pyenv.sh again.",
    );
    fs::write(&marker, &requirements).unwrap_or_else(|err| panic!("cannot write {}: {err}", marker.display()));
    python
}

