//! `herald bench transport`: messages per second through one transport at a given
//! concurrency — the REST path against an in-process stand-in answering like Postmark, or SMTP
//! against a relay you run (Postfix's `smtp-sink`). Messages are built before the clock starts;
//! what is measured is the transport path a worker runs: routing, limits, the request or SMTP
//! transaction (and DKIM signing, when a key is given).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{TimeZone, Utc};
use clap::ValueEnum;

use crate::clock::Clock;
use crate::config::Secret;
use crate::message::dkim::DkimSigner;
use crate::message::{BuiltMessage, OutgoingEmail, build};
use crate::transport::Transport;
use crate::transport::http::HttpSettings;
use crate::transport::limit::Limiter;
use crate::transport::postmark::{Postmark, PostmarkConfig};
use crate::transport::route::{RouteEntry, Router};
use crate::transport::smtp::{Smtp, SmtpConfig};

/// Which transport path to measure.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    /// The REST path (Postmark's API shape) against an in-process HTTP stand-in.
    Postmark,
    /// SMTP against the relay given with `--url`.
    Smtp,
}

/// Options of `herald bench transport`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Transport path to measure.
    #[arg(long, value_enum, default_value_t = Kind::Postmark)]
    kind: Kind,
    /// Messages to send.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Sends in flight at once: the number of sending tasks, the transport's `concurrency`
    /// (REST) or `pool` (SMTP).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Transport `rate` limit in messages per second (default: none).
    #[arg(long)]
    rate: Option<f64>,
    /// SMTP relay for `--kind smtp`, e.g. `smtp://127.0.0.1:2525?tls=none` with
    /// `smtp-sink -u nobody 127.0.0.1:2525 1000` running.
    #[arg(long)]
    url: Option<String>,
    /// Delay the REST stand-in adds to every answer, in milliseconds (a remote API's latency).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// DKIM key to sign SMTP mail with (RSA PKCS#1 PEM or base64 Ed25519 seed).
    #[arg(long)]
    dkim_key: Option<PathBuf>,
}

/// Runs the benchmark and prints one result line.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.messages == 0 || args.concurrency == 0 {
        bail!("--messages and --concurrency must be at least 1");
    }
    let clock = Clock::System;
    let (transport, limiter, stand_in) = match args.kind {
        Kind::Postmark => {
            let (base_url, server) = stand_in(Duration::from_millis(args.latency_ms)).await?;
            let config = PostmarkConfig {
                token: Secret::new("bench"),
                message_stream: None,
                http: HttpSettings {
                    base_url,
                    timeout: Duration::from_secs(30),
                },
            };
            let transport = Postmark::new("bench", config, clock.clone())?;
            (
                Transport::Postmark(transport),
                Limiter::new(args.rate, Some(args.concurrency)),
                Some(server),
            )
        }
        Kind::Smtp => {
            let url = args
                .url
                .clone()
                .context("--kind smtp needs --url (e.g. smtp://127.0.0.1:2525?tls=none)")?;
            let dkim = args
                .dkim_key
                .as_deref()
                .map(|path| DkimSigner::from_file("bench.example", "herald", path).map(Arc::new))
                .transpose()?;
            let config = SmtpConfig {
                url,
                pool: args.concurrency,
                timeout: Duration::from_secs(30),
                hello_name: Some("herald.bench".to_owned()),
                dkim,
            };
            (
                Transport::Smtp(Smtp::new("bench".to_owned(), config)?),
                Limiter::new(args.rate, None),
                None,
            )
        }
    };
    let router = Arc::new(Router::new(
        clock,
        vec![RouteEntry {
            transport,
            limiter,
            fallback: Vec::new(),
        }],
    )?);
    let messages: Arc<Vec<BuiltMessage>> = Arc::new(
        (0..args.messages)
            .map(message)
            .collect::<Result<_, _>>()
            .context("building benchmark messages")?,
    );

    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (router, messages, next, failed) = (
            Arc::clone(&router),
            Arc::clone(&messages),
            Arc::clone(&next),
            Arc::clone(&failed),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while let Some(msg) = messages.get(next.fetch_add(1, Ordering::Relaxed)) {
                let sent_at = Instant::now();
                if let Err(err) = router.send("bench", msg).await
                    && failed.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("first failure: {err}");
                }
                latencies.push(sent_at.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(args.messages);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.context("a sending task panicked")?);
    }
    let elapsed = started.elapsed();
    router.shutdown().await;
    if let Some(server) = stand_in {
        server.abort();
    }

    latencies.sort();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let failures = failed.load(Ordering::Relaxed);
    println!(
        "kind={:?} messages={} concurrency={} rate={} failures={failures} elapsed={:.3}s \
         throughput={:.0} msg/s latency p50={:.2}ms p99={:.2}ms",
        args.kind,
        args.messages,
        args.concurrency,
        args.rate.map_or("none".to_owned(), |r| r.to_string()),
        elapsed.as_secs_f64(),
        args.messages as f64 / elapsed.as_secs_f64(),
        percentile(50).as_secs_f64() * 1000.0,
        percentile(99).as_secs_f64() * 1000.0,
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A marketing-sized message (multipart, `List-Unsubscribe`), distinct per `n`.
fn message(n: usize) -> Result<BuiltMessage, crate::message::MessageError> {
    let date = Utc
        .with_ymd_and_hms(2026, 11, 28, 9, 0, 0)
        .single()
        .unwrap_or_default();
    build(&OutgoingEmail {
        message_id: format!("0190a3c2-7d4e-7b1a-9f3e-{n:012}"),
        from: "Acme Shop <hello@bench.example>".to_owned(),
        to: format!("Customer {n} <customer{n}@customer.example>"),
        subject: format!("Your cart misses you ({n})"),
        html: format!(
            "<h1>Hi customer {n}</h1>{}",
            "<p>Still thinking about it? Your cart is waiting.</p>".repeat(20)
        ),
        text: format!(
            "Hi customer {n}\n{}",
            "Still thinking about it? Your cart is waiting.\n".repeat(20)
        ),
        headers: vec![
            (
                "List-Unsubscribe".to_owned(),
                format!("<https://herald.bench.example/u/{n:064}>"),
            ),
            (
                "List-Unsubscribe-Post".to_owned(),
                "List-Unsubscribe=One-Click".to_owned(),
            ),
        ],
        date,
    })
}

/// An HTTP server on 127.0.0.1 answering `POST /email` as Postmark does, after `latency`.
async fn stand_in(
    latency: Duration,
) -> anyhow::Result<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let counter = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/email",
        axum::routing::post(move |_body: axum::body::Bytes| {
            let counter = Arc::clone(&counter);
            async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                axum::Json(serde_json::json!({
                    "To": "customer@customer.example",
                    "SubmittedAt": "2026-11-28T09:00:00Z",
                    "MessageID": format!("bench-{n}"),
                    "ErrorCode": 0,
                    "Message": "OK",
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the stand-in")?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}"), server))
}
