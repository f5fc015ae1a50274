//! Provider transports inside the running application: routing by category, failover recorded
//! on the message, suppression after a provider's recipient rejection, and a used-up quota that
//! defers the step until the reset without spending an attempt.

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::both_backends;
use crate::helpers::{Db, Options, TestApp, write};

/// A transactional workflow: a receipt for every order.
fn receipt_workflow(dir: &std::path::Path) {
    write(
        dir,
        "workflows/receipt.yaml",
        "name: receipt\ncategory: transactional\ntrigger:\n  event: order_placed\nsteps:\n  - id: receipt\n    send: receipt\n",
    );
    write(
        dir,
        "templates/receipt.hbs",
        "---\nsubject: \"Your order, {{contact.first_name}}\"\n---\n<p>Thanks for your order, {{contact.first_name}}.</p>\n",
    );
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

async fn stand_in(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    answer(&server, response).await;
    server
}

async fn answer(server: &MockServer, response: ResponseTemplate) {
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(server)
        .await;
}

fn postmark_env(server: &MockServer) -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_TRANSPORTS__PM__KIND", "postmark".to_owned()),
        ("HERALD_TRANSPORTS__PM__TOKEN", "pm-token".to_owned()),
        ("HERALD_TRANSPORTS__PM__BASE_URL", server.uri()),
        ("HERALD_SENDING__CATEGORIES__TRANSACTIONAL", "pm".to_owned()),
    ]
}

fn message<'a>(messages: &'a [Value], template: &str) -> &'a Value {
    messages
        .iter()
        .find(|m| m["template"] == template)
        .unwrap_or_else(|| panic!("no {template} message in {messages:?}"))
}

async fn categories_choose_their_transport(db: Db) {
    let postmark = stand_in(
        ResponseTemplate::new(200)
            .set_body_json(json!({"MessageID": "pm-42", "ErrorCode": 0, "Message": "OK"})),
    )
    .await;
    let options = Options {
        env: env(&postmark_env(&postmark)),
        ..Options::default()
    };
    let app = TestApp::spawn_with(db, options, receipt_workflow).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event(
        "c-1",
        "order_placed",
        json!({"order_id": "o-1", "total": 40}),
    )
    .await;
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;

    // Transactional through Postmark, marketing through the default SMTP relay.
    let requests = postmark.received_requests().await.unwrap_or_default();
    assert_eq!(requests.len(), 1);
    let body: Value = serde_json::from_slice(&requests[0].body).expect("json body");
    assert_eq!(body["Subject"], "Your order, Ana");
    assert_eq!(app.smtp.messages().len(), 1, "the welcome email");

    let messages = app.messages_of("c-1").await;
    let receipt = message(&messages, "receipt");
    assert_eq!(receipt["status"], "sent");
    assert_eq!(receipt["transport"], "pm");
    assert_eq!(receipt["provider_message_id"], "pm-42");
    assert_eq!(body["Metadata"]["herald_message_id"], receipt["id"]);
    assert_eq!(message(&messages, "welcome")["transport"], "smtp");
    app.finish().await;
}
both_backends!(categories_choose_their_transport);

/// A workflow's own `transport:` beats its category's.
async fn a_workflow_can_name_its_transport(db: Db) {
    let postmark = stand_in(
        ResponseTemplate::new(200)
            .set_body_json(json!({"MessageID": "pm-7", "ErrorCode": 0, "Message": "OK"})),
    )
    .await;
    let options = Options {
        env: env(&postmark_env(&postmark)),
        ..Options::default()
    };
    let app = TestApp::spawn_with(db, options, |dir| {
        write(
            dir,
            "workflows/promo.yaml",
            "transport: pm
trigger:
  event: promo
steps:
  - send: promo
",
        );
        write(
            dir,
            "templates/promo.hbs",
            "---\nsubject: Promo\n---\n<p>Sale</p>\n",
        );
    })
    .await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "promo", json!({})).await;
    app.run_due().await;
    assert_eq!(
        postmark.received_requests().await.unwrap_or_default().len(),
        1,
        "marketing, yet via Postmark"
    );
    assert_eq!(
        message(&app.messages_of("c-1").await, "promo")["transport"],
        "pm"
    );
    assert!(app.smtp.messages().is_empty());
    app.finish().await;
}
both_backends!(a_workflow_can_name_its_transport);

async fn failover_is_recorded_on_the_message(db: Db) {
    let postmark = stand_in(ResponseTemplate::new(503)).await;
    let mut pairs = postmark_env(&postmark);
    pairs.push(("HERALD_TRANSPORTS__PM__FALLBACK", "smtp".to_owned()));
    let options = Options {
        env: env(&pairs),
        ..Options::default()
    };
    let app = TestApp::spawn_with(db, options, receipt_workflow).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event("c-1", "order_placed", json!({"order_id": "o-1"}))
        .await;
    app.run_due().await;

    assert_eq!(postmark.received_requests().await.map(|r| r.len()), Some(1));
    assert_eq!(app.smtp.messages().len(), 1);
    let messages = app.messages_of("c-1").await;
    let receipt = message(&messages, "receipt");
    assert_eq!(receipt["status"], "sent");
    assert_eq!(receipt["transport"], "smtp");
    app.finish().await;
}
both_backends!(failover_is_recorded_on_the_message);

async fn a_provider_recipient_rejection_suppresses_the_address(db: Db) {
    let postmark = stand_in(ResponseTemplate::new(422).set_body_json(json!({
        "ErrorCode": 406,
        "Message": "You tried to send to recipient(s) that have been marked as inactive."
    })))
    .await;
    let options = Options {
        env: env(&postmark_env(&postmark)),
        ..Options::default()
    };
    let app = TestApp::spawn_with(db, options, receipt_workflow).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event("c-1", "order_placed", json!({"order_id": "o-1"}))
        .await;
    app.run_due().await;

    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["suppression"]["reason"], "hard_bounce", "{contact}");
    let receipt = message(contact["messages"].as_array().expect("messages"), "receipt");
    assert_eq!(receipt["status"], "failed");
    app.finish().await;
}
both_backends!(a_provider_recipient_rejection_suppresses_the_address);

async fn a_used_up_quota_defers_the_step_without_spending_an_attempt(db: Db) {
    let resend = stand_in(ResponseTemplate::new(429).set_body_json(json!({
        "statusCode": 429,
        "name": "daily_quota_exceeded",
        "message": "You have reached your daily email sending quota."
    })))
    .await;
    let options = Options {
        env: env(&[
            ("HERALD_SENDING__TRANSPORT", "re".to_owned()),
            ("HERALD_TRANSPORTS__RE__KIND", "resend".to_owned()),
            ("HERALD_TRANSPORTS__RE__API_KEY", "re_key".to_owned()),
            ("HERALD_TRANSPORTS__RE__BASE_URL", resend.uri()),
        ]),
        ..Options::default()
    };
    let app = TestApp::spawn_with(db, options, |_| {}).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;

    let midnight = Utc
        .with_ymd_and_hms(2026, 11, 3, 0, 0, 0)
        .single()
        .expect("valid time");
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    let journey = &contact["journeys"][0];
    assert_eq!(journey["attempts"], 0, "{journey}");
    assert_eq!(journey["next_run_at"], json!(midnight), "{journey}");
    assert!(
        journey["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("daily_quota_exceeded")),
        "{journey}"
    );
    assert_eq!(contact["messages"][0]["status"], "pending");

    // Nothing runs before the reset; at the reset the message goes out.
    answer(
        &resend,
        ResponseTemplate::new(200).set_body_json(json!({"id": "re-7"})),
    )
    .await;
    app.advance(chrono::TimeDelta::hours(13)).await;
    assert_eq!(resend.received_requests().await.map(|r| r.len()), Some(0));
    app.advance(chrono::TimeDelta::hours(1)).await;
    let messages = app.messages_of("c-1").await;
    assert_eq!(messages[0]["status"], "sent", "{messages:?}");
    assert_eq!(messages[0]["provider_message_id"], "re-7");
    assert_eq!(messages[0]["transport"], "re");
    app.finish().await;
}
both_backends!(a_used_up_quota_defers_the_step_without_spending_an_attempt);
