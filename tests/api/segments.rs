//! Segments end to end: membership follows events and the clock, membership changes start
//! segment-triggered journeys once per transition, the computed profile ignores machine opens,
//! and the API shows sizes, members and a contact's segments.

use chrono::TimeDelta;
use herald::store::{Backend, Sql};
use serde_json::{Value, json};

use crate::helpers::{Db, Options, TestApp, opposite_orders, subjects};
use crate::{both_backends, postgres_only};

/// The examples without the seasonal campaign, whose December send would add mail to long
/// clock jumps.
async fn app(db: Db) -> TestApp {
    app_with(db, Options::default()).await
}

async fn app_with(db: Db, options: Options) -> TestApp {
    TestApp::spawn_with(db, options, |dir| {
        std::fs::remove_file(dir.join("workflows/holiday-gift-guide.yaml")).expect("remove");
    })
    .await
}

async fn segments_of(app: &TestApp, contact: &str) -> Vec<String> {
    let (status, body) = app.get(&format!("/v1/contacts/{contact}")).await;
    assert_eq!(status, 200, "{body}");
    body["segments"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn profile_of(app: &TestApp, contact: &str) -> Value {
    let (_, body) = app.get(&format!("/v1/contacts/{contact}")).await;
    body["contact"]["profile"].clone()
}

async fn size_of(app: &TestApp, segment: &str) -> i64 {
    let (status, body) = app.get("/v1/segments").await;
    assert_eq!(status, 200, "{body}");
    body["segments"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == segment))
        .and_then(|s| s["size"].as_i64())
        .unwrap_or_else(|| panic!("no segment {segment} in {body}"))
}

/// An event as an import stores it: without its effects on the profile or segments, for a
/// recompute to find.
fn imported(
    id: &str,
    contact: &str,
    name: &str,
    properties: Value,
    at: chrono::DateTime<chrono::Utc>,
) -> herald::store::Event {
    herald::store::Event {
        id: id.to_owned(),
        contact_id: contact.to_owned(),
        name: name.to_owned(),
        properties: sqlx::types::Json(properties),
        occurred_at: at,
        received_at: at,
    }
}

/// Stores `contacts` and `events` as an import does (see [`imported`]).
async fn import(
    app: &TestApp,
    contacts: &[herald::store::Contact],
    events: &[herald::store::Event],
) {
    let mut tx = app.core.store.write().await.expect("write");
    tx.import_contacts(contacts).await.expect("import contacts");
    tx.import_events(events).await.expect("import events");
    tx.commit().await.expect("commit");
}

async fn membership_events(app: &TestApp, contact: &str) -> Vec<String> {
    let mut tx = app.core.store.read().await.expect("read");
    let mut names = Vec::new();
    for kind in ["segment_entered", "segment_exited"] {
        for e in tx
            .contact_events(contact, kind, None)
            .await
            .expect("events")
        {
            names.push(format!(
                "{} {} {}",
                e.occurred_at.format("%m-%d"),
                kind,
                e.properties.0["segment"].as_str().unwrap_or_default()
            ));
        }
    }
    tx.commit().await.expect("commit");
    names.sort();
    names
}

async fn events_update_membership_and_the_api_shows_it(db: Db) {
    let app = app(db).await;
    app.run_due().await;
    app.contact("c-1", "ana@example.com", json!({"country": "US"}))
        .await;
    app.contact("c-2", "bo@example.com", json!({})).await;
    assert!(
        segments_of(&app, "c-1")
            .await
            .contains(&"engaged".to_owned())
    );
    app.event("c-1", "order_placed", json!({"total": 300}))
        .await;
    let one = segments_of(&app, "c-1").await;
    assert!(one.contains(&"first-time-buyers".to_owned()), "{one:?}");
    assert!(!one.contains(&"repeat-customers".to_owned()));
    app.event("c-1", "order_placed", json!({"total": 250}))
        .await;
    let two = segments_of(&app, "c-1").await;
    assert!(two.contains(&"repeat-customers".to_owned()), "{two:?}");
    assert!(
        two.contains(&"big-spenders".to_owned()),
        "sum 550 ≥ 500: {two:?}"
    );
    assert!(!two.contains(&"first-time-buyers".to_owned()));
    let profile = profile_of(&app, "c-1").await;
    assert_eq!(profile["purchase"]["orders"], 2, "{profile}");
    assert_eq!(profile["purchase"]["total"], 550.0);
    assert_eq!(profile["purchase"]["tier"], "repeat");
    assert_eq!(profile["lifecycle"], "retention");
    assert_eq!(size_of(&app, "repeat-customers").await, 1);
    assert_eq!(size_of(&app, "engaged").await, 2);

    let (status, page) = app.get("/v1/segments/engaged/members?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["members"][0]["contact_id"], "c-1");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, page) = app
        .get(&format!(
            "/v1/segments/engaged/members?limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(page["members"][0]["contact_id"], "c-2");
    let (status, body) = app.get("/v1/segments/nope/members").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "segment_not_found");
    app.finish().await;
}
both_backends!(events_update_membership_and_the_api_shows_it);

async fn a_window_running_out_moves_the_contact_out(db: Db) {
    let app = app(db).await;
    app.run_due().await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event(
        "c-1",
        "cart_updated",
        json!({"cart_id": "k1", "item_count": 2}),
    )
    .await;
    assert!(
        segments_of(&app, "c-1")
            .await
            .contains(&"cart-abandoners".to_owned())
    );
    app.advance(TimeDelta::days(6)).await;
    assert!(
        segments_of(&app, "c-1")
            .await
            .contains(&"cart-abandoners".to_owned())
    );
    app.advance(TimeDelta::days(1) + TimeDelta::seconds(1))
        .await;
    assert!(
        !segments_of(&app, "c-1")
            .await
            .contains(&"cart-abandoners".to_owned()),
        "seven days after the cart, the sweep took the contact out"
    );
    let changes = membership_events(&app, "c-1").await;
    assert!(
        changes.contains(&"11-09 segment_exited cart-abandoners".to_owned()),
        "{changes:?}"
    );
    app.finish().await;
}
both_backends!(a_window_running_out_moves_the_contact_out);

/// win-back starts when a customer enters lapsed-customers: once per transition, again only
/// after leaving and lapsing anew.
async fn entering_a_segment_starts_its_workflow_once_per_transition(db: Db) {
    let app = app(db).await;
    app.run_due().await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    app.event("c-1", "order_placed", json!({"total": 40})).await;
    app.advance(TimeDelta::days(90)).await;
    assert!(
        !segments_of(&app, "c-1")
            .await
            .contains(&"lapsed-customers".to_owned())
    );
    app.advance(TimeDelta::hours(1)).await;
    assert!(
        segments_of(&app, "c-1")
            .await
            .contains(&"lapsed-customers".to_owned())
    );
    app.advance(TimeDelta::days(1)).await; // the win-back mail waits for 10:00
    let winbacks = |app: &TestApp| {
        subjects(&app.smtp)
            .iter()
            .filter(|s| s.starts_with("We miss you"))
            .count()
    };
    assert_eq!(winbacks(&app), 1, "{:?}", subjects(&app.smtp));
    for _ in 0..5 {
        app.advance(TimeDelta::days(1)).await;
    }
    assert_eq!(winbacks(&app), 1, "still lapsed: no second entry");

    // An order takes them out; ninety-odd days later they lapse again and win-back runs again.
    app.event("c-1", "order_placed", json!({"total": 40})).await;
    assert!(
        !segments_of(&app, "c-1")
            .await
            .contains(&"lapsed-customers".to_owned())
    );
    app.advance(TimeDelta::days(91)).await;
    app.advance(TimeDelta::days(1)).await;
    assert_eq!(winbacks(&app), 2, "{:?}", subjects(&app.smtp));
    let entered = membership_events(&app, "c-1")
        .await
        .into_iter()
        .filter(|e| e.ends_with("segment_entered lapsed-customers"))
        .count();
    assert_eq!(entered, 2);
    app.finish().await;
}
both_backends!(entering_a_segment_starts_its_workflow_once_per_transition);

async fn machine_opens_make_nobody_active(db: Db) {
    let app = app(db).await;
    app.run_due().await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.advance(TimeDelta::days(40)).await;
    assert_eq!(profile_of(&app, "c-1").await["engagement"], "inactive");
    assert!(
        !segments_of(&app, "c-1")
            .await
            .contains(&"engaged".to_owned())
    );
    app.event("c-1", "email_opened", json!({"machine": true}))
        .await;
    app.event(
        "c-1",
        "email_clicked",
        json!({"machine": true, "url": "https://x.example"}),
    )
    .await;
    assert_eq!(
        profile_of(&app, "c-1").await["engagement"],
        "inactive",
        "Apple MPP opens and scanner clicks are not engagement"
    );
    app.event("c-1", "email_opened", json!({})).await;
    assert_eq!(profile_of(&app, "c-1").await["engagement"], "active");
    assert!(
        segments_of(&app, "c-1")
            .await
            .contains(&"engaged".to_owned())
    );
    app.finish().await;
}
both_backends!(machine_opens_make_nobody_active);

/// The full recompute rebuilds profiles from stored events: the last human open counts, the
/// machine opens and scanner clicks after it do not, and the furthest lifecycle stage holds.
async fn a_recompute_rebuilds_engagement_and_lifecycle(db: Db) {
    let app = app(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    let now = app.clock.now();
    let human = now - TimeDelta::days(100);
    let stored = |i: usize, name: &str, properties: Value, at| {
        imported(&format!("imported-{i}"), "c-1", name, properties, at)
    };
    let events = [
        stored(1, "email_opened", json!({}), human),
        stored(
            2,
            "email_opened",
            json!({"machine": true}),
            now - TimeDelta::days(2),
        ),
        stored(
            3,
            "email_clicked",
            json!({"machine": true, "url": "https://x.example"}),
            now - TimeDelta::days(1),
        ),
        stored(
            4,
            "email_opened",
            json!({"machine": false}),
            human - TimeDelta::days(1),
        ),
        // Awareness, then consideration (the default `[profile.lifecycle]`).
        stored(5, "page_viewed", json!({}), human - TimeDelta::days(300)),
        stored(6, "product_viewed", json!({}), human - TimeDelta::days(200)),
        stored(7, "page_viewed", json!({}), human),
    ];
    import(&app, &[], &events).await;
    app.run_due().await;
    let profile = profile_of(&app, "c-1").await;
    assert_eq!(profile["engagement"], "inactive", "{profile}");
    let last = profile["last_engaged_at"]
        .as_str()
        .expect("last_engaged_at");
    let last = chrono::DateTime::parse_from_rfc3339(last).expect("a time");
    assert_eq!(last, human, "{profile}");
    assert_eq!(profile["lifecycle"], "consideration", "{profile}");
    app.finish().await;
}
both_backends!(a_recompute_rebuilds_engagement_and_lifecycle);

/// A rebuild probes only the lifecycle stages beyond those the events it reads (orders, the
/// segments' windows) already reach: an order reaches decision without a probe, a review after
/// it still reaches advocacy, and a second order reaches retention.
async fn a_recompute_finds_stages_beyond_those_its_reads_reach(db: Db) {
    let app = app(db).await;
    let now = app.clock.now();
    let mut events = Vec::new();
    let mut stored = |contact: &str, name: &str, properties: Value, days: i64| {
        let id = format!("imported-{}", events.len());
        let at = now - TimeDelta::days(days);
        events.push(imported(&id, contact, name, properties, at));
    };
    for (id, email) in [
        ("buyer", "buyer@example.com"),
        ("reviewer", "reviewer@example.com"),
        ("repeat", "repeat@example.com"),
        ("viewer", "viewer@example.com"),
    ] {
        app.contact(id, email, json!({})).await;
        stored(id, "page_viewed", json!({}), 400);
    }
    stored("buyer", "order_placed", json!({"total": 20.0}), 300);
    stored("reviewer", "order_placed", json!({"total": 20.0}), 300);
    stored("reviewer", "review_posted", json!({}), 290);
    stored("repeat", "order_placed", json!({"total": 20.0}), 300);
    stored("repeat", "order_placed", json!({"total": 30.0}), 200);
    stored("viewer", "product_viewed", json!({}), 2);
    import(&app, &[], &events).await;
    app.run_due().await;
    for (id, stage) in [
        ("buyer", "decision"),
        ("reviewer", "advocacy"),
        ("repeat", "retention"),
        ("viewer", "consideration"),
    ] {
        let profile = profile_of(&app, id).await;
        assert_eq!(profile["lifecycle"], stage, "{id}: {profile}");
    }
    app.finish().await;
}
both_backends!(a_recompute_finds_stages_beyond_those_its_reads_reach);

/// A segment edit is recomputed on the profiles as stored (every event keeps them current);
/// changed profile rules rebuild them from the stored events first. The order below is stored
/// as an import stores it, past the profile, so only a rebuild counts it.
async fn a_segment_edit_keeps_stored_profiles_and_new_rules_rebuild_them(db: Db) {
    let app = app(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.run_due().await;
    let at = app.clock.now() - TimeDelta::days(10);
    let order = imported(
        "imported-order",
        "c-1",
        "order_placed",
        json!({"total": 20.0}),
        at,
    );
    import(&app, &[], &[order]).await;
    let segment = "name: buyers\nmatch:\n  - attribute: purchase.orders\n    gte: 1\n";
    let app = edited(app, "segments/buyers.yaml", segment).await;
    assert_orders_counted(&app, 0).await;

    let app = edited(app, "herald.toml", "[profile]\nactive_within = \"31d\"\n").await;
    assert_orders_counted(&app, 1).await;
    app.finish().await;
}

/// `file` of the project rewritten with `text`, then Herald restarted and the recompute its
/// start queued run.
async fn edited(app: TestApp, file: &str, text: &str) -> TestApp {
    std::fs::write(app.dir.path().join(file), text).expect("write the project file");
    let app = app.restart().await;
    app.run_due().await;
    app
}

/// c-1's profile counts `orders`, and `buyers` holds c-1 exactly when it counts one.
async fn assert_orders_counted(app: &TestApp, orders: i64) {
    assert_eq!(size_of(app, "buyers").await, orders);
    let profile = profile_of(app, "c-1").await;
    assert_eq!(profile["purchase"]["orders"], orders, "{profile}");
}
both_backends!(a_segment_edit_keeps_stored_profiles_and_new_rules_rebuild_them);

/// A subscriber dormant for good gets one re-engagement mail, then is suppressed.
async fn dormant_subscribers_are_sunset(db: Db) {
    let app = app(db).await;
    app.run_due().await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.contact("c-2", "bo@example.com", json!({})).await;
    for _ in 0..4 {
        app.advance(TimeDelta::days(45)).await;
    }
    app.advance(TimeDelta::days(1)).await;
    let asked = subjects(&app.smtp)
        .iter()
        .filter(|s| s.contains("do you still want to hear from us"))
        .count();
    assert_eq!(asked, 2, "{:?}", subjects(&app.smtp));
    // Bo clicks; Ana stays silent and is suppressed two weeks later.
    app.event(
        "c-2",
        "email_clicked",
        json!({"url": "https://shop.example/stay"}),
    )
    .await;
    app.advance(TimeDelta::days(15)).await;
    let (_, ana) = app.get("/v1/contacts/c-1").await;
    assert_eq!(ana["suppression"]["reason"], "sunset", "{ana}");
    let (_, bo) = app.get("/v1/contacts/c-2").await;
    assert!(bo["suppression"].is_null(), "{bo}");
    assert_eq!(bo["contact"]["profile"]["engagement"], "active");
    app.finish().await;
}
both_backends!(dormant_subscribers_are_sunset);

/// A segment that reads `last_engaged_at` itself follows every open at once, even one that
/// leaves the engagement tier as it was (a new contact is active from signing up).
async fn a_segment_on_the_last_engagement_follows_each_open(db: Db) {
    let app = TestApp::spawn_with(db, Options::default(), |dir| {
        std::fs::remove_file(dir.join("workflows/holiday-gift-guide.yaml")).expect("remove");
        std::fs::write(
            dir.join("segments/ever-engaged.yaml"),
            "name: ever-engaged\nmatch:\n  - attribute: last_engaged_at\n    exists: true\n",
        )
        .expect("segment");
    })
    .await;
    app.run_due().await;
    app.contact("ana", "ana@example.com", json!({})).await;
    let ever = "ever-engaged".to_owned();
    assert!(!segments_of(&app, "ana").await.contains(&ever));
    app.event("ana", "email_opened", json!({})).await;
    assert_eq!(profile_of(&app, "ana").await["engagement"], "active");
    assert!(segments_of(&app, "ana").await.contains(&ever));
    app.finish().await;
}
both_backends!(a_segment_on_the_last_engagement_follows_each_open);

/// One event's evaluation reads what decides beyond the contact's events: the messages sent to
/// a contact who never engaged (dormant after enough of them) and the high-value threshold the
/// last refresh stored (a big first order is high-value at once). Product views evaluate (a
/// segment reads them); a page view that leaves the profile as it was would not.
async fn an_event_weighs_sent_messages_and_the_stored_threshold(db: Db) {
    let env = vec![(
        "HERALD_PROFILE__DORMANT_AFTER_SENDS".to_owned(),
        "2".to_owned(),
    )];
    let app = app_with(
        db,
        Options {
            env,
            ..Options::default()
        },
    )
    .await;
    app.run_due().await;
    app.contact("quiet", "quiet@example.com", json!({})).await;
    let sent = |n: usize| {
        let now = app.clock.now();
        Sql::new(
            "INSERT INTO messages (id, journey_id, step, contact_id, workflow, template, category,
                                   to_email, status, created_at, updated_at, sent_at)
             VALUES ($1, $2, 'send', 'quiet', 'newsletter', 'news', 'marketing',
                     'quiet@example.com', 'sent', $3, $3, $3)",
        )
        .arg(format!("m-{n}"))
        .arg(format!("j-{n}"))
        .arg(now)
    };
    for n in 1..=2 {
        let mut tx = app.core.store.write().await.expect("write");
        tx.run(sent(n)).await.expect("a sent message");
        tx.commit().await.expect("commit");
        app.event("quiet", "product_viewed", json!({"sku": "s-1"}))
            .await;
        let dormant = profile_of(&app, "quiet").await["engagement"] == "dormant";
        assert_eq!(
            dormant,
            n == 2,
            "after {n} sends: {}",
            profile_of(&app, "quiet").await
        );
    }
    assert!(
        segments_of(&app, "quiet")
            .await
            .contains(&"dormant".to_owned())
    );

    for (id, orders, each) in RFM_BUYERS {
        app.contact(id, &format!("{id}@example.com"), json!({}))
            .await;
        for _ in 0..orders {
            app.event(id, "order_placed", json!({"total": each})).await;
        }
    }
    // The hourly refresh stores the threshold: the top tenth of five purchasers is the best.
    app.advance(TimeDelta::hours(1)).await;
    assert_eq!(
        profile_of(&app, "c-5").await["purchase"]["tier"],
        "high-value"
    );
    app.contact("big", "big@example.com", json!({})).await;
    app.event("big", "order_placed", json!({"total": 1000}))
        .await;
    assert_eq!(
        profile_of(&app, "big").await["purchase"]["tier"],
        "high-value"
    );
    assert!(
        segments_of(&app, "big")
            .await
            .contains(&"high-value".to_owned())
    );
    app.event("c-1", "order_placed", json!({"total": 5})).await;
    assert_eq!(profile_of(&app, "c-1").await["purchase"]["tier"], "repeat");
    app.finish().await;
}
both_backends!(an_event_weighs_sent_messages_and_the_stored_threshold);

/// RFM scores over five purchasers, computed by hand: with r of n purchasers strictly below,
/// a score is 1 + ⌊5r/n⌋. Recency and monetary are distinct (1…5); frequency is 1, 1, 2, 3
/// and 5 orders, so scores 1, 1, 3, 4, 5.
async fn rfm_scores_follow_the_hand_computed_fixture(db: Db) {
    let app = app(db).await;
    app.run_due().await;
    for (id, _, _) in RFM_BUYERS {
        app.contact(id, &format!("{id}@example.com"), json!({}))
            .await;
    }
    for (id, orders, each) in RFM_BUYERS {
        for _ in 0..orders {
            app.event(id, "order_placed", json!({"total": each})).await;
            app.advance(TimeDelta::days(1)).await;
        }
    }
    // The hourly refresh recomputes scores over all purchasers; the sweep then re-evaluates.
    app.advance(TimeDelta::hours(1)).await;
    assert_eq!(rfm_shown(&app).await, RFM_EXPECTED);
    assert!(segments_of(&app, "c-5").await.contains(&"vip".to_owned()));
    assert!(!segments_of(&app, "c-4").await.contains(&"vip".to_owned()));
    app.finish().await;
}
both_backends!(rfm_scores_follow_the_hand_computed_fixture);

/// The same fixture imported, then recomputed: the recompute scores from the stored orders
/// what the refresh scores from the profiles, and the RFM segments are right straight away.
async fn a_recompute_scores_the_hand_computed_fixture(db: Db) {
    let app = app(db).await;
    let start = app.clock.now();
    let mut contacts = Vec::new();
    let mut orders = Vec::new();
    let mut day = 0;
    for (id, n, each) in RFM_BUYERS {
        contacts.push(new_contact(id, start));
        for _ in 0..n {
            let at = start + TimeDelta::days(day);
            day += 1;
            let order_id = format!("order-{id}-{day}");
            orders.push(imported(
                &order_id,
                id,
                "order_placed",
                json!({"total": each}),
                at,
            ));
        }
    }
    app.clock.advance(TimeDelta::days(day));
    import(&app, &contacts, &orders).await;
    app.run_due().await;
    assert_eq!(rfm_shown(&app).await, RFM_EXPECTED);
    assert!(segments_of(&app, "c-5").await.contains(&"vip".to_owned()));
    assert!(!segments_of(&app, "c-4").await.contains(&"vip".to_owned()));
    app.finish().await;
}
both_backends!(a_recompute_scores_the_hand_computed_fixture);

/// (contact, orders, value of each), ordered one a day in this order.
const RFM_BUYERS: [(&str, i64, i64); 5] = [
    ("c-1", 1, 10),
    ("c-2", 1, 20),
    ("c-3", 2, 30),
    ("c-4", 3, 40),
    ("c-5", 5, 50),
];
const RFM_EXPECTED: [&str; 5] = [
    "c-1 111 Lost",
    "c-2 212 Hibernating",
    "c-3 333 Need Attention",
    "c-4 444 Loyal",
    "c-5 555 Champions",
];

/// Each fixture buyer's RFM score and segment.
async fn rfm_shown(app: &TestApp) -> Vec<String> {
    let mut shown = Vec::new();
    for (id, _, _) in RFM_BUYERS {
        let p = profile_of(app, id).await;
        shown.push(format!(
            "{id} {} {}",
            p["rfm"]["score"].as_str().unwrap_or("-"),
            p["rfm"]["segment"].as_str().unwrap_or("-")
        ));
    }
    shown
}

/// Two nodes sweeping at the same instant: each contact whose window ran out leaves the
/// segment once, with one `segment_exited` event.
async fn two_nodes_sweep_each_contact_once(db: Db) {
    const CONTACTS: usize = 150;
    let app = app(db).await;
    app.run_due().await;
    app.contacts_batch(CONTACTS, |i| format!("c-{i:03}")).await;
    let events: Vec<_> = (0..CONTACTS)
        .map(|i| {
            json!({"contact_id": format!("c-{i:03}"), "name": "cart_updated",
                        "properties": {"cart_id": format!("k{i}"), "item_count": 1}})
        })
        .collect();
    let (status, body) = app
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(status, 202, "{body}");
    app.run_due().await;
    assert_eq!(size_of(&app, "cart-abandoners").await, CONTACTS as i64);
    let other = app.worker_node(&[]).await;
    app.clock
        .advance(TimeDelta::days(7) + TimeDelta::seconds(1));
    let (a, b) = tokio::join!(
        herald::scheduler::run_due(&app.core),
        herald::scheduler::run_due(&other.core)
    );
    a.expect("node a");
    b.expect("node b");
    assert_eq!(size_of(&app, "cart-abandoners").await, 0);
    for i in 0..CONTACTS {
        let exits = membership_events(&app, &format!("c-{i:03}"))
            .await
            .into_iter()
            .filter(|e| e.ends_with("segment_exited cart-abandoners"))
            .count();
        assert_eq!(exits, 1, "contact c-{i:03}");
    }
    other.core.shutdown().await;
    app.finish().await;
}
both_backends!(two_nodes_sweep_each_contact_once);

/// A contact as an import stores it: no attributes, no profile yet.
fn new_contact(id: &str, at: chrono::DateTime<chrono::Utc>) -> herald::store::Contact {
    herald::store::Contact {
        id: id.to_owned(),
        email: format!("{id}@example.com"),
        attributes: sqlx::types::Json(json!({})),
        subscribed: true,
        created_at: at,
        updated_at: at,
        profile: sqlx::types::Json(json!({})),
    }
}

/// A recompute and a sweep over several batches (on PostgreSQL, two transactions at a time)
/// evaluate every contact: none skipped at a batch's edge, none entered twice.
/// Imports `n` contacts `c-00000`… with one order each, ten days ago, as an import stores them:
/// without their effects, for the recompute to find (everyone a first-time buyer once
/// recomputed). Returns their ids.
async fn import_buyers(app: &TestApp, n: usize) -> Vec<String> {
    let now = app.clock.now();
    let ids: Vec<String> = (0..n).map(|i| format!("c-{i:05}")).collect();
    let contacts: Vec<herald::store::Contact> = ids.iter().map(|id| new_contact(id, now)).collect();
    let at = now - TimeDelta::days(10);
    let orders: Vec<herald::store::Event> = ids
        .iter()
        .map(|id| {
            imported(
                &format!("order-{id}"),
                id,
                "order_placed",
                json!({"total": 20}),
                at,
            )
        })
        .collect();
    import(app, &contacts, &orders).await;
    ids
}

async fn a_recompute_over_many_batches_evaluates_each_contact_once(db: Db) {
    let app = app(db).await;
    let ids = import_buyers(&app, 1234).await;
    // The recompute scores every purchaser itself (on PostgreSQL, several batches at a time):
    // no refresh rewrites the profiles after it, and nobody is left due for a sweep.
    app.run_due().await;
    let due = app
        .core
        .store
        .due_segment_contacts(app.clock.now(), 10)
        .await
        .expect("due");
    assert_eq!(due, Vec::<String>::new());

    assert_eq!(size_of(&app, "first-time-buyers").await, 1234);
    // Both sides of every batch edge (500 contacts a batch), and the ends.
    let edges = [0, 499, 500, 501, 999, 1000, 1001, 1233];
    for i in edges {
        let rfm = &profile_of(&app, &ids[i]).await["rfm"];
        assert!(rfm["score"].is_string(), "{}: {rfm}", ids[i]);
        let entered: Vec<String> = membership_events(&app, &ids[i])
            .await
            .into_iter()
            .filter(|e| e.contains("segment_entered first-time-buyers"))
            .collect();
        assert_eq!(entered.len(), 1, "{}: {entered:?}", ids[i]);
    }
    // The hourly refresh pages through the purchasers as well (two pages side by side on
    // PostgreSQL): scores taken away come back on both sides of every page edge.
    let strip = match app.core.store.backend() {
        Backend::Postgres => "UPDATE contacts SET profile = profile - 'rfm'",
        Backend::Sqlite => "UPDATE contacts SET profile = json_remove(profile, '$.rfm')",
    };
    let mut tx = app.core.store.write().await.expect("write");
    tx.run(Sql::new(strip)).await.expect("strip the scores");
    tx.commit().await.expect("commit");
    app.advance(TimeDelta::hours(1)).await;
    for i in edges {
        let rfm = &profile_of(&app, &ids[i]).await["rfm"];
        assert!(
            rfm["score"].is_string(),
            "{} after the refresh: {rfm}",
            ids[i]
        );
    }
    app.finish().await;
}
both_backends!(a_recompute_over_many_batches_evaluates_each_contact_once);

/// A recompute over several batches finishes on the smallest pool Herald allows (two
/// connections): the batches it keeps in flight leave a connection for reading where the next
/// one starts.
async fn a_recompute_finishes_on_a_pool_of_two(db: Db) {
    let options = Options {
        env: vec![("HERALD_DATABASE__MAX_CONNECTIONS".into(), "2".into())],
        ..Options::default()
    };
    let app = app_with(db, options).await;
    import_buyers(&app, 1600).await;
    tokio::time::timeout(std::time::Duration::from_secs(60), app.run_due())
        .await
        .expect("the recompute finished");
    assert_eq!(size_of(&app, "first-time-buyers").await, 1600);
    app.finish().await;
}
both_backends!(a_recompute_finishes_on_a_pool_of_two);

/// A finished recompute leaves PostgreSQL statistics of what it wrote, so plans cached while
/// the tables were nearly empty are made again for their real size.
async fn a_recompute_leaves_fresh_planner_statistics() {
    let app = app(Db::Postgres).await;
    let db = sqlx::PgPool::connect(&app.db.url).await.expect("connect");
    let analyzed = || async {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT relname::text FROM pg_stat_user_tables
             WHERE last_analyze IS NOT NULL ORDER BY relname",
        )
        .fetch_all(&db)
        .await
        .expect("statistics");
        rows.into_iter().map(|(t,)| t).collect::<Vec<_>>()
    };
    assert_eq!(analyzed().await, Vec::<String>::new(), "none before");
    import_buyers(&app, 600).await;
    app.run_due().await;
    assert_eq!(
        analyzed().await,
        ["contacts", "events", "segment_due", "segment_members"]
    );
    // The statistics know the size the recompute left.
    let (members,): (f32,) =
        sqlx::query_as("SELECT reltuples FROM pg_class WHERE relname = 'segment_members'")
            .fetch_one(&db)
            .await
            .expect("reltuples");
    let (status, body) = app.get("/v1/segments").await;
    assert_eq!(status, 200, "{body}");
    let sizes: i64 = body["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter_map(|s| s["size"].as_i64())
        .sum();
    assert!(sizes >= 600, "every buyer is in a segment: {body}");
    assert_eq!(members as i64, sizes);
    db.close().await;
    app.finish().await;
}
postgres_only!(a_recompute_leaves_fresh_planner_statistics);

/// A finished recompute has its writes checkpointed on PostgreSQL within the job: a checkpoint
/// began after the job did, rather than one over the next seconds that the next events'
/// commits would wait behind. (The server is shared with other tests, whose dropped databases
/// checkpoint too, so this can pass without the job's own checkpoint, never fail with it.)
async fn a_recompute_checkpoints_its_writes() {
    let app = app(Db::Postgres).await;
    let db = sqlx::PgPool::connect(&app.db.url).await.expect("connect");
    import_buyers(&app, 600).await;
    let (before,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db)
        .await
        .expect("WAL position");
    app.run_due().await;
    let (redo_is_later,): (bool,) =
        sqlx::query_as("SELECT redo_lsn >= $1::pg_lsn FROM pg_control_checkpoint()")
            .bind(&before)
            .fetch_one(&db)
            .await
            .expect("last checkpoint");
    assert!(redo_is_later, "no checkpoint since {before}");
    db.close().await;
    app.finish().await;
}
postgres_only!(a_recompute_checkpoints_its_writes);

/// A batch transaction plans by index, once per statement and without parallel workers, and
/// only that transaction does.
async fn batch_transactions_plan_by_index() {
    let app = app(Db::Postgres).await;
    let mut tx = app.core.store.write().await.expect("write");
    tx.plan_for_batches().await.expect("plan for batches");
    assert_eq!(setting(&mut tx, "enable_seqscan").await, "off");
    assert_eq!(
        setting(&mut tx, "plan_cache_mode").await,
        "force_generic_plan"
    );
    assert_eq!(
        setting(&mut tx, "max_parallel_workers_per_gather").await,
        "0"
    );
    tx.commit().await.expect("commit");
    let mut tx = app.core.store.write().await.expect("write");
    assert_eq!(setting(&mut tx, "enable_seqscan").await, "on");
    assert_eq!(setting(&mut tx, "plan_cache_mode").await, "auto");
    tx.commit().await.expect("commit");
    app.finish().await;
}
postgres_only!(batch_transactions_plan_by_index);

/// The short keyed transactions events and journey steps run in plan each statement once: the
/// planner's default would plan some of them for every execution.
async fn keyed_writes_reuse_generic_plans() {
    let app = app(Db::Postgres).await;
    let mut tx = app.core.store.keyed_write().await.expect("keyed write");
    assert_eq!(
        setting(&mut tx, "plan_cache_mode").await,
        "force_generic_plan"
    );
    let lookup = "SELECT count(*) FROM contacts WHERE id = ANY($1)";
    for id in ["c-1", "c-2", "c-3"] {
        let q = Sql::new(lookup).set(Backend::Postgres, [id]);
        tx.one::<(i64,)>(q).await.expect("lookup");
    }
    let q = Sql::new(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
    )
    .arg(lookup);
    let (generic, custom): (i64, i64) = tx.one(q).await.expect("plans");
    assert_eq!((generic, custom), (3, 0));
    tx.commit().await.expect("commit");
    let mut tx = app.core.store.write().await.expect("write");
    assert_eq!(setting(&mut tx, "plan_cache_mode").await, "auto");
    tx.commit().await.expect("commit");
    app.finish().await;
}
postgres_only!(keyed_writes_reuse_generic_plans);

/// Every text column compares bytewise, as on SQLite: under a libc locale each index
/// comparison would go through strcoll, and two columns of different collations cannot be
/// compared at all, so a later migration's column without `COLLATE "C"` fails here.
async fn every_text_column_compares_bytewise() {
    let app = app(Db::Postgres).await;
    let mut tx = app.core.store.write().await.expect("write");
    let q = Sql::new(
        "SELECT table_name || '.' || column_name FROM information_schema.columns
         WHERE table_schema = current_schema() AND data_type = 'text'
           AND table_name <> '_sqlx_migrations'
           AND collation_name IS DISTINCT FROM 'C'",
    );
    let other: Vec<(String,)> = tx.all(q).await.expect("columns");
    assert!(other.is_empty(), "columns not collated \"C\": {other:?}");
    let q = Sql::new(
        "SELECT count(*) FROM information_schema.columns
         WHERE table_schema = current_schema() AND collation_name = 'C'",
    );
    let (bytewise,): (i64,) = tx.one(q).await.expect("count");
    assert!(bytewise > 50, "only {bytewise} text columns found");
    tx.commit().await.expect("commit");
    app.finish().await;
}
postgres_only!(every_text_column_compares_bytewise);

async fn setting(tx: &mut herald::store::Tx, name: &str) -> String {
    let q = Sql::new(format!("SELECT current_setting('{name}')"));
    tx.one::<(String,)>(q).await.expect("setting").0
}

/// Orders posted at once for one contact all count: each event's profile update starts from
/// the profile the one before it stored (on PostgreSQL the contact row is locked before it is
/// read, not after).
async fn concurrent_orders_of_one_contact_all_count(db: Db) {
    let app = app(db).await;
    app.run_due().await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..40 {
        let request = reqwest::Client::new().post(app.url("/v1/events")).json(
            &json!({"contact_id": "c-1", "name": "order_placed", "properties": {"total": 10 + i}}),
        );
        posts.spawn(async move { request.send().await.expect("post").status().as_u16() });
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.expect("task"), 202);
    }
    let profile = profile_of(&app, "c-1").await;
    assert_eq!(profile["purchase"]["orders"], 40, "{profile}");
    assert_eq!(profile["purchase"]["total"], 1180.0, "{profile}");
    app.finish().await;
}
both_backends!(concurrent_orders_of_one_contact_all_count);

/// Batches of orders posted at once, naming the same contacts in opposite orders: each batch
/// locks the contacts whose profiles it changes, and in one order (by id), so none of them
/// waits for another that waits for it (PostgreSQL would abort one as a deadlock), and every
/// order counts.
async fn concurrent_batches_over_the_same_contacts_all_land(db: Db) {
    const CONTACTS: usize = 12;
    const BATCHES: usize = 8;
    let app = app(db).await;
    app.run_due().await;
    app.contacts_batch(CONTACTS, |i| format!("c-{i:02}")).await;
    let batches: Vec<_> = opposite_orders(CONTACTS, BATCHES)
        .into_iter()
        .map(|order| {
            let events: Vec<_> = order
                .iter()
                .map(|i| json!({"contact_id": format!("c-{i:02}"), "name": "order_placed", "properties": {"total": 10}}))
                .collect();
            json!({ "events": events })
        })
        .collect();
    for (status, body) in app.post_all_at_once("/v1/events/batch", batches).await {
        assert_eq!(status, 202, "{body}");
    }
    for i in 0..CONTACTS {
        let profile = profile_of(&app, &format!("c-{i:02}")).await;
        assert_eq!(
            profile["purchase"]["orders"], BATCHES,
            "c-{i:02}: {profile}"
        );
    }
    app.finish().await;
}
both_backends!(concurrent_batches_over_the_same_contacts_all_land);

/// What a recompute batch or the population refresh reads in order to write it back stays
/// locked until its transaction ends: an event's evaluation of one of those contacts waits for
/// it, rather than having its profile update overwritten afterwards (PostgreSQL row locks; on
/// SQLite the second write transaction waits for the one writer).
async fn contacts_read_to_be_written_back_are_locked(db: Db) {
    let app = app(db).await;
    let ids = import_buyers(&app, 3).await;
    // Recomputed, so they count as purchasers.
    app.run_due().await;
    for reader in ["recompute batch", "population refresh"] {
        let mut held = app.core.store.write().await.expect("write");
        let read = match reader {
            "recompute batch" => held.lock_contacts_in("", None).await.expect("read").len(),
            _ => held
                .lock_purchasers_in("", &ids[2])
                .await
                .expect("read")
                .len(),
        };
        assert_eq!(read, 3, "{reader}");
        let core = std::sync::Arc::clone(&app.core);
        let id = ids[1].clone();
        let mut event = tokio::spawn(async move {
            let mut tx = core.store.write().await.expect("write");
            tx.lock_and_get_contact(&id).await.expect("lock");
            tx.commit().await.expect("commit");
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), &mut event).await;
        assert!(waited.is_err(), "{reader}: the contact was not locked");
        held.commit().await.expect("commit");
        event
            .await
            .expect("the event goes on once the batch committed");
    }
    app.finish().await;
}
both_backends!(contacts_read_to_be_written_back_are_locked);
