//! Evaluation of conditions (FORMATS.md "Conditions") for triggers, entry conditions, exits and
//! branches. Comparisons are pure; conditions about stored behavior read through the store.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::model::{AggregateFn, Comparison, Condition, EventCondition, EventMeasure, Op};
use crate::store::{Result, Tx};

/// What a condition can look at.
pub struct Subject<'a> {
    pub contact_id: &'a str,
    /// The contact as seen by `attribute` conditions: its attributes plus `id`, `email`, `subscribed`.
    pub contact: &'a Value,
    /// Properties of the triggering event, for `property` conditions.
    pub event: Option<&'a Value>,
    /// The journey, for `opened`/`clicked`: its id and a resolver from step id to step key.
    pub journey_id: Option<&'a str>,
    /// When the journey began: inside a journey, `event` conditions without `within` look at
    /// events since then ("did they order since entering?"), which is what a branch after
    /// `wait_for` asks.
    pub journey_since: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

/// Looks up a dotted path (`a.b.0.c`) in a JSON value.
pub fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

pub fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), _) | (_, Value::Number(_)) => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        _ => a == b,
    }
}

fn ordering(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => as_number(a)?.partial_cmp(&as_number(b)?),
    }
}

/// Applies one comparison to a value that may be missing.
pub fn compare(actual: Option<&Value>, test: &Comparison) -> bool {
    let present = actual.filter(|v| !v.is_null());
    let expected = &test.value;
    match test.op {
        Op::Exists => present.is_some() == expected.as_bool().unwrap_or(true),
        Op::Eq => present.is_some_and(|a| loosely_equal(a, expected)),
        Op::Ne => !present.is_some_and(|a| loosely_equal(a, expected)),
        Op::Gt => present
            .and_then(|a| ordering(a, expected))
            .is_some_and(|o| o.is_gt()),
        Op::Gte => present
            .and_then(|a| ordering(a, expected))
            .is_some_and(|o| o.is_ge()),
        Op::Lt => present
            .and_then(|a| ordering(a, expected))
            .is_some_and(|o| o.is_lt()),
        Op::Lte => present
            .and_then(|a| ordering(a, expected))
            .is_some_and(|o| o.is_le()),
        Op::In => present.is_some_and(|a| in_list(a, expected)),
        Op::NotIn => !present.is_some_and(|a| in_list(a, expected)),
        Op::Contains => present.is_some_and(|a| match a {
            Value::String(s) => expected.as_str().is_some_and(|e| s.contains(e)),
            Value::Array(items) => items.iter().any(|i| loosely_equal(i, expected)),
            Value::Object(map) => expected.as_str().is_some_and(|k| map.contains_key(k)),
            _ => false,
        }),
    }
}

fn in_list(actual: &Value, list: &Value) -> bool {
    list.as_array()
        .is_some_and(|items| items.iter().any(|i| loosely_equal(actual, i)))
}

pub fn all_hold(actual: Option<&Value>, tests: &[Comparison]) -> bool {
    tests.iter().all(|t| compare(actual, t))
}

/// Evaluates a condition that needs no stored data (`property`/`attribute` and their
/// combinations). Returns `None` when the condition needs the store.
pub fn evaluate_pure(cond: &Condition, subject: &Subject<'_>) -> Option<bool> {
    Some(match cond {
        Condition::Property { path, tests } => {
            all_hold(subject.event.and_then(|e| lookup(e, path)), tests)
        }
        Condition::Attribute { path, tests } => all_hold(lookup(subject.contact, path), tests),
        Condition::All(items) => {
            for c in items {
                if !evaluate_pure(c, subject)? {
                    return Some(false);
                }
            }
            true
        }
        Condition::Any(items) => {
            for c in items {
                if evaluate_pure(c, subject)? {
                    return Some(true);
                }
            }
            false
        }
        Condition::Not(inner) => !evaluate_pure(inner, subject)?,
        _ => return None,
    })
}

/// Evaluates any condition, reading stored events and message events as needed.
/// `step_key` maps an `opened`/`clicked` step id to the stored step key of its message.
pub fn evaluate<'a>(
    cond: &'a Condition,
    subject: &'a Subject<'a>,
    tx: &'a mut Tx,
    step_key: &'a (dyn Fn(&str) -> Option<String> + Sync),
) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>> {
    Box::pin(async move {
        if let Some(v) = evaluate_pure(cond, subject) {
            return Ok(v);
        }
        Ok(match cond {
            Condition::All(items) => {
                for c in items {
                    if !evaluate(c, subject, tx, step_key).await? {
                        return Ok(false);
                    }
                }
                true
            }
            Condition::Any(items) => {
                for c in items {
                    if evaluate(c, subject, tx, step_key).await? {
                        return Ok(true);
                    }
                }
                false
            }
            Condition::Not(inner) => !evaluate(inner, subject, tx, step_key).await?,
            Condition::Event(ec) => event_condition(ec, subject, tx).await?,
            Condition::Opened(step) => message_event(subject, tx, step_key, step, "opened").await?,
            Condition::Clicked(step) => {
                message_event(subject, tx, step_key, step, "clicked").await?
            }
            Condition::Segment(name) => tx.is_member(name, subject.contact_id).await?,
            Condition::Property { .. } | Condition::Attribute { .. } => false,
        })
    })
}

async fn message_event(
    subject: &Subject<'_>,
    tx: &mut Tx,
    step_key: &(dyn Fn(&str) -> Option<String> + Sync),
    step: &str,
    kind: &str,
) -> Result<bool> {
    let (Some(journey), Some(key)) = (subject.journey_id, step_key(step)) else {
        return Ok(false);
    };
    match tx.journey_message(journey, &key).await? {
        Some(message) => tx.message_has_event(&message.id, kind).await,
        None => Ok(false),
    }
}

async fn event_condition(ec: &EventCondition, subject: &Subject<'_>, tx: &mut Tx) -> Result<bool> {
    let since = ec
        .within
        .map(|d| subject.now - d.0)
        .or(subject.journey_since);
    let events = tx
        .contact_events(subject.contact_id, &ec.name, since)
        .await?;
    Ok(events_hold(
        ec,
        events.iter().map(|e| &e.properties.0),
        subject,
    ))
}

/// Whether events already selected by name and time (their properties) satisfy an `event`
/// condition: its `where` filter, then its count or aggregate.
pub fn events_hold<'e>(
    ec: &EventCondition,
    events: impl Iterator<Item = &'e Value>,
    subject: &Subject<'_>,
) -> bool {
    let matching = events.filter(|props| passes_filter(ec, props, subject));
    match &ec.measure {
        EventMeasure::Count(tests) => {
            let count = Value::from(matching.count());
            all_hold(Some(&count), tests)
        }
        EventMeasure::Aggregate {
            function,
            property,
            tests,
        } => {
            let values: Vec<f64> = matching
                .filter_map(|props| lookup(props, property).and_then(as_number))
                .collect();
            let aggregate = match function {
                AggregateFn::Sum => Some(values.iter().sum()),
                _ if values.is_empty() => None,
                AggregateFn::Avg => Some(values.iter().sum::<f64>() / values.len() as f64),
                AggregateFn::Min => values.iter().copied().reduce(f64::min),
                AggregateFn::Max => values.iter().copied().reduce(f64::max),
            };
            let aggregate = aggregate.map(Value::from);
            all_hold(aggregate.as_ref(), tests)
        }
    }
}

/// Whether an event's properties pass an `event` condition's `where` filter.
pub fn passes_filter(ec: &EventCondition, properties: &Value, subject: &Subject<'_>) -> bool {
    let inner = Subject {
        event: Some(properties),
        ..*subject
    };
    ec.filter
        .iter()
        .all(|c| evaluate_pure(c, &inner).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn t(op: Op, value: Value) -> Comparison {
        Comparison { op, value }
    }

    #[test]
    fn comparisons_follow_formats_md() {
        let n = json!(3);
        assert!(compare(Some(&n), &t(Op::Gt, json!(0))));
        assert!(compare(Some(&json!("3")), &t(Op::Eq, json!(3))));
        assert!(!compare(None, &t(Op::Gt, json!(0))));
        assert!(compare(None, &t(Op::Ne, json!(1))));
        assert!(compare(Some(&json!("US")), &t(Op::In, json!(["US", "CA"]))));
        assert!(compare(
            Some(&json!("FR")),
            &t(Op::NotIn, json!(["US", "CA"]))
        ));
        assert!(compare(None, &t(Op::Exists, json!(false))));
        assert!(compare(
            Some(&json!(["a", "b"])),
            &t(Op::Contains, json!("b"))
        ));
        assert!(compare(
            Some(&json!("hello world")),
            &t(Op::Contains, json!("world"))
        ));
        assert!(compare(
            Some(&json!("2026-01-02")),
            &t(Op::Lt, json!("2026-02-01"))
        ));
        assert!(!compare(Some(&json!("abc")), &t(Op::Gt, json!(1))));
    }

    #[test]
    fn lookup_walks_dotted_paths() {
        let v = json!({"a": {"b": [ {"c": 1} ]}});
        assert_eq!(lookup(&v, "a.b.0.c"), Some(&json!(1)));
        assert_eq!(lookup(&v, "a.x"), None);
    }
}
