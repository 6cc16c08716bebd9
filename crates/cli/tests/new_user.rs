//! The release path as a new user meets it: a plain boto3 worker in a fresh `git init`
//! repository (whatever branch git makes), `coalmine init`, `coalmine up`, a commit.
//!
//! The worker runs on the Python of `target/pyenv/current` (boto3; `scripts/pyenv.sh` makes it,
//! `tests/queue_clients.rs` documents it).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A boto3 worker that knows nothing about coalmine: the region, the credentials and the
/// endpoint come from the standard environment, the queue from `QUEUE`.
const BOTO3_WORKER: &str = r#"import os, boto3
sqs = boto3.client("sqs")
url = sqs.get_queue_url(QueueName=os.environ["QUEUE"])["QueueUrl"]
print("worker up on", url, flush=True)
while True:
    r = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, MaxNumberOfMessages=10)
    for m in r.get("Messages", []):
        print("processed", m["Body"], flush=True)
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
"#;

/// A worker that dies at start (before it imports boto3) with a message a person needs to see.
const BOTO3_CRASH: &str = r#"import os, sys
print("loading settings from", os.getcwd(), flush=True)
print("error: settings.ini not found; copy settings.example.ini", file=sys.stderr, flush=True)
sys.exit(2)
"#;

const PY_BUILDSPEC: &str = "version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p out && cp worker.py out/\nartifacts:\n  base-directory: out\n  files:\n    - '**/*'\n";

/// boto3's Python (`target/pyenv/current`), made first when missing.
fn python() -> PathBuf {
    support::pyenv::python_env(&support::pyenv::CURRENT)
}

/// A fresh folder with `git init` (git's own default branch), `coalmine init`, the worker.
struct NewUser {
    app: App,
}

impl NewUser {
    fn new(worker: &str) -> NewUser {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let app = App { dir, up: None };
        git(&path, &["init", "--quiet"]);
        git(&path, &["config", "user.email", "dev@example.com"]);
        git(&path, &["config", "user.name", "Dev"]);
        let out = Command::new(BIN).args(["init"]).current_dir(&path).output().unwrap();
        assert!(out.status.success(), "coalmine init: {}", String::from_utf8_lossy(&out.stderr));
        let toml = std::fs::read_to_string(path.join("coalmine.toml")).unwrap();
        let toml = set_key(&toml, "app", "\"my-worker\"");
        let toml = set_key(&toml, "command", &format!("\"{} worker.py\"", python().display()));
        let toml = set_key(&toml, "poll_interval", "\"200ms\"");
        let toml = set_key(&toml, "healthy_after", "\"1s\"");
        let toml = set_key(&toml, "stop_timeout", "\"3s\"");
        let toml = toml.replace("tasks = 3", "tasks = 1");
        std::fs::write(path.join("coalmine.toml"), toml).unwrap();
        std::fs::write(path.join("buildspec.yml"), PY_BUILDSPEC).unwrap();
        std::fs::write(path.join("worker.py"), worker).unwrap();
        std::fs::write(path.join(".gitignore"), ".coalmine/\nup.log\n").unwrap();
        NewUser { app }
    }

    fn commit(&self, message: &str) {
        git(self.app.path(), &["add", "-A"]);
        git(self.app.path(), &["commit", "--quiet", "-m", message]);
    }

    fn queue_endpoint(&self) -> String {
        let info: Value = serde_json::from_str(&std::fs::read_to_string(self.app.path().join(".coalmine/up.json")).unwrap()).unwrap();
        info["queue"].as_str().unwrap().to_string()
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.app.cli(args);
        assert!(out.status.success(), "coalmine {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Replace `key = ...` (the first uncommented one) in a TOML text.
fn set_key(toml: &str, key: &str, value: &str) -> String {
    let mut done = false;
    toml.lines()
        .map(|l| {
            if !done && l.trim_start().starts_with(&format!("{key} =")) {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
#[ignore = "end-to-end: releases of a boto3 worker (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn a_plain_boto3_worker_is_released_and_consumes_the_queue() {
    let mut user = NewUser::new(BOTO3_WORKER);
    // Whatever branch `git init` made (master on a default git): no setting needed.
    user.commit("boto3 worker");
    user.app.start();
    let v = user.app.wait_status("the first release to succeed", Duration::from_secs(180), |v| {
        exec_status(v) == "Succeeded" || exec_status(v) == "Failed"
    });
    assert_eq!(exec_status(&v), "Succeeded", "{v:#}\n{}", user.app.up_log());

    let endpoint = user.queue_endpoint();
    let out = user.app.cli(&["send", "--count", "4", "--batch", "5", "--endpoint", &endpoint]);
    assert!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
    // Every message is processed by one of the boto3 tasks (primary or canary).
    wait_for("the boto3 tasks to process 20 messages", Duration::from_secs(60), || {
        let logs = user.stdout(&["logs", "primary", "-n", "500"]) + &user.stdout(&["logs", "canary", "-n", "500"]);
        (logs.matches("processed message").count() >= 20).then_some(())
    }, || user.app.up_log());
}

#[test]
#[ignore = "end-to-end: releases of a boto3 worker (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn a_task_that_exits_at_start_shows_its_last_lines() {
    let mut user = NewUser::new(BOTO3_CRASH);
    user.commit("worker that needs a settings file");
    user.app.start();
    let v = user.app.wait_status("the release to fail", Duration::from_secs(180), |v| {
        exec_status(v) == "Failed" || exec_status(v) == "Succeeded"
    });
    assert_eq!(exec_status(&v), "Failed", "{v:#}");
    let reason = v["execution"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("settings.ini not found"), "the execution's reason names the task's last words: {reason}");
    assert!(reason.contains("exit 2"), "{reason}");
    let events = v["execution"]["events"].to_string();
    assert!(events.contains("settings.ini not found"), "the event says it too: {events}");
    // `status` (text) shows them under the task.
    let text = user.stdout(&["status"]);
    assert!(text.contains("last output before exit 2") && text.contains("settings.ini not found"), "{text}");
}

/// Run `coalmine <args>` in `dir`; it must exit (with failure) within a minute.
fn must_refuse(dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let status = wait_for(&format!("coalmine {args:?} to exit"), Duration::from_secs(60), || child.try_wait().unwrap(), || {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        String::new()
    });
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "coalmine {args:?} should refuse: {text}");
    text
}

#[test]
fn no_repository_an_empty_one_or_a_missing_branch_is_refused_at_validate_and_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = Command::new(BIN).arg("init").current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let toml = set_key(&std::fs::read_to_string(dir.join("coalmine.toml")).unwrap(), "command", "\"sleep 1000\"");
    let toml = set_key(&toml, "app", "\"my-worker\"");
    std::fs::write(dir.join("coalmine.toml"), &toml).unwrap();

    for cmd in [&["validate"][..], &["up", "--queue-port", "0", "--api-port", "0"][..]] {
        let err = must_refuse(dir, cmd);
        assert!(err.contains("is not a git repository") && err.contains("git init"), "{cmd:?}: {err}");
    }

    git(dir, &["init", "--quiet", "--initial-branch=trunk"]);
    git(dir, &["config", "user.email", "dev@example.com"]);
    git(dir, &["config", "user.name", "Dev"]);
    for cmd in [&["validate"][..], &["up", "--queue-port", "0", "--api-port", "0"][..]] {
        let err = must_refuse(dir, cmd);
        assert!(err.contains("has no commits yet") && err.contains("git commit"), "{cmd:?}: {err}");
    }

    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", "first"]);
    // No `branch` key: the current branch, whatever its name.
    let out = Command::new(BIN).arg("validate").current_dir(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("watching branch `trunk`"), "{text}");

    // A branch that does not exist: named, with the ones that do.
    std::fs::write(dir.join("coalmine.toml"), set_key(&toml, "repo", "\".\"\nbranch = \"main\"")).unwrap();
    for cmd in [&["validate"][..], &["up", "--queue-port", "0", "--api-port", "0"][..]] {
        let err = must_refuse(dir, cmd);
        assert!(err.contains("no branch `main`") && err.contains("trunk"), "{cmd:?}: {err}");
    }
}

/// A raw HTTP/1.1 GET with the given Host header; returns the status code.
fn get_with_host(api: &str, path: &str, host: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {out:?}"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
#[ignore = "end-to-end: releases of a boto3 worker (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn state_is_private_the_token_checked_and_other_host_names_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut app = App::new("");
    app.commit(WORKER_OK, BUILDSPEC, "first release");
    // What an older coalmine (or a umask of 022) left: a readable folder and token.
    let state = app.path().join(".coalmine");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(state.join("token"), format!("{token}\n")).unwrap();
    std::fs::set_permissions(state.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    app.start();
    let log = app.up_log();
    assert!(log.contains("was readable by other users (mode 644)") && log.contains("token"), "{log}");
    assert!(log.contains("(mode 755)"), "{log}");
    assert_eq!(mode(&state), 0o700);
    for f in ["token", "state.db", "queue.db"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert_eq!(std::fs::read_to_string(state.join("token")).unwrap().trim(), token, "a valid token is kept");

    // DNS rebinding: a name that is not this machine's is refused everywhere, with the token.
    let info: Value = serde_json::from_str(&std::fs::read_to_string(state.join("up.json")).unwrap()).unwrap();
    let api = info["api"].as_str().unwrap().to_string();
    assert_eq!(get_with_host(&api, "/", "127.0.0.1"), 200);
    assert_eq!(get_with_host(&api, "/", "localhost:80"), 200);
    for path in ["/", "/metrics", "/api/v1/status", "/assets/app.js"] {
        assert_eq!(get_with_host(&api, path, "attacker.example:7070"), 403, "{path}");
    }
    app.stop();

    // A token file that is not a token: refused at start, with the fix.
    std::fs::write(state.join("token"), "hunter2\n").unwrap();
    let err = must_refuse(app.path(), &["up", "--queue-port", "0", "--api-port", "0"]);
    assert!(err.contains("not a usable API token") && err.contains("Delete the file"), "{err}");
}

/// Run `coalmine <args>` in `dir` (a subfolder of the app); it must succeed.
fn run_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).current_dir(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "coalmine {args:?} in {}: {text}{}", dir.display(), String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
#[ignore = "end-to-end: releases of a boto3 worker (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn the_rolled_back_revisions_logs_from_a_subfolder_and_send_to_the_running_queue() {
    let mut app = App::new("");
    let v1 = app.commit(WORKER_OK, BUILDSPEC, "first release");
    app.start();
    app.wait_status("the first release", Duration::from_secs(90), |v| {
        exec_status(v) == "Succeeded" && service_steady(v, "canary") && service_revision(v, "canary") == v1
    });
    let v2 = app.commit(WORKER_OK, BUILDSPEC, "second release");
    let v = app.wait_status("the second revision on the canary", Duration::from_secs(90), waiting_for_approval);
    let bad_task = service(&v, "canary")["tasks"][0]["id"].as_str().unwrap().to_string();
    // Every command works from a subfolder of the app (here: its git repository).
    let sub = app.repo();
    run_in(&sub, &["reject", "-m", "not this one"]);
    app.wait_status("the canary back on the first revision", Duration::from_secs(90), |v| {
        service_revision(v, "canary") == v1 && service_steady(v, "canary")
    });

    let now = run_in(&sub, &["logs", "canary"]);
    assert!(now.contains(&format!("of {v1} up")) && !now.contains(&format!("of {v2} up")), "{now}");
    let previous = run_in(&sub, &["logs", "canary", "--previous"]);
    assert!(previous.contains(&format!("{bad_task} | worker {bad_task} of {v2} up")), "{previous}");
    assert!(!previous.contains(&format!("of {v1} up")), "{previous}");
    let task = run_in(&sub, &["logs", &bad_task]);
    assert!(task.contains(&format!("worker {bad_task} of {v2} up")), "{task}");

    // `send` finds the running up's queue (on a port picked at start, not [queue] port).
    let sent = run_in(&sub, &["send", "--count", "2", "--batch", "3", "--output", "json"]);
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["sent"], 6, "{sent}");
    let info: Value = serde_json::from_str(&std::fs::read_to_string(app.path().join(".coalmine/up.json")).unwrap()).unwrap();
    assert!(sent["queue_url"].as_str().unwrap().starts_with(info["queue"].as_str().unwrap()), "{sent} vs {info}");
}

const OWN_SPEC: &str = r#"app = "own-spec"
[source]
poll_interval = "200ms"
[run]
command = "./worker.sh"
healthy_after = "300ms"
stop_timeout = "2s"
env = { GREETING = "@G@" }
[services.primary]
tasks = PRIMARY
[services.canary]
tasks = 1
"#;

const GREETER: &str = "#!/usr/bin/env bash\necho \"greeting $GREETING from $COALMINE_TASK\"\nexec sleep 100000\n";

#[test]
#[ignore = "end-to-end: releases of a boto3 worker (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn each_commit_brings_its_own_coalmine_toml_and_retry_runs_one_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut app = App { dir, up: None };
    git(&path, &["init", "--quiet"]);
    git(&path, &["config", "user.email", "dev@example.com"]);
    git(&path, &["config", "user.name", "Dev"]);
    std::fs::write(path.join("worker.sh"), GREETER).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path.join("worker.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(path.join("buildspec.yml"), BUILDSPEC).unwrap();
    std::fs::write(path.join(".gitignore"), ".coalmine/\nup.log\n").unwrap();
    let commit = |toml: &str, message: &str| {
        std::fs::write(path.join("coalmine.toml"), toml).unwrap();
        git(&path, &["add", "-A"]);
        git(&path, &["commit", "--quiet", "-m", message]);
        git(&path, &["rev-parse", "--short=12", "HEAD"]).trim().to_string()
    };
    commit(&OWN_SPEC.replace("@G@", "one").replace("PRIMARY", "1"), "first");
    app.start();
    let t = Duration::from_secs(90);
    let v1 = app.wait_status("the first release", t, |v| exec_status(v) == "Succeeded" && service_steady(v, "canary"));
    let logs = || run_in(&path, &["logs", "canary", "-n", "200"]);
    assert!(logs().contains("greeting one"), "{}", logs());

    // The commit's own [run] applies to its revision; what needs a restart is named.
    let rev2 = commit(&OWN_SPEC.replace("@G@", "two").replace("PRIMARY", "2"), "second greeting");
    let v = app.wait_status("the second commit awaiting approval", t, waiting_for_approval);
    let id2 = exec_id(&v);
    assert!(exec_id(&v) > exec_id(&v1));
    wait_for("the canary to greet with the commit's own setting", t, || logs().contains("greeting two").then_some(()), logs);
    let events = v["execution"]["events"].to_string();
    assert!(events.contains("[services]") && events.contains("restarts"), "{events}");
    run_in(&path, &["reject"]);
    app.wait_status("the rejection", t, |v| exec_id(v) == id2 && exec_status(v) == "RolledBack");

    // An invalid coalmine.toml fails its execution at Source, with the diagnostics.
    commit(&OWN_SPEC.replace("@G@", "three").replace("PRIMARY", "1").replace("healthy_after", "healthy_aftr"), "typo");
    let v = app.wait_status("the invalid commit to fail", t, |v| exec_id(v) > id2 && exec_status(v) == "Failed");
    let reason = v["execution"]["reason"].as_str().unwrap();
    assert!(reason.contains("not valid") && reason.contains("healthy_aftr") && reason.contains("coalmine.toml:"), "{reason}");
    let source = &v["execution"]["stages"][0];
    assert_eq!((source["name"].as_str(), source["status"].as_str()), (Some("Source"), Some("Failed")), "{source}");

    // retry: the rejected commit runs again, as a new execution.
    let out = run_in(&path, &["retry", &id2.to_string(), "--output", "json"]);
    let retried: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(retried["revision"], rev2.as_str(), "{retried}");
    let v = app.wait_status("the retried commit awaiting approval", t, |v| waiting_for_approval(v) && v["execution"]["revision"] == rev2.as_str());
    assert!(exec_id(&v) > id2 + 1);
    let refused = app.cli(&["retry", &exec_id(&v).to_string()]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("still"), "{refused:?}");
}

/// A worker that leaves its queue key and secret where the test reads them (a real worker
/// would only use them), then idles.
const KEY_WORKER: &str =
    "#!/usr/bin/env bash\nprintf '%s %s %s\\n' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\" \"$QUEUE_URL\" > \"$KEY_DIR/$COALMINE_TASK\"\nexec sleep 100000\n";

/// ListQueues and the app queue's RedrivePolicy by boto3: `ok URL DLQ_ARN`, or the HTTP status and SQS's error code. With key `-`,
/// the credentials come from the environment (the documented way in).
const BOTO3_CALL: &str = r#"import json, sys, boto3, botocore.exceptions
endpoint, key, secret = sys.argv[1:4]
kw = dict(endpoint_url=endpoint, region_name="us-east-1")
if key != "-":
    kw.update(aws_access_key_id=key, aws_secret_access_key=secret)
try:
    sqs = boto3.client("sqs", **kw)
    urls = sqs.list_queues()["QueueUrls"]
    url = [u for u in urls if u.endswith("/tiny")][0]
    policy = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    print("ok", url, json.loads(policy)["deadLetterTargetArn"])
except botocore.exceptions.ClientError as e:
    print(e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"])
"#;

fn boto3_call(app: &App, endpoint: &str, key: &str, secret: &str) -> String {
    let script = app.path().join("call.py");
    std::fs::write(&script, BOTO3_CALL).unwrap();
    let out = Command::new(python())
        .arg(&script)
        .args([endpoint, key, secret])
        .current_dir(app.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_SHARED_CREDENTIALS_FILE", ".coalmine/credentials")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "end-to-end: releases of a boto3 worker (Python venv); run with: cargo test --workspace -- --include-ignored"]
fn a_tasks_key_works_only_with_its_own_secret_while_the_task_runs() {
    use std::os::unix::fs::PermissionsExt;
    let mut app = App::new("[queue]\naccount_id = \"123456789012\"\n");
    let keys = app.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let toml = std::fs::read_to_string(app.path().join("coalmine.toml")).unwrap();
    std::fs::write(app.path().join("coalmine.toml"), format!("{toml}\n[run.env]\nKEY_DIR = \"{}\"\n", keys.display())).unwrap();
    let v1 = app.commit(KEY_WORKER, BUILDSPEC, "first release");
    app.start();
    let v = app.wait_status("the first release", Duration::from_secs(90), |v| {
        exec_status(v) == "Succeeded" && service_steady(v, "canary") && service_revision(v, "canary") == v1
    });
    let task = &service(&v, "canary")["tasks"][0];
    let (id, key_id) = (task["id"].as_str().unwrap(), task["access_key_id"].as_str().unwrap().to_string());
    let line = wait_for("the canary task's key file", Duration::from_secs(30), || std::fs::read_to_string(keys.join(id)).ok().filter(|l| l.split_whitespace().count() == 3), || app.up_log());
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (key, secret, queue_url) = (fields[0], fields[1].to_string(), fields[2]);
    assert_eq!(key, key_id);
    assert!(queue_url.ends_with("/123456789012/tiny"), "[queue] account_id in the task's QUEUE_URL: {queue_url}");
    let endpoint: String = {
        let info: Value = serde_json::from_str(&std::fs::read_to_string(app.path().join(".coalmine/up.json")).unwrap()).unwrap();
        info["queue"].as_str().unwrap().to_string()
    };

    // through boto3: the task's own secret works; another, or a key nobody has, is refused
    assert_eq!(
        boto3_call(&app, &endpoint, &key_id, &secret),
        format!("ok {queue_url} arn:aws:sqs:us-east-1:123456789012:tiny-dlq"),
        "the account id in the queue's URL and its dead-letter queue's ARN"
    );
    assert_eq!(boto3_call(&app, &endpoint, &key_id, "not-the-secret"), "403 SignatureDoesNotMatch");
    assert_eq!(boto3_call(&app, &endpoint, "CM.canary.0123456789ab.99", &secret), "403 InvalidClientTokenId");
    let other = service(&v, "primary")["tasks"][0]["access_key_id"].as_str().unwrap().to_string();
    assert_eq!(boto3_call(&app, &endpoint, &other, &secret), "403 SignatureDoesNotMatch", "one task's secret is not another's");
    // the user's way in: the key in .coalmine/credentials, owner only
    assert!(boto3_call(&app, &endpoint, "-", "-").starts_with("ok "));
    let creds = app.path().join(".coalmine/credentials");
    assert_eq!(std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(app.up_log().contains(".coalmine/credentials"), "up says where the user's key is:\n{}", app.up_log());

    // no secret in the logs or the status
    let user_secret = std::fs::read_to_string(&creds).unwrap();
    let user_secret = user_secret.lines().find_map(|l| l.strip_prefix("aws_secret_access_key = ")).unwrap().to_string();
    let status = app.status().to_string();
    let logs = app.up_log() + &String::from_utf8_lossy(&app.cli(&["logs", "canary", "-n", "100"]).stdout);
    for s in [&secret, &user_secret] {
        assert!(!status.contains(s.as_str()) && !logs.contains(s.as_str()), "a secret is shown");
    }

    // a new revision on the canary stops its old task: that key stops working
    app.commit(KEY_WORKER, BUILDSPEC, "second release");
    app.wait_status("the second revision on the canary", Duration::from_secs(90), waiting_for_approval);
    wait_for("the stopped task's key refused", Duration::from_secs(30), || {
        (boto3_call(&app, &endpoint, &key_id, &secret) == "403 InvalidClientTokenId").then_some(())
    }, || app.up_log());
}
