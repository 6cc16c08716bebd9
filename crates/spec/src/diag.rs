//! Diagnostics: what is wrong in a file, where, and how to fix it, rendered like rustc's.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One problem in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file's name as given to the parser.
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file (e.g. it cannot be read).
    pub line: usize,
    /// 1-based column, in characters; 0 with `line` 0.
    pub column: usize,
    /// The field, as a path: `services.canary.tasks`, `steps[2].timeout`, `phases.build.commands`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The text of the line at `line`, for rendering.
    pub source_line: Option<String>,
    /// How many characters of `source_line` to underline (at least 1).
    pub width: usize,
}

impl Diagnostic {
    /// A problem at a byte range of `src`.
    pub fn at(
        file: &str,
        src: &str,
        span: Option<Range<usize>>,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let (line, column, source_line, width) = match span {
            Some(span) => {
                let (line, column, text, width) = locate(src, span);
                (line, column, Some(text), width)
            }
            None => (0, 0, None, 1),
        };
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            path: path.into(),
            message: message.into(),
            hint,
            source_line,
            width,
        }
    }

    /// A problem with the file as a whole.
    pub fn whole_file(file: &str, message: impl Into<String>, hint: Option<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_string(),
            line: 0,
            column: 0,
            path: String::new(),
            message: message.into(),
            hint,
            source_line: None,
            width: 1,
        }
    }

    /// A problem at a 1-based line and column of `src`.
    pub fn at_line_col(
        file: &str,
        src: &str,
        line: usize,
        column: usize,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let text = src.lines().nth(line.saturating_sub(1)).map(str::to_string);
        let width = text
            .as_deref()
            .map(|t| token_width(t, column.saturating_sub(1)))
            .unwrap_or(1);
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            path: path.into(),
            message: message.into(),
            hint,
            source_line: text,
            width,
        }
    }
}

/// The width of the token starting at character `col0` of `text` (up to white space, `:` or `=`).
fn token_width(text: &str, col0: usize) -> usize {
    let n = text
        .chars()
        .skip(col0)
        .take_while(|c| !c.is_whitespace() && *c != ':' && *c != '=')
        .count();
    n.max(1)
}

/// 1-based line and column (in characters) of a byte span, the line's text and the number of
/// characters to underline on that line.
pub(crate) fn locate(src: &str, span: Range<usize>) -> (usize, usize, String, usize) {
    let start = floor_char_boundary(src, span.start.min(src.len()));
    let end = floor_char_boundary(src, span.end.min(src.len()).max(start));
    let line_start = src[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = src[start..].find('\n').map(|i| start + i).unwrap_or(src.len());
    let line = src[..start].matches('\n').count() + 1;
    let column = src[line_start..start].chars().count() + 1;
    let text = src[line_start..line_end].trim_end_matches('\r').to_string();
    let width = src[start..end.min(line_end)].chars().count().max(1);
    (line, column, text, width)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        if self.line == 0 {
            write!(f, " --> {}", self.file)?;
        } else {
            let gutter = self.line.to_string().len();
            let pad = " ".repeat(gutter);
            write!(f, "{pad}--> {}:{}:{}", self.file, self.line, self.column)?;
            if let Some(text) = &self.source_line {
                writeln!(f)?;
                writeln!(f, "{pad} |")?;
                writeln!(f, "{} | {}", self.line, text)?;
                let indent: String = text
                    .chars()
                    .take(self.column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let carets = "^".repeat(self.width.max(1));
                write!(f, "{pad} | {indent}{carets}")?;
                if !self.path.is_empty() {
                    write!(f, " {}", self.path)?;
                }
            }
        }
        if let Some(hint) = &self.hint {
            writeln!(f)?;
            let pad = if self.line == 0 {
                String::new()
            } else {
                " ".repeat(self.line.to_string().len())
            };
            write!(f, "{pad} = help: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file, in the order of the file. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    /// Sort by position (line, then column), whole-file problems first.
    pub(crate) fn sort(&mut self) {
        self.0.sort_by_key(|d| (d.line, d.column));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            writeln!(f)?;
            writeln!(f)?;
            write!(f, "error: {} problems found", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + usize::from(word.len() > 6);
    candidates
        .into_iter()
        .map(|c| (levenshtein(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and transpositions of
/// neighbours (optimal string alignment), so `biuld` is one edit from `build`.
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        assert_eq!(did_you_mean("taks", ["tasks", "timeout"]), Some("tasks"));
        assert_eq!(did_you_mean("servics", ["source", "services"]), Some("services"));
        assert_eq!(did_you_mean("visibility_timout", ["visibility_timeout", "dlq"]), Some("visibility_timeout"));
        assert_eq!(did_you_mean("zzz", ["tasks", "timeout"]), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("biuld", "build"), 1);
        assert_eq!(did_you_mean("biuld", ["install", "pre_build", "build"]), Some("build"));
    }

    #[test]
    fn locates_spans_by_line_and_character() {
        let src = "a = 1\n[x]\ntasks = 0\n";
        let off = src.find('0').unwrap();
        let (line, col, text, width) = locate(src, off..off + 1);
        assert_eq!((line, col, text.as_str(), width), (3, 9, "tasks = 0", 1));
        let src = "é = \"ü\"\nb = 2";
        let off = src.find('2').unwrap();
        assert_eq!(locate(src, off..off + 1).0, 2);
        let off = src.find('"').unwrap();
        assert_eq!(locate(src, off..off + 4).1, 5);
    }

    #[test]
    fn renders_like_rustc() {
        let src = "app = \"x\"\n[services.canary]\ntasks = 0\n";
        let off = src.find('0').unwrap();
        let d = Diagnostic::at(
            "coalmine.toml",
            src,
            Some(off..off + 1),
            "services.canary.tasks",
            "a service needs at least one task",
            Some("set `tasks = 1` or more".into()),
        );
        let text = d.to_string();
        assert_eq!(
            text,
            "error: a service needs at least one task\n --> coalmine.toml:3:9\n  |\n3 | tasks = 0\n  |         ^ services.canary.tasks\n  = help: set `tasks = 1` or more"
        );
    }
}
