//! Evaluating every segment for one contact from its facts (the contact as conditions see it,
//! and its events of the names segments read), and finding the next instant the result can
//! change without a new event: when an event leaves a `within` window.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::Segments;
use crate::store::earliest;
use crate::workflow::condition::{Subject, all_hold, events_hold, lookup, passes_filter};
use crate::workflow::model::{Comparison, Condition, EventCondition, EventMeasure, Op};

/// One stored event, as segment conditions see it.
#[derive(Debug, Clone)]
pub struct Fact {
    pub occurred_at: DateTime<Utc>,
    pub properties: Value,
}

/// What segment conditions may look at for one contact.
pub struct Facts<'a> {
    pub contact_id: &'a str,
    /// The contact view: attributes, `id`, `email`, `subscribed` and the computed profile.
    pub view: &'a Value,
    /// Events by name, oldest first.
    pub events: &'a HashMap<String, Vec<Fact>>,
}

/// The segments a contact belongs to now, and when that can next change by time alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub members: BTreeSet<String>,
    pub next_change: Option<DateTime<Utc>>,
}

/// Evaluates every segment, in dependency order, for one contact.
pub fn evaluate_all(segments: &Segments, facts: &Facts<'_>, now: DateTime<Utc>) -> Evaluation {
    let mut members = BTreeSet::new();
    let mut next_change = None;
    for def in segments.iter() {
        let mut walk = Walk {
            facts,
            members: &members,
            now,
            next_change: None,
        };
        let holds = walk.holds(&def.matcher);
        next_change = earliest(next_change, walk.next_change);
        if holds {
            members.insert(def.name.clone());
        }
    }
    Evaluation {
        members,
        next_change,
    }
}

struct Walk<'f, 'a> {
    facts: &'f Facts<'a>,
    members: &'f BTreeSet<String>,
    now: DateTime<Utc>,
    next_change: Option<DateTime<Utc>>,
}

impl Walk<'_, '_> {
    fn subject(&self) -> Subject<'_> {
        Subject {
            contact_id: self.facts.contact_id,
            contact: self.facts.view,
            event: None,
            journey_id: None,
            journey_since: None,
            now: self.now,
        }
    }

    /// Whether `cond` holds. Short-circuiting is sound for `next_change`: the result can only
    /// change when a condition that was evaluated changes, and each of those records its own
    /// next change.
    fn holds(&mut self, cond: &Condition) -> bool {
        match cond {
            Condition::Attribute { path, tests } => all_hold(lookup(self.facts.view, path), tests),
            Condition::Event(ec) => self.event(ec),
            Condition::Segment(name) => self.members.contains(name),
            Condition::All(items) => items.iter().all(|c| self.holds(c)),
            Condition::Any(items) => items.iter().any(|c| self.holds(c)),
            Condition::Not(inner) => !self.holds(inner),
            // Rejected in segments by the parser: there is no triggering event or journey.
            Condition::Property { .. } | Condition::Opened(_) | Condition::Clicked(_) => false,
        }
    }

    fn event(&mut self, ec: &EventCondition) -> bool {
        let events = self
            .facts
            .events
            .get(&ec.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let since = ec.within.map(|w| self.now - w.0);
        let in_window = |f: &&Fact| since.is_none_or(|s| f.occurred_at >= s);
        let subject = self.subject();
        let holds = events_hold(
            ec,
            events.iter().filter(in_window).map(|f| &f.properties),
            &subject,
        );
        if let Some(window) = ec.within {
            // Newest first: the events that count, and the instant each leaves the window.
            let matching: Vec<DateTime<Utc>> = events
                .iter()
                .rev()
                .filter(in_window)
                .filter(|f| passes_filter(ec, &f.properties, &subject))
                .map(|f| f.occurred_at)
                .collect();
            let leaves = |t: DateTime<Utc>| t + window.0 + TimeDelta::microseconds(1);
            let change = match at_least(&ec.measure) {
                // "At least k": true until the k-th newest leaves; false stays false.
                Some(k) => matching.get(k.saturating_sub(1)).copied().map(leaves),
                // Any other measure can change whenever an event leaves: the oldest first.
                None => matching.last().copied().map(leaves),
            };
            self.next_change = earliest(self.next_change, change);
        }
        holds
    }
}

/// `k` when a count condition is exactly "at least k" (`gte: k`, or `gt: k-1`).
fn at_least(measure: &EventMeasure) -> Option<usize> {
    let EventMeasure::Count(tests) = measure else {
        return None;
    };
    let [Comparison { op, value }] = tests.as_slice() else {
        return None;
    };
    let n = value.as_u64().and_then(|n| usize::try_from(n).ok())?;
    match op {
        Op::Gte => Some(n.max(1)),
        Op::Gt => Some(n + 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::workflow::model::SegmentDef;
    use crate::workflow::parse::{Known, parse_segment};

    fn segments(files: &[&str]) -> Segments {
        let defs: Vec<SegmentDef> = files
            .iter()
            .enumerate()
            .map(|(i, src)| {
                let known = Known::templates(&|_| true);
                parse_segment(&PathBuf::from(format!("s{i}.yaml")), src, &known).unwrap()
            })
            .collect();
        Segments::new(defs).unwrap()
    }

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap() + TimeDelta::days(day)
    }

    fn orders(days_totals: &[(i64, f64)]) -> HashMap<String, Vec<Fact>> {
        let facts = days_totals
            .iter()
            .map(|(d, t)| Fact {
                occurred_at: at(*d),
                properties: json!({ "total": t }),
            })
            .collect();
        HashMap::from([("order_placed".to_owned(), facts)])
    }

    fn eval(segs: &Segments, events: &HashMap<String, Vec<Fact>>, now: i64) -> Evaluation {
        let view = json!({ "country": "US", "engagement": "active" });
        let facts = Facts {
            contact_id: "c1",
            view: &view,
            events,
        };
        evaluate_all(segs, &facts, at(now))
    }

    const LAPSED: &str = "name: lapsed\nmatch:\n  - event: order_placed\n  - not: { event: order_placed, within: 90d }\n";
    const REPEAT: &str =
        "name: repeat\nmatch:\n  - event: order_placed\n    within: 30d\n    count: { gte: 2 }\n";

    #[test]
    fn lapsed_customers_follow_the_window() {
        let segs = segments(&[LAPSED]);
        let events = orders(&[(0, 10.0), (10, 20.0)]);
        let e = eval(&segs, &events, 50);
        assert!(e.members.is_empty());
        // The newest order leaves the 90-day window just after day 100.
        assert_eq!(e.next_change, Some(at(100) + TimeDelta::microseconds(1)));
        assert!(eval(&segs, &events, 100).members.is_empty());
        let later = eval(&segs, &events, 101);
        assert!(later.members.contains("lapsed"));
        assert_eq!(later.next_change, None);
    }

    #[test]
    fn at_least_k_changes_when_the_kth_newest_leaves() {
        let segs = segments(&[REPEAT]);
        let events = orders(&[(0, 1.0), (5, 1.0), (8, 1.0)]);
        let e = eval(&segs, &events, 9);
        assert!(e.members.contains("repeat"));
        assert_eq!(e.next_change, Some(at(35) + TimeDelta::microseconds(1)));
        assert!(eval(&segs, &events, 36).members.is_empty());
    }

    #[test]
    fn sums_filters_attributes_and_references() {
        let segs = segments(&[
            "name: big\nmatch:\n  - event: order_placed\n    sum: total\n    gte: 100\n    where: [ { property: total, gt: 20 } ]\n",
            "name: big-us\nmatch:\n  all:\n    - segment: big\n    - attribute: country\n      in: [US]\n    - any: [ { attribute: engagement, eq: active }, { attribute: vip, eq: true } ]\n",
        ]);
        let small = orders(&[(0, 50.0), (1, 20.0), (2, 20.0), (3, 20.0)]);
        assert!(eval(&segs, &small, 5).members.is_empty());
        let big = orders(&[(0, 50.0), (1, 60.0)]);
        let e = eval(&segs, &big, 5);
        assert_eq!(
            e.members.iter().map(String::as_str).collect::<Vec<_>>(),
            ["big", "big-us"]
        );
        assert_eq!(e.next_change, None, "no window, no change by time");
    }

    #[test]
    fn cycles_are_reported_at_each_reference() {
        let known = Known::templates(&|_| true);
        let a = parse_segment(
            &PathBuf::from("a.yaml"),
            "name: a\nmatch:\n  - segment: b\n",
            &known,
        )
        .unwrap();
        let b = parse_segment(
            &PathBuf::from("b.yaml"),
            "name: b\nmatch:\n  - attribute: x\n    eq: 1\n  - segment: a\n",
            &known,
        )
        .unwrap();
        let problems = Segments::new(vec![a, b]).unwrap_err();
        let shown: Vec<String> = problems
            .iter()
            .map(|d| format!("{}:{} {}", d.file.display(), d.line, d.message))
            .collect();
        assert_eq!(
            shown,
            [
                "a.yaml:3 segment cycle: a → b → a",
                "b.yaml:5 segment cycle: a → b → a"
            ]
        );
    }
}
