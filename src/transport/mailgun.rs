//! The `mailgun` transport: Mailgun's `POST /v3/{domain}/messages`, form-encoded.
//!
//! Request and errors as documented at documentation.mailgun.com (user-manual/sending-messages,
//! api-reference/api-overview): HTTP basic auth with user `api` and the API key; the US API is
//! `https://api.mailgun.net`, the EU one `https://api.eu.mailgun.net` (set `base_url`); custom
//! headers are `h:<Name>` fields and custom variables `v:<name>` fields, which come back in
//! webhooks as `user-variables`. Success is `200` with `{"id": "<…>", "message": "Queued…"}`;
//! errors carry `{"message": …}` — "'to' parameter is not a valid address" is an invalid
//! recipient.

use reqwest::Url;
use serde::Deserialize;

use super::http::{Api, HttpConfigError, HttpSettings, Reply, recipient_rejected};
use super::{Receipt, SendError};
use crate::clock::Clock;
use crate::config::Secret;
use crate::message::BuiltMessage;

/// Mailgun's US API; EU domains use `https://api.eu.mailgun.net`.
pub const DEFAULT_BASE_URL: &str = "https://api.mailgun.net";

/// The custom variable carrying our message id (`v:herald-message-id`).
pub const MESSAGE_ID_VARIABLE: &str = "herald-message-id";

/// Settings of a Mailgun transport.
#[derive(Debug, Clone)]
pub struct MailgunConfig {
    /// Private API key or a domain sending key.
    pub api_key: Secret,
    /// The sending domain registered with Mailgun.
    pub domain: String,
    /// Base URL (region) and timeout.
    pub http: HttpSettings,
}

/// Sends through Mailgun. Clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Mailgun {
    api: Api,
    endpoint: Url,
    api_key: Secret,
}

#[derive(Deserialize)]
struct Answer {
    id: Option<String>,
    message: Option<String>,
}

impl Mailgun {
    /// Validates the settings; nothing is sent until the first message.
    pub fn new(
        name: &str,
        config: MailgunConfig,
        clock: Clock,
    ) -> Result<Mailgun, HttpConfigError> {
        let domain = &config.domain;
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(HttpConfigError::Setting(format!(
                "invalid Mailgun domain {domain:?}: expected a domain name such as mg.example.com"
            )));
        }
        let api = Api::new(name, "mailgun", &config.http, clock, false)?;
        Ok(Mailgun {
            endpoint: api.endpoint(&format!("/v3/{domain}/messages"))?,
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
            .basic_auth("api", Some(self.api_key.expose()))
            .form(&fields(msg));
        let reply = self.api.execute(request).await?;
        let answer = reply.json::<Answer>();
        if reply.is_success() {
            let (id, message) = answer.map(|a| (a.id, a.message)).unwrap_or_default();
            return Ok(Receipt {
                // Mailgun wraps the id in angle brackets; its webhooks report it without.
                provider_message_id: id.map(|id| {
                    id.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_owned()
                }),
                response: format!(
                    "{} {}",
                    reply.status,
                    message.unwrap_or_else(|| "Queued".to_owned())
                ),
            });
        }
        Err(self.rejection(&reply, answer.and_then(|a| a.message)))
    }

    fn rejection(&self, reply: &Reply, message: Option<String>) -> SendError {
        let detail = message.unwrap_or_else(|| reply.text());
        let error = self.api.rejection(reply, &detail);
        let lower = detail.to_ascii_lowercase();
        let bad_recipient = reply.status == 400
            && lower.contains("not a valid address")
            && (lower.starts_with("to ") || lower.contains("'to'"));
        if bad_recipient {
            return recipient_rejected(error, "5.1.3");
        }
        error
    }
}

/// The form fields of `POST /v3/{domain}/messages`.
fn fields(msg: &BuiltMessage) -> Vec<(String, String)> {
    let mut fields = vec![
        ("from".to_owned(), msg.from.to_string()),
        ("to".to_owned(), msg.to.to_string()),
        ("subject".to_owned(), msg.subject.clone()),
        ("html".to_owned(), msg.html.clone()),
    ];
    if !msg.text.is_empty() {
        fields.push(("text".to_owned(), msg.text.clone()));
    }
    fields.extend(
        msg.headers
            .iter()
            .map(|(name, value)| (format!("h:{name}"), value.clone())),
    );
    fields.push((format!("v:{MESSAGE_ID_VARIABLE}"), msg.message_id.clone()));
    fields
}
