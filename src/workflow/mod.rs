//! Workflows: YAML definitions (`model`, `parse`), their compiled step programs, condition
//! evaluation, trigger matching on incoming events, and the journey engine that runs steps.

pub mod condition;
pub mod engine;
pub mod model;
pub mod parse;
pub mod program;
pub mod timing;
pub mod trigger;

use std::collections::{HashMap, HashSet};

use model::{SegmentTrigger, StepKind, Trigger, Workflow};
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
    /// Event names that a running journey reacts to: `exit_on` rules and `wait_for` steps.
    heard_by_journeys: HashSet<String>,
}

impl Workflows {
    pub fn new(defs: Vec<Workflow>) -> Workflows {
        let mut set = Workflows::default();
        for def in defs {
            set.order.push(def.name.clone());
            let program = Program::compile(&def.steps);
            set.heard_by_journeys
                .extend(def.exit_on.iter().map(|rule| rule.event.clone()));
            set.heard_by_journeys.extend(program.nodes().filter_map(
                |node| match &node.step.kind {
                    StepKind::WaitFor { event, .. } => Some(event.clone()),
                    _ => None,
                },
            ));
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

    /// Whether a running journey can react to an event named `event` (end on it, or resume a
    /// `wait_for` on it). When none can, the contact's journeys need not be read at all. A
    /// journey parked by a `wait_for` step that a redeploy removed then runs on at its timeout.
    pub fn journeys_hear(&self, event: &str) -> bool {
        self.heard_by_journeys.contains(event)
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
