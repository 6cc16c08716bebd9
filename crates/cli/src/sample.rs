//! The sample app, embedded in the binary so `coalmine init --example sample-app` and
//! `coalmine demo` can make a repository of it anywhere.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

const MAIN_RS: &str = include_str!("../../../examples/sample-app/src/main.rs");
const CARGO_TOML: &str = include_str!("../../../examples/sample-app/Cargo.toml");
const CARGO_LOCK: &str = include_str!("../../../examples/sample-app/Cargo.lock");
const BUILDSPEC: &str = include_str!("../../../examples/sample-app/buildspec.yml");
const COALMINE_TOML: &str = include_str!("../../../examples/sample-app/coalmine.toml");
const README: &str = include_str!("../../../examples/sample-app/README.md");
pub const GITIGNORE: &str = "/target\n/.coalmine/\n";

/// Write the sample app's files into `dir` (created if needed); `coalmine_toml` replaces the
/// example's own when given.
pub fn write(dir: &Path, coalmine_toml: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {}", dir.display()))?;
    let files: [(&str, &str); 7] = [
        ("src/main.rs", MAIN_RS),
        ("Cargo.toml", CARGO_TOML),
        ("Cargo.lock", CARGO_LOCK),
        ("buildspec.yml", BUILDSPEC),
        ("coalmine.toml", coalmine_toml.unwrap_or(COALMINE_TOML)),
        ("README.md", README),
        (".gitignore", GITIGNORE),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Run git in `dir`; the error carries git's own message.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "coalmine")
        .env("GIT_AUTHOR_EMAIL", "coalmine@localhost")
        .env("GIT_COMMITTER_NAME", "coalmine")
        .env("GIT_COMMITTER_EMAIL", "coalmine@localhost")
        .output()
        .context("cannot run git: is it installed?")?;
    if !out.status.success() {
        bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Make `dir` a git repository on branch `main` with everything in it committed.
pub fn init_repo(dir: &Path, message: &str) -> anyhow::Result<()> {
    git(dir, &["init", "--quiet", "--initial-branch=main"])?;
    commit_all(dir, message)
}

pub fn commit_all(dir: &Path, message: &str) -> anyhow::Result<()> {
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "--quiet", "-m", message])?;
    Ok(())
}

/// Replace `from` with `to` in a file of the repository, refusing if `from` is not there.
pub fn edit(dir: &Path, file: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)?;
    if !text.contains(from) {
        bail!("{} does not contain {from:?}: the embedded sample app changed; update the demo's edits", path.display());
    }
    std::fs::write(&path, text.replacen(from, to, 1))?;
    Ok(())
}
