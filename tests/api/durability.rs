//! Restarts, crashes and concurrent workers: nothing lost, nothing sent twice.

use std::collections::HashSet;

use chrono::TimeDelta;
use herald::app::Role;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, Options, TestApp, write};

fn cart(cart_id: &str) -> serde_json::Value {
    json!({"cart_id": cart_id, "item_count": 1, "cart_url": "https://shop.example/cart",
           "items": [{"name": "Mug", "quantity": 1, "price": 1200}]})
}

async fn restart_mid_wait_resumes_the_journey(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.advance(TimeDelta::minutes(30)).await;
    let app = app.restart().await;
    app.advance(TimeDelta::minutes(29)).await;
    assert_eq!(app.smtp.messages().len(), 0);
    app.advance(TimeDelta::minutes(1)).await;
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "the reminder, once, after the restart"
    );
    app.finish().await;
}
both_backends!(restart_mid_wait_resumes_the_journey);

async fn waits_that_expired_while_down_run_at_once(db: Db) {
    let mut app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    app.run_due().await;
    app.stop().await;
    app.clock.advance(TimeDelta::days(3)); // down for three days
    let app = app.restart().await;
    app.run_due().await;
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "the overdue reminder goes out on start"
    );
    app.advance(TimeDelta::hours(23)).await;
    assert_eq!(
        app.smtp.messages().len(),
        2,
        "then the journey continues on schedule"
    );
    app.finish().await;
}
both_backends!(waits_that_expired_while_down_run_at_once);

async fn lost_connection_after_data_is_unknown_and_not_resent(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.smtp.drop_after_data(1);
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    let stored = app.messages_of("c-1").await;
    assert_eq!(stored[0]["status"], "unknown", "{stored:?}");
    app.advance(TimeDelta::hours(1)).await;
    assert_eq!(
        app.smtp.messages().len(),
        1,
        "the server got it once; it is not re-sent"
    );
    app.finish().await;
}
both_backends!(lost_connection_after_data_is_unknown_and_not_resent);

async fn crash_between_transport_and_receipt_gives_unknown(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.smtp.hang_after_data(1);
    app.event("c-1", "signed_up", json!({})).await;
    // The worker hands the message over and then the process dies before the receipt.
    let core = std::sync::Arc::clone(&app.core);
    let worker = tokio::spawn(async move { herald::scheduler::run_due(&core).await });
    app.smtp
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    worker.abort();
    let _ = worker.await;
    let app = app.restart().await;
    app.advance(TimeDelta::minutes(2)).await; // the dead worker's lease runs out
    let stored = app.messages_of("c-1").await;
    assert_eq!(stored[0]["status"], "unknown", "{stored:?}");
    assert_eq!(app.smtp.messages().len(), 1);
    // The journey went on past the unknown send to its wait.
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["journeys"][0]["status"], "active");
    app.finish().await;
}
both_backends!(crash_between_transport_and_receipt_gives_unknown);

async fn stopping_releases_the_leases_of_cancelled_sends(db: Db) {
    let options = Options {
        role: Role::All,
        examples: true,
        // No grace: the hung send below is cancelled as soon as the stop is requested.
        env: vec![("HERALD_WORKERS__SHUTDOWN_GRACE".to_owned(), "0s".to_owned())],
    };
    let mut app = TestApp::spawn_with(db, options, |_| {}).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.smtp.hang_after_data(1);
    app.event("c-1", "signed_up", json!({})).await;
    // The background worker is waiting for the receipt when the stop (SIGTERM) comes.
    app.smtp
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    app.stop().await;
    let app = app.restart().await;
    // Without moving the clock past the 60 s lease: the released job is due at once, finds
    // its message handed over without a receipt, and records it as unknown instead of
    // sending it again.
    assert!(app.run_due().await >= 1, "the released job runs at once");
    let stored = app.messages_of("c-1").await;
    assert_eq!(stored[0]["status"], "unknown", "{stored:?}");
    assert_eq!(app.smtp.messages().len(), 1, "nothing sent twice");
    app.finish().await;
}
both_backends!(stopping_releases_the_leases_of_cancelled_sends);

async fn transient_failures_retry_with_backoff_then_die_visibly(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.smtp.fail(
        crate::helpers::smtp_server::Phase::Rcpt,
        "451 4.3.0 Try again later",
        1,
    );
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 0);
    assert_eq!(app.messages_of("c-1").await[0]["status"], "pending");
    app.advance(TimeDelta::seconds(11)).await; // first backoff is 5–10 s
    assert_eq!(app.smtp.messages().len(), 1, "retried and delivered");
    assert_eq!(app.messages_of("c-1").await[0]["status"], "sent");

    // A contact whose sends always fail transiently ends up in a dead job.
    app.contact("c-2", "bo@example.com", json!({})).await;
    app.smtp.fail(
        crate::helpers::smtp_server::Phase::Rcpt,
        "451 4.3.0 Try again later",
        100,
    );
    app.event("c-2", "signed_up", json!({})).await;
    for _ in 0..10 {
        app.advance(TimeDelta::hours(2)).await;
    }
    let (_, dead) = app.get("/v1/jobs?status=dead").await;
    assert_eq!(dead["jobs"].as_array().map(Vec::len), Some(1), "{dead}");
    let (_, contact) = app.get("/v1/contacts/c-2").await;
    assert_eq!(contact["journeys"][0]["status"], "failed");
    assert_eq!(contact["messages"][0]["status"], "failed");
    app.finish().await;
}
both_backends!(transient_failures_retry_with_backoff_then_die_visibly);

async fn hard_bounce_suppresses_the_address(db: Db) {
    let app = TestApp::spawn(db).await;
    app.contact("c-1", "gone@example.com", json!({})).await;
    app.smtp.fail(
        crate::helpers::smtp_server::Phase::Rcpt,
        "550 5.1.1 No such user",
        1,
    );
    app.event("c-1", "signed_up", json!({})).await;
    app.run_due().await;
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(contact["messages"][0]["status"], "failed");
    assert_eq!(contact["suppression"]["reason"], "hard_bounce");
    app.advance(TimeDelta::days(2)).await;
    let (_, contact) = app.get("/v1/contacts/c-1").await;
    assert_eq!(
        contact["messages"][0]["status"], "suppressed",
        "the next send is suppressed"
    );
    assert_eq!(app.smtp.messages().len(), 0);
    app.finish().await;
}
both_backends!(hard_bounce_suppresses_the_address);

const TOTAL_TEMPLATE: &str = "---\nsubject: \"Your order\"\nsample: { event: { properties: { total: 1250 } } }\n---\n<p>Total: {{format_money event.properties.total \"USD\"}}</p>\n";

/// Rendering happens after the step's transaction marked the message `sending`: a message that
/// cannot be rendered still ends `failed`, never reaches the transport, and does not hold up
/// the next one.
async fn a_message_that_cannot_be_rendered_fails_without_being_sent(db: Db) {
    let options = Options {
        examples: false,
        ..Options::default()
    };
    let app = TestApp::spawn_with(db, options, |dir| {
        write(dir, "workflows/receipt.yaml", RECEIPT_WORKFLOW);
        write(dir, "templates/receipt.hbs", TOTAL_TEMPLATE);
    })
    .await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.contact("c-2", "bo@example.com", json!({})).await;
    app.event("c-1", "order_placed", json!({"total": {"not": "a number"}}))
        .await;
    app.run_due().await;
    assert_eq!(app.smtp.messages().len(), 0);
    let stored = app.messages_of("c-1").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["status"], "failed", "{stored:?}");
    let detail = stored[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("render failed") && detail.contains("must be a number"),
        "{detail}"
    );

    app.event("c-2", "order_placed", json!({"total": 1250}))
        .await;
    app.run_due().await;
    let mail = app.smtp.messages();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, vec!["bo@example.com".to_owned()]);
    let stored = app.messages_of("c-2").await;
    assert_eq!(stored[0]["status"], "sent", "{stored:?}");
    assert_eq!(stored[0]["subject"], "Your order", "{stored:?}");
    app.finish().await;
}
both_backends!(a_message_that_cannot_be_rendered_fails_without_being_sent);

pub const RECEIPT_WORKFLOW: &str = "name: receipt\ncategory: transactional\ntrigger:\n  event: order_placed\nsteps:\n  - send: receipt\n";
pub const RECEIPT_TEMPLATE: &str = "---\nsubject: \"Order {{event.properties.order_id}}\"\nsample: { event: { properties: { order_id: 7 } } }\n---\n<p>Thanks!</p>\n";

async fn two_workers_never_send_twice(db: Db) {
    const JOURNEYS: usize = 500;
    let options = || Options {
        role: Role::Api,
        examples: false,
        env: Vec::new(),
    };
    let setup = |dir: &std::path::Path| {
        write(dir, "workflows/receipt.yaml", RECEIPT_WORKFLOW);
        write(dir, "templates/receipt.hbs", RECEIPT_TEMPLATE);
    };
    let a = TestApp::spawn_with(db, options(), setup).await;
    let b = a.worker_node(&[]).await;
    // Startup work (the first segment recompute) first, so only journey jobs are counted below.
    herald::scheduler::run_due(&a.core)
        .await
        .expect("startup jobs");
    a.contacts_batch(JOURNEYS, |i| format!("c-{i}")).await;
    let events: Vec<_> = (0..JOURNEYS)
        .map(|i| json!({"contact_id": format!("c-{i}"), "name": "order_placed", "properties": {"order_id": i}}))
        .collect();
    let (status, body) = a.post("/v1/events/batch", json!({"events": events})).await;
    assert_eq!(status, 202, "{body}");
    let (ra, rb) = tokio::join!(
        herald::scheduler::run_due(&a.core),
        herald::scheduler::run_due(&b.core)
    );
    let (ra, rb) = (ra.expect("worker a"), rb.expect("worker b"));
    assert_eq!(ra + rb, JOURNEYS, "every job ran exactly once");
    let mail = a
        .smtp
        .wait_for(JOURNEYS, std::time::Duration::from_secs(30))
        .await;
    let ids: HashSet<String> = mail
        .iter()
        .map(|m| {
            mail_parser::MessageParser::default()
                .parse(&m.data)
                .and_then(|p| p.message_id().map(str::to_owned))
                .expect("Message-ID")
        })
        .collect();
    assert_eq!(mail.len(), JOURNEYS, "no duplicates at the server");
    assert_eq!(ids.len(), JOURNEYS);
    b.core.shutdown().await;
    a.finish().await;
}
both_backends!(two_workers_never_send_twice);

async fn idle_worker_starts_due_jobs_without_polling(db: Db) {
    let options = Options {
        role: Role::All,
        examples: true,
        env: Vec::new(),
    };
    let app = TestApp::spawn_with(db, options, |_| {}).await;
    app.contact("c-1", "ana@example.com", json!({})).await;
    app.event("c-1", "cart_updated", cart("k-1")).await;
    // The background worker sleeps on the clock until the reminder is due; moving the clock
    // wakes it, with no polling interval involved.
    app.clock.advance(TimeDelta::hours(1));
    let got = app
        .smtp
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1);
    app.finish().await;
}
both_backends!(idle_worker_starts_due_jobs_without_polling);

async fn batch_claims_never_give_a_job_to_two_workers(db: Db) {
    const JOBS: usize = 300;
    let app = TestApp::spawn(db).await;
    let now = app.clock.now();
    let mut tx = app.core.store.write().await.expect("write");
    for i in 0..JOBS {
        let job = herald::store::Job {
            id: format!("job-{i:04}"),
            kind: "bench".to_owned(),
            journey_id: None,
            payload: sqlx::types::Json(json!({})),
            status: herald::store::job_status::QUEUED.to_owned(),
            run_at: now - TimeDelta::seconds((i % 7) as i64),
            attempts: 0,
            max_attempts: 3,
            locked_by: None,
            locked_until: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        };
        tx.insert_job(&job).await.expect("insert job");
    }
    tx.commit().await.expect("commit");
    // Four workers claim in batches of different sizes at once until nothing is left.
    let claimers = (0..4).map(|w| {
        let core = std::sync::Arc::clone(&app.core);
        tokio::spawn(async move {
            let worker = format!("worker-{w}");
            let mut got = Vec::new();
            loop {
                let jobs = core
                    .store
                    .claim_jobs(&worker, now, now + core.lease, 5 + 6 * w)
                    .await
                    .expect("claim");
                if jobs.is_empty() {
                    return got;
                }
                assert!(
                    jobs.iter()
                        .all(|j| j.locked_by.as_deref() == Some(&*worker))
                );
                got.extend(jobs.into_iter().map(|j| j.id));
            }
        })
    });
    let mut all = Vec::new();
    for claimer in claimers.collect::<Vec<_>>() {
        all.extend(claimer.await.expect("claimer"));
    }
    // The example project queues jobs of its own (trigger backfills); count ours.
    all.retain(|id| id.starts_with("job-"));
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), JOBS, "every job claimed once");
    assert_eq!(distinct.len(), JOBS, "no job claimed twice");
    app.finish().await;
}
both_backends!(batch_claims_never_give_a_job_to_two_workers);

async fn grouped_writes_commit_together_and_a_failure_costs_no_other_write(db: Db) {
    const WRITES: usize = 40;
    let app = TestApp::spawn(db).await;
    let now = app.clock.now();
    let writes = (0..WRITES).map(|i| {
        let core = std::sync::Arc::clone(&app.core);
        tokio::spawn(async move {
            let email = format!("grouped-{i}@example.com");
            core.group
                .run(&*core, &core.store, move |_, tx| {
                    let email = email.clone();
                    Box::pin(async move {
                        tx.suppress(&email, "manual", None, now).await?;
                        if i == 7 {
                            // Fails after writing: its write must not stay, nor cost others theirs.
                            return Err(herald::store::StoreError::Abandoned);
                        }
                        Ok(i)
                    })
                })
                .await
        })
    });
    let mut results = Vec::new();
    for write in writes.collect::<Vec<_>>() {
        results.push(write.await.expect("task"));
    }
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(n) => assert_eq!(*n, i),
            Err(_) => assert_eq!(i, 7, "only the failing write fails"),
        }
    }
    let mut tx = app.core.store.read().await.expect("read");
    for i in 0..WRITES {
        let found = tx
            .suppression(&format!("grouped-{i}@example.com"))
            .await
            .expect("suppression");
        assert_eq!(found.is_some(), i != 7, "write {i}");
    }
    tx.commit().await.expect("commit");
    app.finish().await;
}
both_backends!(grouped_writes_commit_together_and_a_failure_costs_no_other_write);

/// A new SQLite store at `path`, and `measure` of it (taken after migrating), then 500 rows
/// of 2 kB committed one by one.
async fn filled_store<T>(
    path: &std::path::Path,
    measure: impl Fn() -> T,
) -> (herald::store::Store, T) {
    let store = herald::store::Store::connect(
        &format!("sqlite://{}", path.display()),
        2,
        Default::default(),
    )
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    let before = measure();
    for i in 0..FILLERS {
        store
            .meta_get_or_insert(&format!("filler-{i}"), || "x".repeat(2000))
            .await
            .expect("write");
    }
    (store, before)
}

const FILLERS: usize = 500;

/// After a catch-up (what a bulk job asks for before it ends) every committed row is in the
/// database file itself: a connection that ignores the WAL (`immutable`) sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_catch_up_copies_every_committed_page_into_the_database_file() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("herald.db");
    let (store, ()) = filled_store(&path, || ()).await;
    store.catch_up_checkpoints().await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .immutable(true);
    let mut file_only = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("immutable connection");
    let (in_file,): (i64,) = sqlx::query_as("SELECT count(*) FROM meta WHERE key LIKE 'filler-%'")
        .fetch_one(&mut file_only)
        .await
        .expect("count");
    assert_eq!(in_file, FILLERS as i64);
    store.close().await;
}

/// Committed pages reach the database file without the writer checkpointing: the writer's own
/// checkpoint only starts at a WAL far larger than what is written here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_are_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("herald.db");
    let file_size = || std::fs::metadata(&path).expect("database file").len();
    let (store, before) = filled_store(&path, file_size).await;
    // About 1 MB committed to the WAL; wait for the background copy (seconds at most).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while file_size() < before + 1_000_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "database file still {} bytes (was {before})",
            file_size()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await;
}

/// A send that waits for its transport's turn longer than the lease keeps its job: the worker
/// renews the lease meanwhile, so the reaper never hands the job to another worker, which would
/// find the message `sending` and record it `unknown` while the first one sends it.
async fn a_send_waiting_for_its_turn_keeps_its_lease(db: Db) {
    const JOURNEYS: usize = 12;
    // One send a second, a 6 s lease: the last send waits 11 s for its turn.
    let env = [
        ("HERALD_TRANSPORTS__SMTP__RATE", "1"),
        ("HERALD_WORKERS__LEASE", "6s"),
        ("HERALD_WORKERS__CONCURRENCY", "16"),
    ];
    let app = receipts_queued(db, &env, JOURNEYS).await;

    // A second at a time: each lets one more waiting send take its turn, and the lease reaper
    // look at the jobs (it does every 3 s). The pause after each step lets a reaper's hand-over
    // run before the next send's turn comes, as it would on a real clock.
    let wait = std::time::Duration::from_secs(20);
    for sent in 1..=JOURNEYS {
        assert_eq!(app.smtp.wait_for(sent, wait).await.len(), sent);
        app.clock.advance(TimeDelta::seconds(1));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let deadline = std::time::Instant::now() + wait;
    while count(&statuses(&app, JOURNEYS).await, "sent") < JOURNEYS
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let statuses = statuses(&app, JOURNEYS).await;
    assert_eq!(
        statuses,
        vec!["sent"; JOURNEYS],
        "every message recorded as sent"
    );
    assert_eq!(app.smtp.messages().len(), JOURNEYS, "each sent once");
    app.finish().await;
}
both_backends!(a_send_waiting_for_its_turn_keeps_its_lease);

/// A stop that cancels sends still waiting for their transport's turn puts their messages back
/// to `pending`: nothing of them left the process, so the next run sends them instead of
/// recording them `unknown` as it must for a send cancelled mid-transaction.
async fn sends_cancelled_before_their_turn_go_out_after_a_restart(db: Db) {
    const JOURNEYS: usize = 5;
    let env = [
        ("HERALD_TRANSPORTS__SMTP__RATE", "1"),
        ("HERALD_WORKERS__SHUTDOWN_GRACE", "0s"),
    ];
    let mut app = receipts_queued(db, &env, JOURNEYS).await;

    // One went out at once; the clock stands still, so the others wait for their turn with
    // their messages `sending` when the stop comes.
    let wait = std::time::Duration::from_secs(20);
    app.smtp.wait_for(1, wait).await;
    let deadline = std::time::Instant::now() + wait;
    while count(&statuses(&app, JOURNEYS).await, "sending") < JOURNEYS - 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sends never queued up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.stop().await;
    let app = app.restart().await;
    let after_stop = statuses(&app, JOURNEYS).await;
    assert_eq!(
        count(&after_stop, "pending"),
        JOURNEYS - 1,
        "{after_stop:?}"
    );

    // The restarted node sends them, one a second (on PostgreSQL after the slots the
    // cancelled sends had reserved on the shared timeline).
    let ticking = async {
        let deadline = std::time::Instant::now() + wait;
        while app.smtp.messages().len() < JOURNEYS && std::time::Instant::now() < deadline {
            app.clock.advance(TimeDelta::seconds(1));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let (ran, ()) = tokio::join!(app.run_due(), ticking);
    assert_eq!(ran, JOURNEYS - 1, "the released jobs ran");
    assert_eq!(statuses(&app, JOURNEYS).await, ["sent"; JOURNEYS]);
    assert_eq!(app.smtp.messages().len(), JOURNEYS, "each sent once");
    app.finish().await;
}
both_backends!(sends_cancelled_before_their_turn_go_out_after_a_restart);

/// Herald running its own workers (role `all`) with `env` and the receipt workflow, after one
/// `order_placed` event for each of `journeys` contacts `c-0`, `c-1`, ….
async fn receipts_queued(db: Db, env: &[(&str, &str)], journeys: usize) -> TestApp {
    let options = Options {
        role: Role::All,
        examples: false,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let setup = |dir: &std::path::Path| {
        write(dir, "workflows/receipt.yaml", RECEIPT_WORKFLOW);
        write(dir, "templates/receipt.hbs", RECEIPT_TEMPLATE);
    };
    let app = TestApp::spawn_with(db, options, setup).await;
    app.contacts_batch(journeys, |i| format!("c-{i}")).await;
    let events: Vec<_> = (0..journeys)
        .map(|i| json!({"contact_id": format!("c-{i}"), "name": "order_placed", "properties": {"order_id": i}}))
        .collect();
    let (status, body) = app
        .post("/v1/events/batch", json!({"events": events}))
        .await;
    assert_eq!(status, 202, "{body}");
    app
}

/// The statuses of the messages of contacts `c-0`, `c-1`, … in contact order.
async fn statuses(app: &TestApp, contacts: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..contacts {
        for message in app.messages_of(&format!("c-{i}")).await {
            out.push(message["status"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

fn count(statuses: &[String], status: &str) -> usize {
    statuses.iter().filter(|s| *s == status).count()
}
