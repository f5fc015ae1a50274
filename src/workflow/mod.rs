//! Workflows: YAML definitions (`model`, `parse`), their compiled step programs, condition
//! evaluation, trigger matching on incoming events, and the journey engine that runs steps.

pub mod condition;
pub mod engine;
pub mod model;
pub mod parse;
pub mod program;
pub mod timing;
pub mod trigger;

use std::collections::HashMap;

use model::{SegmentTrigger, Trigger, Workflow};
use program::Program;

/// A loaded workflow with its compiled program.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub def: Workflow,
    pub program: Program,
}

/// Every workflow of the project, indexed for trigger matching.
#[derive(Debug, Clone, Default)]
pub struct Workflows {
    by_name: HashMap<String, Compiled>,
    order: Vec<String>,
}

impl Workflows {
    pub fn new(defs: Vec<Workflow>) -> Workflows {
        let mut set = Workflows::default();
        for def in defs {
            set.order.push(def.name.clone());
            let program = Program::compile(&def.steps);
            set.by_name
                .insert(def.name.clone(), Compiled { def, program });
        }
        set
    }

    pub fn get(&self, name: &str) -> Option<&Compiled> {
        self.by_name.get(name)
    }

    /// Workflows in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Compiled> {
        self.order.iter().filter_map(|n| self.by_name.get(n))
    }

    /// Workflows started by events named `event`.
    pub fn triggered_by<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Compiled> {
        self.iter()
            .filter(move |w| matches!(&w.def.trigger, Trigger::Event(t) if t.event == event))
    }

    /// Workflows started by a membership change that `event` records (`segment_entered` /
    /// `segment_exited`), unless the change came from recomputing a new or edited segment.
    pub fn segment_triggered<'a>(
        &'a self,
        event: &'a crate::store::Event,
    ) -> impl Iterator<Item = &'a Compiled> {
        let props = &event.properties.0;
        let segment = props["segment"].as_str().unwrap_or_default();
        let live = props["cause"] != "recompute";
        self.iter().filter(move |w| {
            live && match &w.def.trigger {
                Trigger::Segment(SegmentTrigger::Entered(s)) => {
                    event.name == crate::segment::ENTERED && s == segment
                }
                Trigger::Segment(SegmentTrigger::Exited(s)) => {
                    event.name == crate::segment::EXITED && s == segment
                }
                _ => false,
            }
        })
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}
