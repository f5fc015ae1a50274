//! Event-triggered journeys end to end: HTTP in, SMTP out.

use chrono::TimeDelta;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, TestApp, subjects};

async fn welcome_sent_once_then_tips(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    let body = app.event("c-1", "signed_up", json!({})).await;
    assert_eq!(
        body["event"]["entered"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    app.run_due().await;
    let got = subjects(&app.smtp);
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Ana"), "subject personalised: {got:?}");

    // A second sign-up event does not start a second welcome (reentry: never).
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 1);

    // Two days later: the tips email, since no order arrived.
    app.advance(TimeDelta::days(2)).await;
    assert_eq!(app.smtp.messages().len(), 2);
    let mail = &app.smtp.messages()[0];
    assert_eq!(mail.to, vec!["ana@example.com".to_owned()]);
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail.data)
        .expect("parse mail");
    let message_id = parsed.message_id().expect("Message-ID").to_owned();
    let stored = app.messages_of("c-1").await;
    assert!(
        stored
            .iter()
            .any(|m| message_id.starts_with(m["id"].as_str().unwrap_or("-"))),
        "Message-ID carries our id"
    );
    assert!(
        parsed
            .header_raw("List-Unsubscribe")
            .is_some_and(|v| v.contains("/u/"))
    );
    app.finish().await;
}
both_backends!(welcome_sent_once_then_tips);

async fn welcome_skips_tips_after_an_order(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    app.advance(TimeDelta::hours(5)).await;
    app.event("c-1", "order_placed", json!({"total": 40})).await;
    app.advance(TimeDelta::days(2)).await;
    assert_eq!(app.smtp.messages().len(), 1, "only the welcome email");
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["journeys"][0]["status"], "completed");
    app.finish().await;
}
both_backends!(welcome_skips_tips_after_an_order);

fn cart(cart_id: &str) -> serde_json::Value {
    json!({"cart_id": cart_id, "item_count": 2, "cart_url": "https://shop.example/cart/1",
           "items": [{"name": "Mug", "quantity": 2, "price": 1200}]})
}

async fn cart_abandonment_reminder_then_last_chance(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 0, "waits an hour first");
    app.advance(TimeDelta::minutes(59)).await;
    assert_eq!(app.smtp.messages().len(), 0);
    app.advance(TimeDelta::minutes(1)).await;
    assert_eq!(app.smtp.messages().len(), 1, "reminder after 1h");
    app.advance(TimeDelta::hours(23)).await;
    assert_eq!(app.smtp.messages().len(), 2);
    let stored = app.messages_of("c-1").await;
    assert!(
        stored.iter().any(|m| m["template"] == "cart-last-chance"),
        "no click → last chance: {stored:?}"
    );
    assert!(!stored.iter().any(|m| m["template"] == "cart-discount"));
    app.finish().await;
}
both_backends!(cart_abandonment_reminder_then_last_chance);

async fn cart_abandonment_click_earns_discount(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.advance(TimeDelta::hours(1)).await;
    let reminder = app
        .messages_of("c-1")
        .await
        .into_iter()
        .find(|m| m["template"] == "cart-reminder")
        .expect("reminder");
    // A click on the reminder, reported as a behavioral event carrying our message id.
    app.event(
        "c-1",
        "email_clicked",
        json!({"message_id": reminder["id"], "url": "https://shop.example/cart/1"}),
    )
    .await;
    app.advance(TimeDelta::hours(23)).await;
    let stored = app.messages_of("c-1").await;
    assert!(
        stored.iter().any(|m| m["template"] == "cart-discount"),
        "{stored:?}"
    );
    assert!(!stored.iter().any(|m| m["template"] == "cart-last-chance"));
    app.finish().await;
}
both_backends!(cart_abandonment_click_earns_discount);

async fn order_exits_cart_journey(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.advance(TimeDelta::minutes(30)).await;
    let body = app.event("c-1", "order_placed", json!({"total": 24})).await;
    assert_eq!(
        body["event"]["exited"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    app.advance(TimeDelta::days(2)).await;
    assert_eq!(app.smtp.messages().len(), 0, "nothing sent after the order");
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["journeys"][0]["status"], "exited");
    app.finish().await;
}
both_backends!(order_exits_cart_journey);

async fn key_scopes_journeys_per_cart(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.event("c-1", "cart_updated", cart("k-2")).await;
    // An empty cart does not match `where: item_count > 0`.
    app.event(
        "c-1",
        "cart_updated",
        json!({"cart_id": "k-3", "item_count": 0}),
    )
    .await;
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    let keys: Vec<_> = contact["journeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["journey_key"].clone())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    app.advance(TimeDelta::hours(1)).await;
    assert_eq!(app.smtp.messages().len(), 2, "one reminder per cart");
    app.finish().await;
}
both_backends!(key_scopes_journeys_per_cart);

async fn reentry_after_duration(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.advance(TimeDelta::hours(1)).await;
    app.advance(TimeDelta::hours(23)).await; // journey completes (reminder + last chance)
    assert_eq!(app.smtp.messages().len(), 2);
    // Same cart within 7 days of the last entry: not again.
    app.clock.advance(TimeDelta::days(3));
    let body = app.event("c-1", "cart_updated", cart("k-1")).await;
    assert_eq!(
        body["event"]["entered"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
    // After 7 days: enters again.
    app.clock.advance(TimeDelta::days(4));
    let body = app.event("c-1", "cart_updated", cart("k-1")).await;
    assert_eq!(
        body["event"]["entered"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    app.finish().await;
}
both_backends!(reentry_after_duration);

async fn unsubscribed_and_suppressed_contacts_get_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let (status, _) = app
        .post(
            "/v1/contacts",
            json!({"id": "c-1", "email": "ana@example.com", "subscribed": false}),
        )
        .await;
    assert_eq!(status, 200);
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 0);
    let stored = app.messages_of("c-1").await;
    assert_eq!(stored[0]["status"], "suppressed", "{stored:?}");
    app.finish().await;
}
both_backends!(unsubscribed_and_suppressed_contacts_get_nothing);

async fn one_click_unsubscribe_is_honored_before_the_next_send(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    let parsed_raw = app.smtp.messages()[0].data.clone();
    let parsed = mail_parser::MessageParser::default()
        .parse(&parsed_raw)
        .expect("parse");
    let header = parsed
        .header_raw("List-Unsubscribe")
        .expect("List-Unsubscribe")
        .trim()
        .to_owned();
    let url = header
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    let url = url.replace("http://127.0.0.1:8080", &app.base);
    // A GET (a link scanner) never unsubscribes.
    let page = app.http.get(&url).send().await.expect("get");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap_or_default()
            .contains("<form method=\"post\"")
    );
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["contact"]["subscribed"], true);
    // RFC 8058 one-click POST.
    let done = app
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("post");
    assert_eq!(done.status(), 200);
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["contact"]["subscribed"], false);
    app.advance(TimeDelta::days(2)).await;
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "tips not sent after unsubscribe"
    );
    // A tampered token is rejected.
    let tampered = format!("{}x", url);
    assert_eq!(
        app.http
            .post(&tampered)
            .send()
            .await
            .expect("post")
            .status(),
        404
    );
    app.finish().await;
}
both_backends!(one_click_unsubscribe_is_honored_before_the_next_send);
