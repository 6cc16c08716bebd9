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

/// The app's `coalmine.toml`: `--file`, else `coalmine.toml` in this folder or the nearest
/// folder above it that has one (so commands work from the app's subfolders), else
/// `./coalmine.toml` (which does not exist; the caller says so).
pub fn spec_path(file: Option<&Path>) -> PathBuf {
    if let Some(f) = file {
        return f.to_path_buf();
    }
    let here = PathBuf::from("coalmine.toml");
    if here.exists() {
        return here;
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors().skip(1) {
            let candidate = dir.join("coalmine.toml");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    here
}

/// The queue endpoint of the `coalmine up` running for the app of `file`, if one runs.
pub fn running_queue(file: Option<&Path>) -> Option<String> {
    let info: UpInfo = serde_json::from_str(&std::fs::read_to_string(state_dir(file).join("up.json")).ok()?).ok()?;
    process_alive(info.pid).then_some(info.queue)
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

/// Files under `.coalmine/` that hold secrets or message bodies: only their owner may read
/// them (mode 0600; the folder itself 0700).
pub const PRIVATE_FILES: &[&str] =
    &["token", "credentials", "state.db", "state.db-wal", "state.db-shm", "queue.db", "queue.db-wal", "queue.db-shm", "up.json"];

/// Make `.coalmine/` (created if missing) 0700 and its private files 0600. Returns a warning
/// for each one that was readable by others and is fixed now.
pub fn secure_state_dir(dir: &Path) -> anyhow::Result<Vec<String>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut warnings = Vec::new();
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let fix = |path: &Path, mode: u32, warnings: &mut Vec<String>| -> anyhow::Result<()> {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
        if meta.file_type().is_symlink() {
            anyhow::bail!("{} is a symbolic link; coalmine keeps its private files in place: remove the link", path.display());
        }
        let was = meta.permissions().mode() & 0o777;
        if was & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot restrict {} to its owner (chmod {mode:o})", path.display()))?;
            warnings.push(format!(
                "warning: {} was readable by other users (mode {was:o}); made it {mode:o} (owner only)",
                path.display()
            ));
        }
        Ok(())
    };
    fix(dir, 0o700, &mut warnings)?;
    for name in PRIVATE_FILES {
        fix(&dir.join(name), 0o600, &mut warnings)?;
    }
    Ok(warnings)
}

/// Whether a token read from `.coalmine/token` is usable: 32 to 256 characters of
/// `A-Z a-z 0-9 - _ . ~` (what a header and a URL fragment carry unchanged).
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() < 32 {
        return Err(format!("it is {} characters long; a token needs at least 32", token.len()));
    }
    if token.len() > 256 {
        return Err(format!("it is {} characters long; at most 256", token.len()));
    }
    if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.~".contains(*c))) {
        return Err(format!("it contains {c:?}; use only letters, digits and - _ . ~"));
    }
    Ok(())
}

/// Create the API token (0600) if there is none; return it. An existing token must pass
/// [`check_token`].
pub fn ensure_token(dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim();
        if !t.is_empty() {
            if let Err(why) = check_token(t) {
                bail!(
                    "{} is not a usable API token: {why}. Delete the file to have a new random one made at start, or write one (e.g. `openssl rand -hex 32 > {}`)",
                    path.display(),
                    path.display()
                );
            }
            return Ok(t.to_string());
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

/// The access key id of the user's key in `.coalmine/credentials` (profile `default`).
pub const USER_KEY_ID: &str = "coalmine-user";
/// The access key id `coalmine send` signs with (profile `coalmine-send`).
pub const SEND_KEY_ID: &str = "coalmine-send";

/// The keys in `.coalmine/credentials` (the AWS CLI's credentials format, owner only), made
/// at the first `coalmine up` with a random secret each: the user's (profile `default`, for the
/// AWS CLI, boto3 and SDKs: `AWS_SHARED_CREDENTIALS_FILE=.coalmine/credentials`) and
/// `coalmine send`'s. Kept across runs; every key in the file is accepted by the queue, so a
/// user may add profiles of their own.
pub fn ensure_queue_credentials(dir: &Path) -> anyhow::Result<coalmine_queue::Credentials> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("credentials");
    if path.exists() {
        return coalmine_queue::load_credentials(&path).map_err(|e| {
            anyhow::anyhow!(
                "{} cannot be read as the local queue's keys: {e}. Fix it, or delete it to have new random keys made at start",
                path.display()
            )
        });
    }
    let user = coalmine_runtime::random_secret();
    let send = coalmine_runtime::random_secret();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    write!(
        f,
        "# Keys of the embedded queue of `coalmine up` (only they, and each task's own, are accepted).\n\
         # AWS CLI, boto3, SDKs: AWS_SHARED_CREDENTIALS_FILE=.coalmine/credentials aws --endpoint-url <queue> sqs ...\n\
         # Add profiles of your own here; they are accepted from the next start.\n\
         [default]\naws_access_key_id = {USER_KEY_ID}\naws_secret_access_key = {user}\n\n\
         [{SEND_KEY_ID}]\naws_access_key_id = {SEND_KEY_ID}\naws_secret_access_key = {send}\n"
    )
    .with_context(|| format!("cannot write {}", path.display()))?;
    let keys = coalmine_queue::Credentials::new();
    keys.insert(USER_KEY_ID, user);
    keys.insert(SEND_KEY_ID, send);
    Ok(keys)
}

/// The secret of `access_key_id` in the `.coalmine/credentials` of the app of `file`.
pub fn queue_secret(file: Option<&Path>, access_key_id: &str) -> Option<String> {
    coalmine_queue::load_credentials(&state_dir(file).join("credentials")).ok()?.secret(access_key_id)
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
