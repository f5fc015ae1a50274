//! The `ses` transport: Amazon SES API v2 `SendEmail`, `POST /v2/email/outbound-emails`, signed
//! with Signature Version 4 (service `ses`).
//!
//! Request and errors as documented in the SES API v2 reference (API_SendEmail, CommonErrors):
//! we send `Content.Raw.Data`, the base64 of our own MIME message, so SES keeps our headers
//! (`List-Unsubscribe`, `Message-ID`, `X-Herald-Message-Id`) exactly; `EmailTags` carry our
//! message id into SES event publishing. Success is `200` with `MessageId`. Errors name their
//! type in `x-amzn-ErrorType`: `TooManyRequestsException`/`ThrottlingException` are transient;
//! account and identity problems (`AccountSuspendedException`, `SendingPausedException`,
//! `MailFromDomainNotVerifiedException`, an unverified identity) are our setup and transient;
//! `MessageRejected`/`BadRequestException` for an illegal address are recipient problems; a
//! used-up daily quota defers the message.

mod sigv4;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::TimeDelta;
use reqwest::Url;
use serde::Deserialize;
use serde_json::json;

use super::http::{Api, HttpConfigError, HttpSettings, Reply, recipient_rejected};
use super::{ErrorClass, METADATA_KEY, Receipt, SendError};
use crate::clock::Clock;
use crate::config::Secret;
use crate::message::BuiltMessage;

/// How long a message waits after SES reports its sending quota used up. SES counts the quota
/// over a rolling 24 hours, so there is no reset instant to wait for; an hour lets capacity
/// freed by older sends be used without hammering the API.
const QUOTA_RETRY: TimeDelta = TimeDelta::hours(1);

/// Settings of an SES transport.
#[derive(Debug, Clone)]
pub struct SesConfig {
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Access key id of an IAM identity allowed `ses:SendEmail`.
    pub access_key_id: String,
    /// Its secret access key.
    pub secret_access_key: Secret,
    /// Configuration set to send with (event publishing), if any.
    pub configuration_set: Option<String>,
    /// Base URL and timeout; see [`SesConfig::default_base_url`].
    pub http: HttpSettings,
}

impl SesConfig {
    /// The regional endpoint, `https://email.<region>.amazonaws.com`.
    pub fn default_base_url(region: &str) -> String {
        format!("https://email.{region}.amazonaws.com")
    }
}

/// Sends through SES. Clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Ses {
    api: Api,
    endpoint: Url,
    /// `Host` as the HTTP client will send it, which the signature covers.
    host: String,
    region: String,
    access_key_id: String,
    secret_access_key: Secret,
    configuration_set: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "MessageId")]
    message_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(alias = "Message")]
    message: Option<String>,
    #[serde(rename = "__type", alias = "code")]
    kind: Option<String>,
}

impl Ses {
    /// Validates the settings; nothing is sent until the first message.
    pub fn new(name: &str, config: SesConfig, clock: Clock) -> Result<Ses, HttpConfigError> {
        let region = &config.region;
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(HttpConfigError::Setting(format!(
                "invalid AWS region {region:?}: expected a name such as us-east-1"
            )));
        }
        if config.access_key_id.trim().is_empty() {
            return Err(HttpConfigError::Setting(
                "access_key_id must not be empty".to_owned(),
            ));
        }
        let api = Api::new(name, "ses", &config.http, clock, false)?;
        let endpoint = api.endpoint("/v2/email/outbound-emails")?;
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => {
                return Err(HttpConfigError::Setting(format!(
                    "base_url {endpoint} has no host"
                )));
            }
        };
        Ok(Ses {
            api,
            endpoint,
            host,
            region: config.region,
            access_key_id: config.access_key_id,
            secret_access_key: config.secret_access_key,
            configuration_set: config.configuration_set,
        })
    }

    /// The configured transport name.
    pub fn name(&self) -> &str {
        &self.api.name
    }

    /// Sends one message.
    pub async fn send(&self, msg: &BuiltMessage) -> Result<Receipt, SendError> {
        let mut body = json!({
            "FromEmailAddress": msg.from.email.to_string(),
            "Destination": { "ToAddresses": [msg.to.email.to_string()] },
            "Content": { "Raw": { "Data": BASE64.encode(&msg.raw) } },
            "EmailTags": [{ "Name": METADATA_KEY, "Value": msg.message_id }],
        });
        if let Some(set) = &self.configuration_set {
            body["ConfigurationSetName"] = json!(set);
        }
        let payload = serde_json::to_vec(&body).map_err(|e| {
            SendError::permanent(format!(
                "ses {}: cannot encode the request: {e}",
                self.name()
            ))
        })?;

        let now = self.api.now();
        let date = sigv4::amz_date(now);
        let content_type = "application/json";
        let authorization = sigv4::authorization(
            &sigv4::Scope {
                access_key_id: &self.access_key_id,
                secret_access_key: self.secret_access_key.expose(),
                region: &self.region,
                service: "ses",
            },
            now,
            &sigv4::SignedRequest {
                method: "POST",
                path: self.endpoint.path(),
                query: "",
                headers: &[
                    ("content-type", content_type),
                    ("host", &self.host),
                    ("x-amz-date", &date),
                ],
                payload: &payload,
            },
        );
        let request = self
            .api
            .post(&self.endpoint)
            .header("content-type", content_type)
            .header("x-amz-date", &date)
            .header("authorization", authorization)
            .body(payload);
        let reply = self.api.execute(request).await?;
        if reply.is_success() {
            return Ok(Receipt {
                provider_message_id: reply.json::<Answer>().and_then(|a| a.message_id),
                response: format!("{} OK", reply.status),
            });
        }
        Err(self.rejection(&reply))
    }

    fn rejection(&self, reply: &Reply) -> SendError {
        let body = reply.json::<ErrorBody>();
        // `MessageRejected:http://internal.amazon.com/coral/…` — the type is before the colon.
        let kind = reply
            .header("x-amzn-errortype")
            .map(str::to_owned)
            .or_else(|| body.as_ref().and_then(|b| b.kind.clone()))
            .map(|kind| {
                let kind = kind.split(':').next().unwrap_or_default();
                kind.rsplit('#').next().unwrap_or(kind).to_owned()
            })
            .unwrap_or_default();
        let message = body.and_then(|b| b.message).unwrap_or_else(|| reply.text());
        let mut error = self.api.rejection(reply, &format!("{kind}: {message}"));
        let lower = message.to_ascii_lowercase();
        if lower.contains("quota exceeded") {
            return SendError {
                class: ErrorClass::Transient,
                deferred_until: Some(self.api.now() + QUOTA_RETRY),
                ..error
            };
        }
        match kind.as_str() {
            "TooManyRequestsException"
            | "ThrottlingException"
            | "LimitExceededException"
            | "AccountSuspendedException"
            | "SendingPausedException"
            | "MailFromDomainNotVerifiedException"
            | "NotFoundException" => error.class = ErrorClass::Transient,
            // Sandbox accounts may only send to verified identities: our setup.
            "MessageRejected" if lower.contains("not verified") => {
                error.class = ErrorClass::Transient;
            }
            "MessageRejected" | "BadRequestException" if lower.contains("illegal address") => {
                return recipient_rejected(error, "5.1.3");
            }
            _ => {}
        }
        error
    }
}
