use chrono::TimeDelta;
use herald::config::{MailgunWebhookSettings, WebhookSettings};
use herald::webhook::{DeliveryKind, Parsed, Provider, ReplayKey, Verifier, WebhookError};
use serde_json::{Value, json};

use crate::support::*;

const KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";

fn mailgun(tolerance: &str) -> Verifier {
    verifier(WebhookSettings {
        mailgun: Some(MailgunWebhookSettings {
            signing_key: KEY.to_owned(),
            tolerance: tolerance.to_owned(),
        }),
        ..WebhookSettings::default()
    })
}

async fn post(body: &[u8], now: i64) -> Result<Parsed, WebhookError> {
    handle(
        &mailgun("5m"),
        Provider::Mailgun,
        &headers(&[]),
        body,
        unix(now),
    )
    .await
}

/// A sample's event-data, signed now.
async fn sample(file: &str) -> Result<Parsed, WebhookError> {
    let data = json_fixture(&format!("mailgun/{file}"));
    post(
        &mailgun_body(KEY, "1700000000", "sample-token", &data),
        1_700_000_000,
    )
    .await
}

#[tokio::test]
async fn official_vectors() {
    let vectors = json_fixture("mailgun/signature_vectors.json");
    let data = json_fixture("mailgun/delivered.json");
    for vector in vectors["vectors"].as_array().unwrap() {
        assert_eq!(vector["signing_key"], KEY);
        let timestamp = vector["timestamp"].as_str().unwrap();
        let body = serde_json::to_vec(&json!({
            "signature": {
                "timestamp": timestamp,
                "token": vector["token"],
                "signature": vector["signature"],
            },
            "event-data": data,
        }))
        .unwrap();
        let now = timestamp.parse::<i64>().unwrap();
        let result = post(&body, now).await;
        if vector["expected_valid"] == Value::Bool(true) {
            let parsed = result.unwrap();
            assert_eq!(
                parsed.replay_key,
                Some(ReplayKey {
                    key: "mailgun:5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6".to_owned(),
                    expires_at: unix(now) + TimeDelta::minutes(5),
                })
            );
        } else {
            assert_unauthorized(result);
        }
    }
}

#[tokio::test]
async fn samples_normalize() {
    assert_ignored(sample("accepted.json").await);

    let delivered = one(sample("delivered.json").await);
    assert_eq!(delivered.kind, DeliveryKind::Delivered);
    assert_eq!(delivered.provider_event_id, "hK7mQVt1QtqRiOfQXta4sw");
    assert_eq!(
        delivered.provider_message_id.as_deref(),
        Some("20180622182958.1.48906CB188F1A454@exmple.org")
    );
    assert_eq!(delivered.recipient.as_deref(), Some("john@example.com"));
    assert_eq!(delivered.occurred_at.timestamp(), 1_529_692_199);
    assert_eq!(delivered.occurred_at.timestamp_subsec_micros(), 626_182);

    let bounce = one(sample("bounce_hard.json").await);
    assert_eq!(
        bounce.kind,
        hard_bounce(
            Some("5.1.1"),
            Some("smtp; 550-5.1.1 The email account that you tried to reach does not exist.")
        )
    );
    assert_eq!(bounce.recipient.as_deref(), Some("christest123@test.com"));

    // A temporary failure is one attempt of several: Mailgun retries it.
    assert_eq!(
        one(sample("bounce_soft.json").await).kind,
        DeliveryKind::Deferred {
            reason: Some(
                "4.7.652 The mail server [xxx.xxx.xxx.xxx] has exceeded the maximum number of connections."
                    .to_owned()
            )
        }
    );
    assert_eq!(
        one(sample("failed_permanent_suppress_bounce.json").await).kind,
        DeliveryKind::Dropped {
            reason: Some("Not delivering to previously bounced address".to_owned())
        }
    );
    assert_eq!(
        one(sample("open.json").await).kind,
        DeliveryKind::Opened { machine: false }
    );
    let click = one(sample("click.json").await);
    assert_eq!(
        click.kind,
        DeliveryKind::Clicked {
            url: "http://example.com/signup".to_owned(),
            machine: false
        }
    );
    assert_eq!(
        click.provider_message_id.as_deref(),
        Some("20130821085807.30688.67706@samples.mailgun.org")
    );
    assert_eq!(
        one(sample("complaint.json").await).kind,
        DeliveryKind::Complained
    );
    assert_eq!(
        one(sample("unsubscribe.json").await).kind,
        DeliveryKind::Unsubscribed
    );
}

#[tokio::test]
async fn user_variables_carry_our_message_id_and_bots_are_machines() {
    let mut data = json_fixture("mailgun/open.json");
    data["user-variables"] = json!({"herald-message-id": "0190f1a8-0000-7000-8000-000000000003"});
    data["client-info"]["bot"] = "apple".into();
    let body = mailgun_body(KEY, "1700000000", "t-1", &data);
    let event = one(post(&body, 1_700_000_000).await);
    assert_eq!(
        event.herald_message_id.as_deref(),
        Some("0190f1a8-0000-7000-8000-000000000003")
    );
    assert_eq!(event.kind, DeliveryKind::Opened { machine: true });

    data["user-variables"] = json!({"herald_message_id": "0190f1a8-0000-7000-8000-000000000004"});
    let body = mailgun_body(KEY, "1700000000", "t-2", &data);
    assert_eq!(
        one(post(&body, 1_700_000_000).await)
            .herald_message_id
            .as_deref(),
        Some("0190f1a8-0000-7000-8000-000000000004")
    );
}

#[tokio::test]
async fn replay_key_is_the_token_and_the_same_for_a_replayed_request() {
    let data = json_fixture("mailgun/delivered.json");
    let body = mailgun_body(KEY, "1700000000", "once-only", &data);
    let first = post(&body, 1_700_000_000).await.unwrap();
    let again = post(&body, 1_700_000_060).await.unwrap();
    let key = first.replay_key.clone().unwrap();
    assert_eq!(key.key, "mailgun:once-only");
    assert_eq!(key.expires_at, unix(1_700_000_300));
    // The caller refuses the second request by this key; the signature alone cannot, since it
    // does not cover the event (a replayed token with another body still verifies).
    assert_eq!(again.replay_key, first.replay_key);
    let other = mailgun_body(
        KEY,
        "1700000000",
        "once-only",
        &json_fixture("mailgun/complaint.json"),
    );
    assert_eq!(
        post(&other, 1_700_000_000).await.unwrap().replay_key,
        first.replay_key
    );
}

#[tokio::test]
async fn timestamps_outside_the_tolerance_are_refused() {
    let data = json_fixture("mailgun/delivered.json");
    let body = mailgun_body(KEY, "1700000000", "t", &data);
    assert!(post(&body, 1_700_000_000 + 300).await.is_ok());
    assert!(post(&body, 1_700_000_000 - 300).await.is_ok());
    assert_replay(post(&body, 1_700_000_000 + 301).await);
    assert_replay(post(&body, 1_700_000_000 - 301).await);
    // The tolerance is configurable.
    let lenient = mailgun("1h");
    let result = handle(
        &lenient,
        Provider::Mailgun,
        &headers(&[]),
        &body,
        unix(1_700_000_000 + 3000),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn forged_and_unsigned_requests_are_refused() {
    let data = json_fixture("mailgun/delivered.json");
    let now = 1_700_000_000;
    let good: Value = serde_json::from_slice(&mailgun_body(KEY, "1700000000", "t", &data)).unwrap();
    let variants = [
        ("signature", "0".repeat(64)),
        ("signature", "not hex".to_owned()),
        ("token", "another-token".to_owned()),
        ("timestamp", "1700000001".to_owned()),
    ]
    .map(|(field, value)| {
        let mut forged = good.clone();
        forged["signature"][field] = value.into();
        forged
    });
    for forged in variants {
        assert_unauthorized(post(&serde_json::to_vec(&forged).unwrap(), now).await);
    }
    // One hex digit of the signature changed.
    let mut forged = good.clone();
    let sig = forged["signature"]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if sig.ends_with('0') { "1" } else { "0" };
    forged["signature"]["signature"] = format!("{}{flipped}", &sig[..63]).into();
    assert_unauthorized(post(&serde_json::to_vec(&forged).unwrap(), now).await);
    // Signed with another key.
    let other = mailgun_body("key-other", "1700000000", "t", &data);
    assert_unauthorized(post(&other, now).await);
    // No signature block, or an empty one.
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    assert_unauthorized(post(&serde_json::to_vec(&unsigned).unwrap(), now).await);
    unsigned["signature"] = json!({});
    assert_unauthorized(post(&serde_json::to_vec(&unsigned).unwrap(), now).await);
}

#[tokio::test]
async fn bodies_that_are_not_mailgun_json_are_400() {
    assert_malformed(post(b"timestamp=1&token=t&signature=s", 1).await);
    assert_malformed(post(b"[]", 1).await);
    // Signed, but no event-data.
    let mut body: Value =
        serde_json::from_slice(&mailgun_body(KEY, "1700000000", "t", &json!({}))).unwrap();
    body.as_object_mut().unwrap().remove("event-data");
    assert_malformed(post(&serde_json::to_vec(&body).unwrap(), 1_700_000_000).await);
}

#[test]
fn bad_settings_fail_at_startup() {
    for (key, tolerance) in [("", "5m"), (KEY, "soon"), (KEY, "0s")] {
        let settings = WebhookSettings {
            mailgun: Some(MailgunWebhookSettings {
                signing_key: key.to_owned(),
                tolerance: tolerance.to_owned(),
            }),
            ..WebhookSettings::default()
        };
        assert!(Verifier::check(&settings).is_err(), "{key} {tolerance}");
    }
}

#[tokio::test]
async fn an_enormous_tolerance_does_not_overflow() {
    let v = mailgun("100000000w");
    let body = mailgun_body(
        KEY,
        "1700000000",
        "t",
        &json_fixture("mailgun/delivered.json"),
    );
    let parsed = handle(
        &v,
        Provider::Mailgun,
        &headers(&[]),
        &body,
        unix(1_700_000_000),
    )
    .await
    .unwrap();
    assert_eq!(
        parsed.replay_key.unwrap().expires_at,
        chrono::DateTime::<chrono::Utc>::MAX_UTC
    );
}
