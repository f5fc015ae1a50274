//! `herald segments`: each segment of the project with its current size.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::app::resolve_db_url;
use crate::config::Settings;
use crate::store::Store;

pub async fn run(dir: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(dir, config)?;
    let transports: Vec<String> = settings.transports.keys().cloned().collect();
    let project = match crate::project::load(dir, &transports) {
        Ok(p) => p,
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let url = resolve_db_url(&settings.database.url, dir);
    let store = Store::connect(&url, 2, Default::default())
        .await
        .with_context(|| format!("cannot open {}", settings.database.url))?;
    store.migrate().await.context("migration failed")?;
    let sizes: HashMap<String, i64> = store.segment_sizes().await?.into_iter().collect();
    store.close().await;
    let width = project
        .segments
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    for s in project.segments.iter() {
        let size = sizes.get(&s.name).copied().unwrap_or(0);
        println!(
            "{:<width$}  {size:>9}  {}",
            s.name,
            s.description.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
