//! Time-based triggers and send etiquette, with the manual clock: birthdays in each contact's
//! zone, Feb 29, DST, schedules fired once across workers, quiet hours and frequency caps.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use herald::app::Role;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, Options, TestApp, write};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("valid instant")
}

const NOTE: &str = "---\nsubject: \"Note for {{contact.email}}\"\n---\n<p>Hello</p>\n";

fn project(files: &'static [(&'static str, &'static str)]) -> impl FnOnce(&std::path::Path) {
    move |dir| {
        write(dir, "templates/note.hbs", NOTE);
        for (path, content) in files {
            write(dir, path, content);
        }
    }
}

fn options(env: &[(&str, &str)]) -> Options {
    Options {
        role: Role::Api,
        examples: false,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// Moves the clock to `at` and runs what is due.
async fn at(app: &TestApp, when: DateTime<Utc>) {
    app.clock.set(when);
    app.run_due().await;
}

async fn recipients(app: &TestApp) -> Vec<String> {
    app.smtp
        .messages()
        .iter()
        .flat_map(|m| m.to.clone())
        .collect()
}

const BIRTHDAY: &str =
    "trigger:\n  date:\n    attribute: birthday\n    at: \"09:00\"\nsteps:\n  - send: note\n";

async fn birthdays_fire_at_each_contacts_local_nine(db: Db) {
    let app = TestApp::spawn_with(
        db,
        options(&[]),
        project(&[("workflows/birthday.yaml", BIRTHDAY)]),
    )
    .await;
    app.contact(
        "syd",
        "syd@example.com",
        json!({"birthday": "1990-12-05", "timezone": "Australia/Sydney"}),
    )
    .await;
    app.contact(
        "nyc",
        "nyc@example.com",
        json!({"birthday": "12-05", "timezone": "America/New_York"}),
    )
    .await;
    // Sydney is UTC+11 in December: 09:00 local is 22:00 UTC on Dec 4.
    at(&app, utc(2026, 12, 4, 21, 59)).await;
    assert!(app.smtp.messages().is_empty());
    at(&app, utc(2026, 12, 4, 22, 0)).await;
    assert_eq!(recipients(&app).await, vec!["syd@example.com"]);
    // New York is UTC-5: 09:00 local is 14:00 UTC on Dec 5.
    at(&app, utc(2026, 12, 5, 13, 59)).await;
    assert_eq!(app.smtp.messages().len(), 1);
    at(&app, utc(2026, 12, 5, 14, 0)).await;
    assert_eq!(
        recipients(&app).await,
        vec!["syd@example.com", "nyc@example.com"]
    );
    // Updating an unrelated attribute does not fire this year's birthday again.
    app.contact("nyc", "nyc@example.com", json!({"plan": "pro"}))
        .await;
    at(&app, utc(2026, 12, 6, 0, 0)).await;
    assert_eq!(app.smtp.messages().len(), 2);
    // Next year, once more each.
    at(&app, utc(2027, 12, 6, 0, 0)).await;
    assert_eq!(app.smtp.messages().len(), 4);
    app.finish().await;
}
both_backends!(birthdays_fire_at_each_contacts_local_nine);

async fn feb_29_birthdays_fire_on_feb_28(db: Db) {
    let app = TestApp::spawn_with(
        db,
        options(&[]),
        project(&[("workflows/birthday.yaml", BIRTHDAY)]),
    )
    .await;
    app.contact(
        "leap",
        "leap@example.com",
        json!({"birthday": "2000-02-29"}),
    )
    .await;
    at(&app, utc(2027, 2, 28, 8, 59)).await;
    assert!(app.smtp.messages().is_empty());
    at(&app, utc(2027, 2, 28, 9, 0)).await;
    assert_eq!(app.smtp.messages().len(), 1);
    at(&app, utc(2027, 3, 1, 9, 0)).await;
    assert_eq!(app.smtp.messages().len(), 1, "not again on Mar 1");
    at(&app, utc(2028, 2, 29, 9, 0)).await;
    assert_eq!(
        app.smtp.messages().len(),
        2,
        "on the day itself in a leap year"
    );
    app.finish().await;
}
both_backends!(feb_29_birthdays_fire_on_feb_28);

async fn a_changed_date_reschedules_and_a_restart_keeps_the_schedule(db: Db) {
    let app = TestApp::spawn_with(
        db,
        options(&[]),
        project(&[("workflows/birthday.yaml", BIRTHDAY)]),
    )
    .await;
    app.contact("c-1", "ana@example.com", json!({"birthday": "1990-12-24"}))
        .await;
    // The birthday was wrong: it is on Nov 20.
    app.contact("c-1", "ana@example.com", json!({"birthday": "1990-11-20"}))
        .await;
    let app = app.restart().await;
    at(&app, utc(2026, 11, 20, 9, 0)).await;
    assert_eq!(app.smtp.messages().len(), 1);
    at(&app, utc(2026, 12, 24, 10, 0)).await;
    assert_eq!(app.smtp.messages().len(), 1, "the old date no longer fires");
    app.finish().await;
}
both_backends!(a_changed_date_reschedules_and_a_restart_keeps_the_schedule);

const NY_0230: &str = "trigger:\n  schedule:\n    cron: \"30 2 * * *\"\n    timezone: America/New_York\nsteps:\n  - send: note\n";
const CONTACT_0230: &str = "trigger:\n  schedule:\n    cron: \"30 2 * * *\"\n    timezone: contact\nsteps:\n  - send: note\n";

async fn dst_gaps_and_overlaps_fire_once(db: Db) {
    let setup = project(&[
        ("workflows/ny.yaml", NY_0230),
        ("workflows/local.yaml", CONTACT_0230),
    ]);
    let app = TestApp::spawn_with(db, options(&[]), setup).await;
    // Herald's clock starts on 2026-11-02; move to just before the Berlin fall-back night and
    // the New York spring-forward night in turn.
    app.contact(
        "ber",
        "ber@example.com",
        json!({"timezone": "Europe/Berlin"}),
    )
    .await;
    at(&app, utc(2027, 3, 13, 12, 0)).await;
    let before = app.smtp.messages().len();
    // New York, 2027-03-14: 02:30 does not exist; the fixed-zone schedule fires once at 03:00 EDT.
    at(&app, utc(2027, 3, 14, 6, 59)).await;
    let at_gap = app.smtp.messages().len();
    at(&app, utc(2027, 3, 14, 7, 0)).await;
    assert_eq!(app.smtp.messages().len(), at_gap + 1, "fires at 03:00 EDT");
    at(&app, utc(2027, 3, 14, 12, 0)).await;
    assert_eq!(app.smtp.messages().len(), at_gap + 1, "once");
    assert!(at_gap > before, "Berlin's daily 02:30 also fired meanwhile");
    app.finish().await;

    // Berlin, 2026-10-25 (fall-back): 02:30 happens twice; the contact-local schedule fires once.
    let setup = project(&[("workflows/local.yaml", CONTACT_0230)]);
    let app = TestApp::spawn_with(db, options(&[]), setup).await;
    app.clock.set(utc(2026, 10, 24, 12, 0));
    app.contact(
        "ber",
        "ber@example.com",
        json!({"timezone": "Europe/Berlin"}),
    )
    .await;
    at(&app, utc(2026, 10, 25, 0, 29)).await;
    assert!(app.smtp.messages().is_empty());
    at(&app, utc(2026, 10, 25, 0, 30)).await; // 02:30 CEST
    assert_eq!(app.smtp.messages().len(), 1);
    at(&app, utc(2026, 10, 25, 1, 30)).await; // 02:30 CET, the repeated hour
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "the repeated 02:30 does not fire again"
    );
    at(&app, utc(2026, 10, 26, 1, 30)).await;
    assert_eq!(app.smtp.messages().len(), 2, "next day as usual");
    app.finish().await;
}
both_backends!(dst_gaps_and_overlaps_fire_once);

const WEEKLY: &str =
    "trigger:\n  schedule:\n    cron: \"0 9 * * 1\"\n    timezone: UTC\nsteps:\n  - send: note\n";

async fn two_workers_share_a_schedule_tick_once(db: Db) {
    const CONTACTS: usize = 1200;
    let app = TestApp::spawn_with(
        db,
        options(&[]),
        project(&[("workflows/weekly.yaml", WEEKLY)]),
    )
    .await;
    app.contacts_batch(CONTACTS, |i| format!("c-{i:04}")).await;
    let (_, body) = app
        .post(
            "/v1/contacts",
            json!({"id": "c-off", "email": "off@example.com", "subscribed": false}),
        )
        .await;
    assert_eq!(body["contact"]["subscribed"], false);
    let other = app.worker_node(&[]).await;
    // 2026-11-02 is a Monday; the next tick is Monday 2026-11-09 09:00 UTC.
    app.clock.set(utc(2026, 11, 9, 9, 0));
    let (a, b) = tokio::join!(
        herald::scheduler::run_due(&app.core),
        herald::scheduler::run_due(&other.core)
    );
    a.expect("node a");
    b.expect("node b");
    let mail = app
        .smtp
        .wait_for(CONTACTS, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(
        mail.len(),
        CONTACTS,
        "every subscribed contact once, the unsubscribed one never"
    );
    let mut to: Vec<_> = mail.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), CONTACTS);
    other.core.shutdown().await;
    app.finish().await;
}
both_backends!(two_workers_share_a_schedule_tick_once);

const WELCOME: &str = "trigger:\n  event: signed_up\nsteps:\n  - send: note\n";
const RECEIPT: &str =
    "category: transactional\ntrigger:\n  event: order_placed\nsteps:\n  - send: note\n";

async fn quiet_hours_spanning_midnight_defer_marketing_only(db: Db) {
    let env = [
        ("HERALD_SENDING__QUIET_HOURS__START", "21:00"),
        ("HERALD_SENDING__QUIET_HOURS__END", "08:00"),
    ];
    let setup = project(&[
        ("workflows/welcome.yaml", WELCOME),
        ("workflows/receipt.yaml", RECEIPT),
    ]);
    let app = TestApp::spawn_with(db, options(&env), setup).await;
    app.contact(
        "c-1",
        "ana@example.com",
        json!({"timezone": "America/New_York"}),
    )
    .await;
    // 23:30 in New York (04:30 UTC, EST).
    app.clock.set(utc(2026, 11, 3, 4, 30));
    app.event("c-1", "signed_up", json!({})).await;
    app.event("c-1", "order_placed", json!({})).await;
    app.run_due().await;
    let stored = app.messages_of("c-1").await;
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "the transactional receipt is not held"
    );
    let welcome = stored
        .iter()
        .find(|m| m["category"] == "marketing")
        .expect("welcome message");
    assert_eq!(welcome["status"], "pending");
    let detail = welcome["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("deferred_until 2026-11-03T13:00:00") && detail.ends_with("quiet_hours"),
        "{detail}"
    );
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    let journey = contact["journeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["workflow"] == "welcome")
        .unwrap()
        .clone();
    assert!(
        journey["note"]
            .as_str()
            .unwrap_or_default()
            .contains("quiet_hours"),
        "{journey}"
    );
    // 02:00 local: still quiet.
    at(&app, utc(2026, 11, 3, 7, 0)).await;
    assert_eq!(app.smtp.messages().len(), 1);
    // 08:00 local.
    at(&app, utc(2026, 11, 3, 13, 0)).await;
    assert_eq!(app.smtp.messages().len(), 2);
    app.finish().await;
}
both_backends!(quiet_hours_spanning_midnight_defer_marketing_only);

const PROMO: &str = "trigger:\n  event: promo\nreentry: always\nsteps:\n  - send: note\n";
const PROMO_DEFER: &str = "trigger:\n  event: promo_later\nreentry: always\nfrequency_cap: { max: 1, per: 1d, outcome: defer }\nsteps:\n  - send: note\n";

async fn frequency_cap_skip_versus_defer(db: Db) {
    let env = [
        ("HERALD_SENDING__FREQUENCY_CAP__MAX", "1"),
        ("HERALD_SENDING__FREQUENCY_CAP__PER", "1d"),
        ("HERALD_SENDING__FREQUENCY_CAP__OUTCOME", "skip"),
    ];
    let setup = project(&[
        ("workflows/welcome.yaml", WELCOME),
        ("workflows/promo.yaml", PROMO),
        ("workflows/promo-later.yaml", PROMO_DEFER),
        ("workflows/receipt.yaml", RECEIPT),
    ]);
    let app = TestApp::spawn_with(db, options(&env), setup).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 1);
    // Second marketing email the same day: skipped, never sent.
    app.clock.advance(TimeDelta::hours(2));
    app.event("c-1", "promo", json!({})).await;
    app.run_due().await;
    let stored = app.messages_of("c-1").await;
    let promo = stored.iter().find(|m| m["workflow"] == "promo").unwrap();
    assert_eq!(
        (promo["status"].as_str(), promo["detail"].as_str()),
        (Some("skipped"), Some("skipped: frequency_cap"))
    );
    // Transactional mail is exempt.
    app.event("c-1", "order_placed", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 2);
    // A workflow that defers: held until the first email leaves the 1-day window.
    app.event("c-1", "promo_later", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 2);
    let held = app
        .messages_of("c-1")
        .await
        .into_iter()
        .find(|m| m["workflow"] == "promo-later")
        .unwrap();
    assert!(
        held["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("frequency_cap"),
        "{held}"
    );
    app.advance(TimeDelta::hours(21)).await;
    assert_eq!(app.smtp.messages().len(), 2, "still inside the window");
    app.advance(TimeDelta::hours(1)).await;
    assert_eq!(app.smtp.messages().len(), 3, "sent once the cap allows");
    app.finish().await;
}
both_backends!(frequency_cap_skip_versus_defer);

const WAIT_FOR: &str = "trigger:\n  event: signed_up\nsteps:\n  - wait_for: { event: order_placed, timeout: 2d }\n  - branch:\n      if: { event: order_placed }\n      then:\n        - id: thanks\n          send: note\n      else:\n        - id: nudge\n          send: { template: note, subject: \"Still there?\" }\n";

async fn wait_for_resumes_on_the_event_or_times_out(db: Db) {
    let app =
        TestApp::spawn_with(db, options(&[]), project(&[("workflows/w.yaml", WAIT_FOR)])).await;
    app.contact("buyer", "buyer@example.com", json!({})).await;
    app.contact("idle", "idle@example.com", json!({})).await;
    // An order from before the journey does not count.
    app.event("idle", "order_placed", json!({})).await;
    app.clock.advance(TimeDelta::minutes(1));
    app.event("buyer", "signed_up", json!({})).await;
    app.event("idle", "signed_up", json!({})).await;
    app.run_due().await;
    app.clock.advance(TimeDelta::hours(5));
    let body = app.event("buyer", "order_placed", json!({})).await;
    assert_eq!(
        body["event"]["resumed"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    app.run_due().await;
    assert_eq!(
        recipients(&app).await,
        vec!["buyer@example.com"],
        "the order ends the wait at once"
    );
    app.advance(TimeDelta::days(2)).await;
    let subjects = crate::helpers::subjects(&app.smtp);
    assert_eq!(subjects.len(), 2);
    assert_eq!(
        subjects[1], "Still there?",
        "the timeout takes the else branch"
    );
    app.finish().await;
}
both_backends!(wait_for_resumes_on_the_event_or_times_out);

#[test]
fn herald_cron_prints_fire_instants_in_utc() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "cron",
            "30 2 * * *",
            "--timezone",
            "America/New_York",
            "--from",
            "2027-03-13T00:00:00Z",
            "--count",
            "3",
        ])
        .output()
        .expect("run herald cron");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2027-03-13T07:30:00Z\n2027-03-14T07:00:00Z\n2027-03-15T06:30:00Z\n"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["cron", "0 9 * *"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("5-field"));
}

async fn schedule_enrollment_resumes_after_a_crash_part_way(db: Db) {
    const CONTACTS: usize = 1200;
    let app = TestApp::spawn_with(
        db,
        options(&[]),
        project(&[("workflows/weekly.yaml", WEEKLY)]),
    )
    .await;
    app.contacts_batch(CONTACTS, |i| format!("c-{i:04}")).await;
    app.clock.set(utc(2026, 11, 9, 9, 0));
    assert_eq!(
        herald::scheduler::tick(&app.core).await.expect("tick"),
        1,
        "the weekly tick fires"
    );
    // A worker claims the enrollment, commits its first batch, and dies.
    let now = app.clock.now();
    let claimed = app
        .core
        .store
        .claim_jobs(&app.core.worker_id, now, now + app.core.lease, 10)
        .await
        .expect("claim");
    let job = claimed
        .iter()
        .find(|j| j.kind == herald::scheduler::SCHEDULE_FIRE_JOB)
        .expect("enrollment job");
    let mut payload = job.payload.0.clone();
    let first = herald::scheduler::run_paging_batch(&app.core, job, &mut payload)
        .await
        .expect("first batch");
    assert!(first.is_none(), "more batches remain");
    let app = app.restart().await;
    // Once the dead worker's lease runs out, the next worker resumes after the committed batch.
    app.advance(TimeDelta::minutes(2)).await;
    let mail = app
        .smtp
        .wait_for(CONTACTS, std::time::Duration::from_secs(60))
        .await;
    let mut to: Vec<_> = mail.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    to.dedup();
    assert_eq!(
        (mail.len(), to.len()),
        (CONTACTS, CONTACTS),
        "everyone once, nobody twice"
    );
    app.finish().await;
}
both_backends!(schedule_enrollment_resumes_after_a_crash_part_way);
