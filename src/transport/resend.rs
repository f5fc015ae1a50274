//! The `resend` transport: Resend's `POST /emails` with an idempotency key.
//!
//! Request and errors as documented at resend.com/docs (api-reference/emails/send-email,
//! api-reference/errors, dashboard/emails/idempotency-keys): `Authorization: Bearer <key>`;
//! custom headers in `headers`; `tags` (`{name, value}`) come back in webhooks; the
//! `Idempotency-Key` header — our message id — makes Resend answer a repeated request with the
//! original response for 24 hours instead of sending again, so a request that got no answer is
//! safe to retry. Success is `200` with `{"id"}`; errors are `{"statusCode", "name",
//! "message"}`: `429` `rate_limit_exceeded` is transient, `429` `daily_quota_exceeded` /
//! `monthly_quota_exceeded` defer the message until the quota resets (midnight UTC / the first
//! of the month, or later if `Retry-After` says so), a validation error about `to` is an invalid
//! recipient, and `409` `invalid_idempotent_request` means a request with this message's key was
//! already processed with a different body, so the message may already be out.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Api, HttpConfigError, HttpSettings, Reply, recipient_rejected, retry_after};
use super::{ErrorClass, METADATA_KEY, Receipt, SendError};
use crate::clock::Clock;
use crate::config::Secret;
use crate::message::BuiltMessage;

/// Resend's API.
pub const DEFAULT_BASE_URL: &str = "https://api.resend.com";

/// Settings of a Resend transport.
#[derive(Debug, Clone)]
pub struct ResendConfig {
    /// API key with sending access.
    pub api_key: Secret,
    /// Base URL and timeout.
    pub http: HttpSettings,
}

/// Sends through Resend. Clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Resend {
    api: Api,
    endpoint: Url,
    api_key: Secret,
}

#[derive(Deserialize)]
struct Answer {
    id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

impl Resend {
    /// Validates the settings; nothing is sent until the first message.
    pub fn new(name: &str, config: ResendConfig, clock: Clock) -> Result<Resend, HttpConfigError> {
        let api = Api::new(name, "resend", &config.http, clock, true)?;
        Ok(Resend {
            endpoint: api.endpoint("/emails")?,
            api,
            api_key: config.api_key,
        })
    }

    /// The configured transport name.
    pub fn name(&self) -> &str {
        &self.api.name
    }

    /// Sends one message.
    pub async fn send(&self, msg: &BuiltMessage) -> Result<Receipt, SendError> {
        let request = self
            .api
            .post(&self.endpoint)
            .bearer_auth(self.api_key.expose())
            .header("Idempotency-Key", &msg.message_id)
            .json(&body(msg));
        let reply = self.api.execute(request).await?;
        if reply.is_success() {
            return Ok(Receipt {
                provider_message_id: reply.json::<Answer>().and_then(|a| a.id),
                response: format!("{} OK", reply.status),
            });
        }
        Err(self.rejection(&reply))
    }

    fn rejection(&self, reply: &Reply) -> SendError {
        let body = reply.json::<ErrorBody>();
        let (name, message) = body
            .map(|b| (b.name, b.message))
            .unwrap_or_else(|| (String::new(), reply.text()));
        let error = self.api.rejection(reply, &format!("{name}: {message}"));
        let now = self.api.now();
        let reset = match name.as_str() {
            "daily_quota_exceeded" => Some(next_midnight(now)),
            "monthly_quota_exceeded" => Some(next_month(now)),
            _ => None,
        };
        if let Some(reset) = reset {
            let hinted = retry_after(&reply.headers, now)
                .and_then(|d| TimeDelta::from_std(d).ok())
                .map(|d| now + d);
            return SendError {
                class: ErrorClass::Transient,
                retry_after: None,
                deferred_until: Some(hinted.map_or(reset, |at| at.max(reset))),
                ..error
            };
        }
        match name.as_str() {
            // The key was already used with another body: an earlier attempt went through.
            "invalid_idempotent_request" => SendError {
                class: ErrorClass::Transient,
                after_data: true,
                ..error
            },
            "concurrent_idempotent_requests" => SendError {
                class: ErrorClass::Transient,
                ..error
            },
            "validation_error" | "invalid_parameter" | "missing_required_field"
                if matches!(reply.status, 400 | 422) && message.contains("`to`") =>
            {
                recipient_rejected(error, "5.1.3")
            }
            _ => error,
        }
    }
}

/// The next 00:00 UTC after `now`, when Resend's daily quota resets.
fn next_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive() + TimeDelta::days(1);
    tomorrow.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// The first day of the next month, 00:00 UTC, when the monthly quota resets.
fn next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = match now.month() {
        12 => (now.year() + 1, 1),
        m => (now.year(), m + 1),
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .unwrap_or_else(|| next_midnight(now))
}

/// The JSON body of `POST /emails`.
fn body(msg: &BuiltMessage) -> Value {
    let headers: serde_json::Map<String, Value> = msg
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    let mut body = json!({
        "from": msg.from.to_string(),
        "to": [msg.to.to_string()],
        "subject": msg.subject,
        "html": msg.html,
        "headers": headers,
        "tags": [{ "name": METADATA_KEY, "value": msg.message_id }],
    });
    if !msg.text.is_empty() {
        body["text"] = json!(msg.text);
    }
    body
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn quotas_reset_at_midnight_and_month_start_utc() {
        let at = |y, m, d, h| Utc.with_ymd_and_hms(y, m, d, h, 30, 0).unwrap();
        let midnight = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap();
        assert_eq!(next_midnight(at(2026, 11, 28, 23)), midnight(2026, 11, 29));
        assert_eq!(next_midnight(at(2026, 12, 31, 0)), midnight(2027, 1, 1));
        assert_eq!(next_month(at(2026, 11, 28, 10)), midnight(2026, 12, 1));
        assert_eq!(next_month(at(2026, 12, 5, 10)), midnight(2027, 1, 1));
    }
}
