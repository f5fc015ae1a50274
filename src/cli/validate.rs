//! `herald validate`: every workflow, segment and template, with file:line:column errors.

use std::path::Path;
use std::process::ExitCode;

use crate::clock::Clock;
use crate::config::Settings;
use crate::workflow::timing::{TimeTrigger, next_cron};

pub fn run(dir: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(dir, config)?;
    // Builds (without connecting) every transport, so a bad DKIM key or provider setting fails
    // here rather than at `serve`.
    crate::core::build_transports(&settings, dir, &crate::clock::Clock::System, None)?;
    let transports: Vec<String> = settings.transports.keys().cloned().collect();
    match crate::project::load(dir, &transports) {
        Ok(project) => {
            println!(
                "ok: {} workflow(s), {} segment(s), {} template(s) valid",
                project.workflows.len(),
                project.segments.len(),
                project.templates.names().len()
            );
            print_schedules(&project, settings.default_timezone());
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

/// Shows when each schedule workflow fires next, so a cron typo that still parses is visible.
fn print_schedules(project: &crate::project::Project, default_zone: chrono_tz::Tz) {
    let now = Clock::System.now();
    for wf in project.workflows.iter() {
        let next = match TimeTrigger::of(&wf.def.trigger, default_zone) {
            Some(TimeTrigger::ZoneSchedule { cron, zone, .. }) => {
                next_cron(&cron, zone, now).map(|t| (t, zone.to_string()))
            }
            Some(TimeTrigger::ContactSchedule { cron, .. }) => next_cron(&cron, default_zone, now)
                .map(|t| (t, format!("{default_zone}; each contact in their own zone"))),
            _ => continue,
        };
        match next {
            Some((at, zone)) => {
                println!("  {}: next fire {} ({zone})", wf.def.name, at.to_rfc3339())
            }
            None => println!("  {}: the schedule never fires", wf.def.name),
        }
    }
}
