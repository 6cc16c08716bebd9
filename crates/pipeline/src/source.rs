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
    /// The text of the file at `path` (relative to the repository's root) in `commit`, or
    /// `None` when the commit has no such file.
    fn read_file(&self, _commit: &str, _path: &Path) -> Result<Option<String>, PipelineError> {
        Ok(None)
    }
}

/// The branch to watch: `branch` when given, else the repository's current branch (`HEAD`).
/// Checks that `repo` is a git repository with at least one commit and that the branch
/// exists; the errors say what to do. `repo` is a folder or a URL, as in `[source] repo`.
pub fn resolve_branch(repo: &str, branch: Option<&str>) -> Result<String, PipelineError> {
    let git = |args: &[&str]| -> Result<(bool, String, String), PipelineError> {
        let out = Command::new("git")
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| PipelineError::Source(format!("cannot run git (is it installed?): {e}")))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    };
    let local = !(repo.contains("://") || repo.starts_with("git@"));
    let (heads, current) = if local {
        let dir = Path::new(repo);
        if !dir.is_dir() {
            return Err(PipelineError::Source(format!(
                "[source] repo: the folder {repo} does not exist; point `repo` at your worker's git repository"
            )));
        }
        let (ok, _, _) = git(&["-C", repo, "rev-parse", "--git-dir"])?;
        if !ok {
            return Err(PipelineError::Source(format!(
                "[source] repo: {repo} is not a git repository; run `git init` there and commit your worker (coalmine releases commits), or point `repo` at the repository"
            )));
        }
        let (_, heads, _) = git(&["-C", repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/"])?;
        let (ok, current, _) = git(&["-C", repo, "symbolic-ref", "--quiet", "--short", "HEAD"])?;
        (heads, ok.then_some(current))
    } else {
        let (ok, out, err) = git(&["ls-remote", "--symref", repo, "HEAD", "refs/heads/*"])?;
        if !ok {
            return Err(PipelineError::Source(format!("[source] repo: cannot read {repo}: {err}")));
        }
        let mut heads = Vec::new();
        let mut current = None;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("ref: refs/heads/") {
                current = rest.split_whitespace().next().map(str::to_string);
            } else if let Some((_, name)) = line.split_once("\trefs/heads/") {
                heads.push(name.to_string());
            }
        }
        (heads.join("\n"), current)
    };
    let heads: Vec<&str> = heads.lines().filter(|l| !l.is_empty()).collect();
    if heads.is_empty() {
        return Err(PipelineError::Source(format!(
            "[source] repo: the repository {repo} has no commits yet; commit your worker first (`git add -A && git commit -m \"first version\"`)"
        )));
    }
    let branch = match branch {
        Some(b) => b.to_string(),
        None => current.ok_or_else(|| {
            PipelineError::Source(format!(
                "[source] branch: {repo} has no current branch (a detached HEAD); set `branch` in coalmine.toml to one of: {}",
                heads.join(", ")
            ))
        })?,
    };
    if !heads.contains(&branch.as_str()) {
        return Err(PipelineError::Source(format!(
            "[source] branch: there is no branch `{branch}` in {repo} (its branches: {}); set `branch` to one of them, or leave it out to watch the current branch",
            heads.join(", ")
        )));
    }
    Ok(branch)
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

    fn read_file(&self, commit: &str, path: &Path) -> Result<Option<String>, PipelineError> {
        let spec = format!("{commit}:{}", path.to_string_lossy());
        if self.git(&["cat-file", "-e", &spec], Some(&self.mirror)).is_err() {
            return Ok(None);
        }
        self.git(&["show", &spec], Some(&self.mirror)).map(Some)
    }
}
