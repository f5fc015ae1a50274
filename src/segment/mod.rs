//! Behavioral segments: definitions from `segments/*.yaml` (`Segments`, with dependency order and
//! cycle checks), their evaluation against one contact's facts (`evaluate`), the computed
//! profile (`profile`), and keeping stored membership current as events arrive, as windows run
//! out and as population-wide scores are refreshed (`membership`).

pub mod evaluate;
pub mod membership;
pub mod profile;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::TimeDelta;

pub use profile::{Profile, ProfileRules};

use crate::diagnostic::Diagnostic;
use crate::workflow::model::{Condition, EventMeasure, SegmentDef};

/// Every segment of the project, in dependency order (a segment after those it refers to).
#[derive(Debug, Clone, Default)]
pub struct Segments {
    ordered: Vec<SegmentDef>,
    /// Event names any segment's conditions read.
    event_names: BTreeSet<String>,
    /// How far back conditions look at each event name, and whether they read properties.
    reads: BTreeMap<String, Read>,
    /// The contact attributes (and profile fields) conditions read, by their first path part.
    attributes: BTreeSet<String>,
}

/// What segment conditions read of one event name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Read {
    /// The longest `within` (`None`: some condition looks at all time).
    pub horizon: Option<TimeDelta>,
    /// Whether a `where` filter or an aggregate reads the events' properties.
    pub properties: bool,
}

impl Segments {
    /// Orders `defs` so that every segment comes after the segments it refers to. References
    /// must exist (the parser checks); a cycle is reported at each reference along it.
    pub fn new(defs: Vec<SegmentDef>) -> Result<Segments, Vec<Diagnostic>> {
        let index: HashMap<&str, usize> = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Visiting,
            Done,
        }
        let mut marks = vec![Mark::New; defs.len()];
        let mut order = Vec::with_capacity(defs.len());
        let mut problems = Vec::new();
        // Iterative depth-first search; `path` holds (segment, next reference to follow).
        for root in 0..defs.len() {
            if marks[root] != Mark::New {
                continue;
            }
            let mut path = vec![(root, 0usize)];
            marks[root] = Mark::Visiting;
            while let Some((at, next)) = path.last().copied() {
                let refs = &defs[at].references;
                if next == refs.len() {
                    marks[at] = Mark::Done;
                    order.push(at);
                    path.pop();
                    continue;
                }
                if let Some(last) = path.last_mut() {
                    last.1 += 1;
                }
                let Some(&target) = index.get(refs[next].name.as_str()) else {
                    continue;
                };
                match marks[target] {
                    Mark::Done => {}
                    Mark::New => {
                        marks[target] = Mark::Visiting;
                        path.push((target, 0));
                    }
                    Mark::Visiting => {
                        let start = path.iter().position(|(s, _)| *s == target).unwrap_or(0);
                        let cycle: Vec<usize> = path[start..].iter().map(|(s, _)| *s).collect();
                        let names: Vec<&str> = cycle
                            .iter()
                            .chain(std::iter::once(&target))
                            .map(|&s| defs[s].name.as_str())
                            .collect();
                        let message = format!("segment cycle: {}", names.join(" → "));
                        for (k, &s) in cycle.iter().enumerate() {
                            let to = names[k + 1];
                            let r = defs[s].references.iter().find(|r| r.name == to);
                            let (line, column) = r.map_or((0, 0), |r| (r.line, r.column));
                            let source =
                                std::fs::read_to_string(&defs[s].source).unwrap_or_default();
                            problems.push(
                                Diagnostic::new(&defs[s].source, line, column, message.clone())
                                    .with_source(&source),
                            );
                        }
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut slots: Vec<Option<SegmentDef>> = defs.into_iter().map(Some).collect();
        let ordered: Vec<SegmentDef> = order.iter().filter_map(|&i| slots[i].take()).collect();
        let mut reads = BTreeMap::new();
        let mut attributes = BTreeSet::new();
        for def in &ordered {
            collect_reads(&def.matcher, &mut reads, &mut attributes);
        }
        Ok(Segments {
            ordered,
            event_names: reads.keys().cloned().collect(),
            reads,
            attributes,
        })
    }

    /// Segments in dependency order.
    pub fn iter(&self) -> impl Iterator<Item = &SegmentDef> {
        self.ordered.iter()
    }

    pub fn get(&self, name: &str) -> Option<&SegmentDef> {
        self.ordered.iter().find(|d| d.name == name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    /// Event names that segment conditions read.
    pub fn event_names(&self) -> &BTreeSet<String> {
        &self.event_names
    }

    /// What conditions read of each event name.
    pub fn reads(&self) -> &BTreeMap<String, Read> {
        &self.reads
    }

    /// Whether some condition reads the contact attribute (or profile field) `name`.
    pub fn reads_attribute(&self, name: &str) -> bool {
        self.attributes.contains(name)
    }

    /// What a segment's membership is computed from, so a changed definition (or a changed
    /// segment it refers to) is recomputed.
    pub fn spec(&self, name: &str) -> String {
        let mut seen = BTreeSet::new();
        let mut parts = Vec::new();
        let mut todo = vec![name.to_owned()];
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(def) = self.get(&n) {
                parts.push(format!("{n}: {:?}", def.matcher));
                todo.extend(def.references.iter().map(|r| r.name.clone()));
            }
        }
        parts.sort();
        parts.join("\n")
    }
}

fn collect_reads(
    cond: &Condition,
    reads: &mut BTreeMap<String, Read>,
    attributes: &mut BTreeSet<String>,
) {
    match cond {
        Condition::Event(ec) => {
            let read = Read {
                horizon: ec.within.map(|w| w.0),
                properties: !ec.filter.is_empty()
                    || matches!(ec.measure, EventMeasure::Aggregate { .. }),
            };
            reads
                .entry(ec.name.clone())
                .and_modify(|r| {
                    r.horizon = match (r.horizon, read.horizon) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                    r.properties |= read.properties;
                })
                .or_insert(read);
        }
        Condition::All(items) | Condition::Any(items) => {
            for c in items {
                collect_reads(c, reads, attributes);
            }
        }
        Condition::Not(inner) => collect_reads(inner, reads, attributes),
        Condition::Attribute { path, .. } => {
            let first = path.split('.').next().unwrap_or(path);
            attributes.insert(first.to_owned());
        }
        _ => {}
    }
}

/// Event names that segment membership events carry, which never re-evaluate segments (a
/// change of membership must not feed on itself).
pub const ENTERED: &str = "segment_entered";
pub const EXITED: &str = "segment_exited";
