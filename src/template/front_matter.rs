//! YAML front matter: splitting a template file into its `---`-delimited header and
//! handlebars body, and parsing the header with positions reported relative to the
//! whole file (the YAML parser only sees the lines between the fences).

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A value from the front matter together with where it starts in the file.
#[derive(Debug, Clone)]
pub(super) struct Located<T> {
    pub value: T,
    /// 1-based line in the whole file.
    pub line: usize,
    /// 1-based column in the whole file.
    pub column: usize,
    /// Where a handlebars string inside this value starts: line 1 / column 1 of the
    /// value's own text maps to `content_line` / `content_column` of the file.
    pub content_line: usize,
    pub content_column: usize,
}

/// The parsed front matter. Every key is optional here; which keys a file must
/// or may have depends on the kind of file and is checked by the caller.
#[derive(Debug, Default)]
pub(super) struct FrontMatter {
    pub subject: Option<Located<String>>,
    pub preheader: Option<Located<String>>,
    pub from: Option<Located<String>>,
    pub layout: Option<Located<String>>,
    pub sample: Option<Located<serde_json::Value>>,
}

impl FrontMatter {
    /// The header keys (everything but `sample`) that are set, with their line and
    /// column; a `.txt.hbs` front matter may not carry any of them.
    pub fn header_keys(&self) -> Vec<(&'static str, usize, usize)> {
        let mut keys = Vec::new();
        if let Some(v) = &self.subject {
            keys.push(("subject", v.line, v.column));
        }
        if let Some(v) = &self.preheader {
            keys.push(("preheader", v.line, v.column));
        }
        if let Some(v) = &self.from {
            keys.push(("from", v.line, v.column));
        }
        if let Some(v) = &self.layout {
            keys.push(("layout", v.line, v.column));
        }
        keys
    }
}

/// A file split at its front matter.
#[derive(Debug)]
pub(super) struct Split<'a> {
    /// `None` when the file does not start with a `---` line.
    pub front_matter: Option<FrontMatter>,
    /// The handlebars source after the closing `---` line.
    pub body: &'a str,
    /// Number of file lines before the body: body line `n` is file line `n + body_line_offset`.
    pub body_line_offset: usize,
}

/// A front-matter problem at a file-relative position.
#[derive(Debug)]
pub(super) struct FrontMatterError {
    pub line: usize,
    pub column: Option<usize>,
    pub message: String,
}

/// The on-disk shape of the front matter. `deny_unknown_fields` turns typos such as
/// `subjet:` into errors that point at the offending line.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    subject: Option<Spanned<String>>,
    preheader: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    layout: Option<Spanned<String>>,
    sample: Option<Spanned<serde_json::Value>>,
}

/// Splits `source` into front matter and body and parses the front matter.
pub(super) fn split(source: &str) -> Result<Split<'_>, FrontMatterError> {
    // Editors on Windows like to add a byte-order mark; it must not hide the fence.
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut lines = source.split_inclusive('\n');
    let is_fence = |line: &str| line.trim_end() == "---";

    let Some(first) = lines.next().filter(|line| is_fence(line)) else {
        return Ok(Split {
            front_matter: None,
            body: source,
            body_line_offset: 0,
        });
    };

    let yaml_start = first.len();
    let mut offset = yaml_start;
    for (line_no, line) in (2..).zip(lines) {
        if is_fence(line) {
            let yaml = &source[yaml_start..offset];
            let body = &source[offset + line.len()..];
            return Ok(Split {
                front_matter: Some(parse(yaml)?),
                body,
                body_line_offset: line_no,
            });
        }
        offset += line.len();
    }
    Err(FrontMatterError {
        line: 1,
        column: Some(1),
        message: "front matter is not closed: add a `---` line after the YAML header".to_owned(),
    })
}

/// YAML line `n` is file line `n + 1`: the opening `---` occupies line 1.
const YAML_LINE_OFFSET: usize = 1;

fn parse(yaml: &str) -> Result<FrontMatter, FrontMatterError> {
    let raw: Raw = serde_saphyr::from_str(yaml).map_err(|err| {
        let err = err.without_snippet();
        let location = err.location();
        let mut message = err.to_string();
        // The parser appends its own (YAML-relative) position; we report a file-relative one.
        if let Some(loc) = location {
            let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        FrontMatterError {
            line: location.map_or(1, |loc| to_usize(loc.line()) + YAML_LINE_OFFSET),
            column: location.map(|loc| to_usize(loc.column())),
            message: format!("front matter: {message}"),
        }
    })?;

    let sample = raw.sample.map(|s| locate(yaml, s));
    if let Some(sample) = &sample
        && !sample.value.is_object()
    {
        return Err(FrontMatterError {
            line: sample.line,
            column: Some(sample.column),
            message: "front matter: `sample` must be a mapping, e.g. \
                      `sample: { event: { properties: { items: [] } } }`"
                .to_owned(),
        });
    }

    Ok(FrontMatter {
        subject: raw.subject.map(|s| locate(yaml, s)),
        preheader: raw.preheader.map(|s| locate(yaml, s)),
        from: raw.from.map(|s| locate(yaml, s)),
        layout: raw.layout.map(|s| locate(yaml, s)),
        sample,
    })
}

fn locate<T>(yaml: &str, spanned: Spanned<T>) -> Located<T> {
    let yaml_line = to_usize(spanned.referenced.line()).max(1);
    let column = to_usize(spanned.referenced.column()).max(1);
    let line = yaml_line + YAML_LINE_OFFSET;
    let first_char = yaml
        .lines()
        .nth(yaml_line - 1)
        .and_then(|text| text.chars().nth(column - 1));
    // Map the value's own line 1 / column 1 onto the file so handlebars errors inside a
    // subject or preheader point at the right spot: quoted scalars start one column
    // after the quote, block scalars (`|`, `>`) on the next line.
    let (content_line, content_column) = match first_char {
        Some('"' | '\'') => (line, column + 1),
        Some('|' | '>') => (line + 1, 1),
        _ => (line, column),
    };
    Located {
        value: spanned.value,
        line,
        column,
        content_line,
        content_column,
    }
}

/// Positions come as `u64`; a template file never has more lines than `usize` holds,
/// and saturating keeps this total rather than panicking.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_front_matter_is_all_body() {
        let split = split("<p>hi</p>\n").unwrap();
        assert!(split.front_matter.is_none());
        assert_eq!(split.body, "<p>hi</p>\n");
        assert_eq!(split.body_line_offset, 0);
    }

    #[test]
    fn splits_and_counts_lines() {
        let src = "---\r\nsubject: \"Hi {{x}}\"\r\nlayout: base\r\n---\r\n<h1>x</h1>\n";
        let split = split(src).unwrap();
        let fm = split.front_matter.unwrap();
        assert_eq!(split.body, "<h1>x</h1>\n");
        assert_eq!(split.body_line_offset, 4);
        let subject = fm.subject.unwrap();
        assert_eq!(subject.value, "Hi {{x}}");
        assert_eq!((subject.line, subject.column), (2, 10));
        assert_eq!((subject.content_line, subject.content_column), (2, 11));
        assert_eq!(fm.layout.unwrap().line, 3);
    }

    #[test]
    fn bom_and_empty_header() {
        let split = split("\u{feff}---\n# nothing yet\n---\nbody").unwrap();
        let fm = split.front_matter.unwrap();
        assert!(fm.subject.is_none() && fm.sample.is_none());
        assert_eq!(split.body, "body");
    }

    #[test]
    fn unclosed_front_matter() {
        let err = split("---\nsubject: x\n<p>").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("not closed"), "{}", err.message);
    }

    #[test]
    fn unknown_key_is_file_relative() {
        let err = split("---\nsubject: x\nsubjct: y\n---\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, Some(1)));
        assert!(
            err.message.contains("unknown field `subjct`"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("at line"), "{}", err.message);
    }

    #[test]
    fn sample_must_be_a_mapping() {
        let err = split("---\nsubject: x\nsample: 3\n---\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("mapping"), "{}", err.message);
    }

    #[test]
    fn block_scalar_content_starts_next_line() {
        let fm = split("---\nsubject: >-\n  Hello\n---\n")
            .unwrap()
            .front_matter
            .unwrap();
        let subject = fm.subject.unwrap();
        assert_eq!(subject.value, "Hello");
        assert_eq!(subject.content_line, 3);
    }
}
