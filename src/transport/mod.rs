//! Handing built messages to the outside world.
//!
//! This module owns the closed set of transports ([`Transport`]), the receipt a successful hand-off
//! produces ([`Receipt`]) and the one error type every transport reports ([`SendError`]), which
//! carries the class the scheduler acts on: transient (retry with backoff), permanent (fail the
//! message; a hard bounce also suppresses the address), deferred (a quota is used up: wait for
//! its reset without spending an attempt), or "after DATA" (outcome unknown — mark the message
//! `unknown`, never re-send).
//!
//! Around the transports sit the per-transport rate limits ([`limit`]) and the routing with
//! failover and circuit breakers ([`route`]) that the send pipeline goes through.

pub mod http;
pub mod limit;
pub mod mailgun;
pub mod outbox;
pub mod postmark;
pub mod resend;
pub mod route;
pub mod sendgrid;
pub mod ses;
pub mod smtp;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::message::BuiltMessage;

/// Key under which every REST provider carries our message id in its metadata (Postmark
/// `Metadata`, SendGrid `custom_args`, SES `EmailTags`, Resend `tags`), so delivery webhooks can
/// be matched to the message row.
pub const METADATA_KEY: &str = "herald_message_id";

/// A configured transport. Closed set: adding a provider means adding a variant.
/// Clones are cheap and share connections (SMTP pool, HTTP client).
#[derive(Debug, Clone)]
pub enum Transport {
    /// Writes `.eml` files to a directory (development, dry runs).
    Outbox(outbox::Outbox),
    /// Relays through an SMTP server with a bounded connection pool.
    Smtp(smtp::Smtp),
    /// Postmark's `POST /email`.
    Postmark(postmark::Postmark),
    /// SendGrid's `POST /v3/mail/send`.
    Sendgrid(sendgrid::Sendgrid),
    /// Mailgun's `POST /v3/{domain}/messages`.
    Mailgun(mailgun::Mailgun),
    /// Amazon SES v2 `SendEmail` (raw MIME).
    Ses(ses::Ses),
    /// Resend's `POST /emails`.
    Resend(resend::Resend),
}

impl Transport {
    /// Hands one message to the transport.
    pub async fn send(&self, msg: &BuiltMessage) -> Result<Receipt, SendError> {
        match self {
            Transport::Outbox(outbox) => outbox.send(msg).await,
            Transport::Smtp(smtp) => smtp.send(msg).await,
            Transport::Postmark(postmark) => postmark.send(msg).await,
            Transport::Sendgrid(sendgrid) => sendgrid.send(msg).await,
            Transport::Mailgun(mailgun) => mailgun.send(msg).await,
            Transport::Ses(ses) => ses.send(msg).await,
            Transport::Resend(resend) => resend.send(msg).await,
        }
    }

    /// The name this transport was configured under.
    pub fn name(&self) -> &str {
        match self {
            Transport::Outbox(outbox) => outbox.name(),
            Transport::Smtp(smtp) => smtp.name(),
            Transport::Postmark(postmark) => postmark.name(),
            Transport::Sendgrid(sendgrid) => sendgrid.name(),
            Transport::Mailgun(mailgun) => mailgun.name(),
            Transport::Ses(ses) => ses.name(),
            Transport::Resend(resend) => resend.name(),
        }
    }

    /// Releases network resources (SMTP: QUITs parked connections). Sends after this fail with a
    /// transient error. REST transports hold nothing worth closing.
    pub async fn shutdown(&self) {
        if let Transport::Smtp(smtp) = self {
            smtp.shutdown().await;
        }
    }
}

/// Proof that a transport accepted a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message, when it hands one out (REST APIs). SMTP relays don't,
    /// in a standard form, so SMTP leaves this empty and bounces are matched by `Message-ID`.
    pub provider_message_id: Option<String>,
    /// Human-readable acceptance: the final SMTP reply (`250 2.0.0 Ok: queued as …`), or the path
    /// the outbox wrote.
    pub response: String,
}

/// Whether retrying the same message later can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Retry later with backoff (4xx replies, network trouble, timeouts, relay misconfiguration).
    Transient,
    /// Retrying will not help (5xx replies to the message's own commands).
    Permanent,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

/// A failed send, classified for the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} send failure: {message}")]
pub struct SendError {
    /// Transient or permanent.
    pub class: ErrorClass,
    /// The SMTP reply code (or HTTP status for REST providers), when there was a reply.
    pub code: Option<u16>,
    /// RFC 3463 enhanced status code such as `5.1.1`, when the reply carried one. REST
    /// providers map their recipient rejections onto the same codes (`5.1.1` for an unknown or
    /// inactive recipient, `5.1.3` for a malformed address), so suppression works one way.
    pub enhanced: Option<String>,
    /// What happened, including the server's reply text.
    pub message: String,
    /// How long the provider asked us to wait before retrying, if it said.
    pub retry_after: Option<Duration>,
    /// The message payload was fully sent but no final reply arrived: the server may or may not
    /// have accepted it. Callers must mark the message `unknown` instead of retrying, or risk a
    /// duplicate send. Always paired with [`ErrorClass::Transient`].
    pub after_data: bool,
    /// The provider refuses more mail until this instant (a daily or monthly quota is used up).
    /// The scheduler re-queues the message for then without counting an attempt. Always paired
    /// with [`ErrorClass::Transient`].
    pub deferred_until: Option<DateTime<Utc>>,
}

impl SendError {
    /// A transient failure without a reply code (network, timeout, local I/O, shutdown).
    pub fn transient(message: impl Into<String>) -> SendError {
        SendError {
            class: ErrorClass::Transient,
            code: None,
            enhanced: None,
            message: message.into(),
            retry_after: None,
            after_data: false,
            deferred_until: None,
        }
    }

    /// A quota exhaustion: nothing more is accepted before `until`.
    pub fn deferred(message: impl Into<String>, until: DateTime<Utc>) -> SendError {
        SendError {
            deferred_until: Some(until),
            ..SendError::transient(message)
        }
    }

    /// A permanent failure without a reply code (e.g. a message the transport can never carry).
    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            class: ErrorClass::Permanent,
            ..SendError::transient(message)
        }
    }

    /// Classifies a negative SMTP reply to one of the message's own commands (MAIL, RCPT, DATA,
    /// end of data): 4xx is transient; 5xx is permanent except 552, which RFC 5321 §4.5.3.1.10
    /// tells clients to treat as temporary when it answers RCPT ("too many recipients") — we
    /// cannot tell that apart from the other uses of 552, so it is always retried.
    /// `text` is the reply text after the code; the enhanced status code is read from its start.
    pub fn from_smtp_reply(code: u16, text: &str, context: &str) -> SendError {
        let class = if (500..600).contains(&code) && code != 552 {
            ErrorClass::Permanent
        } else {
            ErrorClass::Transient
        };
        SendError {
            class,
            code: Some(code),
            enhanced: parse_enhanced_status(code, text),
            message: format!("{context}: {code} {text}"),
            retry_after: None,
            after_data: false,
            deferred_until: None,
        }
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// True when the outcome is unknown because the connection failed after the message payload
    /// was sent. See [`SendError::after_data`].
    pub fn after_data(&self) -> bool {
        self.after_data
    }

    /// True when the recipient address itself is bad and should be suppressed: a permanent
    /// failure with enhanced status `5.1.x` (bad mailbox, bad domain, bad syntax, …), or a plain
    /// 550/551/553 reply without an enhanced code (a `5.7.1` policy rejection on 550, for example,
    /// is not a hard bounce).
    pub fn is_hard_bounce(&self) -> bool {
        if self.class != ErrorClass::Permanent {
            return false;
        }
        match &self.enhanced {
            Some(enhanced) => enhanced.starts_with("5.1."),
            None => matches!(self.code, Some(550 | 551 | 553)),
        }
    }
}

/// Extracts an RFC 3463 enhanced status code (`class.subject.detail`) from the start of an SMTP
/// reply text. RFC 2034 §4 requires its class digit to match the reply code's first digit; a
/// mismatching or malformed token is ignored rather than trusted.
pub fn parse_enhanced_status(code: u16, text: &str) -> Option<String> {
    let token = text.split_whitespace().next()?;
    let mut parts = token.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let numeric = |s: &str, max_len: usize| {
        !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())
    };
    let class_matches = class.len() == 1 && class.parse::<u16>().ok() == Some(code / 100);
    if class_matches && numeric(subject, 3) && numeric(detail, 3) {
        Some(token.to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_is_parsed_only_when_it_matches_the_reply_class() {
        assert_eq!(
            parse_enhanced_status(550, "5.1.1 <a@b.example>: no such user").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            parse_enhanced_status(451, "4.3.0 Try again").as_deref(),
            Some("4.3.0")
        );
        assert_eq!(parse_enhanced_status(550, "4.3.0 mismatch"), None);
        assert_eq!(parse_enhanced_status(550, "No such user"), None);
        assert_eq!(parse_enhanced_status(550, "5.1 short"), None);
        assert_eq!(parse_enhanced_status(550, ""), None);
    }

    #[test]
    fn classification_follows_reply_codes() {
        let rcpt = "RCPT TO rejected";
        assert!(SendError::from_smtp_reply(451, "4.3.0 later", rcpt).is_transient());
        assert!(SendError::from_smtp_reply(552, "5.5.3 too many", rcpt).is_transient());
        let bad_mailbox = SendError::from_smtp_reply(550, "5.1.1 unknown user", rcpt);
        assert!(!bad_mailbox.is_transient());
        assert!(bad_mailbox.is_hard_bounce());
        assert!(SendError::from_smtp_reply(553, "mailbox name not allowed", rcpt).is_hard_bounce());
        assert!(!SendError::from_smtp_reply(550, "5.7.1 spam", rcpt).is_hard_bounce());
        assert!(!SendError::from_smtp_reply(554, "transaction failed", rcpt).is_hard_bounce());
        assert!(!SendError::from_smtp_reply(450, "4.1.1 later", rcpt).is_hard_bounce());
    }
}
