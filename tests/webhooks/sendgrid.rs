use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::config::{SendgridWebhookSettings, WebhookSettings};
use herald::webhook::{DeliveryKind, Provider, Verifier};
use serde_json::Value;

use crate::support::*;

fn sendgrid(public_key: &str) -> Verifier {
    verifier(WebhookSettings {
        sendgrid: Some(SendgridWebhookSettings {
            public_key: public_key.to_owned(),
        }),
        ..WebhookSettings::default()
    })
}

const NOW: i64 = 1_600_112_502;

#[tokio::test]
async fn official_vectors() {
    let vectors = json_fixture("sendgrid/signature_vectors.json");
    for vector in vectors["vectors"].as_array().unwrap() {
        let name = vector["name"].as_str().unwrap();
        let body = STANDARD
            .decode(vector["body_base64"].as_str().unwrap())
            .unwrap();
        let headers = headers(&[
            (
                "X-Twilio-Email-Event-Webhook-Signature",
                vector["signature"].as_str().unwrap(),
            ),
            (
                "X-Twilio-Email-Event-Webhook-Timestamp",
                vector["timestamp"].as_str().unwrap(),
            ),
        ]);
        let v = sendgrid(vector["public_key"].as_str().unwrap());
        let result = handle(&v, Provider::Sendgrid, &headers, &body, unix(NOW)).await;
        if vector["expected_valid"] == Value::Bool(true) {
            assert!(result.is_ok(), "{name}: {result:?}");
        } else {
            assert_unauthorized(result);
        }
    }
}

#[tokio::test]
async fn official_single_event_normalizes() {
    let vectors = json_fixture("sendgrid/signature_vectors.json");
    let vector = &vectors["vectors"][0];
    assert_eq!(vector["name"], "single_event_valid");
    let body = STANDARD
        .decode(vector["body_base64"].as_str().unwrap())
        .unwrap();
    let headers = headers(&[
        (
            "X-Twilio-Email-Event-Webhook-Signature",
            vector["signature"].as_str().unwrap(),
        ),
        ("X-Twilio-Email-Event-Webhook-Timestamp", "1600112502"),
    ]);
    let v = sendgrid(vector["public_key"].as_str().unwrap());
    let event = one(handle(&v, Provider::Sendgrid, &headers, &body, unix(NOW)).await);
    assert_eq!(
        event.kind,
        DeliveryKind::Dropped {
            reason: Some("Bounced Address".to_owned())
        }
    );
    assert_eq!(
        event.provider_event_id,
        "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA"
    );
    assert_eq!(
        event.provider_message_id.as_deref(),
        Some("LRzXl_NHStOGhQ4kofSm_A")
    );
    assert_eq!(event.recipient.as_deref(), Some("hello@world.com"));
    assert_eq!(event.occurred_at, unix(1_600_112_492));
    assert_eq!(event.herald_message_id, None);
}

#[tokio::test]
async fn official_multi_event_skips_processed_and_reads_blocked_as_soft() {
    let vectors = json_fixture("sendgrid/signature_vectors.json");
    let vector = &vectors["vectors"][1];
    assert_eq!(vector["name"], "multi_event_valid");
    let body = STANDARD
        .decode(vector["body_base64"].as_str().unwrap())
        .unwrap();
    let headers = headers(&[
        (
            "X-Twilio-Email-Event-Webhook-Signature",
            vector["signature"].as_str().unwrap(),
        ),
        ("X-Twilio-Email-Event-Webhook-Timestamp", "1619651159"),
    ]);
    let v = sendgrid(vector["public_key"].as_str().unwrap());
    let event = one(handle(&v, Provider::Sendgrid, &headers, &body, unix(NOW)).await);
    assert!(matches!(
        &event.kind,
        DeliveryKind::Bounced { hard: false, code: Some(code), reason: Some(reason) }
            if code == "5.2.2" && reason.starts_with("552 5.2.2")
    ));
    assert_eq!(event.recipient.as_deref(), Some("invalid@gmail.com"));
}

/// Signs `file` with a test key and returns its events (or the whole result).
async fn sample(file: &str) -> Result<herald::webhook::Parsed, herald::webhook::WebhookError> {
    let key = SendgridKey::new();
    let v = sendgrid(&key.public_key());
    let body = fixture(&format!("sendgrid/{file}"));
    let headers = key.sign("1513299600", &body);
    handle(&v, Provider::Sendgrid, &headers, &body, unix(1_513_299_600)).await
}

#[tokio::test]
async fn samples_normalize() {
    let delivered = one(sample("delivered.json").await);
    assert_eq!(delivered.kind, DeliveryKind::Delivered);
    assert_eq!(delivered.provider_event_id, "rWVYmVk90MjZJ9iohOBa3w==");
    assert_eq!(
        delivered.provider_message_id.as_deref(),
        Some("14c5d75ce93.dfd.64b469")
    );
    assert_eq!(delivered.recipient.as_deref(), Some("example@test.com"));
    assert_eq!(delivered.occurred_at, unix(1_513_299_569));

    assert_eq!(
        one(sample("deferred.json").await).kind,
        DeliveryKind::Deferred {
            reason: Some("400 try again later".to_owned())
        }
    );
    assert_eq!(
        one(sample("bounce_hard.json").await).kind,
        hard_bounce(Some("5.0.0"), Some("500 unknown recipient"))
    );
    assert_eq!(
        one(sample("bounce_soft.json").await).kind,
        DeliveryKind::Bounced {
            hard: false,
            code: Some("5.0.0".to_owned()),
            reason: Some("500 unknown recipient".to_owned())
        }
    );
    assert_eq!(
        one(sample("dropped.json").await).kind,
        DeliveryKind::Dropped {
            reason: Some("Bounced Address".to_owned())
        }
    );
    assert_eq!(
        one(sample("open.json").await).kind,
        DeliveryKind::Opened { machine: false }
    );
    assert_eq!(
        one(sample("click.json").await).kind,
        DeliveryKind::Clicked {
            url: "http://www.sendgrid.com/".to_owned(),
            machine: false
        }
    );
    assert_eq!(
        one(sample("complaint.json").await).kind,
        DeliveryKind::Complained
    );
    assert_eq!(
        one(sample("unsubscribe.json").await).kind,
        DeliveryKind::Unsubscribed
    );
    assert_eq!(
        one(sample("group_unsubscribe.json").await).kind,
        DeliveryKind::Unsubscribed
    );
    assert_ignored(sample("processed.json").await);
    assert_ignored(sample("group_resubscribe.json").await);
}

#[tokio::test]
async fn batch_keeps_order_and_skips_what_herald_does_not_record() {
    let kinds: Vec<&str> = events(sample("all_events_batch.json").await)
        .iter()
        .map(|e| e.kind.name())
        .collect();
    assert_eq!(
        kinds,
        [
            "deferred",
            "delivered",
            "opened",
            "clicked",
            "bounced",
            "dropped",
            "complained",
            "unsubscribed",
            "unsubscribed"
        ]
    );
}

#[tokio::test]
async fn custom_args_carry_our_message_id_and_records_without_ids_hash_stably() {
    let event = one(sample("click_with_unique_args.json").await);
    assert!(event.provider_event_id.starts_with("sha256:"));
    assert_eq!(
        event.provider_message_id.as_deref(),
        Some("sendgrid_internal_message_id")
    );
    assert_eq!(event.herald_message_id, None);
    // The same record, reformatted, gets the same id.
    let again = one(sample("click_with_unique_args.json").await);
    assert_eq!(again.provider_event_id, event.provider_event_id);

    let key = SendgridKey::new();
    let v = sendgrid(&key.public_key());
    let body = br#"[{"email":"ana@example.com","timestamp":1700000000,"event":"open","sg_event_id":"e1","sg_machine_open":true,"herald_message_id":"0190f1a8-0000-7000-8000-000000000001"}]"#;
    let headers = key.sign("1700000000", body);
    let event = one(handle(&v, Provider::Sendgrid, &headers, body, unix(1_700_000_000)).await);
    assert_eq!(
        event.herald_message_id.as_deref(),
        Some("0190f1a8-0000-7000-8000-000000000001")
    );
    assert_eq!(event.kind, DeliveryKind::Opened { machine: true });
}

#[tokio::test]
async fn forged_unsigned_and_wrongly_keyed_requests_are_refused() {
    let key = SendgridKey::new();
    let v = sendgrid(&key.public_key());
    let body = fixture("sendgrid/bounce_hard.json");
    let now = unix(1_513_299_600);
    let signed = key.sign("1513299600", &body);
    assert!(
        handle(&v, Provider::Sendgrid, &signed, &body, now)
            .await
            .is_ok()
    );

    // One byte of the body changed.
    let forged = flip_byte(&body, body.len() / 2);
    assert_unauthorized(handle(&v, Provider::Sendgrid, &signed, &forged, now).await);
    // The signed timestamp changed.
    let mut moved = signed.clone();
    moved.insert(
        "X-Twilio-Email-Event-Webhook-Timestamp",
        "1513299601".parse().unwrap(),
    );
    assert_unauthorized(handle(&v, Provider::Sendgrid, &moved, &body, now).await);
    // Headers missing.
    for missing in [
        "X-Twilio-Email-Event-Webhook-Signature",
        "X-Twilio-Email-Event-Webhook-Timestamp",
    ] {
        let mut partial = signed.clone();
        partial.remove(missing);
        assert_unauthorized(handle(&v, Provider::Sendgrid, &partial, &body, now).await);
    }
    // Signed by another key.
    let other = SendgridKey::new().sign("1513299600", &body);
    assert_unauthorized(handle(&v, Provider::Sendgrid, &other, &body, now).await);
    // Signature not base64.
    let mut garbled = signed.clone();
    garbled.insert(
        "X-Twilio-Email-Event-Webhook-Signature",
        "***".parse().unwrap(),
    );
    assert_unauthorized(handle(&v, Provider::Sendgrid, &garbled, &body, now).await);
}

#[tokio::test]
async fn signed_but_malformed_bodies_are_400() {
    let key = SendgridKey::new();
    let v = sendgrid(&key.public_key());
    for body in [
        &b"not json"[..],
        b"{}",
        b"[1, 2]",
        br#"[{"event":"click"}]"#,
    ] {
        let headers = key.sign("1", body);
        assert_malformed(handle(&v, Provider::Sendgrid, &headers, body, unix(1)).await);
    }
}

#[test]
fn bad_public_keys_fail_at_startup() {
    for key in ["", "not base64!", "AAAA"] {
        let settings = WebhookSettings {
            sendgrid: Some(SendgridWebhookSettings {
                public_key: key.to_owned(),
            }),
            ..WebhookSettings::default()
        };
        assert!(Verifier::check(&settings).is_err(), "{key}");
    }
    // A PEM block is accepted as well as bare base64.
    let key = SendgridKey::new().public_key();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
        &key[..64],
        &key[64..]
    );
    let settings = WebhookSettings {
        sendgrid: Some(SendgridWebhookSettings { public_key: pem }),
        ..WebhookSettings::default()
    };
    assert!(Verifier::check(&settings).is_ok());
}
