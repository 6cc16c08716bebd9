//! `coalmine down`: stop what `coalmine up` started for this folder; `--purge` also deletes
//! `.coalmine/` (the guidance's destroy.sh).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::workspace::{self, UpInfo};

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// The app's coalmine.toml.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Also delete .coalmine/ (queue data, state, artifacts, logs).
    #[arg(long)]
    pub purge: bool,
}

pub fn run(args: DownArgs) -> anyhow::Result<ExitCode> {
    let dir = workspace::state_dir(args.file.as_deref());
    let info_path = dir.join("up.json");
    match std::fs::read_to_string(&info_path).ok().and_then(|t| serde_json::from_str::<UpInfo>(&t).ok()) {
        Some(info) if workspace::process_alive(info.pid) => {
            unsafe {
                libc::kill(info.pid as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            while workspace::process_alive(info.pid) {
                if Instant::now() > deadline {
                    anyhow::bail!("coalmine (pid {}) did not stop within 2 minutes; kill it with `kill -9 {}`", info.pid, info.pid);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!("stopped coalmine (pid {})", info.pid);
        }
        _ => println!("coalmine is not running here"),
    }
    if args.purge && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot delete {}", dir.display()))?;
        println!("deleted {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
