//! `herald validate`: every workflow and template, with file:line:column errors.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Settings;

pub fn run(dir: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(dir, config)?;
    // Builds (without connecting) every transport, so a bad DKIM key or provider setting fails
    // here rather than at `serve`.
    crate::core::build_transports(&settings, dir, &crate::clock::Clock::System)?;
    let transports: Vec<String> = settings.transports.keys().cloned().collect();
    match crate::project::load(dir, &transports) {
        Ok(project) => {
            println!(
                "ok: {} workflow(s), {} template(s) valid",
                project.workflows.len(),
                project.templates.names().len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            println!("{} problem(s) found", problems.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
