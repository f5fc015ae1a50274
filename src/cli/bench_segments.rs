//! `herald bench segments`: the cost of keeping segments current. It imports a synthetic store
//! (contacts, and events over two years: page and product views, carts, orders, opens and
//! clicks, a third of the opens from privacy proxies), with the ten example segments, then
//! measures (1) the full recompute of every profile and membership, (2) the incremental cost
//! of one event (its whole ingest transaction, p50 and p99, overall and per event name), (3)
//! the sweep of each simulated hour on a manual clock, (4) the recompute after a segment is
//! edited (memberships on the stored profiles), and reports the peak RSS.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::types::Json;

use super::bench::{ScratchDir, peak_rss_kib};
use crate::app::{Application, Role};
use crate::clock::{Clock, ManualClock};
use crate::config::Settings;
use crate::core::Core;
use crate::ingest::EventInput;
use crate::store::{Contact, Event};

/// The example project's segments, so the benchmark measures what users run.
const SEGMENTS: &[(&str, &str)] = &[
    (
        "segments/big-spenders.yaml",
        include_str!("../../segments/big-spenders.yaml"),
    ),
    (
        "segments/cart-abandoners.yaml",
        include_str!("../../segments/cart-abandoners.yaml"),
    ),
    (
        "segments/dormant.yaml",
        include_str!("../../segments/dormant.yaml"),
    ),
    (
        "segments/engaged.yaml",
        include_str!("../../segments/engaged.yaml"),
    ),
    (
        "segments/first-time-buyers.yaml",
        include_str!("../../segments/first-time-buyers.yaml"),
    ),
    (
        "segments/high-value.yaml",
        include_str!("../../segments/high-value.yaml"),
    ),
    (
        "segments/lapsed-customers.yaml",
        include_str!("../../segments/lapsed-customers.yaml"),
    ),
    (
        "segments/repeat-customers.yaml",
        include_str!("../../segments/repeat-customers.yaml"),
    ),
    ("segments/vip.yaml", include_str!("../../segments/vip.yaml")),
    (
        "segments/window-shoppers.yaml",
        include_str!("../../segments/window-shoppers.yaml"),
    ),
    (
        "templates/hello.hbs",
        "---\nsubject: Hello\n---\n<p>Hi</p>\n",
    ),
];

/// Event names with their share of the stream.
const MIX: &[(&str, f64)] = &[
    ("page_viewed", 0.30),
    ("product_viewed", 0.25),
    ("cart_updated", 0.10),
    ("order_placed", 0.06),
    ("email_opened", 0.22),
    ("email_clicked", 0.07),
];
const IMPORT_BATCH: usize = 20_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    contacts: usize,
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Single-event ingests timed for the incremental cost (at least one).
    #[arg(long, default_value_t = 2000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    samples: usize,
    /// Simulated hours swept after the recompute.
    #[arg(long, default_value_t = 24)]
    hours: i64,
    /// `sqlite` (a file in a temporary directory) or a PostgreSQL URL of an empty database.
    #[arg(long, default_value = "sqlite")]
    database: String,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.contacts == 0 {
        anyhow::bail!("--contacts must be at least 1");
    }
    let dir = ScratchDir::create(
        &format!("segments-{}", uuid::Uuid::now_v7().simple()),
        SEGMENTS,
    )?;
    let url = if args.database == "sqlite" {
        format!("sqlite://{}", dir.path().join("bench.db").display())
    } else {
        args.database.clone()
    };
    let env = vec![
        ("HERALD_DATABASE__URL".to_owned(), url),
        ("HERALD_TRACKING__SECRET".to_owned(), "bench".to_owned()),
        // Out of the simulated hours: each phase measures its own work, not a refresh.
        ("HERALD_PROFILE__REFRESH".to_owned(), "0 0 1 1 *".to_owned()),
    ];
    let settings = Settings::load_with_env(dir.path(), None, &env)?;
    let end = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .ok_or_else(|| anyhow::anyhow!("valid end date"))?;
    let start = end - TimeDelta::days(730);
    let clock = ManualClock::new(end);
    let core = build(settings, dir.path(), &clock).await?;
    println!("backend: {:?}", core.store.backend());

    let mut rng = StdRng::seed_from_u64(11);
    let started = Instant::now();
    import(&core, &args, start, end, &mut rng).await?;
    let took = started.elapsed();
    println!(
        "import: {} contacts, {} events in {:.1} s ({:.0} rows/s)",
        args.contacts,
        args.events,
        took.as_secs_f64(),
        (args.contacts + args.events) as f64 / took.as_secs_f64()
    );

    // Application::build queued the recompute (the segments are new to this database).
    let what = "full recompute (profiles with RFM scores, 10 segments)";
    time_recompute(&core, what, args.contacts).await?;
    for (name, size) in core.store.segment_sizes().await? {
        println!("  {name}: {size}");
    }

    // On a runtime worker, where `serve` runs a request's ingest: the command's own future is
    // polled on the main thread, which a worker has to wake for every database response.
    let timed = tokio::spawn(time_events(
        Arc::clone(&core),
        args.samples,
        args.contacts,
        rng,
    ))
    .await??;
    let (p50, p99) = percentiles(timed.iter().map(|(_, d)| *d).collect());
    println!(
        "incremental, one event (whole ingest transaction, {} samples): p50 {p50:.3} ms, p99 {p99:.3} ms",
        timed.len(),
    );
    let mut by_name: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (name, took) in &timed {
        by_name.entry(name).or_default().push(*took);
    }
    for (name, latencies) in by_name {
        let n = latencies.len();
        let (p50, p99) = percentiles(latencies);
        println!("  {name}: {n} samples, p50 {p50:.3} ms, p99 {p99:.3} ms");
    }

    let mut hours = Vec::new();
    let mut visited = 0;
    for _ in 0..args.hours {
        clock.advance(TimeDelta::hours(1));
        let started = Instant::now();
        visited += crate::segment::membership::sweep(&core).await?;
        hours.push(started.elapsed());
    }
    let total: Duration = hours.iter().sum();
    println!(
        "sweep: {} simulated hours, {visited} contacts visited, mean {:.1} ms/hour, max {:.1} ms",
        args.hours,
        ms(total) / hours.len().max(1) as f64,
        hours.iter().max().copied().map(ms).unwrap_or_default()
    );
    core.shutdown().await;

    // A segment edited, as a user would: the restart recomputes every contact's memberships.
    let edited = dir.path().join("segments/window-shoppers.yaml");
    let spec = std::fs::read_to_string(&edited)?;
    if !spec.contains("gte: 3 }") {
        anyhow::bail!("{}: no `gte: 3 }}` to edit", edited.display());
    }
    std::fs::write(&edited, spec.replace("gte: 3 }", "gte: 4 }"))?;
    let settings = Settings::load_with_env(dir.path(), None, &env)?;
    let core = build(settings, dir.path(), &clock).await?;
    let what = "recompute after a segment edit (memberships on the stored profiles)";
    time_recompute(&core, what, args.contacts).await?;
    println!(
        "  window-shoppers (3 product views -> 4): {}",
        core.store
            .segment_sizes()
            .await?
            .into_iter()
            .find(|(name, _)| name == "window-shoppers")
            .map_or(0, |(_, size)| size)
    );
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    core.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Herald on the bench's project and clock, as `serve` builds it.
async fn build(settings: Settings, dir: &Path, clock: &ManualClock) -> anyhow::Result<Arc<Core>> {
    let app = Application::build(settings, dir, Clock::Manual(clock.clone()), Role::Worker).await?;
    Ok(app.core)
}

/// Runs the due jobs (the recompute a start queued) and prints how long they took.
async fn time_recompute(core: &Core, what: &str, contacts: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::scheduler::run_due(core).await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "{what}: {took:.1} s ({:.0} contacts/s)",
        contacts as f64 / took
    );
    Ok(())
}

/// Times `samples` single-event ingests for random contacts, one after another.
async fn time_events(
    core: Arc<Core>,
    samples: usize,
    contacts: usize,
    mut rng: StdRng,
) -> anyhow::Result<Vec<(&'static str, Duration)>> {
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let contact = rng.random_range(0..contacts);
        let (name, properties) = synthetic_event(&mut rng);
        let input = EventInput {
            id: Some(format!("sample-{i}")),
            contact_id: contact_id(contact),
            name: name.to_owned(),
            properties: properties.as_object().cloned(),
            timestamp: None,
        };
        let started = Instant::now();
        core.ingest_events(vec![input]).await?;
        latencies.push((name, started.elapsed()));
    }
    Ok(latencies)
}

/// The median and 99th percentile of `latencies`, in milliseconds.
fn percentiles(mut latencies: Vec<Duration>) -> (f64, f64) {
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies.get(i).copied().map(ms).unwrap_or_default()
    };
    (pct(0.50), pct(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn contact_id(i: usize) -> String {
    format!("c{i:08}")
}

fn synthetic_event(rng: &mut StdRng) -> (&'static str, Value) {
    let mut roll: f64 = rng.random();
    let name = MIX
        .iter()
        .find(|(_, share)| {
            roll -= share;
            roll < 0.0
        })
        .map_or("page_viewed", |(n, _)| *n);
    let properties = match name {
        "order_placed" => json!({ "total": rng.random_range(10..400) }),
        "cart_updated" => {
            json!({ "cart_id": format!("k{}", rng.random_range(0..1_000_000)), "item_count": rng.random_range(0..5) })
        }
        "email_opened" => json!({ "machine": rng.random_bool(0.33) }),
        "email_clicked" => {
            json!({ "machine": rng.random_bool(0.05), "url": "https://shop.example/" })
        }
        _ => json!({ "path": "/products/1" }),
    };
    (name, properties)
}

/// Imports contacts and events straight into the store, in large transactions.
async fn import(
    core: &Core,
    args: &Args,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let span = (end - start).num_seconds();
    let countries = ["US", "CA", "GB", "DE", "FR"];
    let mut contacts = Vec::with_capacity(IMPORT_BATCH);
    for i in 0..args.contacts {
        let created = start + TimeDelta::seconds(rng.random_range(0..span));
        contacts.push(Contact {
            id: contact_id(i),
            email: format!("u{i}@example.com"),
            attributes: Json(json!({ "country": countries[i % countries.len()] })),
            subscribed: true,
            created_at: created,
            updated_at: created,
            profile: Json(json!({})),
        });
        if contacts.len() == IMPORT_BATCH || i + 1 == args.contacts {
            let mut tx = core.store.write().await?;
            tx.import_contacts(&contacts).await?;
            tx.commit().await?;
            contacts.clear();
        }
    }
    let mut events = Vec::with_capacity(IMPORT_BATCH);
    for i in 0..args.events {
        // Skewed activity: a few contacts produce much of the stream, as in real shops.
        let skew: f64 = rng.random::<f64>().powi(2);
        let contact = ((skew * args.contacts as f64) as usize).min(args.contacts - 1);
        let at = start + TimeDelta::seconds(rng.random_range(0..span));
        let (name, properties) = synthetic_event(rng);
        events.push(Event {
            id: format!("e{i}"),
            contact_id: contact_id(contact),
            name: name.to_owned(),
            properties: Json(properties),
            occurred_at: at,
            received_at: at,
        });
        if events.len() == IMPORT_BATCH || i + 1 == args.events {
            let mut tx = core.store.write().await?;
            tx.import_events(&events).await?;
            tx.commit().await?;
            events.clear();
        }
    }
    Ok(())
}
