//! `herald bench webhooks`: the cost of delivery feedback. It builds a throwaway project (no
//! workflows), a Herald serving HTTP on an ephemeral loopback port with a freshly generated
//! P-256 key as its SendGrid Signed Event Webhook key, and M contacts each with one `sent`
//! message. Then it measures, from a load generator on a thread of its own (so its CPU time can
//! be told apart from Herald's):
//!
//! 1. webhook ingestion: R signed SendGrid requests of `--batch` events each (delivered 40 %,
//!    human opens 40 %, clicks 20 %, every one correlated to an existing message), posted by C
//!    concurrent HTTP/1.1 keep-alive connections; every answer must be 200 with all events
//!    stored;
//! 2. tracking hits: H open-pixel requests `GET /t/o/{token}` with a browser user agent, and
//!    the time until the last of them is stored (hits are answered before they are stored).
//!
//! Request bodies, signatures and tokens are all prepared before the clock starts. Afterwards
//! the ledger and the contacts' `email_*` events are counted to prove every report was stored.
//! Nothing leaves the loopback interface.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use axum::body::Bytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::TimeDelta;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::bench::{
    LOAD_THREAD, ScratchDir, by_thread, clock_ticks_per_second, cpu_time, herald_threads,
    peak_rss_kib, thread_ticks,
};
use crate::app::{Application, Role};
use crate::clock::Clock;
use crate::config::Settings;
use crate::core::Core;
use crate::ingest::ContactInput;
use crate::store::{Message, message_status};
use crate::tracking::links::OPEN;
use crate::webhook::HERALD_MESSAGE_ID_KEY;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Signed SendGrid webhook requests to post.
    #[arg(long, default_value_t = 500)]
    requests: usize,
    /// Events per webhook request (SendGrid batches up to about 1,000 or 768 KB).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Contacts, each with one sent message the events refer to.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Open-pixel hits (`GET /t/o/{token}`) after the webhooks; 0 skips them.
    #[arg(long, default_value_t = 20_000)]
    hits: usize,
    /// `sqlite` (a fresh file in a temporary directory) or a PostgreSQL URL of a scratch
    /// database: the run leaves its contacts, messages and events in it.
    #[arg(long, default_value = "sqlite")]
    database: String,
}

/// Contacts and messages per setup transaction.
const SETUP_CHUNK: usize = 1000;
/// A desktop Chrome: neither Apple's privacy proxy nor a scanner.
const BROWSER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.requests == 0 || args.batch == 0 || args.concurrency == 0 || args.messages == 0 {
        bail!("--requests, --batch, --concurrency and --messages must be at least 1");
    }
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let project = ScratchDir::create(&format!("webhooks-{run_id}"), &[])?;
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
        .map_err(|_| anyhow!("cannot generate a P-256 key pair"))?;
    let der: PublicKeyX509Der<'static> = key
        .public_key()
        .as_der()
        .map_err(|_| anyhow!("cannot encode the P-256 public key"))?;
    let database_url = if args.database == "sqlite" {
        format!("sqlite://{}", project.path().join("bench.db").display())
    } else {
        args.database.clone()
    };
    let env: Vec<(String, String)> = [
        ("HERALD_DATABASE__URL", database_url),
        ("HERALD_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("HERALD_TRACKING__SECRET", format!("bench-{run_id}")),
        (
            "HERALD_WEBHOOKS__SENDGRID__PUBLIC_KEY",
            STANDARD.encode(der.as_ref()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::load_with_env(project.path(), None, &env)?;
    let app = Application::build(settings, project.path(), Clock::System, Role::Api)
        .await
        .context("cannot start Herald")?;
    let addr = app
        .addr()
        .ok_or_else(|| anyhow!("Herald did not bind an HTTP address"))?;
    if !addr.ip().is_loopback() {
        bail!("Herald bound {addr}, not a loopback address");
    }
    let core = Arc::clone(&app.core);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));

    let result = measure(&args, addr, &core, &key, &rng).await;

    shutdown.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "Herald stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "Herald's task failed"),
    }
    drop(core);
    drop(project);
    result
}

/// One message the events are about.
struct Sent {
    id: String,
    contact_id: String,
    to_email: String,
    provider_message_id: String,
}

async fn measure(
    args: &Args,
    addr: SocketAddr,
    core: &Core,
    key: &EcdsaKeyPair,
    rng: &SystemRandom,
) -> anyhow::Result<ExitCode> {
    let sent = setup(core, args.messages).await?;
    let mut pick = StdRng::seed_from_u64(5);
    let webhooks = webhook_jobs(args, core, &sent, key, rng, &mut pick)?;
    let hits: Vec<Job> = (0..args.hits)
        .map(|_| {
            let message = &sent[pick.random_range(0..sent.len())];
            Job::Open {
                path: format!("/t/o/{}", core.tokens.sign(OPEN, &message.id)),
            }
        })
        .collect();
    let base = format!("http://{addr}");
    let ticks = clock_ticks_per_second();

    println!("herald bench webhooks");
    println!("database            {:?}", core.store.backend());
    println!(
        "setup               {} contacts, {} sent messages; {} HTTP/1.1 connections",
        args.messages, args.messages, args.concurrency
    );
    let load = timed(&base, webhooks, args, ticks).await?;
    let events = args.requests * args.batch;
    println!(
        "webhooks            {} requests × {} SendGrid events (40% delivered, 40% open, 20% click)",
        args.requests, args.batch
    );
    load.print("events", events, args.requests, ticks);
    if let Some(e) = &load.first_error {
        eprintln!(
            "error: {} of {} webhook requests failed; first: {e}",
            load.failures, args.requests
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut ok = true;
    if args.hits > 0 {
        let load = timed(&base, hits, args, ticks).await?;
        // Hits are answered before they are stored: wait until the last one is.
        let answered = Instant::now();
        core.hits.flush().await;
        let lag = answered.elapsed();
        println!("open pixel hits     GET /t/o/{{token}}, browser user agent");
        load.print("hits", args.hits, args.hits, ticks);
        println!(
            "  all stored        {:.1} ms after the last answer ({:.0} hits/s answered and stored)",
            lag.as_secs_f64() * 1e3,
            args.hits as f64 / (load.wall + lag).as_secs_f64().max(1e-9)
        );
        if let Some(e) = &load.first_error {
            eprintln!(
                "error: {} of {} hits failed; first: {e}",
                load.failures, args.hits
            );
            ok = false;
        }
    }
    match peak_rss_kib() {
        Some(kib) => println!(
            "peak RSS            {:.1} MiB (whole process, load generator included)",
            kib as f64 / 1024.0
        ),
        None => println!("peak RSS            unknown (no /proc/self/status)"),
    }
    let (ledger_sendgrid, ledger_herald, behavior) = count_stored(core, &sent).await?;
    println!(
        "stored              {ledger_sendgrid} SendGrid + {ledger_herald} pixel ledger rows, \
         {behavior} email_* contact events"
    );
    let hits_stored = if ok { args.hits } else { 0 };
    if ok
        && (ledger_sendgrid != events
            || ledger_herald != hits_stored
            || behavior != events + hits_stored)
    {
        eprintln!(
            "error: expected {events} SendGrid and {hits_stored} pixel rows and {} events",
            events + hits_stored
        );
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Creates `n` contacts and one `sent` message each, as a real send would have left them.
async fn setup(core: &Core, n: usize) -> anyhow::Result<Vec<Sent>> {
    let mut sent = Vec::with_capacity(n);
    for start in (0..n).step_by(SETUP_CHUNK) {
        let range = start..(start + SETUP_CHUNK).min(n);
        let contacts = range
            .clone()
            .map(|i| ContactInput {
                id: format!("bench-contact-{i}"),
                email: Some(format!("reader{i}@bench.example.com")),
                attributes: json!({ "first_name": format!("Reader {i}") })
                    .as_object()
                    .cloned(),
                subscribed: Some(true),
            })
            .collect();
        core.upsert_contacts(contacts)
            .await
            .context("cannot create the contacts")?;
        let sent_at = core.clock.now() - TimeDelta::hours(1);
        let mut tx = core.store.write().await?;
        for i in range {
            let provider_message_id = format!("bench{i:06}_{}", uuid::Uuid::now_v7().simple());
            let row = Message {
                id: uuid::Uuid::now_v7().to_string(),
                journey_id: uuid::Uuid::now_v7().to_string(),
                step: "send_welcome".to_owned(),
                iteration: 0,
                contact_id: format!("bench-contact-{i}"),
                workflow: "welcome".to_owned(),
                template: "welcome".to_owned(),
                category: "marketing".to_owned(),
                to_email: format!("reader{i}@bench.example.com"),
                subject: Some("Welcome aboard".to_owned()),
                status: message_status::SENT.to_owned(),
                transport: Some("sendgrid".to_owned()),
                provider_message_id: Some(provider_message_id.clone()),
                detail: None,
                attempts: 1,
                created_at: sent_at,
                updated_at: sent_at,
                sent_at: Some(sent_at),
            };
            let stored = tx.ensure_message(&row).await?;
            sent.push(Sent {
                id: stored.id,
                contact_id: stored.contact_id,
                to_email: stored.to_email,
                provider_message_id,
            });
        }
        tx.commit().await?;
    }
    Ok(sent)
}

/// One prepared request.
enum Job {
    /// A signed SendGrid batch.
    Webhook {
        body: Bytes,
        timestamp: String,
        signature: String,
    },
    /// An open-pixel hit.
    Open { path: String },
}

/// `args.requests` signed SendGrid bodies of `args.batch` events each.
fn webhook_jobs(
    args: &Args,
    core: &Core,
    sent: &[Sent],
    key: &EcdsaKeyPair,
    rng: &SystemRandom,
    pick: &mut StdRng,
) -> anyhow::Result<Vec<Job>> {
    let now = core.clock.now().timestamp();
    let timestamp = now.to_string();
    let mut jobs = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let events: Vec<Value> = (0..args.batch)
            .map(|_| sendgrid_event(&sent[pick.random_range(0..sent.len())], now, pick))
            .collect();
        // SendGrid ends the body with CRLF, and signs it.
        let mut body = serde_json::to_vec(&events).context("cannot encode a webhook body")?;
        body.extend_from_slice(b"\r\n");
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(&body);
        let signature = key
            .sign(rng, &signed)
            .map_err(|_| anyhow!("cannot sign a webhook body"))?;
        jobs.push(Job::Webhook {
            body: Bytes::from(body),
            timestamp: timestamp.clone(),
            signature: STANDARD.encode(signature.as_ref()),
        });
    }
    Ok(jobs)
}

/// One SendGrid event in the shape the Event Webhook posts, custom args flattened in.
fn sendgrid_event(message: &Sent, timestamp: i64, pick: &mut StdRng) -> Value {
    let mut event = json!({
        "email": message.to_email,
        "timestamp": timestamp,
        "smtp-id": format!("<{}@ismtpd0001p1lon1.sendgrid.net>", message.provider_message_id),
        "sg_event_id": uuid::Uuid::now_v7().simple().to_string(),
        "sg_message_id": format!(
            "{}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
            message.provider_message_id
        ),
        "category": ["welcome"],
        HERALD_MESSAGE_ID_KEY: message.id,
    });
    let extra = match pick.random_range(0..100) {
        0..40 => json!({
            "event": "delivered",
            "response": "250 2.0.0 OK  1700000000 a1si123456qkb.7 - gsmtp",
            "ip": "203.0.113.7",
            "tls": 1,
        }),
        40..80 => json!({
            "event": "open",
            "sg_machine_open": false,
            "useragent": BROWSER_UA,
            "ip": "198.51.100.23",
        }),
        _ => json!({
            "event": "click",
            "url": "https://shop.example.com/welcome?utm_source=herald",
            "url_offset": { "index": 0, "type": "html" },
            "useragent": BROWSER_UA,
            "ip": "198.51.100.23",
        }),
    };
    if let (Value::Object(e), Value::Object(x)) = (&mut event, extra) {
        e.extend(x);
    }
    event
}

/// What one timed phase measured.
struct Load {
    wall: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    failures: usize,
    first_error: Option<String>,
    /// Whole process, user + system, during the phase.
    process_cpu: Duration,
    /// The load generator thread's share of `process_cpu`.
    client_cpu: Duration,
    /// `process_cpu` by thread name (the load generator's thread included).
    by_thread: Vec<(String, Duration)>,
}

impl Load {
    fn print(&self, unit: &str, items: usize, requests: usize, ticks: u64) {
        let secs = self.wall.as_secs_f64().max(1e-9);
        let herald_cpu = self.process_cpu.saturating_sub(self.client_cpu);
        let ms = |q: f64| percentile(&self.latencies, q).as_secs_f64() * 1e3;
        println!("  {unit:<18}{items}");
        println!("  seconds           {secs:.3}");
        println!("  {:<18}{:.0}", format!("{unit}/s"), items as f64 / secs);
        println!("  requests/s        {:.0}", requests as f64 / secs);
        println!(
            "  latency           p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(0.50),
            ms(0.99),
            ms(1.0)
        );
        println!(
            "  CPU µs/{:<11}{:.1} (Herald; process {:.1} minus load generator {:.1}; tick {} ms)",
            unit.trim_end_matches('s'),
            herald_cpu.as_secs_f64() * 1e6 / items as f64,
            self.process_cpu.as_secs_f64() * 1e6 / items as f64,
            self.client_cpu.as_secs_f64() * 1e6 / items as f64,
            1000 / ticks.max(1)
        );
        println!(
            "  Herald CPU        {:.2} cores on average",
            herald_cpu.as_secs_f64() / secs
        );
        let label = format!("by thread µs/{}", unit.trim_end_matches('s'));
        println!("  {label:<17} {}", herald_threads(&self.by_thread, items));
    }
}

/// The `q` quantile (nearest rank) of sorted durations.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `jobs` against Herald from a thread and runtime of their own, and measures.
async fn timed(base: &str, jobs: Vec<Job>, args: &Args, ticks: u64) -> anyhow::Result<Load> {
    let (report, receiver) = tokio::sync::oneshot::channel();
    let (base, concurrency, batch) = (base.to_owned(), args.concurrency, args.batch);
    let threads_start = thread_ticks();
    let cpu_start = cpu_time(Path::new("/proc/self/stat"), ticks)?;
    std::thread::Builder::new()
        .name(LOAD_THREAD.to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the load generator's runtime")
                .and_then(|rt| rt.block_on(drive(base, jobs, concurrency, batch)))
                .and_then(|load| Ok((load, cpu_time(Path::new("/proc/thread-self/stat"), ticks)?)));
            let _ = report.send(result);
        })
        .context("cannot start the load generator thread")?;
    let (mut load, client_cpu) = receiver
        .await
        .map_err(|_| anyhow!("the load generator thread stopped without a report"))??;
    load.process_cpu = cpu_time(Path::new("/proc/self/stat"), ticks)?.saturating_sub(cpu_start);
    load.client_cpu = client_cpu;
    load.by_thread = by_thread(&threads_start, &thread_ticks(), ticks);
    Ok(load)
}

async fn drive(
    base: String,
    jobs: Vec<Job>,
    concurrency: usize,
    batch: usize,
) -> anyhow::Result<Load> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .build()
        .context("cannot build the HTTP client")?;
    let n = jobs.len();
    let jobs = Arc::new(jobs);
    let base: Arc<str> = base.into();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (http, jobs, base, next) = (
            http.clone(),
            Arc::clone(&jobs),
            Arc::clone(&base),
            Arc::clone(&next),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            let mut first_error = None;
            while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                let sent = Instant::now();
                let outcome = send(&http, &base, job, batch).await;
                latencies.push(sent.elapsed());
                if let Err(e) = outcome {
                    failures += 1;
                    first_error.get_or_insert(e);
                }
            }
            (latencies, failures, first_error)
        });
    }
    let mut load = Load {
        wall: Duration::ZERO,
        latencies: Vec::with_capacity(n),
        failures: 0,
        first_error: None,
        process_cpu: Duration::ZERO,
        client_cpu: Duration::ZERO,
        by_thread: Vec::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (latencies, failures, first_error) = done.context("a load generator task panicked")?;
        load.latencies.extend(latencies);
        load.failures += failures;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.wall = started.elapsed();
    load.latencies.sort_unstable();
    Ok(load)
}

/// Sends one job and checks Herald's answer: a webhook must store all its events, a hit must
/// get the pixel.
async fn send(http: &reqwest::Client, base: &str, job: &Job, batch: usize) -> Result<(), String> {
    match job {
        Job::Webhook {
            body,
            timestamp,
            signature,
        } => {
            let response = http
                .post(format!("{base}/webhooks/sendgrid"))
                .header("content-type", "application/json")
                .header("user-agent", "SendGrid Event API")
                .header("x-twilio-email-event-webhook-signature", signature)
                .header("x-twilio-email-event-webhook-timestamp", timestamp)
                .body(body.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {text}"));
            }
            let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            if answer["stored"].as_u64() != Some(batch as u64) {
                return Err(format!("expected {batch} events stored, got {text}"));
            }
            Ok(())
        }
        Job::Open { path } => {
            let response = http
                .get(format!("{base}{path}"))
                .header("user-agent", BROWSER_UA)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let gif = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes() == b"image/gif");
            // Read the body so the connection goes back to the pool.
            response.bytes().await.map_err(|e| e.to_string())?;
            if status.is_success() && gif {
                Ok(())
            } else {
                Err(format!("{status} (gif: {gif})"))
            }
        }
    }
}

/// Ledger rows by source and the contacts' `email_*` events, counted through the store.
async fn count_stored(core: &Core, sent: &[Sent]) -> anyhow::Result<(usize, usize, usize)> {
    let (mut sendgrid, mut herald, mut behavior) = (0, 0, 0);
    let mut tx = core.store.read().await?;
    for message in sent {
        for row in tx.message_deliveries(&message.id).await? {
            match row.provider.as_str() {
                "sendgrid" => sendgrid += 1,
                "herald" => herald += 1,
                _ => {}
            }
        }
        for name in ["email_delivered", "email_opened", "email_clicked"] {
            behavior += tx
                .contact_events(&message.contact_id, name, None)
                .await?
                .len();
        }
    }
    tx.commit().await?;
    Ok((sendgrid, herald, behavior))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&d[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn events_carry_the_message_id_where_sendgrid_puts_custom_args() {
        let message = Sent {
            id: "m-1".to_owned(),
            contact_id: "c-1".to_owned(),
            to_email: "a@example.com".to_owned(),
            provider_message_id: "p-1".to_owned(),
        };
        let mut pick = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let event = sendgrid_event(&message, 1_700_000_000, &mut pick);
            assert_eq!(event[HERALD_MESSAGE_ID_KEY], "m-1");
            assert!(
                ["delivered", "open", "click"].contains(&event["event"].as_str().unwrap_or(""))
            );
        }
    }
}
