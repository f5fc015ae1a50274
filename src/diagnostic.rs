//! Diagnostics that point at a place in a user's file: `workflows/cart.yaml:7:5: message`,
//! followed by the offending source line with a caret, in the style of rustc.
//!
//! Shared by everything that reads user-written project files (workflows, segments,
//! templates), so `herald validate` prints one uniform format and editors can jump to the
//! reported `file:line:column`.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a user's file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// The file the problem is in, as the user would name it (e.g. `workflows/cart.yaml`).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based character column; 0 when unknown.
    pub column: usize,
    /// What is wrong and, where possible, what was expected.
    pub message: String,
    /// The offending source line with a caret under `column`, ready to print.
    pub snippet: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without a snippet; see [`Diagnostic::with_source`] to add one.
    pub fn new(
        file: impl Into<PathBuf>,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            line,
            column,
            message: message.into(),
            snippet: None,
        }
    }

    /// Fills `snippet` from the text of the file the diagnostic refers to. Leaves it empty
    /// when the line is unknown (0) or beyond the end of `source`.
    #[must_use]
    pub fn with_source(mut self, source: &str) -> Self {
        self.snippet = snippet(source, self.line, self.column);
        self
    }
}

/// Renders one source line rustc-style:
/// ```text
///     |
///   7 |   delay: 1h
///     |   ^
/// ```
fn snippet(source: &str, line: usize, column: usize) -> Option<String> {
    let text = source.lines().nth(line.checked_sub(1)?)?;
    let number = line.to_string();
    let width = number.len() + 2;
    let blank = " ".repeat(width);
    // Copy tabs from the source line into the padding so the caret lines up however the
    // terminal expands them.
    let padding: String = text
        .chars()
        .take(column.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    Some(format!(
        "{blank} |\n{number:>width$} | {text}\n{blank} | {padding}^"
    ))
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_snippet() {
        let source = "name: cart\nsteps:\n  - delay: 1h\n";
        let d = Diagnostic::new("workflows/cart.yaml", 3, 5, "unknown field `delay`")
            .with_source(source);
        assert_eq!(
            d.to_string(),
            "workflows/cart.yaml:3:5: unknown field `delay`\n    |\n  3 |   - delay: 1h\n    |     ^"
        );
    }

    #[test]
    fn caret_follows_tabs_and_wide_line_numbers() {
        let mut source = "x\n".repeat(99);
        source.push_str("\tkey: value\n");
        let d = Diagnostic::new("f.yaml", 100, 2, "bad").with_source(&source);
        assert_eq!(
            d.snippet.as_deref(),
            Some("      |\n  100 | \tkey: value\n      | \t^")
        );
    }

    #[test]
    fn no_snippet_for_unknown_or_missing_lines() {
        let d = Diagnostic::new("f.yaml", 0, 0, "cannot read").with_source("a: 1\n");
        assert_eq!(d.snippet, None);
        assert_eq!(d.to_string(), "f.yaml: cannot read");
        let d = Diagnostic::new("f.yaml", 5, 1, "past the end").with_source("a: 1\n");
        assert_eq!(d.snippet, None);
        assert_eq!(d.to_string(), "f.yaml:5:1: past the end");
        assert_eq!(
            Diagnostic::new("f.yaml", 2, 0, "m").to_string(),
            "f.yaml:2: m"
        );
    }
}
