//! The `sendgrid` transport: SendGrid's v3 Mail Send, `POST /v3/mail/send`.
//!
//! Request and errors as documented at twilio.com/docs/sendgrid/api-reference/mail-send and
//! …/mail-send/errors: `Authorization: Bearer <key>`; recipients in `personalizations`; parts in
//! `content` with `text/plain` before `text/html` (SendGrid requires that order); custom headers
//! in `headers`; `custom_args` come back in every event webhook. Success is `202 Accepted` with
//! the message id in the `X-Message-Id` header. Rejections are `400` with
//! `{"errors":[{"field","message"}]}` — an error on a recipient's `email` field is an invalid
//! address — and `429` carries `X-RateLimit-Reset` (epoch seconds).

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Api, HttpConfigError, HttpSettings, Reply, recipient_rejected};
use super::{METADATA_KEY, Receipt, SendError};
use crate::clock::Clock;
use crate::config::Secret;
use crate::message::BuiltMessage;

/// SendGrid's API.
pub const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";

/// Settings of a SendGrid transport.
#[derive(Debug, Clone)]
pub struct SendgridConfig {
    /// API key with Mail Send permission.
    pub api_key: Secret,
    /// Base URL and timeout.
    pub http: HttpSettings,
}

/// Sends through SendGrid. Clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Sendgrid {
    api: Api,
    endpoint: Url,
    api_key: Secret,
}

#[derive(Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<FieldError>,
}

#[derive(Deserialize)]
struct FieldError {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    message: String,
}

impl Sendgrid {
    /// Validates the settings; nothing is sent until the first message.
    pub fn new(
        name: &str,
        config: SendgridConfig,
        clock: Clock,
    ) -> Result<Sendgrid, HttpConfigError> {
        let api = Api::new(name, "sendgrid", &config.http, clock, false)?;
        Ok(Sendgrid {
            endpoint: api.endpoint("/v3/mail/send")?,
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
            .json(&body(msg));
        let reply = self.api.execute(request).await?;
        if reply.is_success() {
            return Ok(Receipt {
                provider_message_id: reply.header("x-message-id").map(str::to_owned),
                response: format!("{} Accepted", reply.status),
            });
        }
        Err(self.rejection(&reply))
    }

    fn rejection(&self, reply: &Reply) -> SendError {
        let errors = reply.json::<Errors>().map(|e| e.errors).unwrap_or_default();
        let detail = if errors.is_empty() {
            reply.text()
        } else {
            errors
                .iter()
                .map(|e| match &e.field {
                    Some(field) => format!("{field}: {}", e.message),
                    None => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut error = self.api.rejection(reply, &detail);
        if reply.status == 429 && error.retry_after.is_none() {
            error.retry_after = reset_delay(reply, self.api.now().timestamp());
        }
        // e.g. field `personalizations.0.to.0.email`: "Does not contain a valid address."
        let bad_recipient = reply.status == 400
            && errors.iter().any(|e| {
                e.field.as_deref().is_some_and(|field| {
                    field.starts_with("personalizations")
                        && field.contains(".to")
                        && field.ends_with("email")
                })
            });
        if bad_recipient {
            return recipient_rejected(error, "5.1.3");
        }
        error
    }
}

/// Time until `X-RateLimit-Reset` (Unix seconds), SendGrid's hint after a `429`.
fn reset_delay(reply: &Reply, now: i64) -> Option<Duration> {
    let reset = reply
        .header("x-ratelimit-reset")?
        .trim()
        .parse::<i64>()
        .ok()?;
    u64::try_from(reset - now).ok().map(Duration::from_secs)
}

/// The JSON body of `POST /v3/mail/send`.
fn body(msg: &BuiltMessage) -> Value {
    let address = |mailbox: &lettre::message::Mailbox| {
        let mut value = json!({ "email": mailbox.email.to_string() });
        if let Some(name) = mailbox.name.as_deref().filter(|n| !n.trim().is_empty()) {
            value["name"] = json!(name);
        }
        value
    };
    let mut content = Vec::new();
    if !msg.text.is_empty() {
        content.push(json!({ "type": "text/plain", "value": msg.text }));
    }
    content.push(json!({ "type": "text/html", "value": msg.html }));
    let headers: serde_json::Map<String, Value> = msg
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), json!(value)))
        .collect();
    json!({
        "personalizations": [{ "to": [address(&msg.to)] }],
        "from": address(&msg.from),
        "subject": msg.subject,
        "content": content,
        "headers": headers,
        "custom_args": { METADATA_KEY: msg.message_id },
    })
}
