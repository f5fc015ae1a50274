//! Building outgoing MIME messages.
//!
//! This module owns the step from a rendered email (subject, HTML and text bodies, extra headers)
//! to the exact bytes handed to a transport: address parsing, the `multipart/alternative` body,
//! `Message-ID`, `Date`, our `X-Herald-Message-Id` correlation header and caller-supplied headers
//! such as `List-Unsubscribe`. It does no I/O and reads no clock: the `Date` header comes from the
//! caller so that tests and simulations control time. DKIM signing lives in [`dkim`].

pub mod dkim;

use std::str::FromStr;
use std::time::SystemTime;

use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

/// Header carrying our own message id, so bounces and provider webhooks that echo headers can be
/// matched to the message row even when the provider rewrites `Message-ID`.
pub const HERALD_MESSAGE_ID_HEADER: &str = "X-Herald-Message-Id";

/// Headers that [`build`] sets itself. Letting callers override them would produce messages whose
/// structure or identity disagrees with what the rest of Herald recorded, so they are rejected.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "x-herald-message-id",
];

/// A fully rendered email, ready to be turned into MIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    /// Our id for the message (a UUID string). The `Message-ID` header becomes
    /// `<{message_id}@{domain of from}>`.
    pub message_id: String,
    /// Sender, either `Display Name <addr>` or a bare address.
    pub from: String,
    /// Recipient, either `Display Name <addr>` or a bare address.
    pub to: String,
    /// Subject line (plain text; encoded as needed).
    pub subject: String,
    /// HTML body.
    pub html: String,
    /// Plain-text alternative body.
    pub text: String,
    /// Extra headers such as `List-Unsubscribe`, `List-Unsubscribe-Post`, `X-Herald-Workflow`.
    pub headers: Vec<(String, String)>,
    /// Value of the `Date` header.
    pub date: chrono::DateTime<chrono::Utc>,
}

/// A message ready for any transport: the SMTP envelope and the raw RFC 5322 bytes for SMTP and
/// raw-MIME APIs, and the validated parts for JSON APIs that build the MIME themselves.
#[derive(Debug, Clone)]
pub struct BuiltMessage {
    /// Our id for the message (same as [`OutgoingEmail::message_id`]).
    pub message_id: String,
    /// SMTP envelope (MAIL FROM / RCPT TO) derived from the `From` and `To` headers.
    pub envelope: Envelope,
    /// The formatted message, CRLF line endings, 7-bit clean body encodings chosen by lettre.
    pub raw: Vec<u8>,
    /// The parsed sender.
    pub from: Mailbox,
    /// The parsed recipient.
    pub to: Mailbox,
    /// The subject, as given.
    pub subject: String,
    /// The HTML body, as given.
    pub html: String,
    /// The plain-text body, as given.
    pub text: String,
    /// The caller's extra headers (validated), followed by `X-Herald-Message-Id`. Headers Herald
    /// derives from the other fields (`From`, `Date`, `Message-ID`, …) are not repeated here.
    pub headers: Vec<(String, String)>,
    /// The assembled message, kept so a DKIM signer can read its headers and body.
    pub(crate) mime: lettre::Message,
}

/// Why a message could not be built. Every variant names the offending input.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// An address field could not be parsed.
    #[error("invalid {field} address {value:?}: {reason}")]
    InvalidAddress {
        /// Which field: `from` or `to`.
        field: &'static str,
        /// The value as given.
        value: String,
        /// The parser's explanation.
        reason: String,
    },
    /// The message id cannot be used inside a `Message-ID` header.
    #[error("invalid message id {value:?}: {reason}")]
    InvalidMessageId {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An extra header has an unusable name or value.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The header name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The subject contains a line break, which would end the header early.
    #[error("invalid subject {value:?}: contains a line break")]
    InvalidSubject {
        /// The subject as given.
        value: String,
    },
    /// lettre refused to assemble the message.
    #[error("cannot assemble message: {0}")]
    Assemble(#[from] lettre::error::Error),
}

/// Builds the MIME message: `multipart/alternative` with the text part first and the HTML part
/// last (clients show the last part they understand), plus `Message-ID`, `Date`,
/// `X-Herald-Message-Id` and the caller's extra headers.
pub fn build(email: &OutgoingEmail) -> Result<BuiltMessage, MessageError> {
    let from = parse_mailbox("from", &email.from)?;
    let to = parse_mailbox("to", &email.to)?;
    check_message_id(&email.message_id)?;
    if email.subject.contains(['\r', '\n']) {
        return Err(MessageError::InvalidSubject {
            value: email.subject.clone(),
        });
    }

    // lettre never adds a Message-ID by itself, and its fallback uses the machine hostname (a
    // container id in production). The sender's domain keeps the id meaningful and aligned with
    // DKIM/DMARC.
    let message_id_header = format!("<{}@{}>", email.message_id, from.email.domain());

    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .to(to.clone())
        .subject(email.subject.clone())
        .date(SystemTime::from(email.date))
        .message_id(Some(message_id_header))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(HERALD_MESSAGE_ID_HEADER),
            email.message_id.clone(),
        ));
    for (name, value) in &email.headers {
        builder = builder.raw_header(extra_header(name, value)?);
    }

    let message = builder.multipart(MultiPart::alternative_plain_html(
        email.text.clone(),
        email.html.clone(),
    ))?;

    let mut headers = email.headers.clone();
    headers.push((
        HERALD_MESSAGE_ID_HEADER.to_owned(),
        email.message_id.clone(),
    ));
    Ok(BuiltMessage {
        message_id: email.message_id.clone(),
        envelope: message.envelope().clone(),
        raw: message.formatted(),
        from,
        to,
        subject: email.subject.clone(),
        html: email.html.clone(),
        text: email.text.clone(),
        headers,
        mime: message,
    })
}

fn parse_mailbox(field: &'static str, value: &str) -> Result<Mailbox, MessageError> {
    Mailbox::from_str(value.trim()).map_err(|err| MessageError::InvalidAddress {
        field,
        value: value.to_owned(),
        reason: err.to_string(),
    })
}

/// The id ends up between `<` and `@` in `Message-ID`, so it must be a dot-atom (RFC 5322 §3.6.4).
/// Ours are UUIDs; this guards against a caller passing something else.
fn check_message_id(id: &str) -> Result<(), MessageError> {
    let reason = if id.is_empty() {
        Some("is empty")
    } else if id.starts_with('.') || id.ends_with('.') || id.contains("..") {
        Some("has a leading, trailing or doubled dot")
    } else if !id.chars().all(is_atext_or_dot) {
        Some("contains characters not allowed in a Message-ID")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MessageError::InvalidMessageId {
            value: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn is_atext_or_dot(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
}

fn extra_header(name: &str, value: &str) -> Result<HeaderValue, MessageError> {
    let invalid = |reason| MessageError::InvalidHeader {
        name: name.to_owned(),
        reason,
    };
    // RFC 5322 §3.6.8: printable ASCII except colon. lettre only rejects space and colon.
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(invalid(
            "name must be non-empty printable ASCII without ':' or spaces",
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(invalid("is set by Herald and cannot be overridden"));
    }
    // A line break in a value would let template data inject headers; lettre folds long values
    // itself, so callers never need to supply one.
    if value.contains(['\r', '\n']) {
        return Err(invalid("value contains a line break"));
    }
    let name = HeaderName::new_from_ascii(name.to_owned())
        .map_err(|_| invalid("name is not a valid header name"))?;
    Ok(HeaderValue::new(name, value.to_owned()))
}
