//! Provider delivery webhooks: authenticate a request from SendGrid, Postmark, Mailgun, Amazon SES
//! (through SNS) or Resend, and normalize what it reports into [`DeliveryEvent`]s.
//!
//! This module is pure logic: it owns no route, no database and no clock. The caller hands it the
//! raw request (headers, the exact body bytes, and `now` from Herald's clock) and stores what comes
//! back. Its invariants:
//!
//! - **Nothing is parsed before the request is authenticated.** Signatures are checked over the
//!   raw bytes, never over re-serialized JSON. A missing or wrong signature is
//!   [`WebhookError::Unauthorized`], a request outside its provider's time window is
//!   [`WebhookError::Replay`]; both mean 401 and nothing stored.
//! - **Authenticated but unreadable is [`WebhookError::Malformed`]** (400): not JSON, the wrong
//!   shape, or a known event type missing a field it cannot do without.
//! - **Unknown event types are skipped**, never errors: providers add types, and a 4xx would make
//!   them retry or disable the endpoint. A request with nothing Herald cares about is
//!   [`Outcome::Ignored`].
//! - **Every event has a `provider_event_id` that is the same on every retry** of the same
//!   webhook, so storing events under a unique `(provider, provider_event_id)` makes a retried
//!   webhook change nothing.
//! - **Correlation**: every send carries our message id (the `X-Herald-Message-Id` header and the
//!   provider's metadata field); it is read back as [`DeliveryEvent::herald_message_id`], with the
//!   provider's own message id beside it as a fallback. Events matching no message are the
//!   caller's orphans.
//!
//! Replays: SendGrid, SNS and Svix (Resend) sign the body, so a replayed request can only repeat
//! events already stored, which the unique event id absorbs; SNS and Svix also bound the age of a
//! request. Mailgun signs only a timestamp and a token, not the body, so a captured signature could
//! be attached to a forged body: for Mailgun the caller must also reject a token seen before, via
//! [`Parsed::replay_key`].

mod fields;
mod machine;
mod mailgun;
mod postmark;
mod resend;
mod sendgrid;
mod ses;
mod sns;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};

use crate::config::WebhookSettings;

pub use fields::normalize_message_id;
pub use machine::is_machine_user_agent;

/// Name under which senders put our message id in provider metadata (SendGrid `custom_args`,
/// Postmark `Metadata`, SES and Resend tags). Mailgun user variables also accept
/// [`HERALD_MESSAGE_ID_VARIABLE`].
pub const HERALD_MESSAGE_ID_KEY: &str = "herald_message_id";

/// Mailgun user-variable spelling of our message id (`v:herald-message-id`).
pub const HERALD_MESSAGE_ID_VARIABLE: &str = "herald-message-id";

/// An email provider whose delivery webhooks Herald accepts; the `{provider}` URL segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    Sendgrid,
    Postmark,
    Mailgun,
    Ses,
    Resend,
}

impl Provider {
    /// Every provider, in a stable order.
    pub const ALL: [Provider; 5] = [
        Provider::Sendgrid,
        Provider::Postmark,
        Provider::Mailgun,
        Provider::Ses,
        Provider::Resend,
    ];

    /// The URL segment and config section name (`sendgrid`, `postmark`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Sendgrid => "sendgrid",
            Provider::Postmark => "postmark",
            Provider::Mailgun => "mailgun",
            Provider::Ses => "ses",
            Provider::Resend => "resend",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `{provider}` URL segment that names no provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook provider `{0}`")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    /// Parses the URL segment exactly (lowercase), so one endpoint has one spelling.
    fn from_str(s: &str) -> Result<Provider, UnknownProvider> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.to_owned()))
    }
}

/// One webhook request as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub headers: &'a HeaderMap,
    /// The body exactly as received: signatures cover these bytes.
    pub body: &'a [u8],
    /// Herald's clock, for timestamp windows and certificate validity.
    pub now: DateTime<Utc>,
}

/// What happened to one message for one recipient, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    pub provider: Provider,
    /// Stable across retries of the same webhook; unique per provider. It is the provider's event
    /// id (SendGrid `sg_event_id`, Mailgun event `id`, the `svix-id` for Resend), the SNS
    /// `MessageId` plus `:index` for SES, and `sha256:` + a hash of the record where the provider
    /// has no id (Postmark; SendGrid records without `sg_event_id`).
    pub provider_event_id: String,
    /// Our message id, read back from the provider's metadata or the echoed header.
    pub herald_message_id: Option<String>,
    /// The provider's id for the message, as its send API returned it (see
    /// [`normalize_message_id`]); the fallback for correlation.
    pub provider_message_id: Option<String>,
    /// The recipient address the event concerns, as the provider reports it.
    pub recipient: Option<String>,
    /// When the provider says the event happened (the request time when it does not say).
    pub occurred_at: DateTime<Utc>,
    pub kind: DeliveryKind,
}

/// The normalized event kinds. Provider-specific mappings are documented in each provider's
/// parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryKind {
    /// The receiving server accepted the message.
    Delivered,
    /// Delivery failed temporarily; the provider keeps trying.
    Deferred { reason: Option<String> },
    /// Delivery failed. `hard` means the address itself is bad (suppress it); soft bounces are
    /// recorded but do not suppress.
    Bounced {
        hard: bool,
        /// SMTP enhanced status (e.g. `5.1.1`) or the provider's bounce type.
        code: Option<String>,
        reason: Option<String>,
    },
    /// The open pixel was fetched. `machine` when the provider or the user agent says a proxy or
    /// scanner fetched it (Apple Mail Privacy Protection, security scanners).
    Opened { machine: bool },
    /// A tracked link was followed.
    Clicked { url: String, machine: bool },
    /// The recipient reported the message as spam.
    Complained,
    /// The recipient unsubscribed through the provider (its link or `List-Unsubscribe`).
    Unsubscribed,
    /// The provider did not attempt delivery (suppressed address, quota, rendering failure).
    Dropped { reason: Option<String> },
}

impl DeliveryKind {
    /// A short lowercase name for storage and logs (`delivered`, `bounced`, …).
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryKind::Delivered => "delivered",
            DeliveryKind::Deferred { .. } => "deferred",
            DeliveryKind::Bounced { .. } => "bounced",
            DeliveryKind::Opened { .. } => "opened",
            DeliveryKind::Clicked { .. } => "clicked",
            DeliveryKind::Complained => "complained",
            DeliveryKind::Unsubscribed => "unsubscribed",
            DeliveryKind::Dropped { .. } => "dropped",
        }
    }
}

/// What an authenticated webhook asks of Herald.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivery events to store, in the order the provider sent them (never empty).
    Events(Vec<DeliveryEvent>),
    /// A verified SNS subscription request for an accepted topic: the caller confirms it with a
    /// GET of `subscribe_url` (checked to be https on an SNS host).
    SubscriptionConfirmation {
        subscribe_url: String,
        topic_arn: String,
    },
    /// Authentic, but nothing Herald records (unknown or uninteresting event types).
    Ignored,
}

impl Outcome {
    fn from_events(events: Vec<DeliveryEvent>) -> Outcome {
        if events.is_empty() {
            Outcome::Ignored
        } else {
            Outcome::Events(events)
        }
    }
}

/// A one-time value the caller must not accept twice (Mailgun's signature token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayKey {
    /// Namespaced by provider, e.g. `mailgun:<token>`.
    pub key: String,
    /// After this instant the request's timestamp is outside the window anyway, so the key may be
    /// forgotten.
    pub expires_at: DateTime<Utc>,
}

/// The result of an authenticated webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub outcome: Outcome,
    /// When present, the caller checks-and-stores it, in the same transaction as the events, and
    /// answers 401 if it was already stored.
    pub replay_key: Option<ReplayKey>,
}

/// Why a webhook request was refused. [`WebhookError::status`] gives the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Missing or invalid credentials or signature (401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authentic signature but outside the provider's time window (401).
    #[error("stale or replayed request: {0}")]
    Replay(String),
    /// The body cannot be read as this provider's payload (400).
    #[error("malformed webhook body: {0}")]
    Malformed(String),
    /// No `[webhooks.<provider>]` section (404).
    #[error("no webhook is configured for {0}")]
    NotConfigured(Provider),
    /// The SNS signing certificate could not be fetched for a reason that may pass (network
    /// error, AWS answering 5xx): 503, so that SNS retries later.
    #[error("could not fetch the SNS signing certificate: {0}")]
    CertificateFetch(String),
}

impl WebhookError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::Unauthorized(_) | WebhookError::Replay(_) => StatusCode::UNAUTHORIZED,
            WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            WebhookError::NotConfigured(_) => StatusCode::NOT_FOUND,
            WebhookError::CertificateFetch(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A `[webhooks.*]` setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct WebhookConfigError {
    /// The setting, e.g. `webhooks.sendgrid.public_key`.
    pub key: String,
    pub message: String,
}

impl WebhookConfigError {
    fn new(key: &str, message: impl Into<String>) -> WebhookConfigError {
        WebhookConfigError {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Authenticates and normalizes webhooks for every configured provider. Build it once at startup
/// and share it: it holds the parsed keys and the SNS certificate cache.
pub struct Verifier {
    sendgrid: Option<sendgrid::SendgridVerifier>,
    postmark: Option<postmark::PostmarkVerifier>,
    mailgun: Option<mailgun::MailgunVerifier>,
    ses: Option<sns::SnsVerifier>,
    resend: Option<resend::ResendVerifier>,
}

impl fmt::Debug for Verifier {
    /// Lists the configured providers; never prints secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let configured: Vec<&str> = Provider::ALL
            .into_iter()
            .filter(|p| self.is_configured(*p))
            .map(Provider::as_str)
            .collect();
        f.debug_struct("Verifier")
            .field("configured", &configured)
            .finish()
    }
}

impl Verifier {
    /// Builds the verifier from settings. SES certificate paths are resolved against `dir` (the
    /// project directory) and read now, so a bad file fails at startup.
    pub fn new(settings: &WebhookSettings, dir: &Path) -> Result<Verifier, WebhookConfigError> {
        Ok(Verifier {
            sendgrid: settings
                .sendgrid
                .as_ref()
                .map(sendgrid::SendgridVerifier::new)
                .transpose()?,
            postmark: settings
                .postmark
                .as_ref()
                .map(postmark::PostmarkVerifier::new)
                .transpose()?,
            mailgun: settings
                .mailgun
                .as_ref()
                .map(mailgun::MailgunVerifier::new)
                .transpose()?,
            ses: settings
                .ses
                .as_ref()
                .map(|s| sns::SnsVerifier::new(s, dir))
                .transpose()?,
            resend: settings
                .resend
                .as_ref()
                .map(resend::ResendVerifier::new)
                .transpose()?,
        })
    }

    /// Checks every setting that can be checked without reading files (keys, secrets,
    /// durations, topic list), for configuration validation.
    pub fn check(settings: &WebhookSettings) -> Result<(), WebhookConfigError> {
        if let Some(s) = &settings.sendgrid {
            sendgrid::SendgridVerifier::new(s)?;
        }
        if let Some(s) = &settings.postmark {
            postmark::PostmarkVerifier::new(s)?;
        }
        if let Some(s) = &settings.mailgun {
            mailgun::MailgunVerifier::new(s)?;
        }
        if let Some(s) = &settings.ses {
            sns::SnsVerifier::check(s)?;
        }
        if let Some(s) = &settings.resend {
            resend::ResendVerifier::new(s)?;
        }
        Ok(())
    }

    /// Whether `provider` has a `[webhooks.<provider>]` section.
    pub fn is_configured(&self, provider: Provider) -> bool {
        match provider {
            Provider::Sendgrid => self.sendgrid.is_some(),
            Provider::Postmark => self.postmark.is_some(),
            Provider::Mailgun => self.mailgun.is_some(),
            Provider::Ses => self.ses.is_some(),
            Provider::Resend => self.resend.is_some(),
        }
    }

    /// Authenticates `req` as a webhook from `provider` and normalizes it. Only SES may await (a
    /// signing certificate fetch, at most once per certificate URL).
    pub async fn handle(
        &self,
        provider: Provider,
        req: WebhookRequest<'_>,
    ) -> Result<Parsed, WebhookError> {
        let not_configured = || WebhookError::NotConfigured(provider);
        match provider {
            Provider::Sendgrid => self
                .sendgrid
                .as_ref()
                .ok_or_else(not_configured)?
                .handle(req),
            Provider::Postmark => self
                .postmark
                .as_ref()
                .ok_or_else(not_configured)?
                .handle(req),
            Provider::Mailgun => self
                .mailgun
                .as_ref()
                .ok_or_else(not_configured)?
                .handle(req),
            Provider::Ses => {
                self.ses
                    .as_ref()
                    .ok_or_else(not_configured)?
                    .handle(req)
                    .await
            }
            Provider::Resend => self.resend.as_ref().ok_or_else(not_configured)?.handle(req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_round_trips_through_its_url_segment() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert!("SendGrid".parse::<Provider>().is_err());
        assert!("sparkpost".parse::<Provider>().is_err());
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            WebhookError::Unauthorized(String::new()).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            WebhookError::Replay(String::new()).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            WebhookError::Malformed(String::new()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            WebhookError::NotConfigured(Provider::Ses).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            WebhookError::CertificateFetch(String::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// The lead wires `handle` into axum, which needs a `Send` future and a shareable verifier.
    #[test]
    fn verifier_is_shareable_and_its_future_is_send() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let verifier = Verifier::new(&WebhookSettings::default(), Path::new(".")).unwrap();
        send_sync(&verifier);
        let headers = HeaderMap::new();
        send(verifier.handle(
            Provider::Ses,
            WebhookRequest {
                headers: &headers,
                body: b"",
                now: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            },
        ));
    }

    #[tokio::test]
    async fn unconfigured_provider_is_not_configured() {
        let verifier = Verifier::new(&WebhookSettings::default(), Path::new(".")).unwrap();
        let headers = HeaderMap::new();
        for p in Provider::ALL {
            assert!(!verifier.is_configured(p));
            let req = WebhookRequest {
                headers: &headers,
                body: b"[]",
                now: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            };
            assert_eq!(
                verifier.handle(p, req).await,
                Err(WebhookError::NotConfigured(p))
            );
        }
    }
}
