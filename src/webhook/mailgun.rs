//! Mailgun webhooks (JSON, `{"signature": {…}, "event-data": {…}}`).
//!
//! Authentication: HMAC-SHA256, keyed with the webhook signing key, over `timestamp` immediately
//! followed by `token`, hex in `signature`. The signature does not cover the event, so two more
//! checks carry the weight: the timestamp must lie within the configured tolerance of now
//! (default 5 minutes, either direction), and the token must never have been seen before — the
//! caller enforces that with [`Parsed::replay_key`](super::Parsed::replay_key).
//!
//! Mapping of `event-data.event`: `delivered`; `failed` with `severity: temporary` is deferred
//! (Mailgun retries it); `failed` permanent is dropped when Mailgun did not try (`reason`
//! `suppress-bounce` / `suppress-complaint` / `suppress-unsubscribe`), a soft bounce when the
//! recipient's address is not at fault (`old`: retries exhausted; `espblock`, `greylisted`,
//! `blacklisted`), and a hard bounce otherwise; `rejected` is dropped; `opened` and `clicked` are
//! machine when `client-info.bot` is non-empty (Mailgun's bot detection: `apple`, `gmail`,
//! `generic`) or the user agent says so; `complained`; `unsubscribed`. `accepted`, `stored` and
//! unknown events are skipped. Our id is the user variable `herald-message-id` (or
//! `herald_message_id`).

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::fields::{
    Object, non_empty_str, object_field, parse_object, required_str, str_field, string_field,
    unix_seconds, within,
};
use super::{
    DeliveryEvent, DeliveryKind, HERALD_MESSAGE_ID_KEY, HERALD_MESSAGE_ID_VARIABLE, Outcome,
    Parsed, Provider, ReplayKey, WebhookConfigError, WebhookError, WebhookRequest,
    is_machine_user_agent, normalize_message_id,
};
use crate::config::MailgunWebhookSettings;
use crate::workflow::model::Duration;

/// The Mailgun endpoint's signing key and timestamp tolerance.
pub(super) struct MailgunVerifier {
    mac: Hmac<Sha256>,
    tolerance: TimeDelta,
}

impl MailgunVerifier {
    pub(super) fn new(settings: &MailgunWebhookSettings) -> Result<Self, WebhookConfigError> {
        let key = settings.signing_key.trim();
        if key.is_empty() {
            return Err(WebhookConfigError::new(
                "webhooks.mailgun.signing_key",
                "must be non-empty",
            ));
        }
        let tolerance = Duration::parse_setting("webhooks.mailgun.tolerance", &settings.tolerance)
            .map_err(|m| WebhookConfigError::new("webhooks.mailgun.tolerance", m))?
            .0;
        if tolerance <= TimeDelta::zero() {
            return Err(WebhookConfigError::new(
                "webhooks.mailgun.tolerance",
                "must be positive",
            ));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).map_err(|_| {
            WebhookConfigError::new("webhooks.mailgun.signing_key", "unusable HMAC key")
        })?;
        Ok(MailgunVerifier { mac, tolerance })
    }

    pub(super) fn handle(&self, req: WebhookRequest<'_>) -> Result<Parsed, WebhookError> {
        let body = parse_object(req.body)?;
        let signature = object_field(&body, "signature").ok_or_else(|| {
            WebhookError::Unauthorized("no `signature` object in the body".to_owned())
        })?;
        let (timestamp, token) = self.verify(signature)?;
        if !within(req.now, timestamp, self.tolerance) {
            return Err(WebhookError::Replay(format!(
                "signed at {timestamp}, more than {} from now",
                self.tolerance
            )));
        }
        let replay_key = ReplayKey {
            key: format!("mailgun:{token}"),
            // Checked: a configured tolerance of millions of years must not overflow.
            expires_at: timestamp
                .checked_add_signed(self.tolerance)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        let data = object_field(&body, "event-data").ok_or_else(|| {
            WebhookError::Malformed("no `event-data` object in the body".to_owned())
        })?;
        Ok(Parsed {
            outcome: Outcome::from_events(event(data, req.now)?.into_iter().collect()),
            replay_key: Some(replay_key),
        })
    }

    /// Checks the signature block, returning the signed timestamp and the token.
    fn verify(&self, signature: &Object) -> Result<(DateTime<Utc>, String), WebhookError> {
        let unauthorized = |m: &str| WebhookError::Unauthorized(m.to_owned());
        // Mailgun sends the timestamp as a string; accept an integer too, signed as its digits.
        let timestamp = match signature.get("timestamp") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            _ => return Err(unauthorized("signature has no timestamp")),
        };
        let token =
            str_field(signature, "token").ok_or_else(|| unauthorized("signature has no token"))?;
        let hex = str_field(signature, "signature")
            .ok_or_else(|| unauthorized("signature has no signature"))?;
        let expected = decode_hex(hex).ok_or_else(|| unauthorized("signature is not hex"))?;
        let mut mac = self.mac.clone();
        mac.update(timestamp.as_bytes());
        mac.update(token.as_bytes());
        mac.verify_slice(&expected)
            .map_err(|_| unauthorized("signature does not match"))?;
        let at = unix_seconds(&Value::String(timestamp))
            .ok_or_else(|| unauthorized("timestamp is not unix seconds"))?;
        Ok((at, token.to_owned()))
    }
}

/// Hex to bytes (either case); `None` on any other character or an odd length.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| char::from(b).to_digit(16);
            // Each digit is < 16, so the byte cannot overflow.
            #[allow(clippy::cast_possible_truncation)]
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

/// Normalizes an authenticated `event-data` object.
fn event(data: &Object, now: DateTime<Utc>) -> Result<Option<DeliveryEvent>, WebhookError> {
    let Some(kind) = kind(data)? else {
        return Ok(None);
    };
    let what = "Mailgun event-data";
    let variables = object_field(data, "user-variables");
    Ok(Some(DeliveryEvent {
        provider: Provider::Mailgun,
        provider_event_id: required_str(data, "id", what)?.to_owned(),
        herald_message_id: variables.and_then(|v| {
            string_field(v, HERALD_MESSAGE_ID_VARIABLE)
                .or_else(|| string_field(v, HERALD_MESSAGE_ID_KEY))
        }),
        provider_message_id: object_field(data, "message")
            .and_then(|m| object_field(m, "headers"))
            .and_then(|h| str_field(h, "message-id"))
            .and_then(normalize_message_id),
        recipient: string_field(data, "recipient"),
        occurred_at: data.get("timestamp").and_then(unix_seconds).unwrap_or(now),
        kind,
    }))
}

fn kind(data: &Object) -> Result<Option<DeliveryKind>, WebhookError> {
    let status = object_field(data, "delivery-status");
    let status_text = || {
        status.and_then(|s| {
            string_field(s, "message")
                .or_else(|| string_field(s, "description"))
                .or_else(|| string_field(data, "reason"))
        })
    };
    let kind = match str_field(data, "event").unwrap_or_default() {
        "delivered" => DeliveryKind::Delivered,
        "failed" => {
            let reason = str_field(data, "reason").unwrap_or_default();
            if str_field(data, "severity") == Some("temporary") {
                DeliveryKind::Deferred {
                    reason: status_text(),
                }
            } else if reason.starts_with("suppress-") {
                DeliveryKind::Dropped {
                    reason: Some(
                        status
                            .and_then(|s| string_field(s, "description"))
                            .unwrap_or_else(|| reason.to_owned()),
                    ),
                }
            } else {
                DeliveryKind::Bounced {
                    hard: !matches!(reason, "old" | "espblock" | "greylisted" | "blacklisted"),
                    code: status.and_then(|s| {
                        string_field(s, "enhanced-code")
                            .or_else(|| string_field(s, "bounce-code"))
                            .or_else(|| {
                                s.get("code").and_then(Value::as_u64).map(|c| c.to_string())
                            })
                    }),
                    reason: status_text(),
                }
            }
        }
        "rejected" => DeliveryKind::Dropped {
            reason: object_field(data, "reject").and_then(|r| string_field(r, "reason")),
        },
        "opened" => DeliveryKind::Opened {
            machine: machine(data),
        },
        "clicked" => DeliveryKind::Clicked {
            url: required_str(data, "url", "a Mailgun clicked event")?.to_owned(),
            machine: machine(data),
        },
        "complained" => DeliveryKind::Complained,
        "unsubscribed" => DeliveryKind::Unsubscribed,
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

fn machine(data: &Object) -> bool {
    object_field(data, "client-info").is_some_and(|info| {
        info.get("bot").and_then(non_empty_str).is_some()
            || str_field(info, "user-agent").is_some_and(is_machine_user_agent)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hex_decoding() {
        assert_eq!(decode_hex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(decode_hex(""), Some(vec![]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é1"), None);
    }

    #[test]
    fn failed_events_map_by_severity_and_reason() {
        let kind_of = |severity: &str, reason: &str| {
            kind(
                json!({"event": "failed", "severity": severity, "reason": reason})
                    .as_object()
                    .unwrap(),
            )
            .unwrap()
            .unwrap()
        };
        assert!(matches!(
            kind_of("temporary", "generic"),
            DeliveryKind::Deferred { .. }
        ));
        assert!(matches!(
            kind_of("permanent", "suppress-unsubscribe"),
            DeliveryKind::Dropped { .. }
        ));
        assert!(matches!(
            kind_of("permanent", "old"),
            DeliveryKind::Bounced { hard: false, .. }
        ));
        assert!(matches!(
            kind_of("permanent", "bounce"),
            DeliveryKind::Bounced { hard: true, .. }
        ));
    }

    #[test]
    fn bot_flag_or_user_agent_makes_a_machine_open() {
        let open = |info: Value| {
            kind(
                json!({"event": "opened", "client-info": info})
                    .as_object()
                    .unwrap(),
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(
            open(json!({"bot": "apple", "user-agent": "Mozilla/5.0"})),
            DeliveryKind::Opened { machine: true }
        );
        assert_eq!(
            open(json!({"bot": "", "user-agent": "Mozilla/5.0"})),
            DeliveryKind::Opened { machine: true }
        );
        assert_eq!(
            open(
                json!({"bot": "", "user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 6_1 like Mac OS X)"})
            ),
            DeliveryKind::Opened { machine: false }
        );
    }
}
