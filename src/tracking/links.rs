//! Rewrites a rendered HTML body for tracking: every `http(s)` link becomes a signed redirect
//! through `/t/c/{token}`, and an open pixel `/t/o/{token}` goes before `</body>`. The token
//! carries the message id and the original URL under an HMAC, so the redirect cannot be
//! pointed anywhere else (no open redirect) and needs no lookup.

use super::Tokens;

pub const OPEN: &str = "open";
pub const CLICK: &str = "click";

/// The click-tracking URL for `url` in message `message_id`.
pub fn click_url(tokens: &Tokens, base: &str, message_id: &str, url: &str) -> String {
    format!(
        "{base}/t/c/{}",
        tokens.sign(CLICK, &format!("{message_id}\n{url}"))
    )
}

/// Rewrites links and adds the open pixel. Links equal to one in `keep` (the unsubscribe link)
/// and non-http links (`mailto:`, anchors) are left alone.
pub fn instrument(
    html: &str,
    tokens: &Tokens,
    base: &str,
    message_id: &str,
    keep: &[&str],
) -> String {
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    while let Some(pos) = find_href(rest) {
        let (before, after) = rest.split_at(pos.value_start);
        out.push_str(before);
        let Some(end) = after.find(pos.quote) else {
            rest = after;
            break;
        };
        let raw = &after[..end];
        let url = raw.replace("&amp;", "&");
        let trackable = (url.starts_with("http://") || url.starts_with("https://"))
            && !keep.contains(&url.as_str());
        if trackable {
            out.push_str(&click_url(tokens, base, message_id, &url));
        } else {
            out.push_str(raw);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    let pixel = format!(
        "<img src=\"{base}/t/o/{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\">",
        tokens.sign(OPEN, message_id)
    );
    match out.rfind("</body>") {
        Some(at) => out.insert_str(at, &pixel),
        None => out.push_str(&pixel),
    }
    out
}

struct Href {
    /// Byte offset where the attribute value starts (after the quote).
    value_start: usize,
    quote: char,
}

/// The next `href="…"` or `href='…'` attribute (case-insensitive name).
fn find_href(s: &str) -> Option<Href> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("href") {
        let at = from + i;
        let tail = &s[at + 4..];
        let trimmed = tail.trim_start();
        if let Some(after_eq) = trimmed.strip_prefix('=') {
            let value = after_eq.trim_start();
            if let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') {
                let value_start = s.len() - value.len() + 1;
                return Some(Href { value_start, quote });
            }
        }
        from = at + 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_signed_redirects_and_the_pixel_is_added() {
        let tokens = Tokens::new("k").unwrap();
        let html = "<html><body><a href=\"https://shop.example/cart?a=1&amp;b=2\">Cart</a> <a href='mailto:x@example.com'>m</a> <A HREF=\"https://u.example/u/1\">unsub</A></body></html>";
        let out = instrument(
            html,
            &tokens,
            "https://h.example",
            "m-1",
            &["https://u.example/u/1"],
        );
        assert!(out.contains("href=\"https://h.example/t/c/"), "{out}");
        assert!(out.contains("href='mailto:x@example.com'"));
        assert!(out.contains("HREF=\"https://u.example/u/1\""));
        assert!(out.contains("/t/o/") && out.find("/t/o/") < out.find("</body>"));
        let token = out
            .split("/t/c/")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(
            tokens.verify(CLICK, token).as_deref(),
            Some("m-1\nhttps://shop.example/cart?a=1&b=2")
        );
    }

    #[test]
    fn odd_markup_does_not_break() {
        let tokens = Tokens::new("k").unwrap();
        for html in [
            "href=",
            "<a href=\"unterminated",
            "href = 'x'",
            "",
            "<p>hrefless</p>",
        ] {
            let _ = instrument(html, &tokens, "b", "m", &[]);
        }
    }
}
