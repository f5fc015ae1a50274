//! `herald migrate`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::app::resolve_db_url;
use crate::config::Settings;
use crate::store::Store;

pub async fn run(dir: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(dir, config)?;
    let url = resolve_db_url(&settings.database.url, dir);
    let store = Store::connect(&url, 2, Default::default())
        .await
        .with_context(|| format!("cannot open {}", settings.database.url))?;
    store.migrate().await.context("migration failed")?;
    store.close().await;
    println!("database is up to date");
    Ok(ExitCode::SUCCESS)
}
