//! Finding an app's files: `coalmine.toml`, its `.coalmine/` state folder, the API address and
//! token that a running `coalmine up` leaves there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Written by `coalmine up` to `.coalmine/up.json` so other commands can find it.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpInfo {
    pub pid: u32,
    pub api: String,
    pub queue: String,
}

/// The app's `coalmine.toml`: `--file`, or `./coalmine.toml`.
pub fn spec_path(file: Option<&Path>) -> PathBuf {
    file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("coalmine.toml"))
}

/// Load and validate `coalmine.toml`, printing the diagnostics on failure.
pub fn load_spec(file: Option<&Path>) -> anyhow::Result<coalmine_spec::AppSpec> {
    let path = spec_path(file);
    if !path.exists() {
        bail!(
            "no {} here: run `coalmine init` to write one, or pass --file PATH",
            path.display()
        );
    }
    match coalmine_spec::load(&path) {
        Ok(spec) => Ok(spec),
        Err(diags) => {
            eprintln!("{diags}");
            bail!("{} is not valid (see above)", path.display())
        }
    }
}

/// `.coalmine/` beside the spec file.
pub fn state_dir(file: Option<&Path>) -> PathBuf {
    let spec = spec_path(file);
    let dir = spec.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(".coalmine")
}

/// The API address and token of the running `coalmine up` for this folder.
pub fn connect(file: Option<&Path>) -> anyhow::Result<(String, String)> {
    let dir = state_dir(file);
    let info_path = dir.join("up.json");
    if !info_path.exists() {
        bail!("coalmine is not running here (no {}): start it with `coalmine up`", info_path.display());
    }
    let info: UpInfo = serde_json::from_str(
        &std::fs::read_to_string(&info_path).with_context(|| format!("cannot read {}", info_path.display()))?,
    )
    .with_context(|| format!("{} is damaged: stop coalmine and start it again with `coalmine up`", info_path.display()))?;
    if !process_alive(info.pid) {
        bail!(
            "coalmine is not running here (process {} from {} is gone): start it with `coalmine up`",
            info.pid,
            info_path.display()
        );
    }
    let token = std::fs::read_to_string(dir.join("token"))
        .with_context(|| format!("cannot read the API token {}", dir.join("token").display()))?;
    Ok((info.api, token.trim().to_string()))
}

pub fn process_alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie counts as gone.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
}

/// Create the API token (0600) if there is none; return it.
pub fn ensure_token(dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(token)
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
