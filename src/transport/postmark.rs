//! The `postmark` transport: Postmark's single-message API, `POST /email`.
//!
//! Request and errors as documented at postmarkapp.com/developer/user-guide/send-email-with-api
//! and /developer/api/overview: the server token goes in `X-Postmark-Server-Token`; custom
//! headers are a `Headers` array of `{Name, Value}`; `Metadata` carries our message id back in
//! webhooks; a success is `200` with `MessageID`. Rejections are `422` with an `ErrorCode`:
//! `406` (inactive recipient: an earlier hard bounce, complaint or manual suppression) and `300`
//! naming the `To` address (an invalid address) are recipient problems; sender-signature and
//! account codes (`400`, `401`, `405`, `412`, `413`) are our setup and transient; `429` is the
//! rate limit.

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Api, HttpConfigError, HttpSettings, Reply, recipient_rejected};
use super::{ErrorClass, METADATA_KEY, Receipt, SendError};
use crate::clock::Clock;
use crate::config::Secret;
use crate::message::BuiltMessage;

/// Postmark's API.
pub const DEFAULT_BASE_URL: &str = "https://api.postmarkapp.com";

/// Settings of a Postmark transport.
#[derive(Debug, Clone)]
pub struct PostmarkConfig {
    /// Server API token.
    pub token: Secret,
    /// Message stream; Postmark's default (`outbound`) when `None`.
    pub message_stream: Option<String>,
    /// Base URL and timeout.
    pub http: HttpSettings,
}

/// Sends through Postmark. Clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Postmark {
    api: Api,
    endpoint: Url,
    token: Secret,
    message_stream: Option<String>,
}

/// Postmark's answer, success or error.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    #[serde(rename = "MessageID")]
    message_id: Option<String>,
    error_code: Option<i64>,
    message: Option<String>,
}

impl Postmark {
    /// Validates the settings; nothing is sent until the first message.
    pub fn new(
        name: &str,
        config: PostmarkConfig,
        clock: Clock,
    ) -> Result<Postmark, HttpConfigError> {
        let api = Api::new(name, "postmark", &config.http, clock, false)?;
        Ok(Postmark {
            endpoint: api.endpoint("/email")?,
            api,
            token: config.token,
            message_stream: config.message_stream,
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
            .header("Accept", "application/json")
            .header("X-Postmark-Server-Token", self.token.expose())
            .json(&self.body(msg));
        let reply = self.api.execute(request).await?;
        let answer = reply.json::<Answer>();
        let error_code = answer.as_ref().and_then(|a| a.error_code).unwrap_or(0);
        if reply.is_success() && error_code == 0 {
            let answer = answer.unwrap_or(Answer {
                message_id: None,
                error_code: None,
                message: None,
            });
            return Ok(Receipt {
                provider_message_id: answer.message_id,
                response: format!(
                    "{} {}",
                    reply.status,
                    answer.message.unwrap_or_else(|| "OK".to_owned())
                ),
            });
        }
        Err(self.rejection(&reply, answer, error_code))
    }

    /// The JSON body of `POST /email`.
    fn body(&self, msg: &BuiltMessage) -> Value {
        let headers: Vec<Value> = msg
            .headers
            .iter()
            .map(|(name, value)| json!({ "Name": name, "Value": value }))
            .collect();
        let mut body = json!({
            "From": msg.from.to_string(),
            "To": msg.to.to_string(),
            "Subject": msg.subject,
            "HtmlBody": msg.html,
            "Headers": headers,
            "Metadata": { METADATA_KEY: msg.message_id },
        });
        if !msg.text.is_empty() {
            body["TextBody"] = json!(msg.text);
        }
        if let Some(stream) = &self.message_stream {
            body["MessageStream"] = json!(stream);
        }
        body
    }

    fn rejection(&self, reply: &Reply, answer: Option<Answer>, error_code: i64) -> SendError {
        let text = answer
            .and_then(|a| a.message)
            .unwrap_or_else(|| reply.text());
        let detail = format!("ErrorCode {error_code}: {text}");
        let mut error = self.api.rejection(reply, &detail);
        match error_code {
            406 => return recipient_rejected(error, "5.1.1"),
            // `300` covers every malformed request; only one about the `To` address is the
            // recipient's fault ("Invalid 'To' address: …", "Error parsing 'To': …").
            300 if text.contains("'To'") => return recipient_rejected(error, "5.1.3"),
            // Sender signature missing or unconfirmed, not allowed to send, account pending or
            // suspended: fixable on our side, so retry (or fail over) instead of failing mail.
            400 | 401 | 405 | 412 | 413 => error.class = ErrorClass::Transient,
            _ => {}
        }
        error
    }
}
