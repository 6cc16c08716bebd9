//! The build stage: turn a commit into a revision by running its `buildspec.yml` the way
//! CodeBuild runs it, then copying the artifacts into `.coalmine/artifacts/<revision>/`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coalmine_runtime::Artifact;
use coalmine_spec::{Buildspec, OnFailure, Phase};

use crate::PipelineError;

/// Everything a build needs to know.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub app: String,
    pub execution_id: i64,
    pub build_number: u64,
    pub commit: String,
    pub branch: String,
    pub revision: String,
    /// The fresh checkout of the commit.
    pub src_dir: PathBuf,
    /// Path of the buildspec inside the checkout.
    pub buildspec: PathBuf,
    pub log_path: PathBuf,
    /// Final artifact folder (`.coalmine/artifacts/<revision>`).
    pub artifact_dir: PathBuf,
    pub timeout: Duration,
    /// Extra environment for the build commands (for example a shared CARGO_TARGET_DIR).
    pub env: BTreeMap<String, String>,
}

/// Cancels a running build (a newer commit superseded it, or coalmine is stopping).
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a successful build made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// One line for the stage's detail, e.g. "built 3f2a9c1d04be in 2.1s, 2 artifact file(s)".
    pub summary: String,
    /// The revision as the runtimes start it: its folder, and the images it named.
    pub artifact: Artifact,
}

/// Turn a commit into a revision.
pub trait Builder: Send + Sync {
    /// Blocking.
    fn build(&self, req: &BuildRequest, cancel: &Cancel) -> Result<Built, PipelineError>;
}

/// Runs `buildspec.yml` phases in bash, as CodeBuild does.
pub struct BuildspecBuilder;

struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    fn line(&mut self, s: &str) {
        let _ = writeln!(self.file, "{s}");
    }
}

impl Builder for BuildspecBuilder {
    fn build(&self, req: &BuildRequest, cancel: &Cancel) -> Result<Built, PipelineError> {
        if let Some(dir) = req.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        }
        let file = File::create(&req.log_path).map_err(|e| PipelineError::io(&req.log_path, e))?;
        let mut log = Log { file, path: req.log_path.clone() };
        let spec = coalmine_spec::load_buildspec(&req.buildspec)
            .map_err(|d| PipelineError::Build(format!("invalid buildspec:\n{d}")))?;
        let started = Instant::now();
        let start_ms = crate::now_ms();
        log.line(&format!("[coalmine] build {} of {} at commit {}", req.build_number, req.app, req.commit));

        let mut env: BTreeMap<String, String> = req.env.clone();
        for (k, v) in &spec.env_variables {
            env.insert(k.clone(), v.clone());
        }
        env.insert("CODEBUILD_RESOLVED_SOURCE_VERSION".into(), req.commit.clone());
        env.insert("CODEBUILD_SOURCE_VERSION".into(), req.commit.clone());
        env.insert("CODEBUILD_SOURCE_REPO_URL".into(), req.branch.clone());
        env.insert("CODEBUILD_SRC_DIR".into(), req.src_dir.to_string_lossy().into_owned());
        env.insert("CODEBUILD_BUILD_ID".into(), format!("{}:{}", req.app, req.execution_id));
        env.insert("CODEBUILD_BUILD_NUMBER".into(), req.build_number.to_string());
        env.insert("CODEBUILD_START_TIME".into(), start_ms.to_string());
        env.insert("CODEBUILD_INITIATOR".into(), "coalmine".into());
        env.insert("COALMINE_REVISION".into(), req.revision.clone());

        let deadline = started + req.timeout;
        let mut succeeding = true;
        let phases: [(&str, &Option<Phase>); 4] = [
            ("install", &spec.phases.install),
            ("pre_build", &spec.phases.pre_build),
            ("build", &spec.phases.build),
            ("post_build", &spec.phases.post_build),
        ];
        // The first phase that failed (with `on-failure: ABORT`), and why.
        let mut failure: Option<(&str, String)> = None;
        for (name, phase) in phases {
            let Some(phase) = phase else { continue };
            // A failed install or pre_build ends the build; post_build still runs after a
            // failed build, as in CodeBuild.
            match failure {
                Some(("build", _)) if name == "post_build" => {}
                Some(_) => continue,
                None => {}
            }
            env.insert("CODEBUILD_BUILD_SUCCEEDING".into(), if succeeding { "1" } else { "0" }.into());
            log.line(&format!("[coalmine] entering phase {name}"));
            let result = run_commands(&phase.commands, &req.src_dir, &env, &mut log, deadline, cancel);
            let fin = if phase.finally.is_empty() {
                Ok(())
            } else {
                log.line(&format!("[coalmine] phase {name}: finally"));
                run_commands(&phase.finally, &req.src_dir, &env, &mut log, deadline, cancel)
            };
            let outcome = result.and(fin);
            match outcome {
                Ok(()) => log.line(&format!("[coalmine] phase {name} succeeded")),
                Err(err) => {
                    log.line(&format!("[coalmine] phase {name} failed: {err}"));
                    if cancel.is_cancelled() || started.elapsed() >= req.timeout {
                        return Err(PipelineError::Build(err));
                    }
                    succeeding = false;
                    let continue_on = matches!(phase.on_failure, OnFailure::Continue);
                    if !continue_on && failure.is_none() {
                        failure = Some((name, err));
                    }
                }
            }
        }
        if let Some((name, err)) = failure {
            return Err(PipelineError::Build(format!("phase {name} failed: {err} (log: {})", log.path.display())));
        }
        let copied = copy_artifacts(&spec, req, &mut log)?;
        // A malformed imagedefinitions.json fails the build, where its author looks, rather
        // than the deployment.
        let artifact = Artifact::read(&req.artifact_dir).map_err(|e| {
            log.line(&format!("[coalmine] {e}"));
            PipelineError::Build(e.to_string())
        })?;
        let summary = format!(
            "built {} in {:.1}s, {} artifact file(s)",
            req.revision,
            started.elapsed().as_secs_f64(),
            copied
        );
        log.line(&format!("[coalmine] {summary}"));
        Ok(Built { summary, artifact })
    }
}

/// Run a phase's commands in one bash process: stop at the first failing command.
fn run_commands(
    commands: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    log: &mut Log,
    deadline: Instant,
    cancel: &Cancel,
) -> Result<(), String> {
    let mut script = String::from("set -eo pipefail\n");
    for c in commands {
        script.push_str(&format!("echo {}\n", shell_quote(&format!("[command] {c}"))));
        script.push_str(c);
        script.push('\n');
    }
    let out = log.file.try_clone().map_err(|e| e.to_string())?;
    let err = log.file.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(cwd)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    coalmine_runtime::local::process::confine(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start bash: {e}"))?;
    let pgid = child.id() as i32;
    // Whatever the commands leave running in their group (a `cmd &` never waited for) is
    // killed when they end, and by the next start of coalmine if coalmine is killed first.
    let group = BuildGroup::record(log.path.with_extension("pgid"), pgid as u32);
    let result = wait_commands(&mut child, pgid, deadline, cancel);
    drop(group);
    result
}

/// A build command's process group, recorded in a file beside the build log while it runs.
struct BuildGroup {
    file: PathBuf,
    pgid: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GroupRecord {
    pgid: u32,
    start_ticks: u64,
}

impl BuildGroup {
    fn record(file: PathBuf, pgid: u32) -> BuildGroup {
        let start_ticks = coalmine_runtime::local::process::proc_stat(pgid).map(|s| s.start_ticks).unwrap_or(0);
        let rec = serde_json::to_vec(&GroupRecord { pgid, start_ticks }).expect("record serialises");
        if let Err(e) = std::fs::write(&file, rec) {
            tracing::warn!(file = %file.display(), error = %e, "cannot record the build's process group");
        }
        BuildGroup { file, pgid }
    }
}

impl Drop for BuildGroup {
    fn drop(&mut self) {
        coalmine_runtime::local::process::kill_group(self.pgid);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Kill the process groups of build commands that a killed coalmine left running (recorded
/// as `<execution>.pgid` beside the build logs in `dir`). Returns how many processes.
pub fn kill_leftover_builds(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut killed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "pgid") {
            continue;
        }
        if let Some(rec) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<GroupRecord>(&b).ok()) {
            killed += coalmine_runtime::local::process::kill_group_leftovers(rec.pgid, rec.start_ticks).len();
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

fn wait_commands(child: &mut std::process::Child, pgid: i32, deadline: Instant, cancel: &Cancel) -> Result<(), String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return if status.success() {
                    Ok(())
                } else {
                    Err(match status.code() {
                        Some(c) => format!("command exited with status {c}"),
                        None => "command was killed by a signal".into(),
                    })
                };
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let why = if cancel.is_cancelled() {
            Some("build cancelled")
        } else if Instant::now() >= deadline {
            Some("build timed out (raise [build] timeout in coalmine.toml)")
        } else {
            None
        };
        if let Some(why) = why {
            coalmine_runtime::local::process::kill_group(pgid as u32);
            let _ = child.wait();
            return Err(why.to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copy `artifacts.files` (globs, relative to `base-directory`) into the revision's folder.
fn copy_artifacts(spec: &Buildspec, req: &BuildRequest, log: &mut Log) -> Result<usize, PipelineError> {
    let Some(art) = &spec.artifacts else {
        return Err(PipelineError::Build(
            "the buildspec has no `artifacts` section: add `artifacts: { files: [...] }` listing what the service runs".into(),
        ));
    };
    // Nothing outside the checkout is ever read or written: the validation refuses such
    // paths, and every matched file is checked again once links are resolved.
    let refuse = |what: String| Err(PipelineError::Build(format!("{what}; artifacts must come from the build's checkout (fix buildspec.yml, `coalmine validate` shows where)")));
    if let Some(why) = art.base_directory.as_deref().and_then(coalmine_spec::leaves_build_folder) {
        return refuse(format!("artifacts.base-directory `{}` {why}", art.base_directory.as_deref().unwrap_or_default()));
    }
    if let Some((f, why)) = art.files.iter().find_map(|f| coalmine_spec::leaves_build_folder(f).map(|w| (f, w))) {
        return refuse(format!("artifacts.files pattern `{f}` {why}"));
    }
    let root = req.src_dir.canonicalize().map_err(|e| PipelineError::io(&req.src_dir, e))?;
    let base = match &art.base_directory {
        Some(b) => req.src_dir.join(b),
        None => req.src_dir.clone(),
    };
    let base = match base.canonicalize() {
        Ok(b) if b.starts_with(&root) => b,
        Ok(b) => return refuse(format!("artifacts.base-directory resolves to {}, outside the checkout", b.display())),
        Err(e) => return Err(PipelineError::Build(format!("artifacts.base-directory {}: {e}", base.display()))),
    };
    let tmp = req.artifact_dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| PipelineError::io(&tmp, e))?;
    let mut copied = 0;
    for pattern in &art.files {
        let full = base.join(pattern);
        let matches = glob::glob(&full.to_string_lossy())
            .map_err(|e| PipelineError::Build(format!("bad artifacts.files pattern `{pattern}`: {e}")))?;
        let mut any = false;
        for entry in matches.flatten() {
            if entry.is_dir() {
                continue;
            }
            any = true;
            let real = entry.canonicalize().map_err(|e| PipelineError::io(&entry, e))?;
            if !real.starts_with(&root) {
                return refuse(format!("artifact {} resolves to {}, outside the checkout (a link?)", entry.display(), real.display()));
            }
            let Ok(rel) = entry.strip_prefix(&base) else {
                return refuse(format!("artifact {} is not under {}", entry.display(), base.display()));
            };
            let dest = if art.discard_paths {
                tmp.join(rel.file_name().unwrap_or_default())
            } else {
                tmp.join(rel)
            };
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| PipelineError::io(parent, e))?;
            }
            std::fs::copy(&entry, &dest).map_err(|e| PipelineError::io(&entry, e))?;
            copied += 1;
        }
        if !any {
            return Err(PipelineError::Build(format!(
                "artifacts.files pattern `{pattern}` matched no file under {}",
                base.display()
            )));
        }
    }
    let _ = std::fs::remove_dir_all(&req.artifact_dir);
    std::fs::rename(&tmp, &req.artifact_dir).map_err(|e| PipelineError::io(&req.artifact_dir, e))?;
    log.line(&format!("[coalmine] copied {copied} artifact file(s) to {}", req.artifact_dir.display()));
    Ok(copied)
}
