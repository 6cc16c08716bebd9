//! The Python environment of the AWS tests (`target/pyenv/aws`: moto's server, cfn-lint,
//! boto3) and moto's server itself, as `support/moto.rs` provides them to other tests.
//! `scripts/pyenv.sh` runs `ensure_aws_env` alone to create the environment up front.

#[path = "support/moto.rs"]
mod moto;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
#[ignore = "end-to-end: boto3, the AWS CLI and moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn ensure_aws_env() {
    let python = moto::aws_python();
    let versions = moto::run_checked(
        Command::new(&python).args([
            "-c",
            "import importlib.metadata as m; print(m.version('moto'), m.version('cfn-lint'), m.version('boto3'))",
        ]),
        Duration::from_secs(120),
        "the environment is broken: delete target/pyenv/aws and run scripts/pyenv.sh again",
    );
    let requirements = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/requirements-aws.txt")).unwrap();
    for (name, version) in ["moto", "cfn-lint", "boto3"].iter().zip(versions.split_whitespace()) {
        assert!(
            requirements.lines().any(|l| l.starts_with(name) && l.ends_with(&format!("=={version}"))),
            "{name} {version} is installed, but requirements-aws.txt pins another version:\n{requirements}"
        );
    }
    let lint = moto::run_checked(Command::new(moto::cfn_lint()).arg("--version"), Duration::from_secs(120), "cfn-lint does not run");
    assert!(lint.contains("1.58.0"), "cfn-lint --version says {lint:?}");
}

/// Two servers at once get two ports, each answers with its own state, and a dropped one is gone.
#[test]
#[ignore = "end-to-end: boto3, the AWS CLI and moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn moto_starts_on_a_free_port_and_stops_on_drop() {
    let a = moto::Moto::start();
    let b = moto::Moto::start();
    assert_ne!(a.port, b.port);
    assert_eq!(a.endpoint, format!("http://127.0.0.1:{}", a.port));

    let script = std::env::temp_dir().join(format!("coalmine-moto-check-{}.py", std::process::id()));
    std::fs::write(
        &script,
        "import sys, boto3\n\
         sqs = boto3.client('sqs')\n\
         if sys.argv[1] == 'create':\n    sqs.create_queue(QueueName='only-in-a')\n\
         print(sorted(u.rsplit('/', 1)[1] for u in sqs.list_queues().get('QueueUrls', [])))\n",
    )
    .unwrap();
    assert_eq!(a.run_python(&script, &["create"], Duration::from_secs(120)).trim(), "['only-in-a']");
    assert_eq!(b.run_python(&script, &["list"], Duration::from_secs(120)).trim(), "[]");
    let _ = std::fs::remove_file(&script);

    let port = a.port;
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "moto's server still listens on {port} after drop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// moto's server as the tests start it keeps SQS's guarantees under concurrent consumers
/// (`tests/python/sqs_serial.py`): with six long polls, deletes and hand-backs on a queue that
/// dead-letters at the second receive, no receive fails and every message sent is deleted, in
/// the queue or in its DLQ. moto alone answers some receives with 500 after marking their
/// messages received, and loses a message now and then.
#[test]
#[ignore = "end-to-end: boto3, the AWS CLI and moto (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn motos_sqs_loses_nothing_under_concurrent_consumers() {
    let moto = moto::Moto::start();
    let script = moto::python_dir().join("sqs_concurrency.py");
    let out = moto.run_python(&script, &[&moto.endpoint, "8"], Duration::from_secs(180));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert!(n("sent") >= 100 && n("dead_lettered") > 0, "the run did too little to tell: {v}");
    assert_eq!(n("error_count"), 0, "requests failed: {v}\n--- moto's log\n{}", tail(&moto.log(), 60));
    assert_eq!(n("sent"), n("deleted") + n("left") + n("dead_lettered"), "messages lost: {v}");
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
