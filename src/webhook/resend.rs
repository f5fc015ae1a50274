//! Resend webhooks, signed with Svix (Standard Webhooks).
//!
//! Authentication: HMAC-SHA256 keyed with the base64-decoded part of the `whsec_…` secret, over
//! `{svix-id}.{svix-timestamp}.{raw body}`; `svix-signature` holds space-separated `v1,<base64>`
//! entries (several during secret rotation) of which any one may match. The timestamp must lie
//! within 5 minutes of now, either way, as in the Svix libraries. The `webhook-*` header names of
//! Standard Webhooks are accepted too.
//!
//! No replay key: Svix resends a failed message with the same `svix-id` (freshly signed), so
//! refusing a second sight of an id would turn a lost 200 into endless failures. The signature
//! covers the body and the id is the event id, so a replay inside the window repeats stored
//! events only.
//!
//! Mapping of `type`: `email.delivered`; `email.delivery_delayed` → deferred; `email.bounced` is
//! hard when `bounce.type` is `Permanent` or absent (Resend documents the event as a permanent
//! rejection) and soft otherwise (`Transient`, `Undetermined`); `email.complained`;
//! `email.opened`; `email.clicked` (url `click.link`); `email.failed` and `email.suppressed` →
//! dropped. `email.sent`, `email.scheduled`, `contact.*`, `domain.*` and unknown types are
//! skipped. Our id is the tag `herald_message_id` (tags come as an object or as name/value
//! pairs), or the `X-Herald-Message-Id` header when the payload carries headers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::fields::{
    Object, header, lookup_named, non_empty_str, object_field, parse_object, required_str,
    rfc3339_field, str_field, string_field, within,
};
use super::{
    DeliveryEvent, DeliveryKind, HERALD_MESSAGE_ID_KEY, Outcome, Parsed, Provider,
    WebhookConfigError, WebhookError, WebhookRequest, is_machine_user_agent, normalize_message_id,
};
use crate::config::ResendWebhookSettings;
use crate::message::HERALD_MESSAGE_ID_HEADER;

/// The Svix timestamp window, either direction.
const TOLERANCE: TimeDelta = TimeDelta::minutes(5);

/// The Resend endpoint's signing secret.
pub(super) struct ResendVerifier {
    mac: Hmac<Sha256>,
}

impl ResendVerifier {
    pub(super) fn new(settings: &ResendWebhookSettings) -> Result<Self, WebhookConfigError> {
        let invalid = |m: &str| WebhookConfigError::new("webhooks.resend.secret", m);
        let secret = settings.secret.trim();
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| invalid("expected `whsec_` followed by base64"))?;
        if key.is_empty() {
            return Err(invalid("must be non-empty"));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
            .map_err(|_| invalid("unusable HMAC key"))?;
        Ok(ResendVerifier { mac })
    }

    pub(super) fn handle(&self, req: WebhookRequest<'_>) -> Result<Parsed, WebhookError> {
        let unauthorized = |m: &str| WebhookError::Unauthorized(m.to_owned());
        let svix = |name: &str| {
            header(req.headers, &format!("svix-{name}"))
                .or_else(|| header(req.headers, &format!("webhook-{name}")))
                .map(str::trim)
        };
        let id = svix("id").ok_or_else(|| unauthorized("missing svix-id"))?;
        let timestamp = svix("timestamp").ok_or_else(|| unauthorized("missing svix-timestamp"))?;
        let signatures = svix("signature").ok_or_else(|| unauthorized("missing svix-signature"))?;
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(req.body);
        let matches = signatures
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .any(|sig| mac.clone().verify_slice(&sig).is_ok());
        if !matches {
            return Err(unauthorized("no v1 signature matches"));
        }
        let signed_at = timestamp
            .parse::<i64>()
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| unauthorized("svix-timestamp is not unix seconds"))?;
        if !within(req.now, signed_at, TOLERANCE) {
            return Err(WebhookError::Replay(format!(
                "signed at {signed_at}, more than 5 minutes from now"
            )));
        }
        let body = parse_object(req.body)?;
        Ok(Parsed {
            outcome: Outcome::from_events(event(&body, id, req.now)?.into_iter().collect()),
            replay_key: None,
        })
    }
}

/// Normalizes an authenticated Resend body (one event).
fn event(
    body: &Object,
    svix_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<DeliveryEvent>, WebhookError> {
    let event_type = str_field(body, "type").unwrap_or_default();
    if !event_type.starts_with("email.") {
        return Ok(None);
    }
    let data = object_field(body, "data")
        .ok_or_else(|| WebhookError::Malformed(format!("{event_type} has no `data` object")))?;
    let user_agent = |key: &str| {
        object_field(data, key)
            .and_then(|o| str_field(o, "userAgent"))
            .is_some_and(is_machine_user_agent)
    };
    let kind = match event_type {
        "email.delivered" => DeliveryKind::Delivered,
        "email.delivery_delayed" => DeliveryKind::Deferred { reason: None },
        "email.bounced" => {
            let bounce = object_field(data, "bounce");
            let bounce_type = bounce.and_then(|b| str_field(b, "type"));
            DeliveryKind::Bounced {
                hard: bounce_type.is_none_or(|t| t == "Permanent"),
                code: bounce.and_then(|b| string_field(b, "subType")),
                reason: bounce.and_then(|b| string_field(b, "message")),
            }
        }
        "email.complained" => DeliveryKind::Complained,
        "email.opened" => DeliveryKind::Opened {
            machine: user_agent("open"),
        },
        "email.clicked" => {
            let click = object_field(data, "click").ok_or_else(|| {
                WebhookError::Malformed("email.clicked has no `click` object".to_owned())
            })?;
            DeliveryKind::Clicked {
                url: required_str(click, "link", "a Resend click")?.to_owned(),
                machine: user_agent("click"),
            }
        }
        "email.failed" => DeliveryKind::Dropped {
            reason: object_field(data, "failed").and_then(|f| string_field(f, "reason")),
        },
        "email.suppressed" => DeliveryKind::Dropped {
            reason: object_field(data, "suppressed")
                .and_then(|s| string_field(s, "message").or_else(|| string_field(s, "type"))),
        },
        _ => return Ok(None),
    };
    // Opens and clicks carry their own time; everything else happened when the event was made.
    let occurred_at = ["open", "click"]
        .iter()
        .filter_map(|k| object_field(data, k))
        .find_map(|o| rfc3339_field(o, "timestamp"))
        .or_else(|| rfc3339_field(body, "created_at"))
        .unwrap_or(now);
    Ok(Some(DeliveryEvent {
        provider: Provider::Resend,
        provider_event_id: svix_id.to_owned(),
        herald_message_id: lookup_named(data.get("tags"), HERALD_MESSAGE_ID_KEY)
            .or_else(|| lookup_named(data.get("headers"), HERALD_MESSAGE_ID_HEADER)),
        provider_message_id: str_field(data, "email_id").and_then(normalize_message_id),
        recipient: match data.get("to") {
            Some(serde_json::Value::Array(to)) => {
                to.iter().find_map(non_empty_str).map(str::to_owned)
            }
            _ => string_field(data, "to"),
        },
        occurred_at,
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_must_be_base64() {
        for bad in ["whsec_not base64!", "whsec_", ""] {
            assert!(
                ResendVerifier::new(&ResendWebhookSettings {
                    secret: bad.to_owned()
                })
                .is_err(),
                "{bad}"
            );
        }
        assert!(
            ResendVerifier::new(&ResendWebhookSettings {
                secret: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()
            })
            .is_ok()
        );
    }

    #[test]
    fn bounce_hardness_follows_bounce_type() {
        let now = DateTime::from_timestamp(0, 0).unwrap();
        let bounce = |b: serde_json::Value| {
            let body = serde_json::json!({"type": "email.bounced", "data": {"bounce": b}});
            event(body.as_object().unwrap(), "msg_1", now)
                .unwrap()
                .unwrap()
                .kind
        };
        assert!(matches!(
            bounce(serde_json::json!({"type": "Permanent"})),
            DeliveryKind::Bounced { hard: true, .. }
        ));
        assert!(matches!(
            bounce(serde_json::json!({"type": "Transient"})),
            DeliveryKind::Bounced { hard: false, .. }
        ));
        assert!(matches!(
            bounce(serde_json::json!({})),
            DeliveryKind::Bounced { hard: true, .. }
        ));
    }
}
