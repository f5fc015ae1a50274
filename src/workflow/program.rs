//! A workflow's steps flattened into addressable nodes. A journey stores the key of its next
//! step; keys are the step `id` when given, else the step's position (`s3`, `s3.then.0`,
//! `s4.split.ten-off.1`), so they stay stable across restarts while the file is unchanged.

use std::collections::HashMap;

use super::model::{Step, StepKind};

#[derive(Debug, Clone)]
pub struct Node {
    pub key: String,
    pub step: Step,
    /// The step after this one (and after any branch it opens), `None` at the end.
    pub next: Option<String>,
    /// Branch: first step of `then` and `else`. Split: first step of each variant.
    /// `None` for an empty list (continue with `next`).
    pub children: Vec<Option<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct Program {
    pub first: Option<String>,
    nodes: HashMap<String, Node>,
    /// `id` of a step → its key (identical today; kept so references survive key changes).
    ids: HashMap<String, String>,
}

impl Program {
    pub fn compile(steps: &[Step]) -> Program {
        let mut program = Program::default();
        program.first = program.add_list(steps, "s", None);
        program
    }

    pub fn node(&self, key: &str) -> Option<&Node> {
        self.nodes.get(key)
    }

    /// The key of the step with this `id`.
    pub fn key_of(&self, id: &str) -> Option<String> {
        self.ids.get(id).cloned()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Adds `steps`, whose last step continues at `after`; returns the first key.
    fn add_list(&mut self, steps: &[Step], prefix: &str, after: Option<String>) -> Option<String> {
        let keys: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| s.id.clone().unwrap_or_else(|| format!("{prefix}{i}")))
            .collect();
        for (i, step) in steps.iter().enumerate() {
            let key = keys[i].clone();
            let next = keys.get(i + 1).cloned().or_else(|| after.clone());
            let children = match &step.kind {
                StepKind::Branch {
                    then, otherwise, ..
                } => vec![
                    self.add_list(then, &format!("{prefix}{i}.then."), next.clone()),
                    self.add_list(otherwise, &format!("{prefix}{i}.else."), next.clone()),
                ],
                StepKind::Split(variants) => variants
                    .iter()
                    .map(|v| {
                        self.add_list(
                            &v.steps,
                            &format!("{prefix}{i}.split.{}.", v.name),
                            next.clone(),
                        )
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if let Some(id) = &step.id {
                self.ids.insert(id.clone(), key.clone());
            }
            self.nodes.insert(
                key.clone(),
                Node {
                    key,
                    step: step.clone(),
                    next,
                    children,
                },
            );
        }
        keys.first().cloned().or(after)
    }
}
