//! The control plane under measurement, against the real binary (`coalmine up` on a tiny app):
//! request latencies of the main routes, the size of a live snapshot, and the CPU the whole
//! `up` process uses while idle, with and without a dashboard following the event stream.
//!
//!     cargo build --release -p coalmine
//!     cargo bench -p coalmine-server --bench control_plane
//!
//! Set COALMINE_BIN to use another binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOML: &str = r#"app = "bench"

[source]
repo = "repo"
branch = "main"
poll_interval = "1s"

[run]
command = "./worker.sh"
healthy_after = "300ms"
stop_timeout = "2s"

[services.primary]
tasks = 3

[services.canary]
tasks = 1
"#;

const BUILDSPEC: &str = "version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p out\n      - cp worker.sh out/worker.sh\nartifacts:\n  files:\n    - out/*\n  discard-paths: yes\n";
const WORKER: &str = "#!/usr/bin/env bash\necho \"worker $COALMINE_TASK up\"\nexec sleep 100000\n";

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git").args(args).current_dir(dir).output().expect("git").status.success();
    assert!(ok, "git {args:?}");
}

fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("COALMINE_BIN") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/coalmine");
    if !p.exists() {
        eprintln!("{} does not exist: run `cargo build --release -p coalmine` first, or set COALMINE_BIN", p.display());
        std::process::exit(2);
    }
    p
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), v.iter().sum::<f64>() / v.len() as f64)
}

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn main() {
    let bin = binary();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(dir.path().join("coalmine.toml"), TOML).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["config", "user.email", "bench@example.com"]);
    git(&repo, &["config", "user.name", "Bench"]);
    std::fs::write(repo.join("worker.sh"), WORKER).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(repo.join("worker.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(repo.join("buildspec.yml"), BUILDSPEC).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);

    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let child = Command::new(&bin)
        .args(["up", "--queue-port", "0", "--api-port", "0"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start coalmine up");
    let pid = child.id();
    let _up = Up(child);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::new();

    let deadline = Instant::now() + Duration::from_secs(60);
    let info: Value = loop {
        if let Some(v) = std::fs::read_to_string(dir.path().join(".coalmine/up.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            if v["pid"].as_u64() == Some(pid as u64) {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "coalmine up did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let base = info["api"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(dir.path().join(".coalmine/token")).unwrap().trim().to_string();
    let get = |path: &str| {
        let url = format!("{base}{path}");
        rt.block_on(async {
            let t = Instant::now();
            let r = http.get(&url).bearer_auth(&token).send().await.ok()?;
            let ok = r.status().is_success();
            let body = r.bytes().await.ok()?;
            ok.then(|| (t.elapsed().as_secs_f64() * 1000.0, body))
        })
    };
    loop {
        let st = get("/api/v1/status").and_then(|(_, b)| serde_json::from_slice::<Value>(&b).ok());
        if st.as_ref().is_some_and(|v| v["execution"]["status"] == "Succeeded") {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
            panic!("the first release did not finish; last status {st:?}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the ring buffer fill a little.
    std::thread::sleep(Duration::from_secs(3));

    println!("control plane of `coalmine up` (tiny app, 3 + 1 tasks), {} requests each, one at a time:", 300);
    for path in ["/api/v1/status", "/api/v1/executions?limit=20", "/api/v1/series?seconds=900", "/api/v1/services", "/metrics", "/"] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..300 {
            let (ms, body) = get(path).unwrap_or_else(|| panic!("GET {path} failed"));
            times.push(ms);
            size = body.len();
        }
        let (p50, p99, mean) = quantiles(times);
        println!("  GET {path:<30} p50 {p50:6.2} ms   p99 {p99:6.2} ms   mean {mean:6.2} ms   {size} bytes");
    }

    // Idle CPU of the whole process (pipeline loop, runtime supervisor, queue, sampler).
    let window = Duration::from_secs(10);
    let c0 = cpu_seconds(pid);
    std::thread::sleep(window);
    let idle = (cpu_seconds(pid) - c0) / window.as_secs_f64() * 100.0;
    println!("  idle CPU of `coalmine up`, no client:               {idle:5.2} % of a core");

    // One dashboard following the event stream.
    let (snapshots, bytes, with_client) = rt.block_on(async {
        let mut resp = http.get(format!("{base}/api/v1/events/stream")).bearer_auth(&token).send().await.unwrap();
        let c0 = cpu_seconds(pid);
        let end = tokio::time::Instant::now() + window;
        let (mut n, mut bytes) = (0, 0);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(end, resp.chunk()).await {
            bytes += chunk.len();
            n += String::from_utf8_lossy(&chunk).matches("event: snapshot").count();
        }
        (n, bytes, (cpu_seconds(pid) - c0) / window.as_secs_f64() * 100.0)
    });
    println!("  idle CPU with one dashboard on the event stream:   {with_client:5.2} % of a core");
    println!(
        "  event stream: {snapshots} snapshots in {} s, {} bytes each on average",
        window.as_secs(),
        bytes.checked_div(snapshots).unwrap_or(0)
    );
}
