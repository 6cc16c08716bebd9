//! Every `--help` of the real binary, walked from the top: every command, argument and option
//! says what it is for.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coalmine");

fn help(path: &[String]) -> String {
    let out = Command::new(BIN).args(path).arg("--help").output().unwrap();
    assert!(out.status.success(), "coalmine {path:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of a section (`Commands:`, `Options:`, `Arguments:`) of a help text.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| l.trim_end() != name);
    lines.next();
    lines.take_while(|l| l.starts_with(' ') || l.is_empty()).filter(|l| !l.trim().is_empty()).collect()
}

/// Entries of a section without a description (on their line or the next, indented deeper).
fn undescribed(lines: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let indent = l.len() - l.trim_start().len();
        let t = l.trim_start();
        // `- new: ...` lines list an option's possible values with their own descriptions.
        let is_entry = (indent <= 2 || t.starts_with('-')) && !t.starts_with("- ");
        if !is_entry {
            continue;
        }
        let parts: Vec<&str> = t.split("  ").filter(|p| !p.trim().is_empty()).collect();
        // `[default: 20]` alone is not a description.
        let parts: Vec<&str> = if parts.len() >= 2 && without_brackets(&parts[1..].join(" ")).trim().is_empty() { parts[..1].to_vec() } else { parts };
        let next_is_text = lines.get(i + 1).is_some_and(|n| {
            let ni = n.len() - n.trim_start().len();
            ni > indent + 2 && !n.trim_start().starts_with('-')
        });
        if parts.len() < 2 && !next_is_text {
            bad.push(t.to_string());
        }
    }
    bad
}

fn without_brackets(s: &str) -> String {
    let mut depth = 0;
    s.chars()
        .filter(|&c| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

#[test]
fn every_help_describes_every_command_argument_and_option() {
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    let mut problems = Vec::new();
    while let Some(path) = todo.pop() {
        let text = help(&path);
        seen += 1;
        for name in ["Options:", "Arguments:", "Commands:"] {
            for entry in undescribed(&section(&text, name)) {
                problems.push(format!("coalmine {} --help: `{entry}` has no description", path.join(" ")));
            }
        }
        for word in ["rejectd", "approved d", "(s) times", "TODO"] {
            if text.contains(word) {
                problems.push(format!("coalmine {} --help says `{word}`", path.join(" ")));
            }
        }
        for l in section(&text, "Commands:") {
            let cmd = l.split_whitespace().next().unwrap().trim_end_matches(',');
            if cmd != "help" {
                let mut sub = path.clone();
                sub.push(cmd.to_string());
                todo.push(sub);
            }
        }
    }
    assert!(seen >= 15, "walked only {seen} help pages");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // `-f` is `--follow` where there is something to follow, never `--file`.
    let logs = help(&["logs".into()]);
    assert!(logs.contains("-f, --follow"), "{logs}");
    for path in [vec!["up".to_string()], vec!["status".into()], vec!["validate".into()]] {
        let text = help(&path);
        assert!(!text.contains("-f, --file"), "coalmine {path:?}: {text}");
    }
}
