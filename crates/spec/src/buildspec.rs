//! `buildspec.yml`: the subset of AWS CodeBuild's version 0.2 format that coalmine runs.
//!
//! Supported: `version: 0.2`, `env.variables`, `env.shell: bash`, `phases` (`install`,
//! `pre_build`, `build`, `post_build`, each with `commands`, `finally`, `on-failure`),
//! `artifacts` (`files`, `base-directory`, `discard-paths`, `name`). Every other CodeBuild key
//! is reported by name with its location, never ignored.

use std::path::Path;

use serde::Serialize;
use serde_yaml::{Mapping, Value};

use crate::diag::{did_you_mean, Diagnostic, Diagnostics};

/// A parsed buildspec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Buildspec {
    /// `env.variables`, in the file's order; values as strings (numbers and booleans as written).
    pub env_variables: Vec<(String, String)>,
    pub phases: Phases,
    pub artifacts: Option<Artifacts>,
}

/// The phases, each run in this order when present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Phases {
    pub install: Option<Phase>,
    pub pre_build: Option<Phase>,
    pub build: Option<Phase>,
    pub post_build: Option<Phase>,
}

impl Phases {
    /// `(name, phase)` of the phases present, in the order CodeBuild runs them.
    pub fn in_order(&self) -> Vec<(&'static str, &Phase)> {
        [
            ("install", &self.install),
            ("pre_build", &self.pre_build),
            ("build", &self.build),
            ("post_build", &self.post_build),
        ]
        .into_iter()
        .filter_map(|(n, p)| p.as_ref().map(|p| (n, p)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Phase {
    /// Run in order; the phase stops at the first that fails.
    pub commands: Vec<String>,
    /// Run after `commands`, whether they failed or not.
    pub finally: Vec<String>,
    pub on_failure: OnFailure,
}

/// `on-failure` of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum OnFailure {
    /// The build stops (after `post_build`, which CodeBuild still runs). The default.
    #[default]
    Abort,
    /// The next phase runs; the build is still failed.
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Artifacts {
    /// Glob patterns, relative to `base_directory` (`**/*` for everything).
    pub files: Vec<String>,
    pub base_directory: Option<String>,
    /// Copy every file flat into the artifact's root.
    pub discard_paths: bool,
    /// `name`, if given.
    pub name: Option<String>,
}

/// Read and parse a `buildspec.yml`.
pub fn load_buildspec(path: &Path) -> Result<Buildspec, Diagnostics> {
    let shown = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::whole_file(
            &shown,
            format!("cannot read {shown}: {e}"),
            Some("commit a buildspec.yml at the repository's root, or set `build.buildspec` in coalmine.toml".to_string()),
        )])
    })?;
    parse_buildspec(&src, &shown)
}

/// Parse the text of a `buildspec.yml`; `file` names it in diagnostics.
pub fn parse_buildspec(src: &str, file: &str) -> Result<Buildspec, Diagnostics> {
    let mut w = Walker {
        file,
        src,
        diags: Diagnostics::default(),
    };
    let root: Value = match serde_yaml::from_str(src) {
        Ok(v) => v,
        Err(e) => {
            let d = match e.location() {
                Some(l) => Diagnostic::at(file, src, Some(l.index()..l.index() + 1), "", yaml_message(&e), Some("check the YAML syntax (indentation with spaces, `key: value`, `- item`)".to_string())),
                None => Diagnostic::whole_file(file, yaml_message(&e), None),
            };
            return Err(Diagnostics(vec![d]));
        }
    };
    let spec = w.root(&root);
    if w.diags.is_empty() {
        Ok(spec)
    } else {
        w.diags.sort();
        Err(w.diags)
    }
}

fn yaml_message(e: &serde_yaml::Error) -> String {
    let s = e.to_string();
    // serde_yaml appends " at line L column C"; the diagnostic shows the position itself.
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// CodeBuild keys coalmine does not run, per place.
const UNSUPPORTED_TOP: &[&str] = &["run-as", "proxy", "batch", "reports", "cache", "secondary-artifacts"];
const UNSUPPORTED_ENV: &[&str] = &["parameter-store", "secrets-manager", "exported-variables", "git-credential-helper"];
const UNSUPPORTED_PHASE: &[&str] = &["run-as", "runtime-versions"];
const UNSUPPORTED_ARTIFACTS: &[&str] = &["secondary-artifacts", "exclude-paths", "enable-symlinks", "s3-prefix"];

struct Walker<'a> {
    file: &'a str,
    src: &'a str,
    diags: Diagnostics,
}

impl Walker<'_> {
    /// Report at the line of `path` (a chain of mapping keys).
    fn err(&mut self, path: &[&str], msg: impl Into<String>, hint: impl Into<Option<String>>) {
        let (line, col) = locate_key(self.src, path);
        let dotted = path.join(".");
        let d = if line == 0 {
            Diagnostic::whole_file(self.file, msg, hint.into())
        } else {
            Diagnostic::at_line_col(self.file, self.src, line, col, dotted.clone(), msg, hint.into())
        };
        let mut d = d;
        d.path = dotted;
        self.diags.push(d);
    }

    fn mapping<'v>(&mut self, v: &'v Value, path: &[&str]) -> Option<&'v Mapping> {
        match v {
            Value::Mapping(m) => Some(m),
            Value::Null => None,
            other => {
                self.err(path, format!("`{}` must be a mapping of keys, not {}", path.join("."), kind_of(other)), "write it as indented `key: value` lines".to_string());
                None
            }
        }
    }

    /// Check the keys of a mapping: the known, the unsupported (named), the unknown (with a suggestion).
    fn keys<'m>(&mut self, m: &'m Mapping, path: &[&str], known: &[&str], unsupported: &[&str]) -> Vec<(String, &'m Value)> {
        let mut out = Vec::new();
        for (k, v) in m {
            let Some(key) = scalar_string(k) else {
                self.err(path, format!("a key of `{}` is not a string", path.join(".")), None);
                continue;
            };
            let mut p: Vec<&str> = path.to_vec();
            p.push(&key);
            if known.contains(&key.as_str()) {
                out.push((key.clone(), v));
            } else if unsupported.contains(&key.as_str()) {
                self.err(&p, format!("`{}` is not supported by coalmine", p.join(".")), "remove it; coalmine runs the phases locally with `env.variables`, `phases` and `artifacts` only".to_string());
            } else {
                let hint = match did_you_mean(&key, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the keys here are {}", known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")),
                };
                let where_ = if path.is_empty() { "at the top level".to_string() } else { format!("in `{}`", path.join(".")) };
                self.err(&p, format!("unknown key `{key}` {where_}"), hint);
            }
        }
        out
    }

    fn root(&mut self, v: &Value) -> Buildspec {
        let mut spec = Buildspec::default();
        let Value::Mapping(m) = v else {
            self.err(&[], "a buildspec must be a mapping with `version` and `phases`", "start with `version: 0.2`".to_string());
            return spec;
        };
        let keys = self.keys(m, &[], &["version", "env", "phases", "artifacts"], UNSUPPORTED_TOP);
        let mut has_version = false;
        for (k, v) in keys {
            match k.as_str() {
                "version" => {
                    has_version = true;
                    let ok = match v {
                        Value::Number(n) => n.as_f64() == Some(0.2),
                        Value::String(s) => s == "0.2",
                        _ => false,
                    };
                    if !ok {
                        self.err(&["version"], format!("version {} is not supported", scalar_string(v).unwrap_or_else(|| kind_of(v).to_string())), "write `version: 0.2`".to_string());
                    }
                }
                "env" => {
                    if let Some(env) = self.mapping(v, &["env"]) {
                        for (k, v) in self.keys(env, &["env"], &["variables", "shell"], UNSUPPORTED_ENV) {
                            if k == "shell" {
                                if scalar_string(v).as_deref() != Some("bash") {
                                    self.err(&["env", "shell"], format!("shell `{}` is not supported", scalar_string(v).unwrap_or_default()), "coalmine runs commands with bash: write `shell: bash` or remove it".to_string());
                                }
                                continue;
                            }
                            if let Some(vars) = self.mapping(v, &["env", "variables"]) {
                                for (name, value) in vars {
                                    let name = scalar_string(name).unwrap_or_default();
                                    match scalar_string(value) {
                                        Some(s) => spec.env_variables.push((name, s)),
                                        None => self.err(&["env", "variables", &name], format!("the value of `{name}` is {}, not a string", kind_of(value)), "write a single value; quote it if it contains `:` or `#`".to_string()),
                                    }
                                }
                            }
                        }
                    }
                }
                "phases" => {
                    if let Some(ph) = self.mapping(v, &["phases"]) {
                        for (name, pv) in self.keys(ph, &["phases"], &["install", "pre_build", "build", "post_build"], &[]) {
                            let phase = self.phase(pv, &name);
                            match name.as_str() {
                                "install" => spec.phases.install = Some(phase),
                                "pre_build" => spec.phases.pre_build = Some(phase),
                                "build" => spec.phases.build = Some(phase),
                                _ => spec.phases.post_build = Some(phase),
                            }
                        }
                    }
                }
                _ => spec.artifacts = self.artifacts(v),
            }
        }
        if !has_version {
            self.err(&[], "the buildspec has no `version`", "add `version: 0.2` as the first line".to_string());
        }
        if spec.phases.in_order().iter().all(|(_, p)| p.commands.is_empty() && p.finally.is_empty()) {
            self.err(&["phases"], "the buildspec runs no command", "add `phases:` with e.g. `build:` and its `commands:` list".to_string());
        }
        spec
    }

    fn phase(&mut self, v: &Value, name: &str) -> Phase {
        let mut phase = Phase::default();
        let Some(m) = self.mapping(v, &["phases", name]) else { return phase };
        for (k, v) in self.keys(m, &["phases", name], &["commands", "finally", "on-failure"], UNSUPPORTED_PHASE) {
            match k.as_str() {
                "commands" => phase.commands = self.strings(v, &["phases", name, "commands"]),
                "finally" => phase.finally = self.strings(v, &["phases", name, "finally"]),
                _ => {
                    phase.on_failure = match scalar_string(v).as_deref() {
                        Some("ABORT") => OnFailure::Abort,
                        Some("CONTINUE") => OnFailure::Continue,
                        other => {
                            self.err(&["phases", name, "on-failure"], format!("on-failure `{}` is not supported", other.unwrap_or("?")), "write ABORT (the default) or CONTINUE".to_string());
                            OnFailure::Abort
                        }
                    }
                }
            }
        }
        phase
    }

    fn strings(&mut self, v: &Value, path: &[&str]) -> Vec<String> {
        let items: Vec<&Value> = match v {
            Value::Sequence(s) => s.iter().collect(),
            Value::Null => Vec::new(),
            other => vec![other],
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match scalar_string(item) {
                Some(s) => out.push(s),
                None => self.err(path, format!("item {} of `{}` is {}, not a string", i + 1, path.join("."), kind_of(item)), "quote the command: YAML reads `- echo a: b` as a mapping; write `- \"echo a: b\"`".to_string()),
            }
        }
        out
    }

    fn artifacts(&mut self, v: &Value) -> Option<Artifacts> {
        let m = self.mapping(v, &["artifacts"])?;
        let mut a = Artifacts::default();
        for (k, v) in self.keys(m, &["artifacts"], &["files", "base-directory", "discard-paths", "name"], UNSUPPORTED_ARTIFACTS) {
            match k.as_str() {
                "files" => a.files = self.strings(v, &["artifacts", "files"]),
                "base-directory" => a.base_directory = scalar_string(v),
                "name" => a.name = scalar_string(v),
                _ => {
                    a.discard_paths = match v {
                        Value::Bool(b) => *b,
                        Value::String(s) if s == "yes" => true,
                        Value::String(s) if s == "no" => false,
                        _ => {
                            self.err(&["artifacts", "discard-paths"], "discard-paths must be yes or no", "write `discard-paths: yes` or `discard-paths: no`".to_string());
                            false
                        }
                    }
                }
            }
        }
        if a.files.is_empty() {
            self.err(&["artifacts"], "`artifacts` lists no `files`", "add `files:` with glob patterns, e.g. `- '**/*'`".to_string());
        }
        if let Some(why) = a.base_directory.as_deref().and_then(leaves_build_folder) {
            self.err(
                &["artifacts", "base-directory"],
                format!("base-directory `{}` {why}", a.base_directory.as_deref().unwrap_or_default()),
                "give a folder inside the build's checkout, relative to it, e.g. `base-directory: out`".to_string(),
            );
        }
        for f in a.files.clone() {
            if let Some(why) = leaves_build_folder(&f) {
                self.err_at_item(
                    &["artifacts", "files"],
                    &f,
                    format!("artifacts.files pattern `{f}` {why}"),
                    "artifacts are copied from the build's checkout: give a pattern relative to it (or to base-directory), e.g. `- 'out/**/*'`".to_string(),
                );
            }
        }
        Some(a)
    }

    /// Like [`Walker::err`], at the line of a list item under `path` whose text is `item`.
    fn err_at_item(&mut self, path: &[&str], item: &str, msg: String, hint: String) {
        let (line, _) = locate_key(self.src, path);
        let found = (line > 0)
            .then(|| {
                self.src.lines().enumerate().skip(line).find_map(|(i, l)| {
                    let t = l.trim_start();
                    (t.starts_with('-') && t.contains(item)).then(|| (i + 1, l.len() - t.len() + 1))
                })
            })
            .flatten();
        match found {
            Some((line, col)) => {
                let mut d = Diagnostic::at_line_col(self.file, self.src, line, col, path.join("."), msg, Some(hint));
                d.path = path.join(".");
                self.diags.push(d);
            }
            None => self.err(path, msg, hint),
        }
    }
}

/// Why a path of `artifacts` (a `files` pattern or the `base-directory`) would reach outside
/// the build's checkout, or `None` when it stays inside: an absolute path, a `~` path, or a
/// `..` component. (The build runner checks every copied file again after resolving links.)
pub fn leaves_build_folder(path: &str) -> Option<&'static str> {
    let p = path.trim();
    if p.starts_with('/') {
        Some("is an absolute path: it leaves the build folder (copying onto itself truncates the file)")
    } else if p.starts_with('~') {
        Some("starts with `~`: it leaves the build folder")
    } else if p.split(['/', '\\']).any(|c| c == "..") {
        Some("contains `..`: it leaves the build folder")
    } else {
        None
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// 1-based (line, column) of the key at the end of `path`, found by following the keys through
/// block mappings (deeper keys are more indented). `(0, 0)` when not found; the nearest found
/// ancestor otherwise.
fn locate_key(src: &str, path: &[&str]) -> (usize, usize) {
    let lines: Vec<&str> = src.lines().collect();
    let mut found = (0usize, 0usize);
    let mut from = 0usize;
    let mut min_indent: Option<usize> = None; // keys must be indented more than this
    for key in path {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if let Some(mi) = min_indent {
                if indent <= mi {
                    break; // left the parent's block
                }
            }
            let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
            let unquoted = body.trim_start_matches(['"', '\'']);
            if let Some(rest) = unquoted.strip_prefix(key) {
                let rest = rest.trim_start_matches(['"', '\'']);
                if rest.trim_start().starts_with(':') {
                    let col = indent + (trimmed.len() - body.len()) + 1;
                    hit = Some((i, indent, col));
                    break;
                }
            }
        }
        match hit {
            Some((i, indent, col)) => {
                found = (i + 1, col);
                from = i + 1;
                min_indent = Some(indent);
            }
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::locate_key;

    #[test]
    fn locates_nested_keys() {
        let src = "version: 0.2\nenv:\n  variables:\n    A: b\n  parameter-store:\n    X: /y\nphases:\n  build:\n    commands:\n      - make\n";
        assert_eq!(locate_key(src, &["env", "parameter-store"]), (5, 3));
        assert_eq!(locate_key(src, &["phases", "build", "commands"]), (9, 5));
        assert_eq!(locate_key(src, &["version"]), (1, 1));
        // Not found: the nearest ancestor.
        assert_eq!(locate_key(src, &["phases", "install"]), (7, 1));
        assert_eq!(locate_key(src, &["nothing"]), (0, 0));
    }
}
