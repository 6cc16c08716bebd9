//! `buildspec.yml`: the subset of AWS CodeBuild's version 0.2 format that coalmine runs.
//!
//! Supported: `version: 0.2`, `env.variables`, `env.shell: bash`, `phases` (`install`,
//! `pre_build`, `build`, `post_build`, each with `commands`, `finally`, `on-failure`),
//! `artifacts` (`files`, `base-directory`, `discard-paths`, `name`). Every other CodeBuild key
//! is reported by name with its location, never ignored.

use std::path::Path;

use serde::Serialize;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, Node, Span};
use marked_yaml::{LoadError, LoaderOptions};

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
    let mut w = Walker { file, src, diags: Diagnostics::default() };
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = match marked_yaml::parse_yaml_with_options(0, src, options) {
        Ok(v) => v,
        Err(e) => return Err(Diagnostics(vec![yaml_error(file, src, &e)])),
    };
    let spec = w.root(&root);
    if w.diags.is_empty() {
        Ok(spec)
    } else {
        w.diags.sort();
        Err(w.diags)
    }
}

/// A YAML error at its position, in words and with the fix.
fn yaml_error(file: &str, src: &str, e: &LoadError) -> Diagnostic {
    let syntax = "check the YAML syntax (indentation with spaces, `key: value`, `- item`)".to_string();
    let (at, message, hint) = match e {
        LoadError::ScanError(m, se) => (Some(*m), se.info().to_string(), syntax),
        LoadError::DuplicateKey(d) => (
            d.key.span().start().copied(),
            format!(
                "`{}` appears twice in the same mapping (first on line {})",
                d.key.as_str(),
                d.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
            "keep one of them".to_string(),
        ),
        LoadError::UnexpectedAnchor(m) => (Some(*m), "YAML anchors and aliases (`&name`, `*name`) are not supported".to_string(), "write the value out in full".to_string()),
        LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags (`!name`) are not supported".to_string(), "remove the tag; write the value as plain text".to_string()),
        LoadError::MappingKeyMustBeScalar(m) => (Some(*m), "a mapping key must be plain text".to_string(), syntax),
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
            (Some(*m), "a buildspec must be a mapping with `version` and `phases`".to_string(), "start with `version: 0.2`".to_string())
        }
    };
    match at {
        Some(m) => Diagnostic::at_line_col(file, src, m.line(), m.column(), "", message, Some(hint)),
        None => Diagnostic::whole_file(file, message, Some(hint)),
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

/// A key of a mapping: its text, where it is, and its value.
struct Key<'n> {
    name: String,
    span: &'n Span,
    value: &'n Node,
}

impl Walker<'_> {
    /// Report at `span` (a key or an item), naming `path` (a chain of mapping keys); for the
    /// whole file when there is no span.
    fn err(&mut self, span: Option<&Span>, path: &[&str], msg: impl Into<String>, hint: impl Into<Option<String>>) {
        let dotted = path.join(".");
        let mut d = match span.and_then(|s| s.start()) {
            Some(m) => Diagnostic::at_line_col(self.file, self.src, m.line(), m.column(), dotted.clone(), msg, hint.into()),
            None => Diagnostic::whole_file(self.file, msg, hint.into()),
        };
        d.path = dotted;
        self.diags.push(d);
    }

    /// The mapping `key` holds; `None` when it is empty or (reported) something else.
    fn mapping<'n>(&mut self, key: &Key<'n>, path: &[&str]) -> Option<&'n MarkedMappingNode> {
        match key.value {
            Node::Mapping(m) => Some(m),
            Node::Scalar(s) if is_null(s) => None,
            other => {
                self.err(Some(key.span), path, format!("`{}` must be a mapping of keys, not {}", path.join("."), kind_of(other)), "write it as indented `key: value` lines".to_string());
                None
            }
        }
    }

    /// Check the keys of a mapping: the known, the unsupported (named), the unknown (with a suggestion).
    fn keys<'n>(&mut self, m: &'n MarkedMappingNode, path: &[&str], known: &[&str], unsupported: &[&str]) -> Vec<Key<'n>> {
        let mut out = Vec::new();
        for (k, v) in m.iter() {
            let key = k.as_str().to_string();
            let mut p: Vec<&str> = path.to_vec();
            p.push(&key);
            if known.contains(&key.as_str()) {
                out.push(Key { name: key.clone(), span: k.span(), value: v });
            } else if unsupported.contains(&key.as_str()) {
                self.err(Some(k.span()), &p, format!("`{}` is not supported by coalmine", p.join(".")), "remove it; coalmine runs the phases locally with `env.variables`, `phases` and `artifacts` only".to_string());
            } else {
                let hint = match did_you_mean(&key, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the keys here are {}", known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")),
                };
                let where_ = if path.is_empty() { "at the top level".to_string() } else { format!("in `{}`", path.join(".")) };
                self.err(Some(k.span()), &p, format!("unknown key `{key}` {where_}"), hint);
            }
        }
        out
    }

    fn root(&mut self, v: &Node) -> Buildspec {
        let mut spec = Buildspec::default();
        let Node::Mapping(m) = v else {
            self.err(v.span().start().is_some().then(|| v.span()), &[], "a buildspec must be a mapping with `version` and `phases`", "start with `version: 0.2`".to_string());
            return spec;
        };
        let keys = self.keys(m, &[], &["version", "env", "phases", "artifacts"], UNSUPPORTED_TOP);
        let mut has_version = false;
        let mut phases_at = None;
        for k in keys {
            match k.name.as_str() {
                "version" => {
                    has_version = true;
                    let ok = scalar_string(k.value).is_some_and(|s| s == "0.2" || s.parse::<f64>() == Ok(0.2));
                    if !ok {
                        self.err(Some(k.span), &["version"], format!("version {} is not supported", scalar_string(k.value).unwrap_or_else(|| kind_of(k.value).to_string())), "write `version: 0.2`".to_string());
                    }
                }
                "env" => {
                    let Some(env) = self.mapping(&k, &["env"]) else { continue };
                    for k in self.keys(env, &["env"], &["variables", "shell"], UNSUPPORTED_ENV) {
                        if k.name == "shell" {
                            if scalar_string(k.value).as_deref() != Some("bash") {
                                self.err(Some(k.span), &["env", "shell"], format!("shell `{}` is not supported", scalar_string(k.value).unwrap_or_default()), "coalmine runs commands with bash: write `shell: bash` or remove it".to_string());
                            }
                            continue;
                        }
                        let Some(vars) = self.mapping(&k, &["env", "variables"]) else { continue };
                        for (name, value) in vars.iter() {
                            let name_s = name.as_str().to_string();
                            match scalar_string(value) {
                                Some(s) => spec.env_variables.push((name_s, s)),
                                None => self.err(
                                    Some(name.span()),
                                    &["env", "variables", &name_s],
                                    format!("the value of `{name_s}` is {}, not a string", kind_of(value)),
                                    "write a single value; quote it if it contains `:` or `#`".to_string(),
                                ),
                            }
                        }
                    }
                }
                "phases" => {
                    phases_at = Some(k.span);
                    let Some(ph) = self.mapping(&k, &["phases"]) else { continue };
                    for pk in self.keys(ph, &["phases"], &["install", "pre_build", "build", "post_build"], &[]) {
                        let phase = self.phase(&pk);
                        match pk.name.as_str() {
                            "install" => spec.phases.install = Some(phase),
                            "pre_build" => spec.phases.pre_build = Some(phase),
                            "build" => spec.phases.build = Some(phase),
                            _ => spec.phases.post_build = Some(phase),
                        }
                    }
                }
                _ => spec.artifacts = self.artifacts(&k),
            }
        }
        if !has_version {
            self.err(None, &[], "the buildspec has no `version`", "add `version: 0.2` as the first line".to_string());
        }
        if spec.phases.in_order().iter().all(|(_, p)| p.commands.is_empty() && p.finally.is_empty()) {
            self.err(phases_at, &["phases"], "the buildspec runs no command", "add `phases:` with e.g. `build:` and its `commands:` list".to_string());
        }
        spec
    }

    fn phase(&mut self, key: &Key<'_>) -> Phase {
        let name = key.name.as_str();
        let mut phase = Phase::default();
        let Some(m) = self.mapping(key, &["phases", name]) else { return phase };
        for k in self.keys(m, &["phases", name], &["commands", "finally", "on-failure"], UNSUPPORTED_PHASE) {
            match k.name.as_str() {
                "commands" => phase.commands = self.strings(&k, &["phases", name, "commands"]),
                "finally" => phase.finally = self.strings(&k, &["phases", name, "finally"]),
                _ => {
                    phase.on_failure = match scalar_string(k.value).as_deref() {
                        Some("ABORT") => OnFailure::Abort,
                        Some("CONTINUE") => OnFailure::Continue,
                        other => {
                            self.err(Some(k.span), &["phases", name, "on-failure"], format!("on-failure `{}` is not supported", other.unwrap_or("?")), "write ABORT (the default) or CONTINUE".to_string());
                            OnFailure::Abort
                        }
                    }
                }
            }
        }
        phase
    }

    /// A list of strings (or one string); each item that is not one is reported where it is.
    fn strings(&mut self, key: &Key<'_>, path: &[&str]) -> Vec<String> {
        let items: Vec<&Node> = match key.value {
            Node::Sequence(s) => s.iter().collect(),
            Node::Scalar(s) if is_null(s) => Vec::new(),
            other => vec![other],
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match scalar_string(item) {
                Some(s) => out.push(s),
                None => self.err(
                    Some(item.span()),
                    path,
                    format!("item {} of `{}` is {}, not a string", i + 1, path.join("."), kind_of(item)),
                    "quote the command: YAML reads `- echo a: b` as a mapping; write `- \"echo a: b\"`".to_string(),
                ),
            }
        }
        out
    }

    fn artifacts(&mut self, key: &Key<'_>) -> Option<Artifacts> {
        let m = self.mapping(key, &["artifacts"])?;
        let mut a = Artifacts::default();
        let (mut base_at, mut files_at) = (None, None);
        for k in self.keys(m, &["artifacts"], &["files", "base-directory", "discard-paths", "name"], UNSUPPORTED_ARTIFACTS) {
            match k.name.as_str() {
                "files" => {
                    a.files = self.strings(&k, &["artifacts", "files"]);
                    files_at = Some(k.value);
                }
                "base-directory" => {
                    a.base_directory = scalar_string(k.value);
                    base_at = Some(k.span);
                }
                "name" => a.name = scalar_string(k.value),
                _ => {
                    a.discard_paths = match k.value.as_scalar().map(|s| (s.as_bool(), s.as_str())) {
                        Some((Some(b), _)) => b,
                        Some((None, "yes")) => true,
                        Some((None, "no")) => false,
                        _ => {
                            self.err(Some(k.span), &["artifacts", "discard-paths"], "discard-paths must be yes or no", "write `discard-paths: yes` or `discard-paths: no`".to_string());
                            false
                        }
                    }
                }
            }
        }
        if a.files.is_empty() {
            self.err(Some(key.span), &["artifacts"], "`artifacts` lists no `files`", "add `files:` with glob patterns, e.g. `- '**/*'`".to_string());
        }
        if let Some(why) = a.base_directory.as_deref().and_then(leaves_build_folder) {
            self.err(
                base_at,
                &["artifacts", "base-directory"],
                format!("base-directory `{}` {why}", a.base_directory.as_deref().unwrap_or_default()),
                "give a folder inside the build's checkout, relative to it, e.g. `base-directory: out`".to_string(),
            );
        }
        let items: Vec<&Node> = match files_at {
            Some(Node::Sequence(s)) => s.iter().collect(),
            Some(other) => vec![other],
            None => Vec::new(),
        };
        for item in items {
            let Some(f) = scalar_string(item) else { continue };
            if let Some(why) = leaves_build_folder(&f) {
                self.err(
                    Some(item.span()),
                    &["artifacts", "files"],
                    format!("artifacts.files pattern `{f}` {why}"),
                    "artifacts are copied from the build's checkout: give a pattern relative to it (or to base-directory), e.g. `- 'out/**/*'`".to_string(),
                );
            }
        }
        Some(a)
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

/// An unquoted empty value, `~` or `null`: YAML's null.
fn is_null(s: &MarkedScalarNode) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

/// The text of a scalar that is not null, as written.
fn scalar_string(v: &Node) -> Option<String> {
    v.as_scalar().filter(|s| !is_null(s)).map(|s| s.as_str().to_string())
}

fn kind_of(v: &Node) -> &'static str {
    match v {
        Node::Scalar(s) if is_null(s) => "empty",
        Node::Scalar(s) if s.as_bool().is_some() => "a boolean",
        Node::Scalar(s) if s.may_coerce() && s.as_str().parse::<f64>().is_ok() => "a number",
        Node::Scalar(_) => "a string",
        Node::Sequence(_) => "a list",
        Node::Mapping(_) => "a mapping",
    }
}
