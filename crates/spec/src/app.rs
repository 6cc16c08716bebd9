//! Parsing and validating `coalmine.toml`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coalmine_analysis::duration::{self, ACCEPTED_FORMS};
use coalmine_analysis::AlarmSpec;
use serde::Deserialize;
use toml::Spanned;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::types::*;

type S<T> = Option<Spanned<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    app: S<String>,
    source: Option<RawSource>,
    build: Option<RawBuild>,
    run: S<RawRun>,
    queue: Option<RawQueue>,
    services: Option<RawServices>,
    server: Option<RawServer>,
    runtime: S<RawRuntime>,
    steps: S<Vec<Spanned<RawStep>>>,
    alarms: Option<Vec<Spanned<RawAlarm>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    repo: S<String>,
    branch: S<String>,
    poll_interval: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    buildspec: S<String>,
    timeout: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    command: S<String>,
    env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    stop_timeout: S<String>,
    rollback_stop_timeout: S<String>,
    health_command: S<String>,
    healthy_after: S<String>,
    minimum_healthy_percent: S<u32>,
    maximum_percent: S<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    url: S<String>,
    name: S<String>,
    visibility_timeout: S<String>,
    dlq: S<String>,
    max_receive_count: S<u32>,
    dlq_retention: S<String>,
    endpoint: S<String>,
    port: S<u16>,
    region: S<String>,
    account_id: S<String>,
    verify_signatures: S<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServices {
    primary: Option<RawService>,
    canary: Option<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    tasks: S<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    port: S<u16>,
    bind: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    kind: S<String>,
    cluster: S<String>,
    region: S<String>,
    endpoint: S<String>,
    primary_service: S<String>,
    canary_service: S<String>,
    container: S<String>,
    proxy_image: S<String>,
    proxy_port: S<u16>,
    cpu: S<u32>,
    memory: S<u32>,
    log_retention: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    deploy: S<String>,
    approval: S<String>,
    pause: S<String>,
    scale: S<String>,
    analysis: S<String>,
    timeout: S<String>,
    tasks: S<u32>,
    promote: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlarm {
    kind: S<String>,
    threshold: S<u64>,
    period: S<String>,
    min_sample: S<u64>,
    confidence: S<f64>,
    consecutive_failures: S<u64>,
    percentile: S<f64>,
    factor: S<f64>,
    min_ms: S<u64>,
}

const TOP_LEVEL: &[&str] = &["app", "source", "build", "run", "queue", "services", "server", "runtime", "steps", "alarms"];

/// The keys of `[runtime]` that only `kind = "ecs"` takes.
const ECS_KEYS: &[&str] = &[
    "cluster",
    "region",
    "endpoint",
    "primary_service",
    "canary_service",
    "container",
    "proxy_image",
    "proxy_port",
    "cpu",
    "memory",
    "log_retention",
];

/// Fields whose value is a duration string, for hints on type errors.
const DURATION_FIELDS: &[&str] = &[
    "poll_interval",
    "timeout",
    "stop_timeout",
    "rollback_stop_timeout",
    "healthy_after",
    "visibility_timeout",
    "dlq_retention",
    "pause",
    "analysis",
    "period",
    "log_retention",
];

struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
    diags: Diagnostics,
}

impl Ctx<'_> {
    fn err(&mut self, span: Option<Range<usize>>, path: impl Into<String>, msg: impl Into<String>, hint: impl Into<Option<String>>) {
        let d = Diagnostic::at(self.file, self.src, span, path, msg, hint.into());
        self.diags.push(d);
    }

    fn duration(&mut self, v: &S<String>, path: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match duration::parse(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.err(
                        Some(s.span()),
                        path,
                        format!("`{}` is not a duration: {}", s.get_ref(), e.problem),
                        format!("write {ACCEPTED_FORMS}"),
                    );
                    default
                }
            },
        }
    }

    /// A duration that must be positive.
    fn positive_duration(&mut self, v: &S<String>, path: &str, default: Duration) -> Duration {
        let d = self.duration(v, path, default);
        if d.is_zero() {
            if let Some(s) = v {
                self.err(
                    Some(s.span()),
                    path,
                    format!("`{path}` must be longer than zero"),
                    format!("use a positive duration such as \"{}\"", duration::format(default)),
                );
            }
            return default;
        }
        d
    }
}

/// `https://sqs.<region>.amazonaws.com/<account>/<name>` (or any `http(s)://host/.../<name>`) as
/// (endpoint, name, region when the host names one).
fn parse_queue_url(url: &str) -> Option<(String, String, Option<String>)> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let (host, path) = rest.split_once('/')?;
    let name = path.trim_end_matches('/').rsplit('/').next().filter(|n| is_queue_name(n))?;
    if host.is_empty() {
        return None;
    }
    let region = host.strip_prefix("sqs.").and_then(|h| h.split_once('.')).map(|(r, _)| r.to_string()).filter(|r| r.contains('-'));
    Some((url[..url.len() - rest.len() + host.len()].to_string(), name.to_string(), region))
}

fn string_or(v: &S<String>, default: impl Into<String>) -> String {
    v.as_ref().map(|s| s.get_ref().clone()).unwrap_or_else(|| default.into())
}

/// Parse and validate the text of a `coalmine.toml`; `file` names it in diagnostics and its
/// folder is the app's root (relative paths resolve against it).
pub fn parse(src: &str, file: &str) -> Result<AppSpec, Diagnostics> {
    let mut cx = Ctx {
        file,
        src,
        diags: Diagnostics::default(),
    };
    let unknown = unknown_keys(file, src);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let raw: RawApp = match deserialize(src) {
        Ok(raw) => raw,
        Err(d) => {
            cx.diags.push(toml_error_diagnostic(file, src, d));
            return Err(cx.diags);
        }
    };
    let root = match Path::new(file).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let spec = convert(&mut cx, raw, root);
    if cx.diags.is_empty() {
        Ok(spec)
    } else {
        cx.diags.sort();
        Err(cx.diags)
    }
}

/// Read and parse a `coalmine.toml`. The app's root is the file's folder, made absolute.
pub fn load(path: &Path) -> Result<AppSpec, Diagnostics> {
    let shown = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::whole_file(
            &shown,
            format!("cannot read {shown}: {e}"),
            Some(if e.kind() == std::io::ErrorKind::NotFound {
                "create one with `coalmine init`, or pass the right path".to_string()
            } else {
                "check the file's permissions".to_string()
            }),
        )])
    })?;
    let mut spec = parse(&src, &shown)?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let root = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    if let Repo::Path(p) = &spec.source.repo {
        let rel = p.strip_prefix(&spec.root).unwrap_or(p);
        spec.source.repo = Repo::Path(normalize(&root.join(rel)));
    }
    spec.root = root;
    Ok(spec)
}

/// Drop `.` components (lexically; `..` is kept).
fn normalize(p: &Path) -> PathBuf {
    let n: PathBuf = p.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    if n.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        n
    }
}

/// The keys each table accepts; `None` for free-form tables (`run.env`) and unknown places.
fn known_keys(path: &[&str]) -> Option<&'static [&'static str]> {
    Some(match path {
        [] => TOP_LEVEL,
        ["source"] => &["repo", "branch", "poll_interval"],
        ["build"] => &["buildspec", "timeout"],
        ["run"] => &[
            "command",
            "env",
            "stop_timeout",
            "rollback_stop_timeout",
            "health_command",
            "healthy_after",
            "minimum_healthy_percent",
            "maximum_percent",
        ],
        ["queue"] => &[
            "name",
            "visibility_timeout",
            "dlq",
            "max_receive_count",
            "dlq_retention",
            "endpoint",
            "url",
            "port",
            "region",
            "account_id",
            "verify_signatures",
        ],
        ["services"] => &["primary", "canary"],
        ["services", _] => &["tasks"],
        ["server"] => &["port", "bind"],
        ["runtime"] => &[
            "kind",
            "cluster",
            "region",
            "endpoint",
            "primary_service",
            "canary_service",
            "container",
            "proxy_image",
            "proxy_port",
            "cpu",
            "memory",
            "log_retention",
        ],
        ["steps", "*"] => &["deploy", "approval", "pause", "scale", "analysis", "timeout", "tasks", "promote"],
        ["alarms", "*"] => &[
            "kind",
            "threshold",
            "period",
            "min_sample",
            "confidence",
            "consecutive_failures",
            "percentile",
            "factor",
            "min_ms",
        ],
        _ => return None,
    })
}

/// Every unknown key of the file at once (serde would stop at the first), each with its
/// position and a suggestion. Empty when the file does not parse as TOML: the deserializer
/// reports that.
fn unknown_keys(file: &str, src: &str) -> Diagnostics {
    use toml::de::{DeTable, DeValue};
    fn walk(
        file: &str,
        src: &str,
        table: &DeTable<'_>,
        schema: &mut Vec<String>,
        shown: &str,
        out: &mut Diagnostics,
    ) {
        let schema_path: Vec<&str> = schema.iter().map(String::as_str).collect();
        let known = known_keys(&schema_path);
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            let path = if shown.is_empty() { name.to_string() } else { format!("{shown}.{name}") };
            if let Some(known) = known {
                if !known.contains(&name) {
                    let hint = match did_you_mean(name, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if !schema.is_empty() && TOP_LEVEL.contains(&name) => {
                            format!("`{name}` is a top-level key: move it above the first `[section]` header")
                        }
                        None => format!(
                            "remove it; the keys here are {}",
                            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    out.push(Diagnostic::at(file, src, Some(key.span()), path, format!("unknown key `{name}`"), Some(hint)));
                    continue;
                }
            } else {
                continue;
            }
            match value.get_ref() {
                DeValue::Table(t) => {
                    schema.push(name.to_string());
                    walk(file, src, t, schema, &path, out);
                    schema.pop();
                }
                DeValue::Array(items) => {
                    schema.push(name.to_string());
                    schema.push("*".to_string());
                    for (i, item) in items.iter().enumerate() {
                        if let DeValue::Table(t) = item.get_ref() {
                            walk(file, src, t, schema, &format!("{path}[{i}]"), out);
                        }
                    }
                    schema.pop();
                    schema.pop();
                }
                _ => {}
            }
        }
    }
    let mut out = Diagnostics::default();
    if let Ok(doc) = DeTable::parse(src) {
        walk(file, src, doc.get_ref(), &mut Vec::new(), "", &mut out);
    }
    out.sort();
    out
}

struct TomlError {
    message: String,
    span: Option<Range<usize>>,
    path: String,
}

fn deserialize(src: &str) -> Result<RawApp, TomlError> {
    let de = toml::Deserializer::parse(src).map_err(|e| TomlError {
        message: e.message().to_string(),
        span: e.span(),
        path: String::new(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = path_string(e.path());
        let inner = e.into_inner();
        TomlError {
            message: inner.message().to_string(),
            span: inner.span(),
            path,
        }
    })
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// The names between backticks in a serde message: "unknown field `taks`, expected `tasks`".
fn backticked(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

fn toml_error_diagnostic(file: &str, src: &str, e: TomlError) -> Diagnostic {
    let msg = e.message.trim().to_string();
    let last = e.path.rsplit(['.', ']']).next().unwrap_or("").to_string();
    let path = e.path.clone();
    let mut msg = msg;
    let hint = if msg.starts_with("unknown field") {
        let names = backticked(&msg);
        let unknown = names.first().copied().unwrap_or("").to_string();
        let expected: Vec<String> = names.iter().skip(1).map(|s| s.to_string()).collect();
        let hint = match did_you_mean(&unknown, expected.iter().map(String::as_str)) {
            Some(s) => Some(format!("did you mean `{s}`?")),
            None if path.contains('.') && TOP_LEVEL.contains(&unknown.as_str()) => Some(format!(
                "`{unknown}` is a top-level key: move it above the first `[section]` header"
            )),
            None if expected.is_empty() => Some("remove it".to_string()),
            None => Some(format!(
                "remove it; the keys here are {}",
                expected.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            )),
        };
        msg = format!("unknown key `{unknown}`");
        hint
    } else if msg.starts_with("invalid type") && (DURATION_FIELDS.contains(&last.as_str())) {
        Some(format!("a duration is a string: {ACCEPTED_FORMS}"))
    } else if msg.starts_with("invalid type") && path.starts_with("run.env") {
        Some("environment values are strings: quote the value, e.g. WORK_MS = \"1000\"".to_string())
    } else if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        if msg.contains("expected u16") {
            Some("use a whole number from 0 to 65535".to_string())
        } else if msg.contains("expected u") {
            Some("use a whole number, 0 or more".to_string())
        } else if msg.contains("expected struct Raw") {
            msg = format!("{}expected a table", &msg[..msg.find("expected struct Raw").unwrap_or(0)]);
            Some(format!("write it as a `[{last}]` section of `key = value` lines"))
        } else if msg.contains("expected f64") {
            Some("use a number, e.g. 2.0".to_string())
        } else if msg.contains("expected a sequence") {
            Some(format!("write each entry as its own `[[{last}]]` table"))
        } else {
            None
        }
    } else {
        None
    };
    Diagnostic::at(file, src, e.span, path, msg, hint)
}

fn is_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_queue_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 80 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn convert(cx: &mut Ctx, raw: RawApp, root: PathBuf) -> AppSpec {
    let app = convert_app(cx, &raw.app);
    let source = convert_source(cx, raw.source, &root);
    let build = convert_build(cx, raw.build);
    // On ECS the image says how a task starts, so `[run] command` is optional there.
    let on_ecs = raw.runtime.as_ref().and_then(|r| r.get_ref().kind.as_ref()).is_some_and(|k| k.get_ref() == "ecs");
    let run = convert_run(cx, &raw.run, on_ecs);
    let queue_region_given = raw.queue.as_ref().is_some_and(|q| q.region.is_some());
    let ecs_region = raw.runtime.as_ref().filter(|_| on_ecs).and_then(|r| r.get_ref().region.as_ref());
    let queue = convert_queue(cx, raw.queue, &app, ecs_region);
    let services = convert_services(cx, raw.services);
    let primary_tasks = services.primary.tasks;
    let server = convert_server(cx, raw.server);

    let runtime = match raw.runtime {
        None => RuntimeSpec::Local,
        Some(r) => convert_runtime(cx, r, &app, &queue.region, queue_region_given),
    };

    let steps = match raw.steps {
        None => default_steps(),
        Some(steps) => convert_steps(cx, steps, primary_tasks),
    };
    let alarms = match raw.alarms {
        None => coalmine_analysis::default_alarms(),
        Some(alarms) => convert_alarms(cx, alarms),
    };

    AppSpec {
        app,
        root,
        source,
        build,
        run,
        queue,
        services,
        server,
        runtime,
        steps,
        alarms,
    }
}

/// `app`: the app's name (a placeholder after an error).
fn convert_app(cx: &mut Ctx, name: &S<String>) -> String {
    match name {
        None => {
            cx.err(
                Some(0..0),
                "app",
                "the app's name is missing",
                "add `app = \"my-app\"` at the top of the file".to_string(),
            );
            "app".to_string()
        }
        Some(a) => {
            if !is_app_name(a.get_ref()) {
                cx.err(
                    Some(a.span()),
                    "app",
                    format!("`{}` is not a valid app name", a.get_ref()),
                    "use 1 to 64 lowercase letters, digits and `-` (not at either end), e.g. \"sample-app\"".to_string(),
                );
            }
            a.get_ref().clone()
        }
    }
}

/// `[source]`; a relative repository path is taken from `root`.
fn convert_source(cx: &mut Ctx, raw: Option<RawSource>, root: &Path) -> SourceSpec {
    let src_raw = raw.unwrap_or(RawSource { repo: None, branch: None, poll_interval: None });
    let repo_str = string_or(&src_raw.repo, ".");
    let repo = if repo_str.contains("://") || repo_str.starts_with("git@") {
        Repo::Url(repo_str)
    } else {
        if repo_str.trim().is_empty() {
            cx.err(src_raw.repo.as_ref().map(|s| s.span()), "source.repo", "the repository path is empty", "use \".\" for the folder of this file".to_string());
        }
        Repo::Path(normalize(&root.join(&repo_str)))
    };
    let branch = src_raw.branch.as_ref().map(|b| b.get_ref().clone());
    if let Some(branch) = &branch {
        if branch.trim().is_empty() || branch.contains(char::is_whitespace) {
            cx.err(src_raw.branch.as_ref().map(|s| s.span()), "source.branch", format!("`{branch}` is not a branch name"), "name a branch, e.g. \"main\", or leave the key out to watch the repository's current branch".to_string());
        }
    }
    let poll_interval = cx.positive_duration(&src_raw.poll_interval, "source.poll_interval", Duration::from_secs(5));
    SourceSpec { repo, branch, poll_interval }
}

/// `[build]`.
fn convert_build(cx: &mut Ctx, raw: Option<RawBuild>) -> BuildSpec {
    let b = raw.unwrap_or(RawBuild { buildspec: None, timeout: None });
    let buildspec = PathBuf::from(string_or(&b.buildspec, "buildspec.yml"));
    if buildspec.as_os_str().is_empty() {
        cx.err(b.buildspec.as_ref().map(|s| s.span()), "build.buildspec", "the buildspec path is empty", "leave it out for \"buildspec.yml\"".to_string());
    }
    BuildSpec {
        buildspec,
        timeout: cx.positive_duration(&b.timeout, "build.timeout", Duration::from_secs(3600)),
    }
}

/// `[run]`; on ECS the image's CMD may stand in for the command.
fn convert_run(cx: &mut Ctx, raw: &S<RawRun>, on_ecs: bool) -> RunSpec {
    match raw {
        None if on_ecs => default_run(String::new()),
        None => {
            cx.err(
                Some(0..0),
                "run.command",
                "the command that starts a task is missing",
                "add a `[run]` section with `command = \"./my-app\"` (run in the revision's artifact folder)".to_string(),
            );
            default_run(String::new())
        }
        Some(r) => {
            let span = r.span();
            let r = r.get_ref();
            let command = match &r.command {
                None if on_ecs => String::new(),
                Some(c) if on_ecs && c.get_ref().contains(['"', '\'', '\\', '$']) => {
                    cx.err(Some(c.span()), "run.command", "on ECS the command becomes the container's command, split at spaces; quotes, `\\` and `$` are not interpreted", "leave `command` out to use the image's CMD, or write it without quotes and variables".to_string());
                    c.get_ref().clone()
                }
                None => {
                    cx.err(Some(span.start..span.start), "run.command", "`[run]` has no `command`", "add `command = \"./my-app\"` (run in the revision's artifact folder)".to_string());
                    String::new()
                }
                Some(c) if c.get_ref().trim().is_empty() => {
                    cx.err(Some(c.span()), "run.command", "the command is empty", "give the command line that starts one task".to_string());
                    String::new()
                }
                Some(c) => c.get_ref().clone(),
            };
            let mut env = BTreeMap::new();
            for (k, v) in r.env.iter().flatten() {
                let key = k.get_ref();
                let valid = !key.is_empty()
                    && !key.starts_with(|c: char| c.is_ascii_digit())
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    cx.err(Some(k.span()), format!("run.env.{key}"), format!("`{key}` is not a valid environment variable name"), "use letters, digits and `_`, not starting with a digit".to_string());
                }
                env.insert(key.clone(), v.get_ref().clone());
            }
            let minimum_healthy_percent = r.minimum_healthy_percent.as_ref().map(|s| *s.get_ref()).unwrap_or(100);
            let maximum_percent = r.maximum_percent.as_ref().map(|s| *s.get_ref()).unwrap_or(200);
            if minimum_healthy_percent > 100 {
                cx.err(r.minimum_healthy_percent.as_ref().map(|s| s.span()), "run.minimum_healthy_percent", format!("minimum_healthy_percent is {minimum_healthy_percent}, above 100"), "use a value from 0 to 100".to_string());
            }
            if maximum_percent < 100 {
                cx.err(r.maximum_percent.as_ref().map(|s| s.span()), "run.maximum_percent", format!("maximum_percent is {maximum_percent}, below 100"), "use 100 or more (200 lets a deployment start all new tasks before stopping old ones)".to_string());
            } else if minimum_healthy_percent == 100 && maximum_percent == 100 {
                cx.err(r.maximum_percent.as_ref().map(|s| s.span()), "run.maximum_percent", "with minimum_healthy_percent 100 and maximum_percent 100 no task can ever be replaced", "raise maximum_percent (e.g. 200) or lower minimum_healthy_percent".to_string());
            }
            let health_command = r.health_command.as_ref().map(|s| s.get_ref().clone());
            if let Some(h) = &r.health_command {
                if h.get_ref().trim().is_empty() {
                    cx.err(Some(h.span()), "run.health_command", "the health command is empty", "remove it, or give a command that exits 0 when a task is healthy".to_string());
                }
            }
            let stop_timeout = cx.duration(&r.stop_timeout, "run.stop_timeout", Duration::from_secs(30));
            if on_ecs && stop_timeout > Duration::from_secs(120) {
                cx.err(r.stop_timeout.as_ref().map(|s| s.span()), "run.stop_timeout", format!("a stop timeout of {} is longer than Fargate's maximum of 120s", duration::format(stop_timeout)), "use at most \"120s\"".to_string());
            } else if on_ecs && stop_timeout.subsec_millis() != 0 {
                cx.err(r.stop_timeout.as_ref().map(|s| s.span()), "run.stop_timeout", "ECS counts stop timeouts in whole seconds", "use a whole number of seconds, e.g. \"30s\"".to_string());
            }
            RunSpec {
                command,
                env,
                stop_timeout,
                rollback_stop_timeout: cx.duration(&r.rollback_stop_timeout, "run.rollback_stop_timeout", Duration::from_secs(3)),
                health_command,
                healthy_after: cx.duration(&r.healthy_after, "run.healthy_after", Duration::from_secs(2)),
                minimum_healthy_percent,
                maximum_percent,
            }
        }
    }
}

/// `[queue]`; on ECS the queue lives in the runtime's region (`ecs_region`) unless the file says otherwise.
fn convert_queue(cx: &mut Ctx, raw: Option<RawQueue>, app: &str, ecs_region: Option<&Spanned<String>>) -> QueueSpec {
    let q = raw.unwrap_or(RawQueue {
        name: None,
        visibility_timeout: None,
        dlq: None,
        max_receive_count: None,
        dlq_retention: None,
        endpoint: None,
        port: None,
        region: None,
        account_id: None,
        verify_signatures: None,
        url: None,
    });
    // `url` = the endpoint and the name in one (and the region, from an AWS host).
    let from_url = q.url.as_ref().and_then(|u| {
        let parsed = parse_queue_url(u.get_ref());
        if parsed.is_none() {
            cx.err(Some(u.span()), "queue.url", format!("`{}` is not a queue URL", u.get_ref()), "write e.g. \"https://sqs.eu-west-1.amazonaws.com/123456789012/orders\"".to_string());
        } else if q.name.is_some() || q.endpoint.is_some() {
            cx.err(Some(u.span()), "queue.url", "`url` names the queue and its endpoint; `name` or `endpoint` is set too".to_string(), "keep either `url`, or `name` and `endpoint`".to_string());
        }
        parsed
    });
    let qname = match &from_url {
        Some((_, name, _)) => name.clone(),
        None => string_or(&q.name, app.to_string()),
    };
    let dlq = string_or(&q.dlq, format!("{app}-dlq"));
    for (v, value, path) in [(&q.name, &qname, "queue.name"), (&q.dlq, &dlq, "queue.dlq")] {
        if !is_queue_name(value) {
            // A bad default comes from a bad app name, which is reported already.
            if let Some(s) = v {
                cx.err(Some(s.span()), path, format!("`{value}` is not a valid queue name"), "use 1 to 80 letters, digits, `-` and `_` (SQS's rule)".to_string());
            }
        }
    }
    if qname == dlq {
        cx.err(q.dlq.as_ref().or(q.name.as_ref()).map(|s| s.span()), "queue.dlq", format!("the dead-letter queue has the same name as the queue, `{dlq}`"), format!("name it differently, e.g. \"{qname}-dlq\""));
    }
    let visibility_timeout = cx.duration(&q.visibility_timeout, "queue.visibility_timeout", Duration::from_secs(300));
    if visibility_timeout > Duration::from_secs(12 * 3600) {
        cx.err(q.visibility_timeout.as_ref().map(|s| s.span()), "queue.visibility_timeout", format!("the visibility timeout {} is longer than 12h, SQS's maximum", duration::format(visibility_timeout)), "use at most \"12h\"".to_string());
    } else if visibility_timeout.subsec_millis() != 0 {
        cx.err(q.visibility_timeout.as_ref().map(|s| s.span()), "queue.visibility_timeout", "SQS counts visibility timeouts in whole seconds", "use a whole number of seconds, e.g. \"300s\"".to_string());
    }
    let max_receive_count = q.max_receive_count.as_ref().map(|s| *s.get_ref()).unwrap_or(1);
    if !(1..=1000).contains(&max_receive_count) {
        cx.err(q.max_receive_count.as_ref().map(|s| s.span()), "queue.max_receive_count", format!("max_receive_count is {max_receive_count}; SQS accepts 1 to 1000"), "use 1 (the guidance's value: dead-letter after the first failed receive) or more".to_string());
    }
    let dlq_retention = cx.duration(&q.dlq_retention, "queue.dlq_retention", Duration::from_secs(3600));
    if dlq_retention < Duration::from_secs(60) || dlq_retention > Duration::from_secs(14 * 86_400) {
        cx.err(q.dlq_retention.as_ref().map(|s| s.span()), "queue.dlq_retention", format!("a retention of {} is outside SQS's range of 1m to 14d", duration::format(dlq_retention)), "use a value from \"1m\" to \"14d\"; the guidance uses \"60m\"".to_string());
    }
    let endpoint = q.endpoint.as_ref().map(|s| s.get_ref().clone()).or_else(|| from_url.as_ref().map(|(e, _, _)| e.clone()));
    if let Some(e) = &q.endpoint {
        let v = e.get_ref();
        if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() <= "https://".len() {
            cx.err(Some(e.span()), "queue.endpoint", format!("`{v}` is not an http(s) URL"), "write e.g. \"https://sqs.us-east-1.amazonaws.com\", or leave it out to run the embedded queue".to_string());
        }
    }
    let url_region = from_url.as_ref().and_then(|(_, _, r)| r.clone());
    let region = string_or(&q.region, url_region.or(ecs_region.map(|r| r.get_ref().clone())).unwrap_or_else(|| "us-east-1".into()));
    if region.trim().is_empty() || region.contains(char::is_whitespace) {
        cx.err(q.region.as_ref().map(|s| s.span()), "queue.region", format!("`{region}` is not a region"), "write e.g. \"us-east-1\"".to_string());
    }
    let account_id = string_or(&q.account_id, "000000000000");
    if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
        cx.err(
            q.account_id.as_ref().map(|s| s.span()),
            "queue.account_id",
            format!("`{account_id}` is not an account id"),
            "write 12 digits, e.g. \"000000000000\" (the default) or \"123456789012\"".to_string(),
        );
    }
    QueueSpec {
        account_id,
        verify_signatures: q.verify_signatures.as_ref().map(|s| *s.get_ref()).unwrap_or(true),
        name: qname,
        visibility_timeout,
        dlq,
        max_receive_count,
        dlq_retention,
        endpoint,
        port: q.port.as_ref().map(|s| *s.get_ref()).unwrap_or(9324),
        region,
    }
}

/// `[services]`.
fn convert_services(cx: &mut Ctx, raw: Option<RawServices>) -> ServicesSpec {
    let sv = raw.unwrap_or(RawServices { primary: None, canary: None });
    let tasks_of = |s: &Option<RawService>| s.as_ref().and_then(|s| s.tasks.as_ref()).map(|t| (*t.get_ref(), Some(t.span())));
    let (primary_tasks, primary_span) = tasks_of(&sv.primary).unwrap_or((3, None));
    let (canary_tasks, canary_span) = tasks_of(&sv.canary).unwrap_or((1, None));
    for (n, span, name) in [(primary_tasks, primary_span.clone(), "primary"), (canary_tasks, canary_span.clone(), "canary")] {
        if n == 0 {
            cx.err(span, format!("services.{name}.tasks"), format!("the {name} service has zero tasks"), "a service needs at least one task: set `tasks = 1` or more".to_string());
        }
    }
    if primary_tasks > 0 && canary_tasks > primary_tasks {
        cx.err(
            canary_span.clone().or(primary_span.clone()),
            "services.canary.tasks",
            format!("the canary has more tasks ({canary_tasks}) than the primary ({primary_tasks})"),
            "a canary takes a small share of the messages: give it fewer tasks than the primary".to_string(),
        );
    }
    ServicesSpec {
        primary: ServiceSpec { tasks: primary_tasks },
        canary: ServiceSpec { tasks: canary_tasks },
    }
}

/// `[server]`.
fn convert_server(cx: &mut Ctx, raw: Option<RawServer>) -> ServerSpec {
    let s = raw.unwrap_or(RawServer { port: None, bind: None });
    let bind = match &s.bind {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(b) => b.get_ref().parse().unwrap_or_else(|_| {
            cx.err(Some(b.span()), "server.bind", format!("`{}` is not an IP address", b.get_ref()), "write an address such as \"127.0.0.1\" (the default) or \"0.0.0.0\"".to_string());
            IpAddr::from([127, 0, 0, 1])
        }),
    };
    ServerSpec {
        port: s.port.as_ref().map(|p| *p.get_ref()).unwrap_or(7070),
        bind,
    }
}

/// ECS's rule for cluster, service and container names.
fn is_ecs_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The task sizes Fargate accepts: CPU units and the memory (MiB) each allows.
fn fargate_memory(cpu: u32) -> Option<Vec<u32>> {
    let gib = |from: u32, to: u32, step: u32| (from..=to).step_by(step as usize).map(|g| g * 1024).collect::<Vec<_>>();
    Some(match cpu {
        256 => vec![512, 1024, 2048],
        512 => gib(1, 4, 1),
        1024 => gib(2, 8, 1),
        2048 => gib(4, 16, 1),
        4096 => gib(8, 30, 1),
        8192 => gib(16, 60, 4),
        16384 => gib(32, 120, 8),
        _ => return None,
    })
}

/// The retention periods CloudWatch Logs accepts, in days.
const LOG_RETENTION_DAYS: &[u32] =
    &[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];

fn convert_runtime(cx: &mut Ctx, raw: Spanned<RawRuntime>, app: &str, queue_region: &str, queue_region_given: bool) -> RuntimeSpec {
    let header = raw.span().start..raw.span().start;
    let r = raw.into_inner();
    let kind = match &r.kind {
        None => {
            cx.err(Some(header), "runtime.kind", "`[runtime]` has no `kind`", "add `kind = \"local\"` (processes on this machine) or `kind = \"ecs\"`".to_string());
            return RuntimeSpec::Local;
        }
        Some(k) => k,
    };
    let given: [(&str, Option<Range<usize>>); 11] = [
        ("cluster", r.cluster.as_ref().map(|s| s.span())),
        ("region", r.region.as_ref().map(|s| s.span())),
        ("endpoint", r.endpoint.as_ref().map(|s| s.span())),
        ("primary_service", r.primary_service.as_ref().map(|s| s.span())),
        ("canary_service", r.canary_service.as_ref().map(|s| s.span())),
        ("container", r.container.as_ref().map(|s| s.span())),
        ("proxy_image", r.proxy_image.as_ref().map(|s| s.span())),
        ("proxy_port", r.proxy_port.as_ref().map(|s| s.span())),
        ("cpu", r.cpu.as_ref().map(|s| s.span())),
        ("memory", r.memory.as_ref().map(|s| s.span())),
        ("log_retention", r.log_retention.as_ref().map(|s| s.span())),
    ];
    debug_assert_eq!(given.len(), ECS_KEYS.len());
    match kind.get_ref().as_str() {
        "local" => {
            for (key, span) in given {
                if let Some(span) = span {
                    cx.err(Some(span), format!("runtime.{key}"), format!("`{key}` applies to `kind = \"ecs\"`, but this runtime is local"), "remove it, or set `kind = \"ecs\"`".to_string());
                }
            }
            RuntimeSpec::Local
        }
        "ecs" => RuntimeSpec::Ecs(convert_ecs(cx, &r, app, queue_region, queue_region_given)),
        other => {
            let hint = match did_you_mean(other, ["local", "ecs"]) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None => "write \"local\" (processes on this machine, the default) or \"ecs\" (Amazon ECS on Fargate)".to_string(),
            };
            cx.err(Some(kind.span()), "runtime.kind", format!("`{other}` is not a runtime"), hint);
            RuntimeSpec::Local
        }
    }
}

fn convert_ecs(cx: &mut Ctx, r: &RawRuntime, app: &str, queue_region: &str, queue_region_given: bool) -> EcsSpec {
    fn name(cx: &mut Ctx, v: &S<String>, key: &str, default: String) -> String {
        let value = string_or(v, default);
        if !is_ecs_name(&value) {
            if let Some(s) = v {
                cx.err(Some(s.span()), format!("runtime.{key}"), format!("`{value}` is not a valid ECS name"), "use 1 to 255 letters, digits, `-` and `_` (ECS's rule)".to_string());
            }
        }
        value
    }
    let cluster = name(cx, &r.cluster, "cluster", app.to_string());
    let primary_service = name(cx, &r.primary_service, "primary_service", app.to_string());
    let canary_service = name(cx, &r.canary_service, "canary_service", format!("{app}-canary"));
    let container = name(cx, &r.container, "container", app.to_string());
    if primary_service == canary_service {
        cx.err(
            r.canary_service.as_ref().or(r.primary_service.as_ref()).map(|s| s.span()),
            "runtime.canary_service",
            format!("the canary and the primary are both the service `{canary_service}`"),
            format!("give the canary its own service, e.g. \"{primary_service}-canary\""),
        );
    }
    if container == crate::PROXY_CONTAINER {
        cx.err(
            r.container.as_ref().map(|s| s.span()),
            "runtime.container",
            format!("`{container}` is the name of coalmine's proxy sidecar in the task definition"),
            "name the app's container differently, e.g. after the app".to_string(),
        );
    }

    let region = string_or(&r.region, queue_region);
    if let Some(given) = &r.region {
        if region.is_empty() || !region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            cx.err(Some(given.span()), "runtime.region", format!("`{region}` is not a region"), "write e.g. \"us-east-1\"".to_string());
        } else if queue_region_given && region != queue_region {
            cx.err(
                Some(given.span()),
                "runtime.region",
                format!("the services are in `{region}` but the queue is in `{queue_region}`"),
                "keep the queue and the services in one region: remove one of the two `region` settings".to_string(),
            );
        }
    }
    let endpoint = r.endpoint.as_ref().map(|s| s.get_ref().clone());
    if let Some(e) = &r.endpoint {
        let v = e.get_ref();
        if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() <= "https://".len() {
            cx.err(Some(e.span()), "runtime.endpoint", format!("`{v}` is not an http(s) URL"), "leave it out for the region's ECS endpoint, or write e.g. \"http://127.0.0.1:5000\" for a local emulator".to_string());
        }
    }
    let proxy_image = r.proxy_image.as_ref().map(|s| s.get_ref().clone());
    if let Some(i) = &r.proxy_image {
        if i.get_ref().trim().is_empty() || i.get_ref().contains(char::is_whitespace) {
            cx.err(Some(i.span()), "runtime.proxy_image", format!("`{}` is not an image reference", i.get_ref()), "write e.g. \"123456789012.dkr.ecr.us-east-1.amazonaws.com/coalmine:1\", or leave it out for the `coalmine` tag of the app's repository".to_string());
        }
    }
    let proxy_port = r.proxy_port.as_ref().map(|s| *s.get_ref()).unwrap_or(9325);
    if proxy_port == 0 {
        cx.err(r.proxy_port.as_ref().map(|s| s.span()), "runtime.proxy_port", "the proxy needs a fixed port: the app is told it in AWS_ENDPOINT_URL_SQS", "use a port the app does not use, e.g. 9325 (the default)".to_string());
    }

    let cpu = r.cpu.as_ref().map(|s| *s.get_ref()).unwrap_or(256);
    let memory = r.memory.as_ref().map(|s| *s.get_ref()).unwrap_or(512);
    match fargate_memory(cpu) {
        None => cx.err(
            r.cpu.as_ref().map(|s| s.span()),
            "runtime.cpu",
            format!("Fargate has no task size of {cpu} CPU units"),
            "use 256, 512, 1024, 2048, 4096, 8192 or 16384 (1024 = 1 vCPU)".to_string(),
        ),
        Some(allowed) if !allowed.contains(&memory) => {
            let shown = if allowed.len() <= 4 {
                allowed.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            } else {
                format!("{} to {} in steps of {}", allowed[0], allowed[allowed.len() - 1], allowed[1] - allowed[0])
            };
            cx.err(
                r.memory.as_ref().or(r.cpu.as_ref()).map(|s| s.span()),
                "runtime.memory",
                format!("Fargate does not run {cpu} CPU units with {memory} MiB"),
                format!("with cpu = {cpu}, use memory = {shown} (MiB)"),
            );
        }
        Some(_) => {}
    }

    let retention = cx.duration(&r.log_retention, "runtime.log_retention", Duration::from_secs(7 * 86_400));
    let days = retention.as_secs() / 86_400;
    let log_retention_days = if retention.as_secs().is_multiple_of(86_400) && LOG_RETENTION_DAYS.contains(&(days as u32)) {
        days as u32
    } else {
        cx.err(
            r.log_retention.as_ref().map(|s| s.span()),
            "runtime.log_retention",
            format!("CloudWatch Logs cannot keep logs for {}", duration::format(retention)),
            format!("use one of {} days, e.g. \"7d\"", LOG_RETENTION_DAYS.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")),
        );
        7
    };

    EcsSpec {
        cluster,
        region,
        endpoint,
        primary_service,
        canary_service,
        container,
        proxy_image,
        proxy_port,
        cpu,
        memory,
        log_retention_days,
    }
}

fn default_run(command: String) -> RunSpec {
    RunSpec {
        command,
        env: BTreeMap::new(),
        stop_timeout: Duration::from_secs(30),
        rollback_stop_timeout: Duration::from_secs(3),
        health_command: None,
        healthy_after: Duration::from_secs(2),
        minimum_healthy_percent: 100,
        maximum_percent: 200,
    }
}

const STEP_ACTIONS: [&str; 5] = ["deploy", "approval", "pause", "scale", "analysis"];

fn service_name(cx: &mut Ctx, v: &Spanned<String>, path: &str) -> Option<ServiceName> {
    match v.get_ref().as_str() {
        "primary" => Some(ServiceName::Primary),
        "canary" => Some(ServiceName::Canary),
        other => {
            let hint = match did_you_mean(other, ["primary", "canary"]) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None => "write \"canary\" or \"primary\"".to_string(),
            };
            cx.err(Some(v.span()), path, format!("`{other}` is not a service"), hint);
            None
        }
    }
}

fn convert_steps(cx: &mut Ctx, steps: Spanned<Vec<Spanned<RawStep>>>, primary_tasks: u32) -> Vec<Step> {
    let whole = steps.span();
    let mut out = Vec::new();
    let mut canary_deployed_at: Option<usize> = None;
    let mut primary_deployed_at: Option<usize> = None;
    for (i, st) in steps.into_inner().into_iter().enumerate() {
        let span = st.span();
        let header = span.start..span.start;
        let r = st.into_inner();
        let p = |k: &str| format!("steps[{i}].{k}");
        let actions: Vec<(&str, &Spanned<String>)> = [
            ("deploy", &r.deploy),
            ("approval", &r.approval),
            ("pause", &r.pause),
            ("scale", &r.scale),
            ("analysis", &r.analysis),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
        let (action, value) = match actions.as_slice() {
            [] => {
                cx.err(Some(header), format!("steps[{i}]"), "this step says nothing to do", format!("give it one of {}", STEP_ACTIONS.map(|a| format!("`{a}`")).join(", ")));
                continue;
            }
            [one] => *one,
            [first, second, ..] => {
                cx.err(Some(second.1.span()), p(second.0), format!("a step does one thing, but this one has both `{}` and `{}`", first.0, second.0), "split it into two `[[steps]]`".to_string());
                continue;
            }
        };
        // Options that belong to other actions.
        let allowed: &[&str] = match action {
            "deploy" | "approval" => &["timeout"],
            "scale" => &["tasks"],
            "analysis" => &["promote"],
            _ => &[],
        };
        for (k, sp) in [
            ("timeout", r.timeout.as_ref().map(|s| s.span())),
            ("tasks", r.tasks.as_ref().map(|s| s.span())),
            ("promote", r.promote.as_ref().map(|s| s.span())),
        ] {
            if let Some(sp) = sp {
                if !allowed.contains(&k) {
                    let hint = if allowed.is_empty() {
                        format!("remove it; a `{action}` step has no options")
                    } else {
                        format!("remove it; a `{action}` step takes {}", allowed.iter().map(|a| format!("`{a}`")).join_str(", "))
                    };
                    cx.err(Some(sp), p(k), format!("`{k}` does not apply to a `{action}` step"), hint);
                }
            }
        }
        let step = match action {
            "deploy" => {
                let Some(service) = service_name(cx, value, &p("deploy")) else { continue };
                let default = match service {
                    ServiceName::Canary => Duration::from_secs(600),
                    ServiceName::Primary => Duration::from_secs(900),
                };
                let timeout = cx.positive_duration(&r.timeout, &p("timeout"), default);
                match service {
                    ServiceName::Canary => {
                        if let Some(j) = canary_deployed_at {
                            cx.err(Some(value.span()), p("deploy"), format!("the canary is already deployed by steps[{j}]"), "remove one of the two `deploy = \"canary\"` steps".to_string());
                        }
                        if let Some(j) = primary_deployed_at {
                            cx.err(Some(value.span()), p("deploy"), format!("the canary is deployed after the primary (steps[{j}])"), "the canary goes first: move `deploy = \"canary\"` before `deploy = \"primary\"`".to_string());
                        }
                        canary_deployed_at.get_or_insert(i);
                    }
                    ServiceName::Primary => {
                        if let Some(j) = primary_deployed_at {
                            cx.err(Some(value.span()), p("deploy"), format!("the primary is already deployed by steps[{j}]"), "remove one of the two `deploy = \"primary\"` steps".to_string());
                        }
                        primary_deployed_at.get_or_insert(i);
                    }
                }
                Step::Deploy { service, timeout }
            }
            "approval" => {
                if value.get_ref() != "manual" {
                    cx.err(Some(value.span()), p("approval"), format!("`{}` is not an approval kind", value.get_ref()), "write `approval = \"manual\"`; for an automatic one use `analysis = \"5m\"` with `promote = \"auto\"`".to_string());
                }
                Step::Approval {
                    timeout: cx.positive_duration(&r.timeout, &p("timeout"), Duration::from_secs(7 * 86_400)),
                }
            }
            "pause" => {
                let duration = cx.positive_duration(&Some(value.clone()), &p("pause"), Duration::from_secs(60));
                Step::Pause { duration }
            }
            "scale" => {
                let Some(service) = service_name(cx, value, &p("scale")) else { continue };
                let tasks = match &r.tasks {
                    None => {
                        cx.err(Some(value.span()), p("scale"), "a `scale` step needs `tasks`", "add `tasks = 2` (the new task count) to this step".to_string());
                        continue;
                    }
                    Some(t) => {
                        if *t.get_ref() == 0 {
                            cx.err(Some(t.span()), p("tasks"), "scaling to zero tasks", "a service needs at least one task: set `tasks = 1` or more".to_string());
                        } else if service == ServiceName::Canary && *t.get_ref() > primary_tasks {
                            cx.err(Some(t.span()), p("tasks"), format!("scaling the canary to {} tasks, more than the primary's {primary_tasks}", t.get_ref()), "keep the canary smaller than the primary".to_string());
                        }
                        *t.get_ref()
                    }
                };
                if service == ServiceName::Canary && canary_deployed_at.is_none() {
                    cx.err(Some(value.span()), p("scale"), "the canary is scaled before it is deployed", "move this step after `deploy = \"canary\"`".to_string());
                }
                Step::Scale { service, tasks }
            }
            _ => {
                let duration = cx.positive_duration(&Some(value.clone()), &p("analysis"), Duration::from_secs(120));
                let promote = match &r.promote {
                    None => Promote::Auto,
                    Some(v) => match v.get_ref().as_str() {
                        "auto" => Promote::Auto,
                        "manual" => Promote::Manual,
                        other => {
                            cx.err(Some(v.span()), p("promote"), format!("`{other}` is not a promotion mode"), "write \"auto\" or \"manual\"".to_string());
                            Promote::Auto
                        }
                    },
                };
                if canary_deployed_at.is_none() {
                    cx.err(Some(value.span()), p("analysis"), "the analysis comes before the canary is deployed, so there is nothing to judge", "move this step after `deploy = \"canary\"`".to_string());
                }
                Step::Analysis { duration, promote }
            }
        };
        out.push(step);
    }
    if primary_deployed_at.is_none() {
        cx.err(
            Some(whole.start..whole.start),
            "steps",
            "the steps never deploy the primary, so no release would ever finish",
            "add a last step `[[steps]]` with `deploy = \"primary\"`".to_string(),
        );
    }
    out
}

trait JoinStr {
    fn join_str(self, sep: &str) -> String;
}
impl<I: Iterator<Item = String>> JoinStr for I {
    fn join_str(self, sep: &str) -> String {
        self.collect::<Vec<_>>().join(sep)
    }
}

fn convert_alarms(cx: &mut Ctx, alarms: Vec<Spanned<RawAlarm>>) -> Vec<AlarmSpec> {
    let mut out: Vec<AlarmSpec> = Vec::new();
    let mut seen: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for (i, a) in alarms.into_iter().enumerate() {
        let span = a.span();
        let r = a.into_inner();
        let p = |k: &str| format!("alarms[{i}].{k}");
        let Some(kind) = &r.kind else {
            cx.err(Some(span.start..span.start), format!("alarms[{i}]"), "this alarm has no `kind`", format!("add `kind = ` one of {}", AlarmSpec::KINDS.map(|k| format!("\"{k}\"")).join(", ")));
            continue;
        };
        let Some(default) = AlarmSpec::default_of(kind.get_ref()) else {
            let hint = match did_you_mean(kind.get_ref(), AlarmSpec::KINDS) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None => format!("the kinds are {}", AlarmSpec::KINDS.map(|k| format!("\"{k}\"")).join(", ")),
            };
            cx.err(Some(kind.span()), p("kind"), format!("unknown alarm kind `{}`", kind.get_ref()), hint);
            continue;
        };
        let k = default.kind();
        let allowed = default.settings();
        let present: [(&str, Option<Range<usize>>); 8] = [
            ("threshold", r.threshold.as_ref().map(|s| s.span())),
            ("period", r.period.as_ref().map(|s| s.span())),
            ("min_sample", r.min_sample.as_ref().map(|s| s.span())),
            ("confidence", r.confidence.as_ref().map(|s| s.span())),
            ("consecutive_failures", r.consecutive_failures.as_ref().map(|s| s.span())),
            ("percentile", r.percentile.as_ref().map(|s| s.span())),
            ("factor", r.factor.as_ref().map(|s| s.span())),
            ("min_ms", r.min_ms.as_ref().map(|s| s.span())),
        ];
        for (key, sp) in &present {
            if let Some(sp) = sp {
                if !allowed.contains(key) {
                    cx.err(Some(sp.clone()), p(key), format!("`{key}` does not apply to a `{k}` alarm"), format!("remove it; a `{k}` alarm takes {}", allowed.iter().map(|a| format!("`{a}`")).join_str(", ")));
                }
            }
        }
        // The file's settings over the kind's defaults; what they mean is the kind's to say.
        let num = |v: &S<u64>, d: u64| v.as_ref().map(|s| *s.get_ref()).unwrap_or(d);
        let flt = |v: &S<f64>, d: f64| v.as_ref().map(|s| *s.get_ref()).unwrap_or(d);
        let spec = match default {
            AlarmSpec::DlqDepth { threshold, period } => AlarmSpec::DlqDepth {
                threshold: num(&r.threshold, threshold),
                period: cx.positive_duration(&r.period, &p("period"), period),
            },
            AlarmSpec::FailureRatio { min_sample, confidence, consecutive_failures } => AlarmSpec::FailureRatio {
                min_sample: num(&r.min_sample, min_sample),
                confidence: flt(&r.confidence, confidence),
                consecutive_failures: num(&r.consecutive_failures, consecutive_failures),
            },
            AlarmSpec::Crashes { threshold } => AlarmSpec::Crashes { threshold: num(&r.threshold, threshold) },
            AlarmSpec::Latency { percentile, factor, min_sample } => AlarmSpec::Latency {
                percentile: flt(&r.percentile, percentile),
                factor: flt(&r.factor, factor),
                min_sample: num(&r.min_sample, min_sample),
            },
            AlarmSpec::Hung { factor, min_ms } => AlarmSpec::Hung { factor: flt(&r.factor, factor), min_ms: num(&r.min_ms, min_ms) },
        };
        for (key, problem, fix) in spec.problems() {
            let at = present.iter().find(|(k, _)| *k == key).and_then(|(_, sp)| sp.clone());
            cx.err(at, p(key), problem, fix);
        }
        let single = !spec.repeatable();
        if let Some(&(j, at)) = seen.get(k) {
            if single || out.get(at) == Some(&spec) {
                let why = if single {
                    format!("there can be one `{k}` alarm; another is at alarms[{j}]")
                } else {
                    format!("this alarm repeats alarms[{j}]")
                };
                cx.err(Some(kind.span()), p("kind"), why, "remove one of them".to_string());
            }
        } else {
            seen.insert(k, (i, out.len()));
        }
        out.push(spec);
    }
    out
}
