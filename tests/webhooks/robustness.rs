//! No input makes the verifier panic. Bodies are random bytes, byte-level mutations of the
//! samples, and random JSON built from the providers' own field names and values, so that
//! parsing runs on type confusion (`"event": 5`, `"url": []`, `"timestamp": "x"`) rather than
//! stopping at the first syntax error. Each provider's body is correctly authenticated, so the
//! parsers themselves are exercised; the only acceptable results are success, Ignored and
//! Malformed. Seeded, so a failure reproduces.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::config::{
    MailgunWebhookSettings, PostmarkWebhookSettings, ResendWebhookSettings,
    SendgridWebhookSettings, SesWebhookSettings, WebhookSettings,
};
use herald::webhook::{Parsed, Provider, WebhookError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::support::*;

const ROUNDS: usize = 400;
const MAILGUN_KEY: &str = "key-robustness";
const RESEND_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Every field name and string value that appears in the samples, plus a few hostile extras.
fn vocabulary(samples: &[Value]) -> (Vec<String>, Vec<String>) {
    fn walk(v: &Value, keys: &mut Vec<String>, strings: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    keys.push(k.clone());
                    walk(v, keys, strings);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, keys, strings)),
            Value::String(s) => strings.push(s.clone()),
            _ => {}
        }
    }
    let (mut keys, mut strings) = (Vec::new(), Vec::new());
    samples
        .iter()
        .for_each(|s| walk(s, &mut keys, &mut strings));
    strings.extend(
        [
            "",
            " ",
            "\u{0}",
            "é",
            "<>",
            "<",
            "9999999999999999999999",
            "-1",
            "1e400",
            "NaN",
            "Permanent",
            "Transient",
            "bounce",
            "blocked",
            "temporary",
            "permanent",
            "Bounce",
            "Delivery",
            "Complaint",
            "Open",
            "Click",
            "email.clicked",
            "email.bounced",
        ]
        .map(str::to_owned),
    );
    keys.sort();
    keys.dedup();
    strings.sort();
    strings.dedup();
    (keys, strings)
}

fn random_value(rng: &mut StdRng, depth: u32, keys: &[String], strings: &[String]) -> Value {
    let pick = |rng: &mut StdRng, from: &[String]| from[rng.random_range(0..from.len())].clone();
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => Value::from(rng.random::<i64>()),
        3 => Value::from(rng.random::<f64>() * 1e12),
        4 | 5 => Value::String(pick(rng, strings)),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1, keys, strings))
                .collect(),
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.random_range(0..8) {
                map.insert(pick(rng, keys), random_value(rng, depth - 1, keys, strings));
            }
            Value::Object(map)
        }
    }
}

/// A random object whose top level has the keys a parser looks at first.
fn random_record(rng: &mut StdRng, keys: &[String], strings: &[String]) -> Value {
    let mut value = random_value(rng, 4, keys, strings);
    if !value.is_object() {
        value = Value::Object(Map::new());
    }
    for _ in 0..rng.random_range(0..12) {
        let key = keys[rng.random_range(0..keys.len())].clone();
        value[key] = random_value(rng, 3, keys, strings);
    }
    value
}

fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..rng.random_range(1..6) {
        if out.is_empty() {
            out.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..out.len());
        match rng.random_range(0..4) {
            0 => out[at] = rng.random(),
            1 => out.truncate(at),
            2 => out.insert(at, b"{}[]\",:0-eE.\\"[rng.random_range(0..13)]),
            _ => {
                out.remove(at);
            }
        }
    }
    out
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.random_range(0..256))
        .map(|_| rng.random())
        .collect()
}

fn samples(provider: &str, files: &[&str]) -> Vec<Value> {
    files
        .iter()
        .map(|f| json_fixture(&format!("{provider}/{f}")))
        .collect()
}

#[track_caller]
fn acceptable(provider: Provider, body: &[u8], result: &Result<Parsed, WebhookError>) {
    assert!(
        matches!(result, Ok(_) | Err(WebhookError::Malformed(_))),
        "{provider}: {result:?} for body {:?}",
        String::from_utf8_lossy(body)
    );
}

/// Bodies for one provider: random bytes, mutated samples, random records.
fn bodies(
    rng: &mut StdRng,
    raw_samples: &[Vec<u8>],
    vocab: &(Vec<String>, Vec<String>),
    array: bool,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..ROUNDS {
        out.push(random_bytes(rng));
        let sample = &raw_samples[rng.random_range(0..raw_samples.len())];
        out.push(mutate(rng, sample));
        let record = random_record(rng, &vocab.0, &vocab.1);
        let value = if array {
            Value::Array(vec![record, random_record(rng, &vocab.0, &vocab.1)])
        } else {
            record
        };
        out.push(serde_json::to_vec(&value).unwrap());
    }
    out
}

#[tokio::test]
async fn authenticated_random_bodies_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x4845_5241_4c44);
    let sendgrid_key = SendgridKey::new();
    let sns = SnsSigner::new();
    let verifier = verifier(WebhookSettings {
        sendgrid: Some(SendgridWebhookSettings {
            public_key: sendgrid_key.public_key(),
        }),
        postmark: Some(PostmarkWebhookSettings {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }),
        mailgun: Some(MailgunWebhookSettings {
            signing_key: MAILGUN_KEY.to_owned(),
            tolerance: "5m".to_owned(),
        }),
        ses: Some(SesWebhookSettings {
            topic_arns: vec![TEST_TOPIC.to_owned()],
            certificates: vec!["ses/test_signing_cert.pem".into()],
        }),
        resend: Some(ResendWebhookSettings {
            secret: RESEND_SECRET.to_owned(),
        }),
    });
    let now = unix(1_700_000_000);

    // SendGrid: every body signed.
    let files = [
        "all_events_batch.json",
        "bounce_soft.json",
        "click_with_unique_args.json",
        "processed.json",
    ];
    let raw: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fixture(&format!("sendgrid/{f}")))
        .collect();
    let vocab = vocabulary(&samples("sendgrid", &files));
    for body in bodies(&mut rng, &raw, &vocab, true) {
        let headers = sendgrid_key.sign("1700000000", &body);
        let result = handle(&verifier, Provider::Sendgrid, &headers, &body, now).await;
        acceptable(Provider::Sendgrid, &body, &result);
    }

    // Postmark: Basic auth does not depend on the body.
    let files = [
        "bounce_hard.json",
        "click.json",
        "complaint.json",
        "delivered.json",
        "open.json",
        "unsubscribe.json",
    ];
    let raw: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fixture(&format!("postmark/{f}")))
        .collect();
    let vocab = vocabulary(&samples("postmark", &files));
    let auth = headers(&[(
        "Authorization",
        &format!("Basic {}", STANDARD.encode("u:p")),
    )]);
    for body in bodies(&mut rng, &raw, &vocab, false) {
        let result = handle(&verifier, Provider::Postmark, &auth, &body, now).await;
        acceptable(Provider::Postmark, &body, &result);
    }

    // Mailgun: the signature sits in the body, so the event-data is what varies.
    let files = [
        "bounce_hard.json",
        "bounce_soft.json",
        "click.json",
        "delivered.json",
        "failed_permanent_suppress_bounce.json",
        "open.json",
    ];
    let values = samples("mailgun", &files);
    let raw: Vec<Vec<u8>> = values
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect();
    let vocab = vocabulary(&values);
    for (i, data) in bodies(&mut rng, &raw, &vocab, false)
        .into_iter()
        .enumerate()
    {
        let data: Value = serde_json::from_slice(&data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data).into_owned()));
        let body = mailgun_body(MAILGUN_KEY, "1700000000", &format!("t{i}"), &data);
        let result = handle(&verifier, Provider::Mailgun, &headers(&[]), &body, now).await;
        acceptable(Provider::Mailgun, &body, &result);
    }

    // SES: the SNS Message is what varies, inside a signed envelope.
    let files = [
        "event_bounce_hard.json",
        "event_click.json",
        "event_deferred.json",
        "event_unsubscribe.json",
        "notification_bounce_hard_no_dsn.json",
        "notification_complaint.json",
    ];
    let values = samples("ses", &files);
    let raw: Vec<Vec<u8>> = values
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap())
        .collect();
    let vocab = vocabulary(&values);
    // RSA signing is slow in debug builds; a quarter of the rounds is plenty.
    for message in bodies(&mut rng, &raw, &vocab, false).into_iter().step_by(4) {
        let message = String::from_utf8_lossy(&message).into_owned();
        let envelope = sns.sign(serde_json::json!({
            "Type": "Notification",
            "MessageId": "m",
            "TopicArn": TEST_TOPIC,
            "Message": message,
            "Timestamp": "2023-11-14T22:13:20Z",
        }));
        let body = serde_json::to_vec(&envelope).unwrap();
        let result = handle(&verifier, Provider::Ses, &headers(&[]), &body, now).await;
        acceptable(Provider::Ses, &body, &result);
    }

    // Resend: every body signed.
    let files = [
        "bounce_hard.json",
        "click.json",
        "failed.json",
        "suppressed.json",
        "delivered.json",
    ];
    let raw: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fixture(&format!("resend/{f}")))
        .collect();
    let vocab = vocabulary(&samples("resend", &files));
    let key = STANDARD.decode(&RESEND_SECRET["whsec_".len()..]).unwrap();
    for body in bodies(&mut rng, &raw, &vocab, false) {
        let headers = svix_headers(&key, "msg_fuzz", "1700000000", &body);
        let result = handle(&verifier, Provider::Resend, &headers, &body, now).await;
        acceptable(Provider::Resend, &body, &result);
    }
}

#[tokio::test]
async fn unauthenticated_random_requests_are_refused_without_panicking() {
    let mut rng = StdRng::seed_from_u64(7);
    let verifier = verifier(WebhookSettings {
        sendgrid: Some(SendgridWebhookSettings {
            public_key: SendgridKey::new().public_key(),
        }),
        postmark: Some(PostmarkWebhookSettings {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }),
        mailgun: Some(MailgunWebhookSettings {
            signing_key: MAILGUN_KEY.to_owned(),
            tolerance: "5m".to_owned(),
        }),
        ses: Some(SesWebhookSettings {
            topic_arns: vec![TEST_TOPIC.to_owned()],
            certificates: vec!["ses/test_signing_cert.pem".into()],
        }),
        resend: Some(ResendWebhookSettings {
            secret: RESEND_SECRET.to_owned(),
        }),
    });
    let header_names = [
        "X-Twilio-Email-Event-Webhook-Signature",
        "X-Twilio-Email-Event-Webhook-Timestamp",
        "Authorization",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
    ];
    let values = [
        "",
        "1700000000",
        "v1,AAAA",
        "Basic dTpw",
        "Basic",
        "MEUCIQ==",
        "-1",
        "v1,",
    ];
    let everything: Vec<Value> = [
        "sendgrid/all_events_batch.json",
        "ses/signature_vectors.json",
    ]
    .iter()
    .map(|f| json_fixture(f))
    .collect();
    let vocab = vocabulary(&everything);
    for round in 0..ROUNDS * 2 {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for name in header_names {
            if rng.random_bool(0.5) {
                pairs.push((name, values[rng.random_range(0..values.len())]));
            }
        }
        let headers = headers(&pairs);
        let body = if round % 2 == 0 {
            random_bytes(&mut rng)
        } else {
            serde_json::to_vec(&random_record(&mut rng, &vocab.0, &vocab.1)).unwrap()
        };
        for provider in Provider::ALL {
            let result = handle(&verifier, provider, &headers, &body, unix(1_700_000_000)).await;
            // Basic auth "u:p" is valid Postmark auth when drawn; everything else must fail to
            // authenticate or to parse.
            if provider != Provider::Postmark {
                assert!(
                    matches!(
                        result,
                        Err(WebhookError::Unauthorized(_) | WebhookError::Malformed(_))
                    ),
                    "{provider}: {result:?}"
                );
            }
        }
    }
}
