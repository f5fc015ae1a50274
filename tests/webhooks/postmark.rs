use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::config::{PostmarkWebhookSettings, WebhookSettings};
use herald::webhook::{DeliveryKind, Parsed, Provider, Verifier, WebhookError};

use crate::support::*;

fn postmark() -> Verifier {
    verifier(WebhookSettings {
        postmark: Some(PostmarkWebhookSettings {
            username: "postmark".to_owned(),
            password: "correct horse battery staple".to_owned(),
        }),
        ..WebhookSettings::default()
    })
}

fn basic(credentials: &str) -> axum::http::HeaderMap {
    headers(&[(
        "Authorization",
        &format!("Basic {}", STANDARD.encode(credentials)),
    )])
}

async fn post(body: &[u8]) -> Result<Parsed, WebhookError> {
    let auth = basic("postmark:correct horse battery staple");
    handle(
        &postmark(),
        Provider::Postmark,
        &auth,
        body,
        at("2026-11-28T12:00:00Z"),
    )
    .await
}

async fn sample(file: &str) -> Result<Parsed, WebhookError> {
    post(&fixture(&format!("postmark/{file}"))).await
}

#[tokio::test]
async fn samples_normalize() {
    let delivered = one(sample("delivered.json").await);
    assert_eq!(delivered.kind, DeliveryKind::Delivered);
    assert_eq!(delivered.provider, Provider::Postmark);
    assert_eq!(
        delivered.provider_message_id.as_deref(),
        Some("883953f4-6105-42a2-a16a-77a8eac79483")
    );
    assert_eq!(delivered.recipient.as_deref(), Some("john@example.com"));
    assert_eq!(delivered.occurred_at, at("2019-11-05T16:33:54.9070259Z"));
    assert!(delivered.provider_event_id.starts_with("sha256:"));
    assert_eq!(delivered.herald_message_id, None);

    let bounce = one(sample("bounce_hard.json").await);
    assert_eq!(
        bounce.kind,
        hard_bounce(Some("HardBounce"), Some("Test bounce details"))
    );
    assert_eq!(bounce.recipient.as_deref(), Some("john@example.com"));
    assert_eq!(bounce.occurred_at, at("2019-11-05T16:33:54.9070259Z"));

    let open = one(sample("open.json").await);
    assert_eq!(open.kind, DeliveryKind::Opened { machine: false });
    assert_eq!(open.occurred_at, at("2019-11-05T16:33:54.9070259Z"));

    let click = one(sample("click.json").await);
    assert_eq!(
        click.kind,
        DeliveryKind::Clicked {
            url: "https://example.com".to_owned(),
            machine: false
        }
    );
    assert_eq!(
        click.provider_message_id.as_deref(),
        Some("00000000-0000-0000-0000-000000000000")
    );

    let complaint = one(sample("complaint.json").await);
    assert_eq!(complaint.kind, DeliveryKind::Complained);
    assert_eq!(complaint.recipient.as_deref(), Some("john@example.com"));

    // SubscriptionChange with SuppressionReason HardBounce is the hard bounce, not an unsubscribe.
    let change = one(sample("unsubscribe.json").await);
    assert!(matches!(
        change.kind,
        DeliveryKind::Bounced { hard: true, .. }
    ));
    assert_eq!(
        change.recipient.as_deref(),
        Some("bounced-address@wildbit.com")
    );
    assert_eq!(change.occurred_at, at("2020-02-01T10:53:34.416071Z"));
}

#[tokio::test]
async fn subscription_changes_by_reason() {
    let mut record = json_fixture("postmark/unsubscribe.json");
    record["SuppressionReason"] = "ManualSuppression".into();
    let body = serde_json::to_vec(&record).unwrap();
    assert_eq!(one(post(&body).await).kind, DeliveryKind::Unsubscribed);
    record["SuppressionReason"] = "SpamComplaint".into();
    let body = serde_json::to_vec(&record).unwrap();
    assert_eq!(one(post(&body).await).kind, DeliveryKind::Complained);
    // Reactivation is nothing Herald records.
    record["SuppressSending"] = false.into();
    let body = serde_json::to_vec(&record).unwrap();
    assert_ignored(post(&body).await);
}

#[tokio::test]
async fn metadata_carries_our_message_id() {
    let mut record = json_fixture("postmark/delivered.json");
    record["Metadata"]["herald_message_id"] = "0190f1a8-0000-7000-8000-000000000002".into();
    let event = one(post(&serde_json::to_vec(&record).unwrap()).await);
    assert_eq!(
        event.herald_message_id.as_deref(),
        Some("0190f1a8-0000-7000-8000-000000000002")
    );
}

#[tokio::test]
async fn event_id_is_stable_across_retries_and_formatting() {
    let body = fixture("postmark/open.json");
    let first = one(post(&body).await);
    let retry = one(post(&body).await);
    assert_eq!(first, retry);
    let compact = serde_json::to_vec(&json_fixture("postmark/open.json")).unwrap();
    assert_eq!(
        one(post(&compact).await).provider_event_id,
        first.provider_event_id
    );
    // A different open is a different event.
    let mut other = json_fixture("postmark/open.json");
    other["ReceivedAt"] = "2019-11-05T16:40:00Z".into();
    let other = one(post(&serde_json::to_vec(&other).unwrap()).await);
    assert_ne!(other.provider_event_id, first.provider_event_id);
}

#[tokio::test]
async fn machine_opens_are_flagged_by_user_agent() {
    let mut record = json_fixture("postmark/open.json");
    record["UserAgent"] = "Mozilla/5.0".into();
    let event = one(post(&serde_json::to_vec(&record).unwrap()).await);
    assert_eq!(event.kind, DeliveryKind::Opened { machine: true });
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused() {
    let v = postmark();
    let body = fixture("postmark/bounce_hard.json");
    let now = at("2026-11-28T12:00:00Z");
    for auth in [
        basic("postmark:wrong"),
        basic("other:correct horse battery staple"),
        basic("postmark"),
        headers(&[("Authorization", "Bearer correct horse battery staple")]),
        headers(&[]),
    ] {
        assert_unauthorized(handle(&v, Provider::Postmark, &auth, &body, now).await);
    }
}

#[tokio::test]
async fn unknown_record_types_are_ignored_and_bad_bodies_are_400() {
    assert_ignored(post(br#"{"RecordType":"Inbound","MessageID":"x"}"#).await);
    assert_ignored(post(br#"{"no":"type"}"#).await);
    assert_malformed(post(b"RecordType=Delivery").await);
    assert_malformed(post(b"[]").await);
    assert_malformed(post(br#"{"RecordType":"Click"}"#).await);
}
