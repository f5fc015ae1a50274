//! Shared helpers: fixtures, request building, and signing with test keys the way each provider
//! signs (written from the providers' docs, independently of `herald::webhook`).

use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use herald::config::WebhookSettings;
use herald::webhook::{
    DeliveryEvent, DeliveryKind, Outcome, Parsed, Provider, Verifier, WebhookError, WebhookRequest,
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

/// The bytes of `tests/fixtures/webhooks/<path>`.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = fixtures_dir().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

pub fn json_fixture(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap()
}

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn unix(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

pub fn verifier(settings: WebhookSettings) -> Verifier {
    Verifier::new(&settings, &fixtures_dir()).unwrap()
}

pub async fn handle(
    verifier: &Verifier,
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Parsed, WebhookError> {
    verifier
        .handle(provider, WebhookRequest { headers, body, now })
        .await
}

/// The events of a successful result, failing the test on anything else.
#[track_caller]
pub fn events(result: Result<Parsed, WebhookError>) -> Vec<DeliveryEvent> {
    match result {
        Ok(Parsed {
            outcome: Outcome::Events(events),
            ..
        }) => events,
        other => panic!("expected events, got {other:?}"),
    }
}

/// The single event of a successful result.
#[track_caller]
pub fn one(result: Result<Parsed, WebhookError>) -> DeliveryEvent {
    let mut all = events(result);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[track_caller]
pub fn assert_ignored(result: Result<Parsed, WebhookError>) {
    match result {
        Ok(Parsed {
            outcome: Outcome::Ignored,
            ..
        }) => {}
        other => panic!("expected Ignored, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_unauthorized(result: Result<Parsed, WebhookError>) {
    assert!(
        matches!(result, Err(WebhookError::Unauthorized(_))),
        "expected Unauthorized, got {result:?}"
    );
}

#[track_caller]
pub fn assert_replay(result: Result<Parsed, WebhookError>) {
    assert!(
        matches!(result, Err(WebhookError::Replay(_))),
        "expected Replay, got {result:?}"
    );
}

#[track_caller]
pub fn assert_malformed(result: Result<Parsed, WebhookError>) {
    assert!(
        matches!(result, Err(WebhookError::Malformed(_))),
        "expected Malformed, got {result:?}"
    );
}

pub fn hard_bounce(code: Option<&str>, reason: Option<&str>) -> DeliveryKind {
    DeliveryKind::Bounced {
        hard: true,
        code: code.map(str::to_owned),
        reason: reason.map(str::to_owned),
    }
}

/// `body` with one byte changed.
pub fn flip_byte(body: &[u8], index: usize) -> Vec<u8> {
    let mut forged = body.to_vec();
    forged[index] ^= 0x01;
    forged
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// A fresh P-256 key standing in for SendGrid's.
pub struct SendgridKey(EcdsaKeyPair);

impl SendgridKey {
    pub fn new() -> SendgridKey {
        SendgridKey(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap())
    }

    /// The key as SendGrid shows it: base64 DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> String {
        let der: PublicKeyX509Der<'static> = self.0.public_key().as_der().unwrap();
        STANDARD.encode(der.as_ref())
    }

    /// The two headers of a request signed at `timestamp` over `body`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature = self.0.sign(&SystemRandom::new(), &signed).unwrap();
        headers(&[
            (
                "X-Twilio-Email-Event-Webhook-Signature",
                &STANDARD.encode(signature.as_ref()),
            ),
            ("X-Twilio-Email-Event-Webhook-Timestamp", timestamp),
        ])
    }
}

/// Svix headers for `body`, signed with the raw key bytes.
pub fn svix_headers(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> HeaderMap {
    let mac = hmac_sha256(
        key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    headers(&[
        ("svix-id", id),
        ("svix-timestamp", timestamp),
        ("svix-signature", &format!("v1,{}", STANDARD.encode(mac))),
    ])
}

/// A Mailgun webhook body: `event_data` under a signature block made with `key`.
pub fn mailgun_body(key: &str, timestamp: &str, token: &str, event_data: &Value) -> Vec<u8> {
    let signature = hex(&hmac_sha256(
        key.as_bytes(),
        &[timestamp.as_bytes(), token.as_bytes()],
    ));
    serde_json::to_vec(&serde_json::json!({
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event_data,
    }))
    .unwrap()
}

/// Signs SNS messages with the self-generated test certificate's key (SignatureVersion 2).
pub struct SnsSigner(RsaKeyPair);

pub const TEST_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-herald-test.pem";
pub const TEST_TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:herald-ses-events";

impl SnsSigner {
    pub fn new() -> SnsSigner {
        SnsSigner(RsaKeyPair::from_pkcs8(&fixture("ses/test_signing_key.pk8")).unwrap())
    }

    /// Fills in `SignatureVersion`, `SigningCertURL` and `Signature` of an SNS message, per the
    /// SNS docs: `name\nvalue\n` over the type's fields, in byte order of the names.
    pub fn sign(&self, mut message: Value) -> Value {
        let kind = message["Type"].as_str().unwrap().to_owned();
        let names: &[&str] = if kind == "Notification" {
            &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ]
        } else {
            &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        };
        let mut string_to_sign = String::new();
        for name in names {
            if let Some(value) = message.get(*name).and_then(Value::as_str) {
                string_to_sign.push_str(&format!("{name}\n{value}\n"));
            }
        }
        let mut signature = vec![0; self.0.public_modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                string_to_sign.as_bytes(),
                &mut signature,
            )
            .unwrap();
        message["SignatureVersion"] = "2".into();
        message["SigningCertURL"] = TEST_CERT_URL.into();
        message["Signature"] = STANDARD.encode(signature).into();
        message
    }

    /// A signed SNS Notification carrying `ses_event` (an SES event document) as its Message.
    pub fn notification(&self, message_id: &str, timestamp: &str, ses_event: &Value) -> Vec<u8> {
        let envelope = serde_json::json!({
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": TEST_TOPIC,
            "Message": ses_event.to_string(),
            "Timestamp": timestamp,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        });
        serde_json::to_vec(&self.sign(envelope)).unwrap()
    }
}
