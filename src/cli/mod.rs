//! Command-line interface: one file per command; `anyhow` context lives here, at the edge.

mod bench;
mod bench_cluster;
mod bench_dates;
mod bench_feedback;
mod bench_segments;
mod bench_transport;
mod cron;
mod migrate;
mod poster;
mod preview;
mod segments;
mod serve;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted behavioral email automation"
)]
pub struct Cli {
    /// Project directory (workflows/, templates/, herald.toml).
    #[arg(long, global = true, default_value = ".")]
    dir: PathBuf,
    /// Configuration file (default: DIR/herald.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP API and the scheduler workers.
    Serve(serve::Args),
    /// Apply database migrations.
    Migrate,
    /// Print the next fire instants (UTC) of a cron expression.
    Cron(cron::Args),
    /// Check workflows, segments and templates; exit 1 on any problem.
    Validate,
    /// Show each segment with its current number of members.
    Segments,
    /// Render a template with sample data (or the given contact/event JSON).
    Preview(preview::Args),
    /// Measure end-to-end throughput.
    Bench(bench::Args),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(&cli.dir, cli.config.as_deref(), args).await,
            Command::Cron(args) => cron::run(args),
            Command::Migrate => migrate::run(&cli.dir, cli.config.as_deref()).await,
            Command::Validate => validate::run(&cli.dir, cli.config.as_deref()),
            Command::Segments => segments::run(&cli.dir, cli.config.as_deref()).await,
            Command::Preview(args) => preview::run(&cli.dir, args),
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by `: `. Most of Herald's errors already spell out their
/// cause in their own message, so a cause whose text is already there is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::report;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("database: {0}")]
        Store(#[from] std::io::Error),
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e: anyhow::Result<()> = Err(Outer::from(io)).context("cannot start Herald");
        let e = e.unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "cannot start Herald: database: disk on fire: disk on fire"
        );
        assert_eq!(report(&e), "cannot start Herald: database: disk on fire");
        // A cause the message does not mention is kept.
        let bare: anyhow::Result<()> =
            Err(std::io::Error::other("refused")).context("cannot connect");
        assert_eq!(report(&bare.unwrap_err()), "cannot connect: refused");
    }
}
