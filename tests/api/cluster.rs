//! Several nodes on one PostgreSQL: work announced by one node wakes idle workers on another,
//! and a transport's rate limit holds for all nodes together.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::TimeDelta;
use herald::app::Role;
use herald::clock::{Clock, ManualClock};
use herald::store::Store;
use herald::transport::limit::Limiter;
use serde_json::json;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::durability::{RECEIPT_TEMPLATE, RECEIPT_WORKFLOW};
use crate::helpers::{Db, Options, TestApp, TestDb, start_time, write};
use crate::postgres_only;

async fn an_idle_worker_on_another_node_wakes_on_announced_work() {
    let options = Options {
        role: Role::Api,
        examples: false,
        env: Vec::new(),
    };
    let api = TestApp::spawn_with(Db::Postgres, options, |dir| {
        write(dir, "workflows/receipt.yaml", RECEIPT_WORKFLOW);
        write(dir, "templates/receipt.hbs", RECEIPT_TEMPLATE);
    })
    .await;
    // A worker-only node that would poll once an hour, on a manual clock that never moves:
    // only an announcement can make it look for work.
    let worker = api
        .worker_node(&[("HERALD_WORKERS__POLL_INTERVAL", "1h")])
        .await;
    let stop_worker = CancellationToken::new();
    let worker = tokio::spawn(worker.run(stop_worker.clone()));

    // Wait until the worker node has done its startup work and sleeps on the clock, so what
    // wakes it below can only be the announcement.
    let mut idle_since = std::time::Instant::now();
    let deadline = idle_since + std::time::Duration::from_secs(10);
    while idle_since.elapsed() < std::time::Duration::from_millis(300) {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker node never idled"
        );
        if api.clock.sleepers() == 0 {
            idle_since = std::time::Instant::now();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let db_url = api.env.iter().find(|(k, _)| k == "HERALD_DATABASE__URL");
    let mut watcher = PgListener::connect(&db_url.expect("database url").1)
        .await
        .expect("listener");
    watcher.listen("herald_work").await.expect("listen");

    api.contact("c-1", "ana@example.com", json!({})).await;
    api.event("c-1", "order_placed", json!({"order_id": 1}))
        .await;
    // The API node announced the journey it queued, naming itself…
    let announcement = tokio::time::timeout(std::time::Duration::from_secs(10), watcher.recv())
        .await
        .expect("an announcement within 10 s")
        .expect("notification");
    assert_eq!(announcement.payload(), api.core.worker_id);
    // …and the idle worker node sent the receipt.
    let mail = api
        .smtp
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(mail.len(), 1, "the worker node woke up and sent");
    // A graceful stop lets the send record its receipt.
    stop_worker.cancel();
    worker
        .await
        .expect("worker node task")
        .expect("worker node stops");
    let stored = api.messages_of("c-1").await;
    assert_eq!(stored[0]["status"], "sent", "{stored:?}");
    api.finish().await;
}
postgres_only!(an_idle_worker_on_another_node_wakes_on_announced_work);

async fn a_transport_rate_holds_across_nodes() {
    const SENDS_PER_NODE: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::create(Db::Postgres, dir.path()).await;
    let clock = ManualClock::new(start_time());
    // Two nodes: each its own pool and its own limiter for the transport, 5 sends a second.
    let mut limiters = Vec::new();
    for _ in 0..2 {
        let store = Store::connect(&db.url, 4, Default::default())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        limiters.push(Arc::new(
            Limiter::new(Some(5.0), None).shared(&store, "smtp"),
        ));
    }
    let started = Arc::new(AtomicUsize::new(0));
    let total = 2 * SENDS_PER_NODE;
    for limiter in &limiters {
        for _ in 0..SENDS_PER_NODE {
            let (limiter, started, clock) = (limiter.clone(), started.clone(), clock.clone());
            tokio::spawn(async move {
                let _permit = limiter.acquire(&Clock::Manual(clock)).await;
                started.fetch_add(1, Ordering::SeqCst);
            });
        }
    }
    // Waits until at least `n` sends started, then a moment more for any that should not
    // have, and answers how many did.
    let started_by = |n: usize| {
        let started = Arc::clone(&started);
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while started.load(Ordering::SeqCst) < n {
                assert!(std::time::Instant::now() < deadline, "sends never started");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            started.load(Ordering::SeqCst)
        }
    };
    // One slot every 200 ms for both nodes together: at 0 ms one send, at 200 ms two, …
    // (pacing per node would start two at once).
    for step in 0..total {
        assert_eq!(
            started_by(step + 1).await,
            step + 1,
            "sends started by {} ms",
            step * 200
        );
        clock.advance(TimeDelta::milliseconds(200));
    }
    db.drop_db().await;
}
postgres_only!(a_transport_rate_holds_across_nodes);
