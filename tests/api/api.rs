//! The HTTP API contract: shapes, deduplication, errors, auth.

use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, Options, TestApp, opposite_orders};

async fn same_event_id_twice_stores_one_event_and_one_journey(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    let event = json!({"id": "e-1", "contact_id": "c-1", "name": "signed_up"});
    let (first, body) = app.post("/v1/events", event.clone()).await;
    assert_eq!(first, 202, "{body}");
    let (second, body) = app.post("/v1/events", event).await;
    assert_eq!(second, 200, "{body}");
    assert_eq!(body["event"]["duplicate"], true);
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 1);
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["journeys"].as_array().map(Vec::len), Some(1));
    app.finish().await;
}
both_backends!(same_event_id_twice_stores_one_event_and_one_journey);

async fn contacts_upsert_and_merge_attributes(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact(
        "c-1",
        "ana@example.com",
        json!({"first_name": "Ana", "city": "Lisbon"}),
    )
    .await;
    let (status, _) = app
        .post(
            "/v1/contacts",
            json!({"id": "c-1", "attributes": {"city": null, "plan": "pro"}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app.get("/v1/contacts/c-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["contact"]["attributes"],
        json!({"first_name": "Ana", "plan": "pro"})
    );
    assert_eq!(body["contact"]["email"], "ana@example.com");
    let (status, body) = app
        .post("/v1/contacts/batch", json!({"contacts": [{"id": "c-2", "email": "b@example.com"}, {"id": "c-3", "email": "c@example.com"}]}))
        .await;
    assert_eq!((status, body["upserted"].clone()), (200, json!(2)));
    app.finish().await;
}
both_backends!(contacts_upsert_and_merge_attributes);

/// An upsert that meets another writer of the same contact (another request, a workflow's
/// `update` step, another node) waits for it and merges into what it committed: neither's
/// attributes are lost, whether the contact existed or the other writer was creating it.
async fn an_upsert_keeps_what_a_concurrent_writer_of_the_contact_committed(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({"first_name": "Ana"}))
        .await;
    for (id, before) in [("c-1", json!({"first_name": "Ana"})), ("c-2", json!({}))] {
        let now = app.core.clock.now();
        let mut held = app.core.store.write().await.expect("write");
        let mut attributes = before.clone();
        attributes["plan"] = json!("pro");
        match held.lock_and_get_contact(id).await.expect("read") {
            Some(_) => held
                .set_contact_attributes(id, &attributes, now)
                .await
                .expect("update"),
            None => {
                let created = herald::store::Contact {
                    id: id.to_owned(),
                    email: "new@example.com".to_owned(),
                    attributes: sqlx::types::Json(attributes),
                    subscribed: true,
                    created_at: now,
                    updated_at: now,
                    profile: sqlx::types::Json(json!({})),
                };
                assert!(held.insert_contact(&created).await.expect("insert"));
            }
        }
        let (http, url) = (app.http.clone(), app.url("/v1/contacts"));
        let body = json!({"id": id, "email": "new@example.com", "attributes": {"city": "Oslo"}});
        let mut upsert = tokio::spawn(async move {
            let response = http.post(url).json(&body).send().await.expect("request");
            response.status().as_u16()
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), &mut upsert).await;
        assert!(
            waited.is_err(),
            "{id}: the upsert did not wait for the other writer"
        );
        held.commit().await.expect("commit");
        assert_eq!(upsert.await.expect("upsert"), 200, "{id}");
        let (_, body) = app.get(&format!("/v1/contacts/{id}")).await;
        let mut expected = before;
        expected["plan"] = json!("pro");
        expected["city"] = json!("Oslo");
        assert_eq!(body["contact"]["attributes"], expected, "{id}");
    }
    app.finish().await;
}
both_backends!(an_upsert_keeps_what_a_concurrent_writer_of_the_contact_committed);

/// Contact batches posted at once, naming the same contacts (some existing, some new) in
/// opposite orders: every batch lands (none is aborted as a deadlock on PostgreSQL) and every
/// batch's attribute is kept on every contact.
async fn concurrent_contact_batches_over_the_same_contacts_all_land(db: Db) {
    const CONTACTS: usize = 12;
    const BATCHES: usize = 8;
    let app = TestApp::spawn(db).await;
    app.contacts_batch(CONTACTS / 2, |i| format!("c-{i:02}"))
        .await;
    let batches: Vec<_> = opposite_orders(CONTACTS, BATCHES)
        .into_iter()
        .enumerate()
        .map(|(b, order)| {
            let contacts: Vec<_> = order
                .iter()
                .map(|i| json!({"id": format!("c-{i:02}"), "email": format!("u{i}@example.com"), "attributes": {format!("b{b}"): true}}))
                .collect();
            json!({ "contacts": contacts })
        })
        .collect();
    for (status, body) in app.post_all_at_once("/v1/contacts/batch", batches).await {
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..CONTACTS {
        let (_, body) = app.get(&format!("/v1/contacts/c-{i:02}")).await;
        let attributes = &body["contact"]["attributes"];
        for b in 0..BATCHES {
            assert_eq!(attributes[format!("b{b}")], true, "c-{i:02}: {attributes}");
        }
    }
    app.finish().await;
}
both_backends!(concurrent_contact_batches_over_the_same_contacts_all_land);

async fn bad_input_gets_json_errors(db: Db) {
    let app = TestApp::spawn(db).await;
    // Malformed JSON.
    let r = app
        .http
        .post(app.url("/v1/contacts"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
    // Wrong content type.
    let r = app
        .http
        .post(app.url("/v1/events"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Missing field, unknown field, bad email, bad timestamp.
    for (path, body, code) in [
        ("/v1/contacts", json!({"email": "a@example.com"}), 422),
        (
            "/v1/contacts",
            json!({"id": "c", "email": "a@example.com", "colour": 1}),
            422,
        ),
        (
            "/v1/contacts",
            json!({"id": "c", "email": "not-an-address"}),
            422,
        ),
        ("/v1/contacts", json!({"id": "c-new"}), 422),
        (
            "/v1/events",
            json!({"contact_id": "c", "name": "x", "timestamp": "yesterday"}),
            422,
        ),
        (
            "/v1/events",
            json!({"contact_id": "nobody", "name": "x"}),
            404,
        ),
        ("/v1/events", json!({"contact_id": "c", "name": ""}), 422),
    ] {
        let (status, got) = app.post(path, body.clone()).await;
        assert_eq!(status, code, "{path} {body} → {got}");
        assert!(
            got["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{got}"
        );
    }
    let (status, got) = app.get("/v1/contacts/nobody").await;
    assert_eq!(
        (status, got["error"]["code"].clone()),
        (404, json!("contact_not_found"))
    );
    let (status, _) = app.get("/nowhere").await;
    assert_eq!(status, 404);
    // Body limit. The server answers before reading the whole body and closes the connection,
    // so this request gets a client of its own.
    let huge = "x".repeat(3 * 1024 * 1024);
    let big = json!({"id": "c", "email": "a@example.com", "attributes": {"blob": huge}});
    let r = reqwest::Client::new()
        .post(app.url("/v1/contacts"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    app.finish().await;
}
both_backends!(bad_input_gets_json_errors);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_when_configured() {
    let options = Options {
        env: vec![("HERALD_SERVER__API_KEYS".to_owned(), "k1,k2".to_owned())],
        ..Options::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, options, |_| {}).await;
    let (status, body) = app.get("/v1/contacts/c-1").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = app
        .http
        .get(app.url("/v1/contacts/c-1"))
        .bearer_auth("k2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "authorized, contact unknown");
    let r = app
        .http
        .get(app.url("/v1/contacts/c-1"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "health needs no key");
    app.finish().await;
}

/// Single events posted at the same moment share write transactions. Each must still be
/// stored once, start its journey once, and an unknown contact among them must fail alone
/// without costing the others their writes.
async fn concurrent_single_events_are_each_stored_once(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contacts_batch(40, |i| format!("c-{i}")).await;
    let mut posts = tokio::task::JoinSet::new();
    for round in 0..2 {
        for i in 0..50 {
            // c-40..c-49 do not exist; every event is posted twice with the same id.
            let body = json!({"id": format!("e-{i}"), "contact_id": format!("c-{i}"), "name": "signed_up"});
            let (http, url) = (app.http.clone(), app.url("/v1/events"));
            posts.spawn(async move {
                let response = http.post(url).json(&body).send().await.expect("request");
                (round, i, response.status().as_u16())
            });
        }
    }
    let mut unknown = 0;
    while let Some(answer) = posts.join_next().await {
        let (round, i, status) = answer.expect("post task");
        if i >= 40 {
            assert_eq!(status, 404, "event {i} of round {round}");
            unknown += 1;
        } else {
            assert!(status == 202 || status == 200, "event {i}: {status}");
        }
    }
    assert_eq!(unknown, 20);
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 40);
    for i in 0..40 {
        let (_, contact) = app.get(&format!("/v1/contacts/c-{i}")).await;
        assert_eq!(
            contact["journeys"].as_array().map(Vec::len),
            Some(1),
            "c-{i}"
        );
    }
    // The refused events left nothing behind: once their contacts exist, the same ids are new.
    for i in 40..50 {
        app.contact(&format!("c-{i}"), &format!("u{i}@example.com"), json!({}))
            .await;
        let body =
            json!({"id": format!("e-{i}"), "contact_id": format!("c-{i}"), "name": "signed_up"});
        let (status, answer) = app.post("/v1/events", body).await;
        assert_eq!(status, 202, "e-{i}: {answer}");
        assert_eq!(answer["event"]["duplicate"], false);
    }
    app.finish().await;
}
both_backends!(concurrent_single_events_are_each_stored_once);
