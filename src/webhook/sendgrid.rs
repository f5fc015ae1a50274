//! SendGrid Event Webhook (signed).
//!
//! Authentication: ECDSA P-256 / SHA-256 over the `X-Twilio-Email-Event-Webhook-Timestamp` value
//! immediately followed by the raw body (its trailing CRLF included); the signature header is
//! base64 DER, the key base64 DER `SubjectPublicKeyInfo`. SendGrid documents no freshness window
//! and its SDKs check none, so none is enforced: the signature covers the body, so a replay can
//! only repeat events whose `sg_event_id`s are already stored.
//!
//! The body is a JSON array of event objects. Custom args (our `herald_message_id`) are flattened
//! into each object. Mapping: `delivered`; `deferred` (reason = `response`); `bounce` with
//! `type: "bounce"` is hard and `type: "blocked"` soft (without `type`, a 4.x.x `status` is soft,
//! anything else hard); `dropped`; `open` (machine when `sg_machine_open` or the user agent says
//! so); `click`; `spamreport` → complained; `unsubscribe` and `group_unsubscribe` →
//! unsubscribed. `processed`, `group_resubscribe` and unknown events are skipped.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::fields::{
    Object, header, parse_json, record_hash, required_str, str_field, string_field, unix_seconds,
};
use super::{
    DeliveryEvent, DeliveryKind, HERALD_MESSAGE_ID_KEY, Outcome, Parsed, Provider,
    WebhookConfigError, WebhookError, WebhookRequest, is_machine_user_agent, normalize_message_id,
};
use crate::config::SendgridWebhookSettings;

const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// The SendGrid endpoint's verification key.
pub(super) struct SendgridVerifier {
    key: ParsedPublicKey,
}

impl SendgridVerifier {
    pub(super) fn new(settings: &SendgridWebhookSettings) -> Result<Self, WebhookConfigError> {
        let invalid = |m: &str| WebhookConfigError::new("webhooks.sendgrid.public_key", m);
        // SendGrid shows bare base64; accept a PEM block too, since that is how people store keys.
        let base64: String = settings
            .public_key
            .lines()
            .filter(|l| !l.trim_start().starts_with("-----"))
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect();
        let der = STANDARD
            .decode(base64)
            .map_err(|_| invalid("not base64 (expected the key as SendGrid shows it)"))?;
        let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der)
            .map_err(|_| invalid("not a P-256 public key (DER SubjectPublicKeyInfo)"))?;
        Ok(SendgridVerifier { key })
    }

    pub(super) fn handle(&self, req: WebhookRequest<'_>) -> Result<Parsed, WebhookError> {
        let unauthorized = |m: &str| WebhookError::Unauthorized(m.to_owned());
        let signature = header(req.headers, SIGNATURE_HEADER)
            .ok_or_else(|| unauthorized("missing X-Twilio-Email-Event-Webhook-Signature"))?;
        let timestamp = header(req.headers, TIMESTAMP_HEADER)
            .ok_or_else(|| unauthorized("missing X-Twilio-Email-Event-Webhook-Timestamp"))?;
        let signature = STANDARD
            .decode(signature.trim())
            .map_err(|_| unauthorized("signature is not base64"))?;
        let mut signed = Vec::with_capacity(timestamp.len() + req.body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(req.body);
        self.key
            .verify_sig(&signed, &signature)
            .map_err(|_| unauthorized("signature does not match"))?;
        Ok(Parsed {
            outcome: Outcome::from_events(parse(req.body, req.now)?),
            replay_key: None,
        })
    }
}

/// Normalizes an authenticated SendGrid body.
fn parse(body: &[u8], now: DateTime<Utc>) -> Result<Vec<DeliveryEvent>, WebhookError> {
    let Value::Array(records) = parse_json(body)? else {
        return Err(WebhookError::Malformed(
            "expected a JSON array of events".to_owned(),
        ));
    };
    let mut events = Vec::new();
    for record in &records {
        let Value::Object(obj) = record else {
            return Err(WebhookError::Malformed(
                "every event must be a JSON object".to_owned(),
            ));
        };
        if let Some(kind) = kind(obj)? {
            events.push(DeliveryEvent {
                provider: Provider::Sendgrid,
                provider_event_id: string_field(obj, "sg_event_id")
                    .unwrap_or_else(|| record_hash(record)),
                herald_message_id: string_field(obj, HERALD_MESSAGE_ID_KEY),
                provider_message_id: str_field(obj, "sg_message_id").and_then(send_message_id),
                recipient: string_field(obj, "email"),
                occurred_at: obj.get("timestamp").and_then(unix_seconds).unwrap_or(now),
                kind,
            });
        }
    }
    Ok(events)
}

/// The id SendGrid's send API returned (`X-Message-Id`): `sg_message_id` is that id followed by
/// `.filter…` (or `.recv…`) routing suffixes.
fn send_message_id(sg_message_id: &str) -> Option<String> {
    let base = [".filter", ".recv"]
        .iter()
        .filter_map(|suffix| sg_message_id.find(suffix))
        .min()
        .map_or(sg_message_id, |at| &sg_message_id[..at]);
    normalize_message_id(base)
}

/// The normalized kind of one record, `None` for records Herald does not record.
fn kind(obj: &Object) -> Result<Option<DeliveryKind>, WebhookError> {
    let machine_ua = || str_field(obj, "useragent").is_some_and(is_machine_user_agent);
    let kind = match str_field(obj, "event").unwrap_or_default() {
        "delivered" => DeliveryKind::Delivered,
        "deferred" => DeliveryKind::Deferred {
            reason: string_field(obj, "response").or_else(|| string_field(obj, "reason")),
        },
        "bounce" => {
            let status = string_field(obj, "status");
            let hard = match str_field(obj, "type") {
                Some("blocked") => false,
                Some("bounce") => true,
                _ => !status.as_deref().is_some_and(|s| s.starts_with('4')),
            };
            DeliveryKind::Bounced {
                hard,
                code: status,
                reason: string_field(obj, "reason"),
            }
        }
        "dropped" => DeliveryKind::Dropped {
            reason: string_field(obj, "reason"),
        },
        "open" => DeliveryKind::Opened {
            machine: obj.get("sg_machine_open").and_then(Value::as_bool) == Some(true)
                || machine_ua(),
        },
        "click" => DeliveryKind::Clicked {
            url: required_str(obj, "url", "a SendGrid click event")?.to_owned(),
            machine: machine_ua(),
        },
        "spamreport" => DeliveryKind::Complained,
        "unsubscribe" | "group_unsubscribe" => DeliveryKind::Unsubscribed,
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_message_id_strips_routing_suffixes() {
        assert_eq!(
            send_message_id(
                "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
            ),
            Some("LRzXl_NHStOGhQ4kofSm_A".to_owned())
        );
        assert_eq!(
            send_message_id("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"),
            Some("14c5d75ce93.dfd.64b469".to_owned())
        );
        assert_eq!(send_message_id("abc.recvd-5f8f.0"), Some("abc".to_owned()));
        assert_eq!(send_message_id("plain"), Some("plain".to_owned()));
    }

    #[test]
    fn bounce_without_type_is_classed_by_status() {
        let obj = |status: &str| {
            serde_json::json!({"event": "bounce", "status": status})
                .as_object()
                .cloned()
                .unwrap()
        };
        assert!(matches!(
            kind(&obj("4.2.2")),
            Ok(Some(DeliveryKind::Bounced { hard: false, .. }))
        ));
        assert!(matches!(
            kind(&obj("5.1.1")),
            Ok(Some(DeliveryKind::Bounced { hard: true, .. }))
        ));
    }

    #[test]
    fn shape_errors_are_malformed() {
        let now = DateTime::from_timestamp(0, 0).unwrap();
        assert!(matches!(parse(b"{}", now), Err(WebhookError::Malformed(_))));
        assert!(matches!(
            parse(b"[1]", now),
            Err(WebhookError::Malformed(_))
        ));
        assert!(matches!(
            parse(br#"[{"event":"click"}]"#, now),
            Err(WebhookError::Malformed(_))
        ));
        assert_eq!(parse(br#"[{"event":"processed"}, {}]"#, now), Ok(vec![]));
    }
}
