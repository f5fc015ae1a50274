//! `herald cron EXPR [--timezone ZONE] [--from RFC3339] [--count N]`: the next fire instants of a
//! schedule, in UTC, so a schedule can be checked before it is deployed.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::clock::Clock;
use crate::workflow::timing::{next_cron, parse_cron};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// 5-field cron expression, e.g. "0 9 * * 1" (Monday 09:00).
    expr: String,
    /// IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Start after this instant (default: now).
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// How many fire instants to print.
    #[arg(long, default_value_t = 5)]
    count: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cron = parse_cron(&args.expr).map_err(anyhow::Error::msg)?;
    let zone: Tz = args
        .timezone
        .parse()
        .map_err(|_| anyhow::anyhow!("`{}` is not an IANA time zone name", args.timezone))?;
    let mut at = args.from.unwrap_or_else(|| Clock::System.now());
    for _ in 0..args.count {
        let Some(next) = next_cron(&cron, zone, at) else {
            break;
        };
        println!(
            "{}",
            next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        at = next;
    }
    Ok(ExitCode::SUCCESS)
}
