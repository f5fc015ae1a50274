//! Postmark webhooks (every type: Delivery, Bounce, SpamComplaint, Open, Click,
//! SubscriptionChange).
//!
//! Authentication: Postmark does not sign webhooks; the webhook URL is configured with HTTP Basic
//! credentials, compared here in constant time. Postmark has no event id and no timestamp header,
//! so the event id is a hash of the record (the same on every retry) and there is no time window;
//! a replayed body only repeats an event already stored.
//!
//! Bounce `Type` mapping (Postmark's bounce type list):
//! - hard: `HardBounce`, `BadEmailAddress`, `ManuallyDeactivated`, and any bounce for which
//!   Postmark deactivated the address (`Inactive: true`), since Postmark refuses further sends to
//!   it anyway;
//! - complained: `SpamComplaint`; unsubscribed: `Unsubscribe`;
//! - dropped (never reached the recipient): `SMTPApiError`, `TemplateRenderingFailed`,
//!   `Unconfirmed`;
//! - skipped, not delivery outcomes: `AutoResponder`, `AddressChange`, `Subscribe`,
//!   `OpenRelayTest`, `InboundError`, `ChallengeVerification`, `VirusNotification`;
//! - soft: everything else (`SoftBounce`, `Transient`, `DnsError`, `SpamNotification`, `Blocked`,
//!   `DMARCPolicy`, `Unknown`, and types Postmark adds later).
//!
//! `SubscriptionChange` with `SuppressSending: true` is unsubscribed, except that the reasons
//! `HardBounce` and `SpamComplaint` map to a hard bounce and a complaint (Postmark fires it beside
//! the Bounce or SpamComplaint record, so those arrive twice under different event ids).
//! `SuppressSending: false` (reactivation) is skipped. Opens and clicks are machine when the user
//! agent says so: Postmark flags nothing itself.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::fields::{
    Object, header, object_field, parse_object, record_hash, required_str, rfc3339_field,
    str_field, string_field,
};
use super::{
    DeliveryEvent, DeliveryKind, HERALD_MESSAGE_ID_KEY, Outcome, Parsed, Provider,
    WebhookConfigError, WebhookError, WebhookRequest, is_machine_user_agent, normalize_message_id,
};
use crate::config::PostmarkWebhookSettings;

/// The Postmark endpoint's Basic credentials.
pub(super) struct PostmarkVerifier {
    username: Vec<u8>,
    password: Vec<u8>,
}

impl PostmarkVerifier {
    pub(super) fn new(settings: &PostmarkWebhookSettings) -> Result<Self, WebhookConfigError> {
        if settings.username.is_empty() || settings.username.contains(':') {
            return Err(WebhookConfigError::new(
                "webhooks.postmark.username",
                "must be non-empty and contain no `:` (HTTP Basic)",
            ));
        }
        if settings.password.is_empty() {
            return Err(WebhookConfigError::new(
                "webhooks.postmark.password",
                "must be non-empty",
            ));
        }
        Ok(PostmarkVerifier {
            username: settings.username.as_bytes().to_vec(),
            password: settings.password.as_bytes().to_vec(),
        })
    }

    pub(super) fn handle(&self, req: WebhookRequest<'_>) -> Result<Parsed, WebhookError> {
        self.authenticate(header(req.headers, "authorization"))?;
        Ok(Parsed {
            outcome: Outcome::from_events(parse(req.body, req.now)?.into_iter().collect()),
            replay_key: None,
        })
    }

    fn authenticate(&self, authorization: Option<&str>) -> Result<(), WebhookError> {
        let unauthorized = |m: &str| WebhookError::Unauthorized(m.to_owned());
        let value = authorization.ok_or_else(|| unauthorized("missing Authorization header"))?;
        let (scheme, credentials) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| unauthorized("Authorization is not Basic"))?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(unauthorized("Authorization is not Basic"));
        }
        let decoded = STANDARD
            .decode(credentials.trim())
            .map_err(|_| unauthorized("Basic credentials are not base64"))?;
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| unauthorized("Basic credentials have no `:`"))?;
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        // Both halves are always compared, so timing does not tell which one was wrong.
        let ok = user.ct_eq(&self.username) & pass.ct_eq(&self.password);
        if bool::from(ok) {
            Ok(())
        } else {
            Err(unauthorized("wrong Basic credentials"))
        }
    }
}

/// Normalizes an authenticated Postmark body (one record).
fn parse(body: &[u8], now: DateTime<Utc>) -> Result<Option<DeliveryEvent>, WebhookError> {
    let obj = parse_object(body)?;
    let record_type = str_field(&obj, "RecordType").unwrap_or_default();
    let (kind, time_key, recipient_key) = match record_type {
        "Delivery" => (Some(DeliveryKind::Delivered), "DeliveredAt", "Recipient"),
        "Bounce" => (bounce_kind(&obj), "BouncedAt", "Email"),
        "SpamComplaint" => (Some(DeliveryKind::Complained), "BouncedAt", "Email"),
        "Open" => (
            Some(DeliveryKind::Opened {
                machine: machine(&obj),
            }),
            "ReceivedAt",
            "Recipient",
        ),
        "Click" => (
            Some(DeliveryKind::Clicked {
                url: required_str(&obj, "OriginalLink", "a Postmark Click record")?.to_owned(),
                machine: machine(&obj),
            }),
            "ReceivedAt",
            "Recipient",
        ),
        "SubscriptionChange" => (subscription_kind(&obj), "ChangedAt", "Recipient"),
        _ => (None, "", ""),
    };
    let Some(kind) = kind else {
        return Ok(None);
    };
    Ok(Some(DeliveryEvent {
        provider: Provider::Postmark,
        provider_event_id: record_hash(&Value::Object(obj.clone())),
        herald_message_id: object_field(&obj, "Metadata")
            .and_then(|m| string_field(m, HERALD_MESSAGE_ID_KEY)),
        provider_message_id: str_field(&obj, "MessageID").and_then(normalize_message_id),
        recipient: string_field(&obj, recipient_key)
            .or_else(|| string_field(&obj, "Recipient"))
            .or_else(|| string_field(&obj, "Email")),
        occurred_at: rfc3339_field(&obj, time_key).unwrap_or(now),
        kind,
    }))
}

fn machine(obj: &Object) -> bool {
    str_field(obj, "UserAgent").is_some_and(is_machine_user_agent)
}

/// Maps a Bounce record by its `Type` (see the module docs).
fn bounce_kind(obj: &Object) -> Option<DeliveryKind> {
    let bounce_type = str_field(obj, "Type").unwrap_or("Unknown");
    let reason = string_field(obj, "Details").or_else(|| string_field(obj, "Description"));
    let hard = match bounce_type {
        "SpamComplaint" => return Some(DeliveryKind::Complained),
        "Unsubscribe" => return Some(DeliveryKind::Unsubscribed),
        "SMTPApiError" | "TemplateRenderingFailed" | "Unconfirmed" => {
            return Some(DeliveryKind::Dropped { reason });
        }
        "AutoResponder"
        | "AddressChange"
        | "Subscribe"
        | "OpenRelayTest"
        | "InboundError"
        | "ChallengeVerification"
        | "VirusNotification" => return None,
        "HardBounce" | "BadEmailAddress" | "ManuallyDeactivated" => true,
        _ => obj.get("Inactive").and_then(Value::as_bool) == Some(true),
    };
    Some(DeliveryKind::Bounced {
        hard,
        code: Some(bounce_type.to_owned()),
        reason,
    })
}

/// Maps a SubscriptionChange record (see the module docs).
fn subscription_kind(obj: &Object) -> Option<DeliveryKind> {
    if obj.get("SuppressSending").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    Some(match str_field(obj, "SuppressionReason") {
        Some("HardBounce") => DeliveryKind::Bounced {
            hard: true,
            code: Some("HardBounce".to_owned()),
            reason: Some("Postmark suppressed the address after a hard bounce".to_owned()),
        },
        Some("SpamComplaint") => DeliveryKind::Complained,
        _ => DeliveryKind::Unsubscribed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> PostmarkVerifier {
        PostmarkVerifier::new(&PostmarkWebhookSettings {
            username: "hook".to_owned(),
            password: "s3cret:with:colons".to_owned(),
        })
        .unwrap()
    }

    fn basic(credentials: &str) -> String {
        format!("Basic {}", STANDARD.encode(credentials))
    }

    #[test]
    fn basic_auth_accepts_only_the_configured_pair() {
        let v = verifier();
        assert!(
            v.authenticate(Some(&basic("hook:s3cret:with:colons")))
                .is_ok()
        );
        assert!(
            v.authenticate(Some(&format!(
                "basic   {}",
                STANDARD.encode("hook:s3cret:with:colons")
            )))
            .is_ok()
        );
        for bad in [
            basic("hook:s3cret"),
            basic("Hook:s3cret:with:colons"),
            basic("hook"),
            basic(""),
            "Bearer abc".to_owned(),
            "Basic ***".to_owned(),
            "Basic".to_owned(),
        ] {
            assert!(
                matches!(
                    v.authenticate(Some(&bad)),
                    Err(WebhookError::Unauthorized(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            v.authenticate(None),
            Err(WebhookError::Unauthorized(_))
        ));
    }

    #[test]
    fn empty_credentials_are_refused_at_startup() {
        for (username, password) in [("", "p"), ("u", ""), ("a:b", "p")] {
            assert!(
                PostmarkVerifier::new(&PostmarkWebhookSettings {
                    username: username.to_owned(),
                    password: password.to_owned(),
                })
                .is_err()
            );
        }
    }

    #[test]
    fn bounce_types_map_as_documented() {
        let kind_of = |t: &str, inactive: bool| {
            bounce_kind(
                serde_json::json!({"Type": t, "Inactive": inactive})
                    .as_object()
                    .unwrap(),
            )
        };
        let hard =
            |k: Option<DeliveryKind>| matches!(k, Some(DeliveryKind::Bounced { hard, .. }) if hard);
        let soft = |k: Option<DeliveryKind>| matches!(k, Some(DeliveryKind::Bounced { hard, .. }) if !hard);
        for t in ["HardBounce", "BadEmailAddress", "ManuallyDeactivated"] {
            assert!(hard(kind_of(t, false)), "{t}");
        }
        for t in [
            "SoftBounce",
            "Transient",
            "DnsError",
            "SpamNotification",
            "Blocked",
            "DMARCPolicy",
            "Unknown",
            "SomethingNew",
        ] {
            assert!(soft(kind_of(t, false)), "{t}");
        }
        assert!(hard(kind_of("SoftBounce", true)));
        assert_eq!(
            kind_of("SpamComplaint", false),
            Some(DeliveryKind::Complained)
        );
        assert_eq!(
            kind_of("Unsubscribe", false),
            Some(DeliveryKind::Unsubscribed)
        );
        assert!(matches!(
            kind_of("SMTPApiError", false),
            Some(DeliveryKind::Dropped { .. })
        ));
        for t in [
            "AutoResponder",
            "AddressChange",
            "Subscribe",
            "OpenRelayTest",
            "InboundError",
            "ChallengeVerification",
            "VirusNotification",
        ] {
            assert_eq!(kind_of(t, true), None, "{t}");
        }
    }

    #[test]
    fn subscription_changes_map_by_reason() {
        let kind_of = |suppress: bool, reason: &str| {
            subscription_kind(
                serde_json::json!({"SuppressSending": suppress, "SuppressionReason": reason})
                    .as_object()
                    .unwrap(),
            )
        };
        assert!(matches!(
            kind_of(true, "HardBounce"),
            Some(DeliveryKind::Bounced { hard: true, .. })
        ));
        assert_eq!(
            kind_of(true, "SpamComplaint"),
            Some(DeliveryKind::Complained)
        );
        assert_eq!(
            kind_of(true, "ManualSuppression"),
            Some(DeliveryKind::Unsubscribed)
        );
        assert_eq!(kind_of(false, "ManualSuppression"), None);
    }
}
