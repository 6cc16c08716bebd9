//! Where revisions come from: the newest commit of a branch. One backend: git (the CLI).
//!
//! The repository (a path or a URL) is fetched into a bare mirror under `.coalmine/source.git`;
//! builds clone that exact commit from the mirror.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::PipelineError;

/// One commit of the watched branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: String,
    pub message: String,
}

impl Commit {
    /// The revision name for this commit: its short id (12 hex digits).
    pub fn revision(&self) -> String {
        self.id.chars().take(12).collect()
    }
}

/// The newest commit of a branch, and a checkout of any commit.
pub trait Source: Send + Sync {
    fn newest(&self) -> Result<Commit, PipelineError>;
    /// Check out exactly `commit` into `dest` (which must not exist).
    fn checkout(&self, commit: &str, dest: &Path) -> Result<(), PipelineError>;
}

pub struct GitSource {
    repo: String,
    branch: String,
    mirror: PathBuf,
}

impl GitSource {
    pub fn new(repo: String, branch: String, mirror: PathBuf) -> GitSource {
        GitSource { repo, branch, mirror }
    }

    fn git(&self, args: &[&str], cwd: Option<&Path>) -> Result<String, PipelineError> {
        let mut cmd = Command::new("git");
        cmd.args(args).env("GIT_TERMINAL_PROMPT", "0");
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let out = cmd
            .output()
            .map_err(|e| PipelineError::Source(format!("cannot run git (is it installed?): {e}")))?;
        if !out.status.success() {
            return Err(PipelineError::Source(format!(
                "`git {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Source for GitSource {
    fn newest(&self) -> Result<Commit, PipelineError> {
        if !self.mirror.join("HEAD").exists() {
            std::fs::create_dir_all(&self.mirror).map_err(|e| PipelineError::io(&self.mirror, e))?;
            self.git(&["init", "--bare", "--quiet"], Some(&self.mirror))?;
        }
        let refspec = format!("+refs/heads/{0}:refs/heads/{0}", self.branch);
        self.git(&["fetch", "--quiet", "--no-tags", &self.repo, &refspec], Some(&self.mirror))
            .map_err(|e| match e {
                PipelineError::Source(msg) => PipelineError::Source(format!(
                    "cannot fetch branch `{}` of `{}`: {msg}; check [source] repo and branch in coalmine.toml",
                    self.branch, self.repo
                )),
                other => other,
            })?;
        let out = self.git(&["log", "-1", "--format=%H%n%s", &format!("refs/heads/{}", self.branch)], Some(&self.mirror))?;
        let mut lines = out.lines();
        let id = lines.next().unwrap_or_default().trim().to_string();
        let message = lines.next().unwrap_or_default().trim().to_string();
        if id.is_empty() {
            return Err(PipelineError::Source(format!("branch `{}` has no commits", self.branch)));
        }
        Ok(Commit { id, message })
    }

    fn checkout(&self, commit: &str, dest: &Path) -> Result<(), PipelineError> {
        let mirror = self.mirror.to_string_lossy().into_owned();
        let dest_s = dest.to_string_lossy().into_owned();
        self.git(&["clone", "--quiet", "--no-checkout", &mirror, &dest_s], None)?;
        self.git(&["-c", "advice.detachedHead=false", "checkout", "--quiet", commit], Some(dest))?;
        Ok(())
    }
}
