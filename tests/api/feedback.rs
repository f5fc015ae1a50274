//! The delivery feedback loop end to end: SMTP out, provider webhooks and own tracking in,
//! suppression and behavior out of them.

use base64::Engine;
use chrono::TimeDelta;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Db, Options, TestApp};

fn options() -> Options {
    let env = [
        ("HERALD_WEBHOOKS__POSTMARK__USERNAME", "pm-user"),
        ("HERALD_WEBHOOKS__POSTMARK__PASSWORD", "pm-pass"),
        ("HERALD_WEBHOOKS__MAILGUN__SIGNING_KEY", "mg-key"),
    ];
    Options {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Options::default()
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn postmark_bounce(message_id: &str, kind: &str, id: u64) -> Value {
    json!({
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": id, "Type": kind, "TypeCode": 1,
        "Name": "Hard bounce", "MessageID": "pm-1", "Metadata": {"herald_message_id": message_id},
        "Description": "unknown user", "Details": "smtp;550 5.1.1 unknown", "Email": "ana@example.com",
        "From": "shop@example.com", "BouncedAt": "2026-11-02T10:05:00Z", "Inactive": kind == "HardBounce",
        "CanActivate": true,
        "Subject": "Welcome"
    })
}

async fn post_webhook(
    app: &TestApp,
    provider: &str,
    auth: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(&format!("/webhooks/{provider}")))
        .json(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("webhook request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn welcome_message_id(app: &TestApp) -> String {
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 1);
    app.messages_of("c-1").await[0]["id"]
        .as_str()
        .expect("message id")
        .to_owned()
}

async fn bounce_webhook_suppresses_and_the_next_send_is_suppressed(db: Db) {
    let app = TestApp::spawn_with(db, options(), |_| {}).await;
    let message_id = welcome_message_id(&app).await;
    // A forged request: wrong credentials, nothing stored.
    let (status, _) = post_webhook(
        &app,
        "postmark",
        Some(&basic("pm-user", "nope")),
        &postmark_bounce(&message_id, "HardBounce", 1),
    )
    .await;
    assert_eq!(status, 401);
    let (_, msg) = app.get(&format!("/v1/messages/{message_id}")).await;
    assert_eq!(msg["events"].as_array().map(Vec::len), Some(0));
    // The real one.
    let auth = basic("pm-user", "pm-pass");
    let (status, body) = post_webhook(
        &app,
        "postmark",
        Some(&auth),
        &postmark_bounce(&message_id, "HardBounce", 1),
    )
    .await;
    assert_eq!((status, body["stored"].clone()), (200, json!(1)), "{body}");
    // Retried by Postmark: changes nothing.
    let (status, body) = post_webhook(
        &app,
        "postmark",
        Some(&auth),
        &postmark_bounce(&message_id, "HardBounce", 1),
    )
    .await;
    assert_eq!(
        (status, body["duplicates"].clone()),
        (200, json!(1)),
        "{body}"
    );
    let (_, msg) = app.get(&format!("/v1/messages/{message_id}")).await;
    let events = msg["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0]["kind"].as_str(), events[0]["severity"].as_str()),
        (Some("bounced"), Some("hard"))
    );
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["suppression"]["reason"], "hard_bounce");
    // The bounce is behavior too.
    app.advance(TimeDelta::days(2)).await;
    let stored = app.messages_of("c-1").await;
    assert_eq!(
        stored[0]["status"], "suppressed",
        "the tips email is suppressed: {stored:?}"
    );
    assert_eq!(app.smtp.messages().len(), 1);
    app.finish().await;
}
both_backends!(bounce_webhook_suppresses_and_the_next_send_is_suppressed);

async fn soft_bounces_suppress_after_the_limit_and_orphans_are_kept(db: Db) {
    let app = TestApp::spawn_with(db, options(), |_| {}).await;
    let message_id = welcome_message_id(&app).await;
    let auth = basic("pm-user", "pm-pass");
    for id in 1..=2 {
        post_webhook(
            &app,
            "postmark",
            Some(&auth),
            &postmark_bounce(&message_id, "SoftBounce", id),
        )
        .await;
    }
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert!(
        contact["suppression"].is_null(),
        "two soft bounces are not enough"
    );
    post_webhook(
        &app,
        "postmark",
        Some(&auth),
        &postmark_bounce(&message_id, "SoftBounce", 3),
    )
    .await;
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["suppression"]["reason"], "soft_bounce");
    // An event for a message Herald never sent is kept as an orphan, and still suppresses.
    let mut orphan = postmark_bounce("no-such-message", "HardBounce", 9);
    orphan["Email"] = json!("stranger@example.com");
    let (status, body) = post_webhook(&app, "postmark", Some(&auth), &orphan).await;
    assert_eq!((status, body["stored"].clone()), (200, json!(1)));
    let (status, list) = app.get("/v1/suppressions").await;
    assert_eq!(status, 200);
    assert!(
        list["suppressions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["email"] == "stranger@example.com"),
        "{list}"
    );
    app.finish().await;
}
both_backends!(soft_bounces_suppress_after_the_limit_and_orphans_are_kept);

fn mailgun(key: &str, token: &str, timestamp: i64, message_id: &str) -> Value {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("hmac key");
    mac.update(format!("{timestamp}{token}").as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({
        "signature": {"timestamp": timestamp.to_string(), "token": token, "signature": signature},
        "event-data": {"id": format!("ev-{token}"), "event": "complained", "timestamp": timestamp as f64,
                       "recipient": "ana@example.com", "user-variables": {"herald-message-id": message_id},
                       "message": {"headers": {"message-id": "mg-1@example.com"}}}
    })
}

async fn mailgun_replays_and_stale_signatures_are_rejected(db: Db) {
    let app = TestApp::spawn_with(db, options(), |_| {}).await;
    let message_id = welcome_message_id(&app).await;
    let now = app.clock.now().timestamp();
    let body = mailgun("mg-key", "tok-1", now, &message_id);
    let (status, got) = post_webhook(&app, "mailgun", None, &body).await;
    assert_eq!(status, 200, "{got}");
    let (status, got) = post_webhook(&app, "mailgun", None, &body).await;
    assert_eq!(status, 401, "a replayed token: {got}");
    let (status, _) = post_webhook(
        &app,
        "mailgun",
        None,
        &mailgun("mg-key", "tok-2", now - 3600, &message_id),
    )
    .await;
    assert_eq!(status, 401, "outside the timestamp tolerance");
    let (status, _) = post_webhook(
        &app,
        "mailgun",
        None,
        &mailgun("wrong-key", "tok-3", now, &message_id),
    )
    .await;
    assert_eq!(status, 401, "forged");
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["suppression"]["reason"], "complaint");
    assert_eq!(
        contact["contact"]["subscribed"], false,
        "a complaint ends consent"
    );
    // Unknown and unconfigured providers, malformed bodies.
    assert_eq!(post_webhook(&app, "nope", None, &json!({})).await.0, 404);
    assert_eq!(post_webhook(&app, "resend", None, &json!({})).await.0, 404);
    let r = app
        .http
        .post(app.url("/webhooks/postmark"))
        .header("authorization", basic("pm-user", "pm-pass"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.finish().await;
}
both_backends!(mailgun_replays_and_stale_signatures_are_rejected);

fn links(html: &str, marker: &str) -> Vec<String> {
    html.split(marker)
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|token| format!("{marker}{token}"))
        .collect()
}

fn html_of(mail: &[u8]) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(mail)
        .expect("parse");
    parsed
        .body_html(0)
        .map(|h| h.into_owned())
        .unwrap_or_default()
}

fn cart() -> Value {
    json!({"cart_id": "k-1", "item_count": 1, "cart_url": "https://shop.example/cart/k-1",
           "items": [{"name": "Mug", "quantity": 1, "price": 1200}]})
}

async fn own_click_tracking_drives_the_branch(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart()).await;
    app.advance(TimeDelta::hours(1)).await;
    let html = html_of(&app.smtp.messages()[0].data);
    let clicks = links(&html, "http://127.0.0.1:8080/t/c/");
    let opens = links(&html, "http://127.0.0.1:8080/t/o/");
    assert!(
        !clicks.is_empty() && opens.len() == 1,
        "tracked links and a pixel: {html}"
    );
    assert!(
        !html.contains("href=\"https://shop.example/cart/k-1\""),
        "the cart link is rewritten"
    );
    let local = |u: &str| u.replace("http://127.0.0.1:8080", &app.base);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Apple Mail Privacy Protection prefetches the pixel: recorded as a machine open.
    let pixel = no_redirects
        .get(local(&opens[0]))
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .unwrap();
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    // Hits are recorded after the answer, in batches: wait for that.
    app.core.hits.flush().await;
    // A tampered click token: 404 and no redirect.
    let tampered = format!("{}A", local(&clicks[0]));
    let bad = no_redirects.get(&tampered).send().await.unwrap();
    assert_eq!(bad.status(), 404);
    assert!(bad.headers().get("location").is_none());
    // A person clicks a minute later.
    app.clock.advance(TimeDelta::minutes(1));
    let browser = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15";
    let hit = no_redirects
        .get(local(&clicks[0]))
        .header("user-agent", browser)
        .send()
        .await
        .unwrap();
    assert_eq!(hit.status(), 302);
    assert_eq!(hit.headers()["location"], "https://shop.example/cart/k-1");
    app.core.hits.flush().await;
    let reminder = app.messages_of("c-1").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, msg) = app.get(&format!("/v1/messages/{reminder}")).await;
    let kinds: Vec<(String, bool)> = msg["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["machine"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("opened".to_owned(), true), ("clicked".to_owned(), false)]
    );
    app.advance(TimeDelta::hours(23)).await;
    let stored = app.messages_of("c-1").await;
    assert!(
        stored.iter().any(|m| m["template"] == "cart-discount"),
        "{stored:?}"
    );
    app.finish().await;
}
both_backends!(own_click_tracking_drives_the_branch);

async fn scanner_clicks_are_not_engagement(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart()).await;
    app.advance(TimeDelta::hours(1)).await;
    let html = html_of(&app.smtp.messages()[0].data);
    let clicks = links(&html, "http://127.0.0.1:8080/t/c/");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // A security gateway follows the link two seconds after delivery.
    app.clock.advance(TimeDelta::seconds(2));
    let hit = no_redirects
        .get(clicks[0].replace("http://127.0.0.1:8080", &app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(hit.status(), 302);
    app.core.hits.flush().await;
    app.advance(TimeDelta::hours(23)).await;
    let stored = app.messages_of("c-1").await;
    assert!(
        stored.iter().any(|m| m["template"] == "cart-last-chance"),
        "a scanner click is not a click: {stored:?}"
    );
    app.finish().await;
}
both_backends!(scanner_clicks_are_not_engagement);

async fn manual_suppressions(db: Db) {
    let app = TestApp::spawn(db).await;
    let (status, body) = app
        .post(
            "/v1/suppressions",
            json!({"email": "Ana@Example.com", "reason": "asked by phone"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 0);
    assert_eq!(app.messages_of("c-1").await[0]["status"], "suppressed");
    let r = app
        .http
        .delete(app.url("/v1/suppressions/ana@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .http
        .delete(app.url("/v1/suppressions/ana@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.advance(TimeDelta::days(2)).await;
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "mail flows again after removal"
    );
    let (status, _) = app
        .post("/v1/suppressions", json!({"email": "not an address"}))
        .await;
    assert_eq!(status, 422);
    app.finish().await;
}
both_backends!(manual_suppressions);
