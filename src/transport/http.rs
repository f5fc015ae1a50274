//! Plumbing shared by the REST transports: one pooled HTTP client per transport, endpoint URLs
//! under a configurable base (regions, tests), and the mapping of network failures and HTTP
//! statuses onto [`SendError`] classes before each provider refines them with its own error
//! codes.
//!
//! The class of a failure follows what retrying can achieve:
//! - no connection could be made → transient: nothing reached the provider;
//! - the request went out but no answer came back (timeout, reset) → the provider may have
//!   accepted the message, so the outcome is unknown (`after_data`), unless the provider honours
//!   an idempotency key, where retrying with the same key is safe and the failure is transient;
//! - `429`, `408` and `5xx` → transient, honouring `Retry-After`;
//! - `401`/`403`/`404`/`405` → transient: a bad key, an unverified sender or a wrong `base_url`
//!   is our setup, not the message's fault (the SMTP transport treats AUTH the same way), so the
//!   message waits — or fails over — until the operator fixes it;
//! - any other `4xx` → permanent.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Url};
use serde::de::DeserializeOwned;

use super::{ErrorClass, SendError};
use crate::clock::Clock;

/// Parked keep-alive connections older than this are closed rather than reused; providers' load
/// balancers drop idle connections after about a minute.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest provider error text kept in a [`SendError`] message.
const MAX_DETAIL: usize = 500;

/// Settings every REST transport has.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Scheme, host and optional path prefix the API paths are appended to.
    pub base_url: String,
    /// Limit for connecting and, separately, for the whole request and response.
    pub timeout: Duration,
}

/// A REST transport configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// `base_url` is not an absolute http(s) URL.
    #[error("invalid base_url {url:?}: {reason}")]
    BaseUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `timeout` was zero.
    #[error("timeout must be greater than zero")]
    ZeroTimeout,
    /// The HTTP client (TLS setup) could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// A provider-specific setting is unusable.
    #[error("{0}")]
    Setting(String),
}

/// The HTTP side of one REST transport. Clones share the connection pool.
#[derive(Clone)]
pub(crate) struct Api {
    /// The transport's configured name (for messages).
    pub(crate) name: String,
    /// The provider, as in the `kind` key (for messages).
    pub(crate) provider: &'static str,
    client: reqwest::Client,
    base: String,
    clock: Clock,
    /// Whether the provider de-duplicates retries of the same message (idempotency key), which
    /// makes a request without an answer safe to retry.
    idempotent: bool,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("base", &self.base)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

/// A provider's answer, read completely.
pub(crate) struct Reply {
    /// HTTP status code.
    pub(crate) status: u16,
    /// Response headers.
    pub(crate) headers: HeaderMap,
    /// Response body (empty when it could not be read).
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// 2xx.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON of type `T`, if it is.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value, if present and readable.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text for error messages, shortened.
    pub(crate) fn text(&self) -> String {
        shorten(&String::from_utf8_lossy(&self.body))
    }
}

impl Api {
    /// Builds the client. `idempotent` says whether the provider de-duplicates retries.
    pub(crate) fn new(
        name: &str,
        provider: &'static str,
        settings: &HttpSettings,
        clock: Clock,
        idempotent: bool,
    ) -> Result<Api, HttpConfigError> {
        if settings.timeout.is_zero() {
            return Err(HttpConfigError::ZeroTimeout);
        }
        let bad_url = |reason: &str| HttpConfigError::BaseUrl {
            url: settings.base_url.clone(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(&settings.base_url).map_err(|e| bad_url(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(bad_url("expected an http:// or https:// URL with a host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad_url("a query or fragment is not allowed"));
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| HttpConfigError::Client(e.to_string()))?;
        Ok(Api {
            name: name.to_owned(),
            provider,
            client,
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            clock,
            idempotent,
        })
    }

    /// `base_url` followed by `path` (which starts with `/`).
    pub(crate) fn endpoint(&self, path: &str) -> Result<Url, HttpConfigError> {
        let joined = format!("{}{path}", self.base);
        Url::parse(&joined).map_err(|e| HttpConfigError::BaseUrl {
            url: joined,
            reason: e.to_string(),
        })
    }

    /// A POST request to `url` on the shared client.
    pub(crate) fn post(&self, url: &Url) -> RequestBuilder {
        self.client.post(url.clone())
    }

    /// The current time by the injected clock (request signing, `Retry-After` dates, quota
    /// resets).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Sends the request and reads the whole answer. Only failures without an HTTP status are
    /// errors here; statuses are for the caller to classify.
    pub(crate) async fn execute(&self, request: RequestBuilder) -> Result<Reply, SendError> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Err(self.network_error(&err)),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            // The status is what counts; a 2xx whose body got lost still means "accepted".
            Err(err) => {
                tracing::warn!(
                    transport = %self.name,
                    status,
                    error = %err,
                    "could not read the provider's response body"
                );
                Vec::new()
            }
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn network_error(&self, err: &reqwest::Error) -> SendError {
        let cause = error_chain(err);
        if err.is_connect() || err.is_builder() {
            // Nothing reached the provider (a builder error means the request never left).
            return SendError::transient(format!(
                "{} {}: cannot reach {}: {cause}",
                self.provider, self.name, self.base
            ));
        }
        let what = if err.is_timeout() {
            "no answer in time"
        } else {
            "the connection failed"
        };
        if self.idempotent {
            SendError::transient(format!(
                "{} {}: {what} ({cause}); the retry carries the same idempotency key",
                self.provider, self.name
            ))
        } else {
            SendError {
                after_data: true,
                ..SendError::transient(format!(
                    "{} {}: {what} after the request was sent ({cause}); the provider may have \
                     accepted the message, so the delivery outcome is unknown",
                    self.provider, self.name
                ))
            }
        }
    }

    /// The generic class of a non-2xx reply (see the module docs); providers refine it.
    /// `detail` is the provider's explanation.
    pub(crate) fn rejection(&self, reply: &Reply, detail: &str) -> SendError {
        let status = reply.status;
        let transient = matches!(status, 401 | 403 | 404 | 405 | 408 | 429) || status >= 500;
        let hint = match status {
            401 | 403 => " (check the API key and the sender's verification)",
            404 | 405 => " (check base_url)",
            _ => "",
        };
        SendError {
            class: if transient {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            },
            code: Some(status),
            enhanced: None,
            message: format!(
                "{} {}: HTTP {status}: {}{hint}",
                self.provider,
                self.name,
                shorten(detail)
            ),
            retry_after: transient
                .then(|| retry_after(&reply.headers, self.now()))
                .flatten(),
            after_data: false,
            deferred_until: None,
        }
    }
}

/// Marks a rejection as a problem with the recipient address, so the address gets suppressed:
/// `5.1.1` (the mailbox is unknown or the provider has it on its inactive list) or `5.1.3`
/// (the address is malformed), as an SMTP server would have said.
pub(crate) fn recipient_rejected(mut error: SendError, enhanced: &str) -> SendError {
    error.class = ErrorClass::Permanent;
    error.enhanced = Some(enhanced.to_owned());
    error.retry_after = None;
    error
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), relative to `now`.
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok()
}

/// Joins an error and its sources: reqwest's own message is often just "error sending request".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(120)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sat, 28 Nov 2026 10:01:30 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(90)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sat, 28 Nov 2026 09:00:00 GMT"),
        );
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn long_details_are_shortened() {
        let long = "x".repeat(MAX_DETAIL + 10);
        assert_eq!(shorten(&long).chars().count(), MAX_DETAIL + 1);
        assert_eq!(shorten(" short "), "short");
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
