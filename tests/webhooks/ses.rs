use std::path::PathBuf;

use chrono::TimeDelta;
use herald::config::{SesWebhookSettings, WebhookSettings};
use herald::webhook::{DeliveryKind, Outcome, Parsed, Provider, Verifier, WebhookError};
use serde_json::{Value, json};

use crate::support::*;

fn ses(topics: &[&str], certificates: &[&str]) -> Verifier {
    verifier(WebhookSettings {
        ses: Some(SesWebhookSettings {
            topic_arns: topics.iter().map(|t| (*t).to_owned()).collect(),
            certificates: certificates.iter().map(PathBuf::from).collect(),
        }),
        ..WebhookSettings::default()
    })
}

/// Verifier trusting only the self-generated test certificate (never fetches).
fn test_ses() -> Verifier {
    ses(&[TEST_TOPIC], &["ses/test_signing_cert.pem"])
}

const SENT: &str = "2026-11-28T12:00:00.000Z";

fn now() -> chrono::DateTime<chrono::Utc> {
    at(SENT) + TimeDelta::seconds(2)
}

async fn post(verifier: &Verifier, body: &[u8]) -> Result<Parsed, WebhookError> {
    handle(verifier, Provider::Ses, &headers(&[]), body, now()).await
}

/// An SES sample (the decoded `Message`) inside a signed SNS notification.
async fn sample(file: &str) -> Result<Parsed, WebhookError> {
    let message = json_fixture(&format!("ses/{file}"));
    let body = SnsSigner::new().notification("sns-msg-1", SENT, &message);
    post(&test_ses(), &body).await
}

fn official_vectors() -> Vec<Value> {
    json_fixture("ses/signature_vectors.json")["vectors"]
        .as_array()
        .unwrap()
        .clone()
}

fn official_ses() -> Verifier {
    let topics: Vec<String> = official_vectors()
        .iter()
        .map(|v| v["message"]["TopicArn"].as_str().unwrap().to_owned())
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    ses(&topics, &["ses/official_sns_signing_cert.pem"])
}

/// Handles an official vector's message (possibly altered) a minute after it was sent.
async fn post_official(verifier: &Verifier, message: &Value) -> Result<Parsed, WebhookError> {
    let sent = at(message["Timestamp"].as_str().unwrap());
    let body = serde_json::to_vec(message).unwrap();
    handle(
        verifier,
        Provider::Ses,
        &headers(&[]),
        &body,
        sent + TimeDelta::minutes(1),
    )
    .await
}

#[tokio::test]
async fn official_vectors_verify_with_the_configured_certificate() {
    let v = official_ses();
    for vector in official_vectors() {
        // The messages say "Hello world": authentic, but no SES event.
        assert_ignored(post_official(&v, &vector["message"]).await);
    }
}

#[tokio::test]
async fn altered_official_vectors_are_refused() {
    let v = official_ses();
    for vector in official_vectors() {
        let message = &vector["message"];
        let alterations: [(&str, Value); 6] = [
            ("Message", "Hello world!".into()),
            ("MessageId", "792cda85-518f-5dd3-9163-81d851212f3b".into()),
            (
                "Subject",
                if message.get("Subject").is_some() {
                    Value::Null
                } else {
                    "Hello world".into()
                },
            ),
            (
                "SignatureVersion",
                if message["SignatureVersion"] == "1" {
                    "2"
                } else {
                    "1"
                }
                .into(),
            ),
            ("Type", "SubscriptionConfirmation".into()),
            ("Signature", "AAAA".into()),
        ];
        for (field, value) in alterations {
            let mut forged = message.clone();
            forged[field] = value;
            let result = post_official(&v, &forged).await;
            assert!(
                matches!(result, Err(WebhookError::Unauthorized(_))),
                "{} with {field} altered: {result:?}",
                vector["name"]
            );
        }
        // One byte of the signature changed.
        let mut forged = message.clone();
        let signature = message["Signature"].as_str().unwrap();
        let replacement = if signature.starts_with('A') { "B" } else { "A" };
        forged["Signature"] = format!("{replacement}{}", &signature[1..]).into();
        assert_unauthorized(post_official(&v, &forged).await);
    }
}

#[tokio::test]
async fn official_vectors_need_an_accepted_topic_and_a_fresh_timestamp() {
    let vector = &official_vectors()[0];
    let message = &vector["message"];
    // Another topic list: refused before the signature is even looked at.
    let other = ses(
        &["arn:aws:sns:us-east-2:295079676684:other"],
        &["ses/official_sns_signing_cert.pem"],
    );
    assert_unauthorized(post_official(&other, message).await);
    // The right topic, checked an hour and a minute after sending.
    let v = official_ses();
    let sent = at(message["Timestamp"].as_str().unwrap());
    let body = serde_json::to_vec(message).unwrap();
    let late = handle(
        &v,
        Provider::Ses,
        &headers(&[]),
        &body,
        sent + TimeDelta::minutes(61),
    )
    .await;
    assert_replay(late);
    let early = handle(
        &v,
        Provider::Ses,
        &headers(&[]),
        &body,
        sent - TimeDelta::minutes(6),
    )
    .await;
    assert_replay(early);
    // Trusting only another certificate, the genuine message does not verify.
    let untrusting = ses(
        &[message["TopicArn"].as_str().unwrap()],
        &["ses/test_signing_cert.pem"],
    );
    assert_unauthorized(post_official(&untrusting, message).await);
}

#[tokio::test]
async fn bad_certificate_urls_are_refused_without_fetching() {
    // No configured certificates: this verifier would fetch, and the test machine has no
    // network, so an attempt would show as CertificateFetch instead of Unauthorized.
    let fetching = ses(&[TEST_TOPIC], &[]);
    let signer = SnsSigner::new();
    let event = json_fixture("ses/event_delivered.json");
    let signed: Value = serde_json::from_slice(&signer.notification("m-1", SENT, &event)).unwrap();
    for url in [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-x.pem",
        "https://evil.com/SimpleNotificationService-x.pem",
        "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "https://user:pw@sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-x.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.txt",
        "https://127.0.0.1/SimpleNotificationService-x.pem",
        "not a url",
    ] {
        let mut message = signed.clone();
        message["SigningCertURL"] = url.into();
        let result = post(&fetching, &serde_json::to_vec(&message).unwrap()).await;
        assert!(
            matches!(&result, Err(WebhookError::Unauthorized(m)) if m.contains("URL")),
            "{url}: {result:?}"
        );
    }
}

#[tokio::test]
async fn subscription_confirmation_is_returned_only_after_verification() {
    let signer = SnsSigner::new();
    let mut confirmation = json_fixture("ses/sns_subscription_confirmation.json");
    confirmation["TopicArn"] = TEST_TOPIC.into();
    confirmation["Timestamp"] = SENT.into();
    let signed = signer.sign(confirmation);
    let result = post(&test_ses(), &serde_json::to_vec(&signed).unwrap()).await;
    assert_eq!(
        result.unwrap().outcome,
        Outcome::SubscriptionConfirmation {
            subscribe_url: "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37...".to_owned(),
            topic_arn: TEST_TOPIC.to_owned(),
        }
    );
    // Anything altered: no SubscribeURL comes back.
    for (field, value) in [
        (
            "SubscribeURL",
            "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=other",
        ),
        ("Token", "other"),
        ("Message", "subscribe me"),
    ] {
        let mut forged = signed.clone();
        forged[field] = value.into();
        assert_unauthorized(post(&test_ses(), &serde_json::to_vec(&forged).unwrap()).await);
    }
    // A verified confirmation whose SubscribeURL is not an SNS URL is not confirmed either.
    let mut elsewhere = json_fixture("ses/sns_subscription_confirmation.json");
    elsewhere["TopicArn"] = TEST_TOPIC.into();
    elsewhere["Timestamp"] = SENT.into();
    elsewhere["SubscribeURL"] = "https://attacker.example/?Action=ConfirmSubscription".into();
    let signed = signer.sign(elsewhere);
    assert_unauthorized(post(&test_ses(), &serde_json::to_vec(&signed).unwrap()).await);
}

#[tokio::test]
async fn unsubscribe_confirmation_is_ignored_and_example_envelopes_do_not_verify() {
    let mut unsubscribe = json_fixture("ses/sns_unsubscribe_confirmation.json");
    unsubscribe["TopicArn"] = TEST_TOPIC.into();
    unsubscribe["Timestamp"] = SENT.into();
    let signed = SnsSigner::new().sign(unsubscribe);
    assert_ignored(post(&test_ses(), &serde_json::to_vec(&signed).unwrap()).await);

    // The docs' envelopes carry placeholder signatures.
    for file in [
        "sns_notification_envelope.json",
        "sns_subscription_confirmation.json",
        "sns_unsubscribe_confirmation.json",
    ] {
        let mut envelope = json_fixture(&format!("ses/{file}"));
        envelope["TopicArn"] = TEST_TOPIC.into();
        envelope["Timestamp"] = SENT.into();
        let result = post(&test_ses(), &serde_json::to_vec(&envelope).unwrap()).await;
        assert_unauthorized(result);
    }
}

#[tokio::test]
async fn event_publishing_samples_normalize() {
    let ses_id = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000";
    assert_ignored(sample("event_send.json").await);

    let delivered = one(sample("event_delivered.json").await);
    assert_eq!(delivered.kind, DeliveryKind::Delivered);
    assert_eq!(delivered.provider, Provider::Ses);
    assert_eq!(delivered.provider_event_id, "sns-msg-1:0");
    assert_eq!(delivered.provider_message_id.as_deref(), Some(ses_id));
    assert_eq!(
        delivered.recipient.as_deref(),
        Some("recipient@example.com")
    );
    assert_eq!(delivered.occurred_at, at("2016-10-19T23:21:04.133Z"));

    let bounce = one(sample("event_bounce_hard.json").await);
    assert_eq!(
        bounce.kind,
        hard_bounce(Some("5.1.1"), Some("smtp; 550 5.1.1 user unknown"))
    );
    assert_eq!(bounce.recipient.as_deref(), Some("recipient@example.com"));
    assert_eq!(bounce.occurred_at, at("2017-08-05T00:41:02.669Z"));

    assert_eq!(
        one(sample("event_complaint.json").await).kind,
        DeliveryKind::Complained
    );
    assert_eq!(
        one(sample("event_deferred.json").await).kind,
        DeliveryKind::Deferred {
            reason: Some("smtp; 421 4.4.1 Unable to connect to remote host".to_owned())
        }
    );
    let open = one(sample("event_open.json").await);
    assert_eq!(open.kind, DeliveryKind::Opened { machine: false });
    assert_eq!(open.recipient.as_deref(), Some("recipient@example.com"));
    assert_eq!(open.occurred_at, at("2017-08-09T22:00:19.652Z"));

    assert_eq!(
        one(sample("event_click.json").await).kind,
        DeliveryKind::Clicked {
            url: "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html"
                .to_owned(),
            machine: false
        }
    );
    assert_eq!(
        one(sample("event_reject.json").await).kind,
        DeliveryKind::Dropped {
            reason: Some("Bad content".to_owned())
        }
    );
    assert_eq!(
        one(sample("event_rendering_failure.json").await).kind,
        DeliveryKind::Dropped {
            reason: Some(
                "Attribute 'attributeName' is not present in the rendering data.".to_owned()
            )
        }
    );
    let unsubscribed = one(sample("event_unsubscribe.json").await);
    assert_eq!(unsubscribed.kind, DeliveryKind::Unsubscribed);
    assert_eq!(
        unsubscribed.recipient.as_deref(),
        Some("recipient@example.com")
    );
}

#[tokio::test]
async fn notification_samples_normalize() {
    let bounce = one(sample("notification_bounce_hard.json").await);
    assert_eq!(
        bounce.kind,
        hard_bounce(
            Some("5.1.1"),
            Some("smtp; 550 5.1.1 <jane@example.com>... User")
        )
    );
    assert_eq!(bounce.recipient.as_deref(), Some("jane@example.com"));
    assert_eq!(
        bounce.provider_message_id.as_deref(),
        Some("00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000")
    );

    // Two bounced recipients: two events, indexed within the SNS message.
    let bounces = events(sample("notification_bounce_hard_no_dsn.json").await);
    let summary: Vec<(String, String, DeliveryKind)> = bounces
        .into_iter()
        .map(|e| (e.provider_event_id, e.recipient.unwrap(), e.kind))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "sns-msg-1:0".to_owned(),
                "jane@example.com".to_owned(),
                hard_bounce(None, Some("General"))
            ),
            (
                "sns-msg-1:1".to_owned(),
                "richard@example.com".to_owned(),
                hard_bounce(None, Some("General"))
            ),
        ]
    );

    for file in [
        "notification_complaint.json",
        "notification_complaint_no_feedback.json",
    ] {
        let complaint = one(sample(file).await);
        assert_eq!(complaint.kind, DeliveryKind::Complained);
        assert_eq!(complaint.recipient.as_deref(), Some("richard@example.com"));
    }
    let delivered = one(sample("notification_delivered.json").await);
    assert_eq!(delivered.kind, DeliveryKind::Delivered);
    assert_eq!(delivered.recipient.as_deref(), Some("jane@example.com"));
}

#[tokio::test]
async fn transient_bounces_are_soft_and_our_id_is_read_back() {
    let mut event = json_fixture("ses/event_bounce_hard.json");
    event["bounce"]["bounceType"] = "Transient".into();
    event["mail"]["headers"].as_array_mut().unwrap().push(
        json!({"name": "X-Herald-Message-Id", "value": "0190f1a8-0000-7000-8000-000000000005"}),
    );
    let body = SnsSigner::new().notification("sns-msg-2", SENT, &event);
    let bounce = one(post(&test_ses(), &body).await);
    assert!(matches!(
        bounce.kind,
        DeliveryKind::Bounced { hard: false, .. }
    ));
    assert_eq!(
        bounce.herald_message_id.as_deref(),
        Some("0190f1a8-0000-7000-8000-000000000005")
    );

    let mut event = json_fixture("ses/event_open.json");
    event["mail"]["tags"]["herald_message_id"] = json!(["0190f1a8-0000-7000-8000-000000000006"]);
    event["open"]["userAgent"] = "Mozilla/5.0".into();
    let body = SnsSigner::new().notification("sns-msg-3", SENT, &event);
    let open = one(post(&test_ses(), &body).await);
    assert_eq!(
        open.herald_message_id.as_deref(),
        Some("0190f1a8-0000-7000-8000-000000000006")
    );
    assert_eq!(open.kind, DeliveryKind::Opened { machine: true });
}

#[tokio::test]
async fn a_retried_notification_yields_the_same_events() {
    let message = json_fixture("ses/notification_bounce_hard_no_dsn.json");
    let body = SnsSigner::new().notification("sns-msg-4", SENT, &message);
    let first = events(post(&test_ses(), &body).await);
    let retry = events(post(&test_ses(), &body).await);
    assert_eq!(first, retry);
}

#[tokio::test]
async fn verified_but_broken_ses_events_are_400() {
    let body = SnsSigner::new().notification(
        "sns-msg-5",
        SENT,
        &json!({"eventType": "Bounce", "mail": {}}),
    );
    assert_malformed(post(&test_ses(), &body).await);
    assert_malformed(post(&test_ses(), b"<xml/>").await);
}

#[test]
fn settings_need_topics_and_readable_certificates() {
    let settings = |topics: Vec<String>, certificates: Vec<PathBuf>| WebhookSettings {
        ses: Some(SesWebhookSettings {
            topic_arns: topics,
            certificates,
        }),
        ..WebhookSettings::default()
    };
    assert!(Verifier::check(&settings(vec![], vec![])).is_err());
    let dir = fixtures_dir();
    for bad in ["ses/missing.pem", "ses/event_send.json"] {
        let result = Verifier::new(
            &settings(vec![TEST_TOPIC.to_owned()], vec![PathBuf::from(bad)]),
            &dir,
        );
        assert!(result.is_err(), "{bad}");
    }
    assert!(
        Verifier::new(
            &settings(
                vec![TEST_TOPIC.to_owned()],
                vec![PathBuf::from("ses/test_signing_cert.pem")]
            ),
            &dir
        )
        .is_ok()
    );
}
