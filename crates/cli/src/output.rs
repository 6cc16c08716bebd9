//! Terminal output helpers: colours only on a terminal, times, durations.

use std::io::IsTerminal;

pub fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn paint(s: &str, code: &str) -> String {
    if color() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// `HH:MM:SS` (UTC) of a Unix-milliseconds time.
pub fn clock(ms: i64) -> String {
    let s = (ms / 1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A duration in milliseconds for people: `850ms`, `4.2s`, `3m10s`.
pub fn duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// The colour of a status word.
pub fn status_color(status: &str) -> &'static str {
    match status {
        "Succeeded" | "Pass" | "COMPLETED" => "32",
        "Failed" | "RolledBack" | "Fail" | "FAILED" | "Rejected" => "31",
        "InProgress" | "IN_PROGRESS" => "36",
        "Superseded" | "Stopped" | "Inconclusive" => "33",
        _ => "2",
    }
}
