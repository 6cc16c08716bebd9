//! Log files: the last lines of one, and following several as server-sent events (`tail -f`).

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

/// The last `lines` lines of `text`, each ending in a newline.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// The files to follow right now: (label, path). Labels prefix the lines when there are several.
pub type Sources = Box<dyn FnMut() -> Vec<(String, PathBuf)> + Send>;
/// Whether there will be no more to follow (e.g. the build ended); checked when nothing new came.
pub type Done = Box<dyn FnMut() -> bool + Send>;

struct Followed {
    label: String,
    path: PathBuf,
    offset: u64,
    partial: String,
}

/// Read what was appended to `f.path` since the last call; complete lines only.
fn read_new(f: &mut Followed) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(&f.path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len < f.offset {
        // truncated or replaced: start over
        f.offset = 0;
        f.partial.clear();
    }
    if len == f.offset || file.seek(SeekFrom::Start(f.offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if file.take(1 << 20).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    f.offset += buf.len() as u64;
    f.partial.push_str(&String::from_utf8_lossy(&buf));
    let mut out = Vec::new();
    while let Some(i) = f.partial.find('\n') {
        let line: String = f.partial.drain(..=i).collect();
        out.push(line.trim_end_matches(['\n', '\r']).to_string());
    }
    out
}

/// Server-sent events: first the last `lines` lines of every source (event `line`, data = the
/// line, prefixed by `<label> | ` when `prefix`), then every new line as it is written; new
/// sources (a task started) are picked up; event `end` when `done` says so.
pub fn stream(mut sources: Sources, mut done: Done, lines: usize, prefix: bool) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let mut followed: Vec<Followed> = Vec::new();
        let mut first = true;
        loop {
            for (label, path) in sources() {
                if followed.iter().any(|f| f.path == path) {
                    continue;
                }
                let mut f = Followed { label, path, offset: 0, partial: String::new() };
                if first {
                    // start with the tail only
                    let text = std::fs::read_to_string(&f.path).unwrap_or_default();
                    let keep = tail(&text, lines);
                    f.offset = text.len() as u64;
                    for l in keep.lines() {
                        let data = if prefix { format!("{} | {l}", f.label) } else { l.to_string() };
                        if tx.send(Event::default().event("line").data(data)).await.is_err() {
                            return;
                        }
                    }
                }
                followed.push(f);
            }
            first = false;
            let mut any = false;
            for f in &mut followed {
                for l in read_new(f) {
                    any = true;
                    let data = if prefix { format!("{} | {l}", f.label) } else { l };
                    if tx.send(Event::default().event("line").data(data)).await.is_err() {
                        return;
                    }
                }
            }
            if !any && done() {
                let _ = tx.send(Event::default().event("end").data("")).await;
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let s = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb", 5), "a\nb\n");
        assert_eq!(tail("", 5), "");
        assert_eq!(tail("a\nb\n", 0), "");
    }

    #[test]
    fn read_new_returns_complete_lines_once() {
        let dir = tempfile_dir();
        let p = dir.join("log");
        std::fs::write(&p, "one\ntw").unwrap();
        let mut f = Followed { label: "x".into(), path: p.clone(), offset: 0, partial: String::new() };
        assert_eq!(read_new(&mut f), vec!["one"]);
        assert!(read_new(&mut f).is_empty());
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"o\nthree\n").unwrap();
        assert_eq!(read_new(&mut f), vec!["two", "three"]);
        std::fs::write(&p, "new\n").unwrap();
        assert_eq!(read_new(&mut f), vec!["new"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("coalmine-follow-{}-{}", std::process::id(), coalmine_pipeline::now_ms()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
