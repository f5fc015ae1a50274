//! `feedback::record_batch`: a batch of reports ends exactly as recording them one at a time
//! would — duplicates (of an earlier batch and within the batch) change nothing, suppression and
//! soft-bounce counting follow the order of the reports, orphans are kept, every `email_<kind>`
//! event is stored once and applied to journeys in order — and tracking hits, recorded in
//! batches after the answer, are all stored.

use chrono::{DateTime, TimeDelta, Utc};
use herald::feedback::{Report, Tally, record_batch};
use herald::store::{Message, Sql, message_status};
use herald::tracking::links::{CLICK, OPEN};
use herald::webhook::DeliveryKind;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Db, Options, TestApp, write};

/// Starts on a click once the contact has opened something; a complaint ends it.
const ENGAGED: &str = "trigger:\n  event: email_clicked\nconditions:\n  - event: email_opened\nexit_on:\n  - event: email_complained\nsteps:\n  - wait: 1d\n  - update: { attribute: engaged, value: true }\n";
/// Waits for an open after sign-up.
const WAITER: &str = "trigger:\n  event: signed_up\nsteps:\n  - wait_for: { event: email_opened, timeout: 2d }\n  - update: { attribute: opened_it, value: true }\n";

async fn spawn(db: Db) -> TestApp {
    TestApp::spawn_with(
        db,
        Options {
            examples: false,
            ..Options::default()
        },
        |dir| {
            write(
                dir,
                "templates/note.hbs",
                "---\nsubject: Note\n---\n<p>Hi</p>\n",
            );
            write(dir, "workflows/engaged.yaml", ENGAGED);
            write(dir, "workflows/waiter.yaml", WAITER);
        },
    )
    .await
}

/// A contact with one sent message, known to the provider as `pm-<contact>`; the message id.
async fn sent_message(app: &TestApp, contact: &str, email: &str) -> String {
    app.contact(contact, email, json!({})).await;
    let at = app.clock.now() - TimeDelta::hours(1);
    let row = Message {
        id: uuid::Uuid::now_v7().to_string(),
        journey_id: uuid::Uuid::now_v7().to_string(),
        step: "note".to_owned(),
        iteration: 0,
        contact_id: contact.to_owned(),
        workflow: "note".to_owned(),
        template: "note".to_owned(),
        category: "marketing".to_owned(),
        to_email: email.to_owned(),
        subject: Some("Note".to_owned()),
        status: message_status::SENT.to_owned(),
        transport: Some("sendgrid".to_owned()),
        provider_message_id: Some(format!("pm-{contact}")),
        detail: None,
        attempts: 1,
        created_at: at,
        updated_at: at,
        sent_at: Some(at),
    };
    let mut tx = app.core.store.write().await.expect("write");
    let stored = tx.ensure_message(&row).await.expect("message");
    tx.commit().await.expect("commit");
    stored.id
}

struct R<'a> {
    id: &'a str,
    message: Option<&'a str>,
    provider_message: Option<&'a str>,
    recipient: Option<&'a str>,
    at: DateTime<Utc>,
    kind: DeliveryKind,
}

fn report(r: R<'_>) -> Report {
    Report {
        source: "sendgrid".to_owned(),
        source_event_id: r.id.to_owned(),
        herald_message_id: r.message.map(str::to_owned),
        provider_message_id: r.provider_message.map(str::to_owned),
        recipient: r.recipient.map(str::to_owned),
        occurred_at: r.at,
        kind: r.kind,
    }
}

/// A report about our message `message` with nothing else to go by.
fn about(id: &str, message: &str, at: DateTime<Utc>, kind: DeliveryKind) -> Report {
    report(R {
        id,
        message: Some(message),
        provider_message: None,
        recipient: None,
        at,
        kind,
    })
}

/// A soft bounce of Carl's message, known only by the provider's id.
fn carl_soft_bounce(id: &str, at: DateTime<Utc>) -> Report {
    report(R {
        id,
        message: None,
        provider_message: Some("pm-c-carl"),
        recipient: None,
        at,
        kind: soft(),
    })
}

fn soft() -> DeliveryKind {
    DeliveryKind::Bounced {
        hard: false,
        code: Some("450".to_owned()),
        reason: Some("mailbox full".to_owned()),
    }
}

fn opened() -> DeliveryKind {
    DeliveryKind::Opened { machine: false }
}

fn clicked() -> DeliveryKind {
    DeliveryKind::Clicked {
        url: "https://shop.example/".to_owned(),
        machine: false,
    }
}

async fn batch(app: &TestApp, reports: &[Report]) -> Tally {
    let mut tx = app.core.store.write().await.expect("write");
    let tally = record_batch(&mut tx, &app.core, reports, app.clock.now())
        .await
        .expect("record the batch");
    tx.commit().await.expect("commit");
    tally
}

async fn events(app: &TestApp, contact: &str, name: &str) -> usize {
    let mut tx = app.core.store.read().await.expect("read");
    let n = tx
        .contact_events(contact, name, None)
        .await
        .expect("events")
        .len();
    tx.commit().await.expect("commit");
    n
}

async fn suppression(app: &TestApp, email: &str) -> Option<String> {
    let mut tx = app.core.store.read().await.expect("read");
    let s = tx.suppression(email).await.expect("suppression");
    tx.commit().await.expect("commit");
    s.map(|s| s.reason)
}

async fn journeys(app: &TestApp, contact: &str) -> Vec<(String, String, Value)> {
    let mut tx = app.core.store.read().await.expect("read");
    let js = tx.contact_journeys(contact, 10).await.expect("journeys");
    tx.commit().await.expect("commit");
    js.into_iter()
        .map(|j| (j.workflow, j.status, j.context.0))
        .collect()
}

/// A count over the whole database.
async fn count(app: &TestApp, sql: &'static str) -> i64 {
    let mut tx = app.core.store.read().await.expect("read");
    let n: (i64,) = tx.one(Sql::new(sql)).await.expect("count");
    tx.commit().await.expect("commit");
    n.0
}

async fn a_batch_ends_as_its_reports_one_by_one(db: Db) {
    let app = spawn(db).await;
    let ana = sent_message(&app, "c-ana", "ana@example.com").await;
    sent_message(&app, "c-bob", "bob@example.com").await;
    sent_message(&app, "c-carl", "carl@example.com").await;
    let dora = sent_message(&app, "c-dora", "dora@example.com").await;
    app.event("c-bob", "signed_up", json!({})).await;
    app.run_due().await;
    let t = app.clock.now();
    let s = TimeDelta::seconds;
    let first = [
        about("e-1", &ana, t, DeliveryKind::Delivered),
        // No open yet: this click starts nothing.
        about("e-2", &ana, t + s(1), clicked()),
        about("e-3", &ana, t + s(2), opened()),
        // Now the contact has opened: this one starts `engaged`.
        about("e-4", &ana, t + s(3), clicked()),
        // Repeated within the batch.
        about("e-1", &ana, t, DeliveryKind::Delivered),
        // Bob's open, known only by the provider's message id, ends his wait.
        report(R {
            id: "e-5",
            message: None,
            provider_message: Some("pm-c-bob"),
            recipient: Some("bob@example.com"),
            at: t,
            kind: opened(),
        }),
        // An unknown id of ours: the provider's id finds the message.
        report(R {
            id: "e-6",
            message: Some("no-such-message"),
            provider_message: Some("pm-c-carl"),
            recipient: Some("Carl@Example.com"),
            at: t,
            kind: DeliveryKind::Delivered,
        }),
        carl_soft_bounce("e-7", t),
        carl_soft_bounce("e-8", t),
        // An orphan: kept, and it still suppresses.
        report(R {
            id: "e-9",
            message: Some("no-such-message"),
            provider_message: Some("no-such-either"),
            recipient: Some("stranger@example.com"),
            at: t,
            kind: DeliveryKind::Bounced {
                hard: true,
                code: Some("550".to_owned()),
                reason: Some("unknown user".to_owned()),
            },
        }),
        // Dora complains after two soft bounces: the third soft bounce comes after the
        // complaint, so the complaint is the reason.
        about("e-10", &dora, t, soft()),
        about("e-11", &dora, t, soft()),
        about("e-12", &dora, t, DeliveryKind::Complained),
        about("e-13", &dora, t, soft()),
    ];
    assert_eq!(
        batch(&app, &first).await,
        Tally {
            stored: 13,
            duplicates: 1
        }
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM delivery_events").await,
        13
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM delivery_events WHERE provider_event_id = 'e-9' AND message_id IS NULL"
        )
        .await,
        1,
        "the orphan is kept"
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM delivery_events WHERE provider_event_id = 'e-6' AND recipient = 'carl@example.com'"
        )
        .await,
        1
    );
    assert_eq!(
        suppression(&app, "stranger@example.com").await.as_deref(),
        Some("hard_bounce")
    );
    assert_eq!(suppression(&app, "carl@example.com").await, None);
    assert_eq!(
        suppression(&app, "dora@example.com").await.as_deref(),
        Some("complaint")
    );
    let (_, dora_now) = app.get("/v1/contacts/c-dora").await;
    assert_eq!(dora_now["contact"]["subscribed"], false);
    for (contact, name, n) in [
        ("c-ana", "email_delivered", 1),
        ("c-ana", "email_clicked", 2),
        ("c-ana", "email_opened", 1),
        ("c-bob", "email_opened", 1),
        ("c-carl", "email_delivered", 1),
        ("c-carl", "email_bounced", 2),
        ("c-dora", "email_bounced", 3),
        ("c-dora", "email_complained", 1),
    ] {
        assert_eq!(events(&app, contact, name).await, n, "{contact} {name}");
    }
    let ana_journeys = journeys(&app, "c-ana").await;
    assert_eq!(ana_journeys.len(), 1, "{ana_journeys:?}");
    let (workflow, status, context) = &ana_journeys[0];
    assert_eq!((workflow.as_str(), status.as_str()), ("engaged", "active"));
    assert_eq!(
        context["event"]["timestamp"],
        json!((t + s(3)).to_rfc3339()),
        "the click after the open started it"
    );
    let bob_journeys = journeys(&app, "c-bob").await;
    assert!(
        !bob_journeys[0].2["waiting"]["received"].is_null(),
        "the open ended the wait: {bob_journeys:?}"
    );
    app.run_due().await;
    let (_, bob_now) = app.get("/v1/contacts/c-bob").await;
    assert_eq!(bob_now["contact"]["attributes"]["opened_it"], true);

    // The provider retries part of it, with two new reports.
    let second = [
        about("e-1", &ana, t, DeliveryKind::Delivered),
        about("e-4", &ana, t + s(3), clicked()),
        about("e-12", &dora, t, DeliveryKind::Complained),
        about("e-14", &ana, t + s(4), DeliveryKind::Complained),
        carl_soft_bounce("e-15", t),
    ];
    assert_eq!(
        batch(&app, &second).await,
        Tally {
            stored: 2,
            duplicates: 3
        }
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM delivery_events").await,
        15
    );
    assert_eq!(events(&app, "c-ana", "email_clicked").await, 2);
    assert_eq!(events(&app, "c-ana", "email_delivered").await, 1);
    assert_eq!(events(&app, "c-dora", "email_complained").await, 1);
    assert_eq!(
        suppression(&app, "carl@example.com").await.as_deref(),
        Some("soft_bounce"),
        "the third soft bounce within the window"
    );
    let ana_journeys = journeys(&app, "c-ana").await;
    assert_eq!(ana_journeys[0].1, "exited", "the complaint ends `engaged`");
    app.finish().await;
}
both_backends!(a_batch_ends_as_its_reports_one_by_one);

async fn large_batches_are_stored_in_chunks(db: Db) {
    let app = spawn(db).await;
    let ana = sent_message(&app, "c-ana", "ana@example.com").await;
    let t = app.clock.now();
    let ids: Vec<String> = (0..1200).map(|i| format!("big-{i}")).collect();
    let mut reports: Vec<Report> = ids
        .iter()
        .map(|id| about(id, &ana, t, DeliveryKind::Delivered))
        .collect();
    // Repeats across chunk boundaries.
    reports.extend(ids[..10].iter().map(|id| about(id, &ana, t, opened())));
    assert_eq!(
        batch(&app, &reports).await,
        Tally {
            stored: 1200,
            duplicates: 10
        }
    );
    assert_eq!(events(&app, "c-ana", "email_delivered").await, 1200);
    assert_eq!(events(&app, "c-ana", "email_opened").await, 0);
    app.finish().await;
}
both_backends!(large_batches_are_stored_in_chunks);

async fn hits_answered_before_a_stop_are_stored(db: Db) {
    let app = spawn(db).await;
    let ana = sent_message(&app, "c-ana", "ana@example.com").await;
    let pixel = app.url(&format!("/t/o/{}", app.core.tokens.sign(OPEN, &ana)));
    for _ in 0..20 {
        let r = app.http.get(&pixel).send().await.expect("pixel");
        assert_eq!(r.status(), 200);
    }
    // No flush: stopping drains the queue.
    let app = app.restart().await;
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM delivery_events WHERE kind = 'opened'"
        )
        .await,
        20
    );
    assert_eq!(events(&app, "c-ana", "email_opened").await, 20);
    app.finish().await;
}
both_backends!(hits_answered_before_a_stop_are_stored);

async fn a_burst_of_clicks_is_a_scanner_however_it_is_batched(db: Db) {
    let app = spawn(db).await;
    let ana = sent_message(&app, "c-ana", "ana@example.com").await;
    let link = app.url(&format!(
        "/t/c/{}",
        app.core
            .tokens
            .sign(CLICK, &format!("{ana}\nhttps://shop.example/"))
    ));
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    let click = || async {
        let r = no_redirects
            .get(&link)
            .header("user-agent", browser)
            .send()
            .await
            .expect("click");
        assert_eq!(r.status(), 302);
    };
    // A person clicks; a minute later a scanner clicks four times within a second.
    click().await;
    app.core.hits.flush().await;
    app.clock.advance(TimeDelta::minutes(1));
    tokio::join!(click(), click(), click(), click());
    app.core.hits.flush().await;
    let machine: Vec<bool> = {
        let mut tx = app.core.store.read().await.expect("read");
        let rows = tx.message_deliveries(&ana).await.expect("ledger");
        tx.commit().await.expect("commit");
        rows.iter().map(|r| r.machine).collect()
    };
    assert_eq!(machine.len(), 5);
    assert_eq!(
        machine.iter().filter(|m| **m).count(),
        2,
        "the third and fourth click of the burst: {machine:?}"
    );
    app.finish().await;
}
both_backends!(a_burst_of_clicks_is_a_scanner_however_it_is_batched);

/// Opens of contacts nothing else reacts to are stored in bulk; the profile still takes them:
/// a human open moves `last_engaged_at`, a machine open does not.
async fn bulk_opens_reach_the_profile(db: Db) {
    let app = spawn(db).await;
    let ana = sent_message(&app, "c-ana", "ana@example.com").await;
    let bo = sent_message(&app, "c-bo", "bo@example.com").await;
    let profile = |id: &'static str| {
        let app = &app;
        async move {
            let (_, body) = app.get(&format!("/v1/contacts/{id}")).await;
            body["contact"]["profile"].clone()
        }
    };
    let t1 = app.clock.now();
    let machine = DeliveryKind::Opened { machine: true };
    batch(
        &app,
        &[
            about("o-1", &ana, t1, opened()),
            about("o-2", &bo, t1, machine),
        ],
    )
    .await;
    assert_eq!(
        profile("c-ana").await["last_engaged_at"],
        json!(t1.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    );
    assert_eq!(profile("c-ana").await["engagement"], "active");
    assert!(profile("c-bo").await["last_engaged_at"].is_null());
    app.clock.advance(TimeDelta::days(1));
    let t2 = app.clock.now();
    batch(&app, &[about("o-3", &ana, t2, opened())]).await;
    assert_eq!(
        profile("c-ana").await["last_engaged_at"],
        json!(t2.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    );
    app.finish().await;
}
both_backends!(bulk_opens_reach_the_profile);
