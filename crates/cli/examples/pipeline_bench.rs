//! Pipeline figures, measured on the real binary:
//! - commit to canary running, minus the time of the build commands themselves (target < 3 s
//!   with a 1 s poll), over several commits;
//! - the control plane's CPU while idle (target < 1 % of a core).
//!
//! cargo build --release -p coalmine --bins --examples && target/release/examples/pipeline_bench [commits]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = dir.join("coalmine");
    assert!(bin.exists(), "{} is missing: build it first with `cargo build --release -p coalmine --bins`", bin.display());
    bin
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(dir).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(bin: &Path, dir: &Path) -> Option<Value> {
    let out = Command::new(bin).args(["status", "--output", "json"]).current_dir(dir).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn main() {
    let commits: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let bin = bin();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("coalmine.toml"),
        "app = \"bench\"\n[source]\nrepo = \"repo\"\npoll_interval = \"1s\"\n[run]\ncommand = \"./worker.sh\"\nhealthy_after = \"500ms\"\nstop_timeout = \"2s\"\n",
    )
    .unwrap();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["config", "user.email", "bench@example.com"]);
    git(&repo, &["config", "user.name", "bench"]);
    std::fs::write(
        repo.join("buildspec.yml"),
        "version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p out && cp worker.sh out/\nartifacts:\n  files:\n    - out/worker.sh\n  discard-paths: yes\n",
    )
    .unwrap();
    let commit = |n: usize| {
        let path = repo.join("worker.sh");
        std::fs::write(&path, format!("#!/usr/bin/env bash\n# revision {n}\nexec sleep 100000\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "--quiet", "-m", &format!("revision {n}")]);
        let at = Instant::now();
        (git(&repo, &["rev-parse", "HEAD"]).trim()[..12].to_string(), at)
    };
    commit(0);
    let mut up = Command::new(&bin)
        .args(["up", "--queue-port", "0", "--api-port", "0"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coalmine up");
    wait("the first release", Duration::from_secs(60), || {
        status(&bin, dir).is_some_and(|v| v["execution"]["status"] == "Succeeded")
    });

    println!("commit to canary running ({commits} commits, 1 s poll, build commands excluded)");
    let mut totals = Vec::new();
    for n in 1..=commits {
        let (rev, at) = commit(n);
        let mut seen = None;
        wait("the canary on the new revision", Duration::from_secs(60), || {
            let Some(v) = status(&bin, dir) else { return false };
            let canary = v["services"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "canary")).cloned();
            let ok = canary.is_some_and(|c| c["status"]["revision"] == rev.as_str() && c["status"]["steady"] == true);
            if ok {
                seen = Some((at.elapsed(), v));
            }
            ok
        });
        let (elapsed, v) = seen.unwrap();
        let build = v["execution"]["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "Build"))
            .and_then(|s| Some(s["finished_ms"].as_i64()? - s["started_ms"].as_i64()?))
            .unwrap_or(0);
        let net = elapsed.as_millis() as i64 - build;
        println!("  commit {n}: {:>5} ms to canary running, build stage {build:>4} ms (checkout + commands), without it {net:>5} ms", elapsed.as_millis());
        totals.push(net);
        // Approve, so the next commit starts from a released state.
        let id = v["execution"]["id"].as_i64().unwrap().to_string();
        wait("the approval stage", Duration::from_secs(30), || {
            Command::new(&bin).args(["approve", &id]).current_dir(dir).output().is_ok_and(|o| o.status.success())
        });
        wait("the release", Duration::from_secs(60), || {
            status(&bin, dir).is_some_and(|v| v["execution"]["status"] == "Succeeded")
        });
    }
    totals.sort();
    println!(
        "  median {} ms, max {} ms (target < 3000 ms; half the poll interval, 500 ms, is the expected wait for the poll)",
        totals[totals.len() / 2],
        totals.last().unwrap()
    );

    let pid = up.id();
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let used = (cpu_ticks(pid) - before) as f64 / ticks_per_s;
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    println!(
        "control plane idle (4 tasks up, 1 s poll): {:.2} % of one core over {:.0} s, RSS {:.1} MiB (target < 1 %)",
        used / t.elapsed().as_secs_f64() * 100.0,
        t.elapsed().as_secs_f64(),
        rss_kib as f64 / 1024.0
    );
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = up.wait();
}
