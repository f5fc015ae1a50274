//! The SES event inside a verified SNS `Message` (see [`super::sns`] for the envelope).
//!
//! Two formats arrive: configuration-set event publishing (`eventType`) and the older identity
//! notifications (`notificationType`: Bounce, Complaint, Delivery). Mapping: `Delivery` (one event
//! per `delivery.recipients`); `Bounce` per bounced recipient, hard for `bounceType: Permanent`
//! and soft for `Transient` and `Undetermined` (code = DSN `status`, reason = `diagnosticCode`);
//! `Complaint` per complained recipient (except `complaintFeedbackType: not-spam`, which retracts
//! one); `DeliveryDelay` → deferred per delayed recipient; `Open`, `Click` (`click.link`);
//! `Reject` and `Rendering Failure` → dropped; `Subscription` → unsubscribed when
//! `newTopicPreferences.unsubscribeAll` (topic-level preferences are SES list management, which
//! Herald does not model). `Send` and unknown types are skipped, and so is a `Message` that is not
//! JSON (SES's own "Successfully validated" notice, a test publish).
//!
//! Event ids are the SNS `MessageId` plus `:index` of the event within the message. Our id is the
//! `X-Herald-Message-Id` header in `mail.headers` (present when the configuration set includes
//! original headers), else the `herald_message_id` message tag.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::fields::{
    Object, lookup_named, non_empty_str, object_field, required_str, rfc3339_field, str_field,
    string_field,
};
use super::{
    DeliveryEvent, DeliveryKind, HERALD_MESSAGE_ID_KEY, Outcome, Provider, WebhookError,
    is_machine_user_agent, normalize_message_id,
};
use crate::message::HERALD_MESSAGE_ID_HEADER;

/// Normalizes the `Message` of a verified SNS notification sent at `sns_timestamp`.
pub(super) fn outcome(
    message: &str,
    sns_message_id: &str,
    sns_timestamp: DateTime<Utc>,
) -> Result<Outcome, WebhookError> {
    let Ok(Value::Object(event)) = serde_json::from_str::<Value>(message) else {
        return Ok(Outcome::Ignored);
    };
    let Some(event_type) =
        str_field(&event, "eventType").or_else(|| str_field(&event, "notificationType"))
    else {
        return Ok(Outcome::Ignored);
    };
    let entries = entries(&event, event_type)?;
    if entries.is_empty() {
        return Ok(Outcome::Ignored);
    }
    let mail = object_field(&event, "mail")
        .ok_or_else(|| WebhookError::Malformed(format!("SES {event_type} event has no `mail`")))?;
    let herald_message_id = lookup_named(mail.get("headers"), HERALD_MESSAGE_ID_HEADER)
        .or_else(|| lookup_named(mail.get("tags"), HERALD_MESSAGE_ID_KEY));
    let provider_message_id = str_field(mail, "messageId").and_then(normalize_message_id);
    // Open, click and the like name no recipient; Herald sends one recipient per message.
    let sole_destination = match mail.get("destination") {
        Some(Value::Array(d)) if d.len() == 1 => d.first().and_then(non_empty_str),
        _ => None,
    };
    let fallback_time = rfc3339_field(mail, "timestamp").unwrap_or(sns_timestamp);
    Ok(Outcome::Events(
        entries
            .into_iter()
            .enumerate()
            .map(|(index, entry)| DeliveryEvent {
                provider: Provider::Ses,
                provider_event_id: format!("{sns_message_id}:{index}"),
                herald_message_id: herald_message_id.clone(),
                provider_message_id: provider_message_id.clone(),
                recipient: entry
                    .recipient
                    .or_else(|| sole_destination.map(str::to_owned)),
                occurred_at: entry.at.unwrap_or(fallback_time),
                kind: entry.kind,
            })
            .collect(),
    ))
}

/// One normalized event before the shared fields are added.
struct Entry {
    recipient: Option<String>,
    at: Option<DateTime<Utc>>,
    kind: DeliveryKind,
}

/// The events of one SES message.
fn entries(event: &Object, event_type: &str) -> Result<Vec<Entry>, WebhookError> {
    // The detail object of each type, named after it.
    let detail = |key: &str| {
        object_field(event, key).ok_or_else(|| {
            WebhookError::Malformed(format!("SES {event_type} event has no `{key}` object"))
        })
    };
    // One entry per recipient object in `detail[list]`.
    let per_recipient = |detail: &Object, list: &str, kind: &dyn Fn(&Object) -> DeliveryKind| {
        let at = rfc3339_field(detail, "timestamp");
        let recipients = detail.get(list).and_then(Value::as_array).ok_or_else(|| {
            WebhookError::Malformed(format!("SES {event_type} event has no `{list}` list"))
        })?;
        recipients
            .iter()
            .map(|r| {
                let r = r.as_object().ok_or_else(|| {
                    WebhookError::Malformed(format!(
                        "SES {event_type} `{list}` entry is not an object"
                    ))
                })?;
                Ok(Entry {
                    recipient: Some(required_str(r, "emailAddress", list)?.to_owned()),
                    at,
                    kind: kind(r),
                })
            })
            .collect::<Result<Vec<_>, WebhookError>>()
    };
    let single = |detail: &Object, kind: DeliveryKind| {
        vec![Entry {
            recipient: None,
            at: rfc3339_field(detail, "timestamp"),
            kind,
        }]
    };
    Ok(match event_type {
        "Delivery" => {
            let delivery = detail("delivery")?;
            let at = rfc3339_field(delivery, "timestamp");
            let recipients = delivery
                .get("recipients")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    WebhookError::Malformed("SES Delivery event has no `recipients`".to_owned())
                })?;
            recipients
                .iter()
                .filter_map(non_empty_str)
                .map(|r| Entry {
                    recipient: Some(r.to_owned()),
                    at,
                    kind: DeliveryKind::Delivered,
                })
                .collect()
        }
        "Bounce" => {
            let bounce = detail("bounce")?;
            let hard = str_field(bounce, "bounceType") == Some("Permanent");
            per_recipient(bounce, "bouncedRecipients", &|r| DeliveryKind::Bounced {
                hard,
                code: string_field(r, "status"),
                reason: string_field(r, "diagnosticCode")
                    .or_else(|| string_field(bounce, "bounceSubType")),
            })?
        }
        "Complaint" => {
            let complaint = detail("complaint")?;
            if str_field(complaint, "complaintFeedbackType") == Some("not-spam") {
                Vec::new()
            } else {
                per_recipient(complaint, "complainedRecipients", &|_| {
                    DeliveryKind::Complained
                })?
            }
        }
        "DeliveryDelay" => {
            let delay = detail("deliveryDelay")?;
            per_recipient(delay, "delayedRecipients", &|r| DeliveryKind::Deferred {
                reason: string_field(r, "diagnosticCode")
                    .or_else(|| string_field(delay, "delayType")),
            })?
        }
        "Open" => {
            let open = detail("open")?;
            single(
                open,
                DeliveryKind::Opened {
                    machine: str_field(open, "userAgent").is_some_and(is_machine_user_agent),
                },
            )
        }
        "Click" => {
            let click = detail("click")?;
            single(
                click,
                DeliveryKind::Clicked {
                    url: required_str(click, "link", "an SES Click event")?.to_owned(),
                    machine: str_field(click, "userAgent").is_some_and(is_machine_user_agent),
                },
            )
        }
        "Reject" => {
            let reject = detail("reject")?;
            single(
                reject,
                DeliveryKind::Dropped {
                    reason: string_field(reject, "reason"),
                },
            )
        }
        "Rendering Failure" | "RenderingFailure" => {
            let failure = detail("failure")?;
            single(
                failure,
                DeliveryKind::Dropped {
                    reason: string_field(failure, "errorMessage"),
                },
            )
        }
        "Subscription" => {
            let subscription = detail("subscription")?;
            let unsubscribe_all = object_field(subscription, "newTopicPreferences")
                .and_then(|p| p.get("unsubscribeAll"))
                .and_then(Value::as_bool)
                == Some(true);
            if unsubscribe_all {
                single(subscription, DeliveryKind::Unsubscribed)
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn non_json_and_untyped_messages_are_ignored() {
        for message in [
            "Hello world",
            "[1,2]",
            "{}",
            r#"{"eventType": 5}"#,
            r#"{"eventType":"Send","mail":{}}"#,
        ] {
            assert_eq!(
                outcome(message, "m", now()),
                Ok(Outcome::Ignored),
                "{message}"
            );
        }
    }

    #[test]
    fn known_types_missing_their_details_are_malformed() {
        for message in [
            r#"{"eventType":"Bounce","mail":{}}"#,
            r#"{"eventType":"Bounce","bounce":{"bouncedRecipients":[{}]},"mail":{}}"#,
            r#"{"eventType":"Bounce","bounce":{"bouncedRecipients":[1]},"mail":{}}"#,
            r#"{"eventType":"Click","click":{},"mail":{}}"#,
            r#"{"eventType":"Delivery","delivery":{"recipients":["a@b"]}}"#,
        ] {
            assert!(
                matches!(
                    outcome(message, "m", now()),
                    Err(WebhookError::Malformed(_))
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn herald_id_comes_from_header_then_tag() {
        let message = r#"{"eventType":"Delivery","delivery":{"recipients":["a@b"]},
            "mail":{"messageId":"p-1","headers":[{"name":"x-herald-message-id","value":"h-1"}],
                    "tags":{"herald_message_id":["h-2"]}}}"#;
        let Ok(Outcome::Events(events)) = outcome(message, "sns-1", now()) else {
            panic!("expected events");
        };
        assert_eq!(events[0].herald_message_id.as_deref(), Some("h-1"));
        assert_eq!(events[0].provider_event_id, "sns-1:0");
        assert_eq!(events[0].occurred_at, now());
        let message = r#"{"eventType":"Delivery","delivery":{"recipients":["a@b"]},
            "mail":{"messageId":"p-1","tags":{"herald_message_id":["h-2"]}}}"#;
        let Ok(Outcome::Events(events)) = outcome(message, "sns-1", now()) else {
            panic!("expected events");
        };
        assert_eq!(events[0].herald_message_id.as_deref(), Some("h-2"));
    }

    #[test]
    fn not_spam_feedback_is_not_a_complaint() {
        let message = r#"{"notificationType":"Complaint","complaint":{"complaintFeedbackType":"not-spam",
            "complainedRecipients":[{"emailAddress":"a@b"}]},"mail":{}}"#;
        assert_eq!(outcome(message, "m", now()), Ok(Outcome::Ignored));
    }
}
