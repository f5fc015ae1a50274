//! Telling machine opens and clicks from people's, for providers that do not flag them.
//!
//! Deliberately small and conservative: a false "machine" hides a real reader from reports, so
//! only user agents that no person's mail client or browser sends are flagged. Providers that
//! detect bots themselves (SendGrid `sg_machine_open`, Mailgun `client-info.bot`) are trusted
//! first. Not done: matching Apple's proxy IP ranges, which change and are not published in a
//! stable form.

/// Lowercase fragments that only automated clients put in a user agent: crawlers, link scanners
/// of mail security gateways, headless browsers and HTTP libraries.
const MACHINE_MARKERS: &[&str] = &[
    "bot/",
    "bot;",
    "crawler",
    "spider",
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "apache-httpclient",
    "barracuda",
    "proofpoint",
    "mimecast",
];

/// Whether `user_agent` is an automated fetch rather than a person.
///
/// Flags Apple Mail Privacy Protection, whose proxy prefetches images on delivery with the bare
/// user agent `Mozilla/5.0` (no real browser sends only that), and agents carrying one of
/// the markers of crawlers, mail-gateway link scanners, headless browsers and HTTP libraries. An
/// empty user agent is unknown, not machine: some providers omit it.
pub fn is_machine_user_agent(user_agent: &str) -> bool {
    let ua = user_agent.trim();
    if ua == "Mozilla/5.0" {
        return true;
    }
    let lower = ua.to_ascii_lowercase();
    MACHINE_MARKERS.iter().any(|m| lower.contains(m)) || lower.ends_with("bot")
}

#[cfg(test)]
mod tests {
    use super::is_machine_user_agent;

    #[test]
    fn apple_privacy_proxy_and_scanners_are_machines() {
        assert!(is_machine_user_agent("Mozilla/5.0"));
        assert!(is_machine_user_agent(" Mozilla/5.0 "));
        assert!(is_machine_user_agent(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
        ));
        assert!(is_machine_user_agent(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36"
        ));
        assert!(is_machine_user_agent("python-requests/2.31.0"));
        assert!(is_machine_user_agent("curl/8.5.0"));
        assert!(is_machine_user_agent("Barracuda Sentinel (EE)"));
        assert!(is_machine_user_agent("SomeScannerBot"));
    }

    #[test]
    fn people_are_not_machines() {
        for ua in [
            "",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) AppleWebKit/603.3.8 (KHTML, like Gecko) Mobile/14G60",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/35.0.1916.153 Safari/537.36",
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/90.0 Mobile Safari/537.36",
            "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)",
        ] {
            assert!(!is_machine_user_agent(ua), "{ua}");
        }
    }
}
