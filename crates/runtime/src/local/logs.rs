//! Task logs: `<state>/logs/tasks/<service>/<task>.log`, size-capped with rotation
//! (`<task>.log.1` is the previous file, `.2` the one before...), tail and follow.
//!
//! Tail and follow need only the state folder, so `coalmine logs` works from another process
//! than the one supervising the tasks.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::RuntimeError;

/// Where task logs live under a state folder.
pub fn tasks_log_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("logs").join("tasks")
}

/// Whether `name` can be a service name: `a-z`, `0-9` and `-`, at most 64 characters (so it
/// is one plain path component, never `..` or a path).
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `task` is a task id: `<service>-<n>`.
pub fn valid_task_id(task: &str) -> bool {
    task.rsplit_once('-').is_some_and(|(service, n)| {
        valid_service_name(service) && !n.is_empty() && n.len() <= 19 && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// A task's log file, always under `<state>/logs/tasks/`. Task ids are `<service>-<n>`;
/// anything else (a path, `..`) has no log.
pub fn task_log_path(state_dir: &Path, task: &str) -> Option<PathBuf> {
    if !valid_task_id(task) {
        return None;
    }
    let (service, _) = task.rsplit_once('-')?;
    Some(tasks_log_dir(state_dir).join(service).join(format!("{task}.log")))
}

/// The last lines a task wrote, kept in memory so an exit at start can be explained with
/// them (in the circuit breaker's reason, the pipeline's event and `coalmine status`).
#[derive(Debug, Default)]
pub(crate) struct OutputTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

/// Lines kept by [`OutputTail`]; each is cut to [`TAIL_LINE_CHARS`] characters.
pub(crate) const TAIL_LINES: usize = 5;
const TAIL_LINE_CHARS: usize = 300;

impl OutputTail {
    fn push(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                self.end_line();
            } else if self.partial.len() < 4 * TAIL_LINE_CHARS {
                self.partial.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.partial);
        let text = text.trim_end_matches('\r');
        if !text.trim().is_empty() {
            let mut line: String = text.chars().take(TAIL_LINE_CHARS).collect();
            if text.chars().count() > TAIL_LINE_CHARS {
                line.push('…');
            }
            self.lines.push_back(line);
            if self.lines.len() > TAIL_LINES {
                self.lines.pop_front();
            }
        }
        self.partial.clear();
    }

    /// The last lines, an unterminated last line included.
    pub(crate) fn take(&mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.end_line();
        }
        self.lines.drain(..).collect()
    }
}

/// Copy a task's output into its log file, rotating when it reaches `max_bytes`, and keep its
/// last lines in `tail`; `eof` is signalled when the output ends. After that, note how the
/// process ended (`exit` resolves to e.g. "exit 1").
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pump(
    mut rx: pipe::Receiver,
    path: PathBuf,
    header: String,
    tail: std::sync::Arc<std::sync::Mutex<OutputTail>>,
    eof: tokio::sync::oneshot::Sender<()>,
    exit: tokio::sync::oneshot::Receiver<String>,
    max_bytes: u64,
    keep: usize,
) {
    let mut writer = match RotatingFile::open(path.clone(), max_bytes, keep) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open task log; the task's output is discarded");
            None
        }
    };
    if let Some(w) = writer.as_mut() {
        w.write(header.as_bytes());
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                tail.lock().unwrap().push(&buf[..n]);
                if let Some(w) = writer.as_mut() {
                    w.write(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading task output failed");
                break;
            }
        }
    }
    let _ = eof.send(());
    if let (Ok(how), Some(w)) = (exit.await, writer.as_mut()) {
        w.write(format!("--- coalmine: process ended: {how} ---\n").as_bytes());
    }
}

struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path, file, size, max_bytes: max_bytes.max(1024), keep: keep.max(1) })
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.size >= self.max_bytes {
                if let Err(e) = self.rotate() {
                    tracing::warn!(path = %self.path.display(), error = %e, "log rotation failed");
                    return;
                }
            }
            let room = (self.max_bytes - self.size) as usize;
            let n = room.min(data.len());
            if let Err(e) = self.file.write_all(&data[..n]) {
                tracing::warn!(path = %self.path.display(), error = %e, "writing task log failed");
                return;
            }
            self.size += n as u64;
            data = &data[n..];
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub task: String,
    pub line: String,
}

/// The log files a target names: a task id (`primary-3`) or a service (`primary`, all of its
/// tasks' logs, current and past).
pub fn log_files(state_dir: &Path, target: &str) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    let dir = tasks_log_dir(state_dir);
    if !valid_service_name(target) && !valid_task_id(target) {
        return Err(RuntimeError::NoLogs { target: target.to_string(), dir });
    }
    let service_dir = dir.join(target);
    if service_dir.is_dir() {
        let mut out = Vec::new();
        let rd = fs::read_dir(&service_dir).map_err(|e| RuntimeError::Io { path: service_dir.clone(), source: e })?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(task) = name.strip_suffix(".log") {
                out.push((task.to_string(), entry.path()));
            }
        }
        out.sort_by_key(|(t, _)| task_number(t));
        return Ok(out);
    }
    match task_log_path(state_dir, target) {
        Some(p) if p.exists() => Ok(vec![(target.to_string(), p)]),
        _ => Err(RuntimeError::NoLogs { target: target.to_string(), dir }),
    }
}

fn task_number(task: &str) -> u64 {
    task.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The last `lines` lines of a task's log (or of each of a service's task logs, in task order),
/// reading into the previous rotated file when the current one is short.
pub fn tail(state_dir: &Path, target: &str, lines: usize) -> Result<Vec<LogLine>, RuntimeError> {
    Ok(tail_files(log_files(state_dir, target)?, lines))
}

/// The log files of the tasks of a service's previous revision: the newest revision, other
/// than `current`, that any of its tasks ran (each log's first line names the task's revision).
pub fn previous_files(state_dir: &Path, service: &str, current: &str) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    let revision_of = |path: &Path| -> Option<String> {
        let mut first = String::new();
        BufReader::new(File::open(path).ok()?).read_line(&mut first).ok()?;
        let rest = first.split("(revision ").nth(1)?;
        Some(rest.split(')').next()?.to_string())
    };
    // Files come in task order: the last one of another revision names the previous revision.
    let tagged: Vec<(String, PathBuf, Option<String>)> =
        log_files(state_dir, service).unwrap_or_default().into_iter().map(|(t, p)| {
            let r = revision_of(&p);
            (t, p, r)
        }).collect();
    let Some(previous) = tagged.iter().rev().find_map(|(_, _, r)| r.clone().filter(|r| r != current)) else {
        return Err(RuntimeError::NothingToShow(format!("service `{service}` has run no revision but {current}: there are no previous logs")));
    };
    Ok(tagged.into_iter().filter(|(_, _, r)| r.as_deref() == Some(previous.as_str())).map(|(t, p, _)| (t, p)).collect())
}

/// The last `lines` lines of each of these logs, in the order given.
pub fn tail_files(files: Vec<(String, PathBuf)>, lines: usize) -> Vec<LogLine> {
    let mut out = Vec::new();
    for (task, path) in files {
        let mut keep: VecDeque<String> = VecDeque::with_capacity(lines.min(4096));
        // Oldest first: .1 then the current file.
        for p in [rotated(&path, 1), path.clone()] {
            let Ok(f) = File::open(&p) else { continue };
            let mut f = f;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            // Read at most the last 4 MiB of each file.
            let start = len.saturating_sub(4 << 20);
            if f.seek(SeekFrom::Start(start)).is_err() {
                continue;
            }
            let mut r = BufReader::new(f);
            if start > 0 {
                let mut skip = Vec::new();
                let _ = r.read_until(b'\n', &mut skip);
            }
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match r.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']).to_string();
                        if keep.len() == lines {
                            keep.pop_front();
                        }
                        if lines > 0 {
                            keep.push_back(s);
                        }
                    }
                }
            }
        }
        out.extend(keep.into_iter().map(|line| LogLine { task: task.clone(), line }));
    }
    out
}

/// Follows a task's or a service's logs: each [`LogFollower::poll`] returns the complete lines
/// written since the previous one, across rotations, and picks up tasks started later.
pub struct LogFollower {
    state_dir: PathBuf,
    target: String,
    files: BTreeMap<String, Followed>,
}

struct Followed {
    path: PathBuf,
    file: File,
    ino: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    /// Start following at the current end of every log file (use [`tail`] for what came before).
    pub fn new(state_dir: &Path, target: &str) -> Result<LogFollower, RuntimeError> {
        let mut f = LogFollower { state_dir: state_dir.to_path_buf(), target: target.to_string(), files: BTreeMap::new() };
        for (task, path) in log_files(state_dir, target)? {
            if let Some(mut followed) = Followed::open(&path) {
                let _ = followed.file.seek(SeekFrom::End(0));
                f.files.insert(task, followed);
            }
        }
        Ok(f)
    }

    /// New complete lines since the last call. Never blocks; call it on a timer.
    pub fn poll(&mut self) -> Vec<LogLine> {
        let mut out = Vec::new();
        if let Ok(files) = log_files(&self.state_dir, &self.target) {
            for (task, path) in files {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.files.entry(task) {
                    if let Some(followed) = Followed::open(&path) {
                        slot.insert(followed);
                    }
                }
            }
        }
        for (task, f) in self.files.iter_mut() {
            f.read_new(task, &mut out);
            // Rotated: finish the old file (done above), continue with the new one.
            if let Ok(meta) = fs::metadata(&f.path) {
                if meta.ino() != f.ino {
                    if let Some(mut fresh) = Followed::open(&f.path) {
                        fresh.partial = std::mem::take(&mut f.partial);
                        *f = fresh;
                        f.read_new(task, &mut out);
                    }
                }
            }
        }
        out
    }
}

impl Followed {
    fn open(path: &Path) -> Option<Followed> {
        let file = File::open(path).ok()?;
        let ino = file.metadata().ok()?.ino();
        Some(Followed { path: path.to_path_buf(), file, ino, partial: Vec::new() })
    }

    fn read_new(&mut self, task: &str, out: &mut Vec<LogLine>) {
        let mut buf = Vec::new();
        if self.file.read_to_end(&mut buf).is_err() {
            return;
        }
        self.partial.extend_from_slice(&buf);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let s = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string();
            out.push(LogLine { task: task.to_string(), line: s });
        }
    }
}
