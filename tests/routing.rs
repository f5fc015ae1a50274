//! Routing through the configured transports: failover while the primary is down, the circuit
//! breaker's half-open probe, no failover after a permanent rejection or an unknown outcome,
//! quota exhaustion, and the rate and concurrency limits — time from a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use herald::clock::{Clock, ManualClock};
use herald::config::Secret;
use herald::message::{self, BuiltMessage, OutgoingEmail};
use herald::transport::http::HttpSettings;
use herald::transport::limit::Limiter;
use herald::transport::outbox::Outbox;
use herald::transport::postmark::{Postmark, PostmarkConfig};
use herald::transport::resend::{Resend, ResendConfig};
use herald::transport::route::{COOLDOWN, FAILURES_TO_OPEN, RouteEntry, Router};
use herald::transport::{ErrorClass, Transport};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const WAIT: Duration = Duration::from_secs(10);

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()
}

fn built(n: usize) -> BuiltMessage {
    message::build(&OutgoingEmail {
        message_id: format!("0190a3c2-7d4e-7b1a-9f3e-{n:012}"),
        from: "Acme Shop <hello@shop.example>".to_owned(),
        to: format!("customer{n}@customer.example"),
        subject: format!("Message {n}"),
        html: format!("<p>Message {n}</p>"),
        text: format!("Message {n}"),
        headers: vec![],
        date: start(),
    })
    .unwrap()
}

fn settings(base_url: String, timeout: Duration) -> HttpSettings {
    HttpSettings { base_url, timeout }
}

fn postmark(name: &str, base_url: String, clock: &Clock, timeout: Duration) -> Transport {
    let config = PostmarkConfig {
        token: Secret::new("token"),
        message_stream: None,
        http: settings(base_url, timeout),
    };
    Transport::Postmark(Postmark::new(name, config, clock.clone()).unwrap())
}

fn resend(name: &str, base_url: String, clock: &Clock) -> Transport {
    let config = ResendConfig {
        api_key: Secret::new("re_key"),
        http: settings(base_url, Duration::from_secs(5)),
    };
    Transport::Resend(Resend::new(name, config, clock.clone()).unwrap())
}

fn entry(transport: Transport, fallback: &[&str]) -> RouteEntry {
    RouteEntry {
        transport,
        limiter: Limiter::unlimited(),
        fallback: fallback.iter().map(|s| (*s).to_owned()).collect(),
    }
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

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

fn postmark_ok() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"MessageID": "pm-1", "ErrorCode": 0, "Message": "OK"}))
}

fn resend_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"id": "re-1"}))
}

#[tokio::test]
async fn failover_while_the_primary_is_down_then_a_half_open_probe_brings_it_back() {
    let manual = ManualClock::new(start());
    let clock = Clock::Manual(manual.clone());
    let primary = stand_in(ResponseTemplate::new(503)).await;
    let backup = stand_in(resend_ok()).await;
    let router = Router::new(
        clock.clone(),
        vec![
            entry(
                postmark("primary", primary.uri(), &clock, WAIT),
                &["backup"],
            ),
            entry(resend("backup", backup.uri(), &clock), &[]),
        ],
    )
    .unwrap();
    assert_eq!(router.route("primary"), ["primary", "backup"]);
    assert_eq!(router.route("backup"), ["backup"]);

    // Every send still goes out, through the backup.
    let failures = usize::try_from(FAILURES_TO_OPEN).unwrap();
    for n in 0..failures {
        let sent = router.send("primary", &built(n)).await.unwrap();
        assert_eq!(sent.transport, "backup");
        assert_eq!(sent.receipt.provider_message_id.as_deref(), Some("re-1"));
    }
    assert_eq!(requests(&primary).await, failures);

    // The primary's circuit is open: it is not even tried.
    router.send("primary", &built(10)).await.unwrap();
    router.send("primary", &built(11)).await.unwrap();
    assert_eq!(requests(&primary).await, failures);
    assert_eq!(requests(&backup).await, failures + 2);

    // After the cooldown one probe goes to the primary, which is back: the circuit closes.
    answer(&primary, postmark_ok()).await;
    manual.advance(COOLDOWN);
    let sent = router.send("primary", &built(12)).await.unwrap();
    assert_eq!(sent.transport, "primary");
    assert_eq!(sent.receipt.provider_message_id.as_deref(), Some("pm-1"));
    let sent = router.send("primary", &built(13)).await.unwrap();
    assert_eq!(sent.transport, "primary");
    assert_eq!(requests(&primary).await, 2);
}

#[tokio::test]
async fn a_failed_probe_keeps_the_circuit_open_for_another_cooldown() {
    let manual = ManualClock::new(start());
    let clock = Clock::Manual(manual.clone());
    let primary = stand_in(ResponseTemplate::new(500)).await;
    let router = Router::new(
        clock.clone(),
        vec![entry(postmark("primary", primary.uri(), &clock, WAIT), &[])],
    )
    .unwrap();
    for n in 0..usize::try_from(FAILURES_TO_OPEN).unwrap() {
        let error = router.send("primary", &built(n)).await.unwrap_err();
        assert_eq!(error.code, Some(500));
    }

    // Open: no request, and the error says when to come back.
    let error = router.send("primary", &built(10)).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    assert_eq!(error.code, None);
    assert_eq!(error.retry_after, COOLDOWN.to_std().ok());
    assert!(error.message.contains("circuit open"), "{error}");
    assert_eq!(requests(&primary).await, 5);

    manual.advance(COOLDOWN);
    let error = router.send("primary", &built(11)).await.unwrap_err();
    assert_eq!(error.code, Some(500), "the probe reached the primary");
    assert_eq!(requests(&primary).await, 6);
    let error = router.send("primary", &built(12)).await.unwrap_err();
    assert!(error.message.contains("circuit open"), "{error}");
    assert_eq!(requests(&primary).await, 6);
}

#[tokio::test]
async fn a_permanent_rejection_never_fails_over() {
    let clock = Clock::Manual(ManualClock::new(start()));
    let primary = stand_in(ResponseTemplate::new(422).set_body_json(
        json!({"ErrorCode": 406, "Message": "You tried to send to a recipient that has been marked as inactive."}),
    ))
    .await;
    let backup = stand_in(resend_ok()).await;
    let router = Router::new(
        clock.clone(),
        vec![
            entry(
                postmark("primary", primary.uri(), &clock, WAIT),
                &["backup"],
            ),
            entry(resend("backup", backup.uri(), &clock), &[]),
        ],
    )
    .unwrap();
    let error = router.send("primary", &built(1)).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(error.is_hard_bounce());
    assert_eq!(requests(&backup).await, 0);
}

#[tokio::test]
async fn an_unknown_outcome_never_fails_over() {
    let clock = Clock::Manual(ManualClock::new(start()));
    let primary = stand_in(postmark_ok().set_delay(Duration::from_secs(30))).await;
    let backup = stand_in(resend_ok()).await;
    let router = Router::new(
        clock.clone(),
        vec![
            entry(
                postmark("primary", primary.uri(), &clock, Duration::from_millis(300)),
                &["backup"],
            ),
            entry(resend("backup", backup.uri(), &clock), &[]),
        ],
    )
    .unwrap();
    let error = router.send("primary", &built(1)).await.unwrap_err();
    assert!(error.after_data, "{error:?}");
    assert_eq!(requests(&backup).await, 0, "the message may already be out");
}

#[tokio::test]
async fn a_used_up_quota_fails_over_until_it_resets_or_defers_without_a_fallback() {
    let manual = ManualClock::new(start());
    let clock = Clock::Manual(manual.clone());
    let quota = ResponseTemplate::new(429).set_body_json(
        json!({"statusCode": 429, "name": "daily_quota_exceeded", "message": "You have reached your daily email sending quota."}),
    );
    let primary = stand_in(quota).await;
    let backup = stand_in(postmark_ok()).await;
    let router = Router::new(
        clock.clone(),
        vec![
            entry(resend("primary", primary.uri(), &clock), &["backup"]),
            entry(postmark("backup", backup.uri(), &clock, WAIT), &[]),
            entry(resend("alone", primary.uri(), &clock), &[]),
        ],
    )
    .unwrap();
    assert_eq!(
        router.send("primary", &built(1)).await.unwrap().transport,
        "backup"
    );
    assert_eq!(
        router.send("primary", &built(2)).await.unwrap().transport,
        "backup"
    );
    assert_eq!(
        requests(&primary).await,
        1,
        "skipped until the quota resets"
    );

    let midnight = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap();
    let error = router.send("alone", &built(3)).await.unwrap_err();
    assert_eq!(error.deferred_until, Some(midnight));
    let error = router.send("alone", &built(4)).await.unwrap_err();
    assert_eq!(
        error.deferred_until,
        Some(midnight),
        "the deferral, not a circuit error"
    );

    // At the reset the primary is tried again.
    answer(&primary, resend_ok()).await;
    manual.set(midnight);
    assert_eq!(
        router.send("primary", &built(5)).await.unwrap().transport,
        "primary"
    );
}

#[tokio::test]
async fn unknown_routes_fail_permanently() {
    let router = Router::new(Clock::Manual(ManualClock::new(start())), vec![]).unwrap();
    let error = router.send("nowhere", &built(1)).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(!router.contains("nowhere"));
}

/// One outbox transport `out` writing into `dir`, limited to `rate` messages a second.
fn paced_outbox(clock: &Clock, dir: &std::path::Path, rate: f64) -> Arc<Router> {
    let entry = RouteEntry {
        transport: Transport::Outbox(Outbox::new("out".to_owned(), dir.to_owned())),
        limiter: Limiter::new(Some(rate), None),
        fallback: vec![],
    };
    Arc::new(Router::new(clock.clone(), vec![entry]).unwrap())
}

/// Runs on the current-thread runtime, so every spawned send reserves its slot (in spawn order)
/// before the clock first moves.
#[tokio::test]
async fn the_rate_limit_holds_per_second_on_the_manual_clock() {
    let manual = ManualClock::new(start());
    let clock = Clock::Manual(manual.clone());
    let dir = tempfile::tempdir().unwrap();
    let router = paced_outbox(&clock, dir.path(), 5.0);
    let (done, mut finished) = watch::channel(Vec::<DateTime<Utc>>::new());
    let done = Arc::new(done);
    for n in 0..20 {
        let (router, clock, done) = (Arc::clone(&router), clock.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            router.send("out", &built(n)).await.unwrap();
            let at = clock.now();
            done.send_modify(|times| times.push(at));
        });
    }

    // Step through four seconds, 100 ms at a time; at each step exactly the sends whose slot
    // (one every 200 ms) has come are done.
    for step in 0..=40_i64 {
        manual.set(start() + TimeDelta::milliseconds(100 * step));
        let expected = usize::try_from(step / 2 + 1).unwrap().min(20);
        let times = tokio::time::timeout(WAIT, finished.wait_for(|t| t.len() >= expected))
            .await
            .expect("sends finish once their slot comes")
            .unwrap()
            .clone();
        assert_eq!(times.len(), expected, "at step {step}");
    }
    let mut per_second = [0; 4];
    for at in finished.borrow().iter() {
        let second = usize::try_from((*at - start()).num_seconds()).unwrap();
        per_second[second] += 1;
    }
    assert_eq!(per_second, [5, 5, 5, 5]);
}

/// A Postmark-like stand-in that holds every request until the test releases it, counting how
/// many are in flight.
struct Gate {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    arrived: watch::Sender<usize>,
    release: Semaphore,
}

async fn held(
    axum::extract::State(gate): axum::extract::State<Arc<Gate>>,
) -> axum::Json<serde_json::Value> {
    let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    gate.max_in_flight.fetch_max(now, Ordering::SeqCst);
    gate.arrived.send_modify(|n| *n += 1);
    if let Ok(permit) = gate.release.acquire().await {
        permit.forget();
    }
    gate.in_flight.fetch_sub(1, Ordering::SeqCst);
    axum::Json(json!({"MessageID": "pm", "ErrorCode": 0, "Message": "OK"}))
}

#[tokio::test]
async fn the_concurrency_limit_holds() {
    let gate = Arc::new(Gate {
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        arrived: watch::channel(0).0,
        release: Semaphore::new(0),
    });
    let app = axum::Router::new()
        .route("/email", axum::routing::post(held))
        .with_state(Arc::clone(&gate));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let clock = Clock::Manual(ManualClock::new(start()));
    let router = Arc::new(
        Router::new(
            clock.clone(),
            vec![RouteEntry {
                transport: postmark("pm", format!("http://{addr}"), &clock, WAIT),
                limiter: Limiter::new(None, Some(2)),
                fallback: vec![],
            }],
        )
        .unwrap(),
    );
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..6 {
        let router = Arc::clone(&router);
        sends.spawn(async move { router.send("pm", &built(n)).await });
    }
    let mut arrived = gate.arrived.subscribe();
    for released in 0..6 {
        let expected = (2 + released).min(6);
        tokio::time::timeout(WAIT, arrived.wait_for(|n| *n >= expected))
            .await
            .expect("requests arrive as slots free up")
            .unwrap();
        gate.release.add_permits(1);
    }
    while let Some(result) = sends.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(*gate.arrived.borrow(), 6);
    assert_eq!(gate.max_in_flight.load(Ordering::SeqCst), 2);
    server.abort();
}

/// A send counts as handed over only once a transport is called: not for an unknown route, and
/// not while it waits for its turn (what lets a stop put such a message back to `pending`).
#[tokio::test]
async fn a_send_is_handed_over_only_when_a_transport_is_called() {
    let manual = ManualClock::new(start());
    let dir = tempfile::tempdir().unwrap();
    let router = paced_outbox(&Clock::Manual(manual.clone()), dir.path(), 1.0);
    let nowhere = AtomicBool::new(false);
    assert!(
        router
            .send_noting("nowhere", &built(0), &nowhere)
            .await
            .is_err()
    );
    assert!(!nowhere.load(Ordering::SeqCst));
    let first = AtomicBool::new(false);
    router.send_noting("out", &built(1), &first).await.unwrap();
    assert!(first.load(Ordering::SeqCst));

    // One send a second: the next one's turn comes when the clock moves.
    let second = Arc::new(AtomicBool::new(false));
    let sending = {
        let (router, second) = (Arc::clone(&router), Arc::clone(&second));
        tokio::spawn(async move { router.send_noting("out", &built(2), &second).await })
    };
    let deadline = std::time::Instant::now() + WAIT;
    while manual.sleepers() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the send never waited"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !second.load(Ordering::SeqCst),
        "waiting for a turn is no hand-over"
    );
    manual.advance(TimeDelta::seconds(1));
    sending.await.unwrap().unwrap();
    assert!(second.load(Ordering::SeqCst));
}
