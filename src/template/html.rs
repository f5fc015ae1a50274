//! Post-processing of rendered output: the hidden preheader, the plain-text
//! fallback derived from HTML, and single-line subjects.

/// Width of the plain-text part derived from HTML; 78 is the RFC 5322 line-length advice.
const TEXT_WIDTH: usize = 78;

/// Inserts `preheader` as a hidden preview div right after the opening `<body>` tag,
/// or at the very start when the document has no `<body>`. The preheader was rendered
/// without escaping (it is plain text), so it is escaped here.
pub(super) fn inject_preheader(html: &str, preheader: &str) -> String {
    // The styles hide the div in every major client while keeping it first in the
    // text that inbox previews read.
    let div = format!(
        "<div style=\"display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;\
         opacity:0;overflow:hidden;mso-hide:all;\">{}</div>",
        handlebars::html_escape(preheader)
    );
    let at = body_content_start(html).unwrap_or(0);
    let mut out = String::with_capacity(html.len() + div.len());
    out.push_str(&html[..at]);
    out.push_str(&div);
    out.push_str(&html[at..]);
    out
}

/// Byte offset just after the `>` of the first `<body …>` tag, skipping `>` inside
/// quoted attribute values.
fn body_content_start(html: &str) -> Option<usize> {
    // ASCII lower-casing keeps byte offsets identical to `html`.
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut search = 0;
    while let Some(found) = lower[search..].find("<body") {
        let tag = search + found;
        let after_name = tag + "<body".len();
        match bytes.get(after_name) {
            Some(b'>' | b'/') | None => return close_of_tag(bytes, after_name),
            Some(b) if b.is_ascii_whitespace() => return close_of_tag(bytes, after_name),
            // `<bodyguard>` is not a body tag; keep looking.
            Some(_) => search = after_name,
        }
    }
    None
}

fn close_of_tag(bytes: &[u8], from: usize) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b'>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The `text/plain` alternative derived from the HTML (layout included): links become
/// numbered footnotes, layout tables are flattened instead of drawn with borders.
pub(super) fn html_to_text(html: &str) -> Result<String, html2text::Error> {
    let text = html2text::config::plain()
        // Email layouts are nested tables; drawing them would frame the message in
        // box-drawing characters.
        .no_table_borders()
        .no_link_wrapping()
        // Never fail because a deeply nested table does not fit 78 columns.
        .allow_width_overflow()
        .string_from_read(html.as_bytes(), TEXT_WIDTH)?;
    Ok(tidy_text(&text))
}

/// Drops the padding html2text puts at the end of table lines and collapses runs of
/// blank lines left behind by spacer cells.
fn tidy_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// Collapses a rendered subject (or preheader) to one trimmed line: header values
/// cannot contain newlines, and templates often wrap long subjects.
pub(super) fn single_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preheader_goes_after_body_tag() {
        let html = "<html><BODY class=\"a>b\" style='x'><p>hi</p></BODY></html>";
        let out = inject_preheader(html, "Tom & Jerry");
        let expected_prefix = "<html><BODY class=\"a>b\" style='x'><div style=";
        assert!(out.starts_with(expected_prefix), "{out}");
        assert!(out.contains(">Tom &amp; Jerry</div><p>hi</p>"), "{out}");
    }

    #[test]
    fn preheader_without_body_goes_first() {
        let out = inject_preheader("<bodyguard><p>hi</p>", "pre");
        assert!(out.starts_with("<div style="), "{out}");
        assert!(out.ends_with(">pre</div><bodyguard><p>hi</p>"), "{out}");
        // An unterminated tag is not a place to insert into either.
        assert!(inject_preheader("<body", "p").starts_with("<div"));
    }

    #[test]
    fn text_from_layout_tables() {
        let html = "<html><head><title>T</title></head><body><table width=\"100%\"><tr><td>\
                    <table><tr><td><h1>Hi Ana</h1><p>Tom &amp; Jerry</p>\
                    <a href=\"https://shop.example/cart\">Return to cart</a></td></tr></table>\
                    </td></tr></table></body></html>";
        let text = html_to_text(html).unwrap();
        assert!(text.contains("Hi Ana"), "{text}");
        assert!(text.contains("Tom & Jerry"), "{text}");
        assert!(text.contains("https://shop.example/cart"), "{text}");
        assert!(!text.contains('─'), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
        assert!(!text.contains("\n\n\n"), "{text:?}");
    }

    #[test]
    fn subjects_are_one_line() {
        assert_eq!(
            single_line("  Hello\n  Ana,\r\n\tcome back  "),
            "Hello Ana, come back"
        );
    }
}
