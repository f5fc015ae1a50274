//! `herald preview TEMPLATE [--contact FILE.json] [--event FILE.json]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::template::{Mode, TemplateRegistry};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Template name (file stem under templates/).
    template: String,
    /// Contact JSON (attributes at the top level, plus `id` and `email`).
    #[arg(long)]
    contact: Option<PathBuf>,
    /// Event JSON (`name`, `properties`, `timestamp`).
    #[arg(long)]
    event: Option<PathBuf>,
    /// Print only the HTML part.
    #[arg(long)]
    html: bool,
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub fn run(dir: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let registry = TemplateRegistry::load(&dir.join("templates")).map_err(|errors| {
        anyhow::anyhow!(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    if !registry.contains(&args.template) {
        anyhow::bail!(
            "no template named `{}` (have: {})",
            args.template,
            registry.names().join(", ")
        );
    }
    let mut context = registry.sample_context(&args.template);
    if let Some(path) = &args.contact {
        context["contact"] = read_json(path)?;
    }
    if let Some(path) = &args.event {
        context["event"] = read_json(path)?;
    }
    let rendered = registry.render(&args.template, &context, None, Mode::Strict)?;
    if args.html {
        println!("{}", rendered.html);
    } else {
        println!("Subject: {}", rendered.subject);
        if let Some(from) = &rendered.from {
            println!("From: {from}");
        }
        println!(
            "\n--- text ---\n{}\n--- html ---\n{}",
            rendered.text, rendered.html
        );
    }
    Ok(ExitCode::SUCCESS)
}
