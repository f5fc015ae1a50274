use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::config::{ResendWebhookSettings, WebhookSettings};
use herald::webhook::{DeliveryKind, Parsed, Provider, Verifier, WebhookError};
use serde_json::{Value, json};

use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn resend(secret: &str) -> Verifier {
    verifier(WebhookSettings {
        resend: Some(ResendWebhookSettings {
            secret: secret.to_owned(),
        }),
        ..WebhookSettings::default()
    })
}

fn key() -> Vec<u8> {
    STANDARD.decode(&SECRET["whsec_".len()..]).unwrap()
}

async fn post(headers: &HeaderMap, body: &[u8], now: i64) -> Result<Parsed, WebhookError> {
    handle(&resend(SECRET), Provider::Resend, headers, body, unix(now)).await
}

const NOW: i64 = 1_732_318_900;

async fn sample(file: &str) -> Result<Parsed, WebhookError> {
    let body = fixture(&format!("resend/{file}"));
    let headers = svix_headers(&key(), "msg_2p5aQ8Xn", &NOW.to_string(), &body);
    post(&headers, &body, NOW).await
}

#[tokio::test]
async fn official_svix_vectors() {
    let vectors = json_fixture("resend/signature_vectors.json");
    for vector in vectors["vectors"].as_array().unwrap() {
        let name = vector["name"].as_str().unwrap();
        let signature = vector
            .get("signature_header")
            .or_else(|| vector.get("expected_signature_header"))
            .and_then(Value::as_str)
            .unwrap();
        let timestamp = vector["timestamp"].as_str().unwrap();
        let headers = headers(&[
            ("svix-id", vector["msg_id"].as_str().unwrap()),
            ("svix-timestamp", timestamp),
            ("svix-signature", signature),
        ]);
        let v = resend(vector["secret"].as_str().unwrap());
        let body = vector["payload"].as_str().unwrap().as_bytes();
        let now = unix(timestamp.parse().unwrap());
        let result = handle(&v, Provider::Resend, &headers, body, now).await;
        if vector["expected_valid_ignoring_timestamp"] == Value::Bool(true) {
            // `{"test": 2432232314}` is authentic but no email event.
            assert_ignored(result);
        } else {
            assert!(
                matches!(result, Err(WebhookError::Unauthorized(_))),
                "{name}: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn samples_normalize() {
    assert_ignored(sample("sent.json").await);
    assert_ignored(sample("scheduled.json").await);
    assert_ignored(sample("contact_updated.json").await);

    let delivered = one(sample("delivered.json").await);
    assert_eq!(delivered.kind, DeliveryKind::Delivered);
    assert_eq!(delivered.provider, Provider::Resend);
    assert_eq!(delivered.provider_event_id, "msg_2p5aQ8Xn");
    assert_eq!(
        delivered.provider_message_id.as_deref(),
        Some("56761188-7520-42d8-8898-ff6fc54ce618")
    );
    assert_eq!(delivered.recipient.as_deref(), Some("delivered@resend.dev"));
    assert_eq!(delivered.occurred_at, at("2024-02-22T23:41:12.126Z"));
    assert_eq!(delivered.herald_message_id, None);

    assert_eq!(
        one(sample("deferred.json").await).kind,
        DeliveryKind::Deferred { reason: None }
    );
    assert_eq!(
        one(sample("bounce_hard.json").await).kind,
        hard_bounce(
            Some("Suppressed"),
            Some(
                "The recipient's email address is on the suppression list because it has a recent history of producing hard bounces."
            )
        )
    );
    assert_eq!(
        one(sample("complaint.json").await).kind,
        DeliveryKind::Complained
    );
    assert_eq!(
        one(sample("open.json").await).kind,
        DeliveryKind::Opened { machine: false }
    );
    let click = one(sample("click.json").await);
    assert_eq!(
        click.kind,
        DeliveryKind::Clicked {
            url: "https://resend.com".to_owned(),
            machine: false
        }
    );
    assert_eq!(click.occurred_at, at("2024-11-24T05:00:57.163Z"));
    assert_eq!(
        one(sample("failed.json").await).kind,
        DeliveryKind::Dropped {
            reason: Some("reached_daily_quota".to_owned())
        }
    );
    assert!(matches!(
        one(sample("suppressed.json").await).kind,
        DeliveryKind::Dropped { reason: Some(r) } if r.starts_with("Resend has suppressed sending")
    ));
}

#[tokio::test]
async fn tags_carry_our_message_id_in_either_shape() {
    let id = "0190f1a8-0000-7000-8000-000000000007";
    let mut body = json_fixture("resend/delivered.json");
    for tags in [
        json!({"category": "confirm_email", "herald_message_id": id}),
        json!([{"name": "category", "value": "confirm_email"}, {"name": "herald_message_id", "value": id}]),
    ] {
        body["data"]["tags"] = tags;
        let bytes = serde_json::to_vec(&body).unwrap();
        let headers = svix_headers(&key(), "msg_tags", &NOW.to_string(), &bytes);
        let event = one(post(&headers, &bytes, NOW).await);
        assert_eq!(event.herald_message_id.as_deref(), Some(id));
    }
}

#[tokio::test]
async fn timestamps_more_than_five_minutes_away_are_refused() {
    let body = fixture("resend/delivered.json");
    let headers = svix_headers(&key(), "msg_1", &NOW.to_string(), &body);
    assert!(post(&headers, &body, NOW + 300).await.is_ok());
    assert!(post(&headers, &body, NOW - 300).await.is_ok());
    assert_replay(post(&headers, &body, NOW + 301).await);
    assert_replay(post(&headers, &body, NOW - 301).await);
}

#[tokio::test]
async fn a_retried_message_yields_the_same_event() {
    // Svix resends with the same svix-id and a fresh signature.
    let body = fixture("resend/bounce_hard.json");
    let first = svix_headers(&key(), "msg_retry", &NOW.to_string(), &body);
    let retry = svix_headers(&key(), "msg_retry", &(NOW + 3600).to_string(), &body);
    let a = post(&first, &body, NOW).await.unwrap();
    let b = post(&retry, &body, NOW + 3600).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.replay_key, None);
}

#[tokio::test]
async fn forged_and_unsigned_requests_are_refused() {
    let body = fixture("resend/delivered.json");
    let good = svix_headers(&key(), "msg_1", &NOW.to_string(), &body);
    assert!(post(&good, &body, NOW).await.is_ok());
    // Body, id or timestamp changed after signing.
    assert_unauthorized(post(&good, &flip_byte(&body, 20), NOW).await);
    let mut other_id = good.clone();
    other_id.insert("svix-id", "msg_2".parse().unwrap());
    assert_unauthorized(post(&other_id, &body, NOW).await);
    let mut other_time = good.clone();
    other_time.insert("svix-timestamp", (NOW + 1).to_string().parse().unwrap());
    assert_unauthorized(post(&other_time, &body, NOW).await);
    // Signed with another secret.
    let wrong = svix_headers(b"another secret", "msg_1", &NOW.to_string(), &body);
    assert_unauthorized(post(&wrong, &body, NOW).await);
    // Only non-v1 entries, or garbage.
    let v1 = good
        .get("svix-signature")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for signature in [v1.replace("v1,", "v2,"), "v1,***".to_owned(), String::new()] {
        let mut altered = good.clone();
        altered.insert("svix-signature", signature.parse().unwrap());
        assert_unauthorized(post(&altered, &body, NOW).await);
    }
    // A rotation header: the valid entry among others.
    let mut rotated = good.clone();
    rotated.insert(
        "svix-signature",
        format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {v1}")
            .parse()
            .unwrap(),
    );
    assert!(post(&rotated, &body, NOW).await.is_ok());
    // Headers missing.
    for missing in ["svix-id", "svix-timestamp", "svix-signature"] {
        let mut partial = good.clone();
        partial.remove(missing);
        assert_unauthorized(post(&partial, &body, NOW).await);
    }
    // Standard Webhooks header names work too.
    let standard = headers(&[
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", &NOW.to_string()),
        ("webhook-signature", &v1),
    ]);
    assert!(post(&standard, &body, NOW).await.is_ok());
}

#[tokio::test]
async fn signed_but_malformed_bodies_are_400() {
    for body in [
        &b"not json"[..],
        b"[]",
        br#"{"type":"email.delivered"}"#,
        br#"{"type":"email.clicked","data":{}}"#,
    ] {
        let headers = svix_headers(&key(), "msg_bad", &NOW.to_string(), body);
        assert_malformed(post(&headers, body, NOW).await);
    }
}
