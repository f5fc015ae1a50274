//! `herald serve`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app::{Application, Role};
use crate::clock::Clock;
use crate::config::Settings;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// What this process runs: the HTTP API, the workers, or both.
    #[arg(long, value_enum, default_value_t = RoleArg::All)]
    role: RoleArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RoleArg {
    All,
    Api,
    Worker,
}

pub async fn run(dir: &Path, config: Option<&Path>, args: Args) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(dir, config)?;
    let role = match args.role {
        RoleArg::All => Role::All,
        RoleArg::Api => Role::Api,
        RoleArg::Worker => Role::Worker,
    };
    let app = Application::build(settings, dir, Clock::System, role)
        .await
        .context("cannot start Herald")?;
    if let Some(addr) = app.addr() {
        tracing::info!(%addr, workflows = app.core.workflows.len(), "Herald is listening");
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: finishing in-flight work");
        stop.cancel();
    });
    app.run(shutdown).await.context("HTTP server failed")?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
