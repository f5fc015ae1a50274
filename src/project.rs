//! A Herald project directory: `workflows/`, `segments/` and `templates/`. Loading checks
//! everything `herald validate` checks — YAML, references, and a strict render of every
//! template — so `serve` refuses to start on the same errors `validate` reports.

use std::path::Path;

use std::collections::BTreeSet;

use crate::diagnostic::Diagnostic;
use crate::segment::Segments;
use crate::template::{TemplateError, TemplateRegistry};
use crate::workflow::Workflows;
use crate::workflow::parse::{Known, load_dir, load_segments};

pub struct Project {
    pub workflows: Workflows,
    pub segments: Segments,
    pub templates: TemplateRegistry,
}

fn template_diagnostic(e: TemplateError) -> Diagnostic {
    let source = std::fs::read_to_string(&e.file).unwrap_or_default();
    let d = Diagnostic::new(
        e.file,
        e.line.unwrap_or(0),
        e.column.unwrap_or(0),
        e.message,
    );
    if source.is_empty() {
        d
    } else {
        d.with_source(&source)
    }
}

/// Loads and checks the project in `dir`. `transports` names the configured transports, which
/// `send` steps may reference.
pub fn load(dir: &Path, transports: &[String]) -> Result<Project, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let templates = match TemplateRegistry::load(&dir.join("templates")) {
        Ok(t) => {
            problems.extend(t.check_all().into_iter().map(template_diagnostic));
            Some(t)
        }
        Err(errors) => {
            problems.extend(errors.into_iter().map(template_diagnostic));
            None
        }
    };
    // Without a template registry, still report workflow errors other than missing templates.
    let template = |name: &str| templates.as_ref().is_none_or(|t| t.contains(name));
    let transport = |name: &str| transports.iter().any(|t| t == name);
    // Segment names first, so references between segments and from workflows can be checked.
    let any = |_: &str| true;
    let (named, _) = load_segments(&dir.join("segments"), &Known::templates(&any));
    let names: BTreeSet<String> = named.into_iter().map(|s| s.name).collect();
    let segment = |name: &str| names.contains(name);
    let known = Known {
        template: &template,
        transport: &transport,
        segment: &segment,
    };
    let (segment_defs, diagnostics) = load_segments(&dir.join("segments"), &known);
    problems.extend(diagnostics);
    let segments = match Segments::new(segment_defs) {
        Ok(s) => s,
        Err(cycles) => {
            problems.extend(cycles);
            Segments::default()
        }
    };
    let (defs, diagnostics) = load_dir(&dir.join("workflows"), &known);
    problems.extend(diagnostics);
    let Some(templates) = templates.filter(|_| problems.is_empty()) else {
        for p in &mut problems {
            if let Ok(rel) = p.file.strip_prefix(dir) {
                p.file = rel.to_path_buf();
            }
        }
        return Err(problems);
    };
    Ok(Project {
        workflows: Workflows::new(defs),
        segments,
        templates,
    })
}
