//! `herald bench dates`: the cost of date triggers. It builds a throwaway project with a
//! birthday workflow, upserts N contacts whose birthdays are spread over the year (several time
//! zones), and measures (1) scheduling: upserting every contact, which computes and indexes each
//! next fire instant, and (2) firing: one day's sweep on a manual clock, whose cost must follow
//! the contacts due that day, not N.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::bench::ScratchDir;
use crate::app::{Application, Role};
use crate::clock::{Clock, ManualClock};
use crate::config::Settings;
use crate::ingest::ContactInput;

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
];
const BATCH: usize = 1000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Contacts to create.
    #[arg(long, default_value_t = 100_000)]
    contacts: usize,
    /// `sqlite` (a file in a temporary directory) or a PostgreSQL URL of an empty database.
    #[arg(long, default_value = "sqlite")]
    database: String,
}

fn utc(y: i32, m: u32, d: u32) -> anyhow::Result<DateTime<Utc>> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
        .single()
        .context("valid date")
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = ScratchDir::create(
        &format!("dates-{}", uuid::Uuid::now_v7().simple()),
        &[
            (
                "workflows/birthday.yaml",
                "trigger:\n  date:\n    attribute: birthday\n    at: \"09:00\"\nsteps:\n  - send: hello\n",
            ),
            (
                "templates/hello.hbs",
                "---\nsubject: Happy birthday\n---\n<p>Hi</p>\n",
            ),
        ],
    )?;
    measure(&args, dir.path()).await
}

async fn measure(args: &Args, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let url = if args.database == "sqlite" {
        format!("sqlite://{}", dir.join("bench.db").display())
    } else {
        args.database.clone()
    };
    let env = vec![
        ("HERALD_DATABASE__URL".to_owned(), url),
        ("HERALD_TRACKING__SECRET".to_owned(), "bench".to_owned()),
    ];
    let settings = Settings::load_with_env(dir, None, &env)?;
    let clock = ManualClock::new(utc(2026, 1, 1)?);
    let app = Application::build(settings, dir, Clock::Manual(clock.clone()), Role::Worker).await?;
    let core = app.core;
    crate::scheduler::run_due(&core).await?;

    let mut rng = StdRng::seed_from_u64(7);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..args.contacts {
        let day = rng.random_range(0..365);
        let date =
            utc(1980, 1, 1)? + TimeDelta::days(i64::from(rng.random_range(0..40)) * 365 + day);
        let zone = ZONES[rng.random_range(0..ZONES.len())];
        let attributes = serde_json::json!({ "birthday": date.format("%Y-%m-%d").to_string(), "timezone": zone });
        batch.push(ContactInput {
            id: format!("c-{i:07}"),
            email: Some(format!("u{i}@example.com")),
            attributes: attributes.as_object().cloned(),
            subscribed: Some(true),
        });
        if batch.len() == BATCH || i + 1 == args.contacts {
            core.upsert_contacts(std::mem::take(&mut batch)).await?;
        }
    }
    let scheduling = started.elapsed();
    println!("backend: {:?}", core.store.backend());
    println!("contacts: {}", args.contacts);
    println!(
        "scheduling: {:.2} s ({:.0} contacts/s, upsert + next-fire index)",
        scheduling.as_secs_f64(),
        args.contacts as f64 / scheduling.as_secs_f64()
    );
    for (m, d) in [(3, 1), (7, 15), (11, 30)] {
        let day = utc(2026, m, d)?;
        clock.set(day);
        crate::scheduler::tick(&core).await?; // anything due before the day starts
        clock.set(day + TimeDelta::days(1));
        let started = Instant::now();
        let fired = crate::scheduler::tick(&core).await?;
        let took = started.elapsed();
        println!(
            "fire {}: {fired} contacts due, {:.1} ms ({:.0} µs per contact)",
            day.format("%Y-%m-%d"),
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e6 / fired.max(1) as f64
        );
    }
    let started = Instant::now();
    let fired = crate::scheduler::tick(&core).await?;
    println!(
        "idle sweep (nothing due): {fired} fired, {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    core.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
