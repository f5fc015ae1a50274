//! What an incoming event does to journeys: it ends active journeys whose `exit_on` matches,
//! then starts journeys of workflows it triggers, honoring `where`, `key`, entry `conditions`
//! and `reentry`. Runs inside the transaction that stores the event, so an event and its
//! effects are stored together or not at all.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;

use super::condition::{Subject, evaluate, evaluate_pure, lookup};
use super::model::{Condition, EventMatch, Reentry, Trigger};
use super::{Compiled, Workflows};
use crate::store::{Contact, Event, Job, Journey, Result, Tx, job_status, journey_status};

/// Journeys an event started and ended.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Effects {
    pub entered: Vec<String>,
    pub exited: Vec<String>,
    /// Journeys whose `wait_for` this event ended.
    pub resumed: Vec<String>,
}

/// The contact as `attribute` conditions and templates see it.
pub fn contact_view(contact: &Contact) -> Value {
    let mut view = match &contact.attributes.0 {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    if let Value::Object(profile) = &contact.profile.0 {
        for key in crate::segment::profile::PROFILE_KEYS {
            if let Some(v) = profile.get(*key) {
                view.insert((*key).into(), v.clone());
            }
        }
    }
    view.insert("id".into(), json!(contact.id));
    view.insert("email".into(), json!(contact.email));
    view.insert("subscribed".into(), json!(contact.subscribed));
    Value::Object(view)
}

fn matches_event(rule: &EventMatch, event: &Event, contact: &Value, now: DateTime<Utc>) -> bool {
    let subject = Subject {
        contact_id: &event.contact_id,
        contact,
        event: Some(&event.properties.0),
        journey_id: None,
        journey_since: None,
        now,
    };
    rule.event == event.name
        && rule
            .filter
            .iter()
            .all(|c| evaluate_pure(c, &subject).unwrap_or(false))
}

/// Applies `event` (already stored) to journeys.
pub async fn on_event(
    tx: &mut Tx,
    workflows: &Workflows,
    contact: &Contact,
    event: &Event,
    now: DateTime<Utc>,
    max_attempts: i64,
) -> Result<Effects> {
    let mut effects = Effects::default();
    let view = contact_view(contact);
    let journeys = match workflows.journeys_hear(&event.name) {
        true => tx.active_journeys(&contact.id).await?,
        false => Vec::new(),
    };
    for journey in journeys {
        let Some(wf) = workflows.get(&journey.workflow) else {
            continue;
        };
        if wf
            .def
            .exit_on
            .iter()
            .any(|rule| matches_event(rule, event, &view, now))
        {
            let reason = format!("exit_on: {}", event.name);
            if tx
                .end_journey(&journey.id, journey_status::EXITED, &reason, now)
                .await?
            {
                effects.exited.push(journey.id);
            }
            continue;
        }
        let waiting = &journey.context.0["waiting"];
        if waiting["event"] == event.name.as_str() && waiting["received"].is_null() {
            let mut context = journey.context.0.clone();
            context["waiting"]["received"] = json!(event.id);
            if let Some(step) = &journey.step {
                tx.advance_journey(&journey.id, step, Some(&context), now)
                    .await?;
                tx.wake_journey_job(&journey.id, now).await?;
                effects.resumed.push(journey.id);
            }
        }
    }
    for wf in workflows.triggered_by(&event.name) {
        if let Some(id) = try_enter(tx, wf, contact, &view, event, now, max_attempts).await? {
            effects.entered.push(id);
        }
    }
    for wf in workflows.segment_triggered(event) {
        let entry = Entry {
            contact,
            view: &view,
            filter: &[],
            properties: Some(&event.properties.0),
            trigger: event_view(event),
            key: String::new(),
        };
        if let Some(id) = enter(tx, wf, entry, now, max_attempts).await? {
            effects.entered.push(id);
        }
    }
    Ok(effects)
}

async fn try_enter(
    tx: &mut Tx,
    wf: &Compiled,
    contact: &Contact,
    view: &Value,
    event: &Event,
    now: DateTime<Utc>,
    max_attempts: i64,
) -> Result<Option<String>> {
    let Trigger::Event(trigger) = &wf.def.trigger else {
        return Ok(None);
    };
    let key = match &trigger.key {
        None => String::new(),
        Some(path) => match lookup(&event.properties.0, path) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            // Without its key the event cannot say which journey it belongs to.
            _ => return Ok(None),
        },
    };
    let entry = Entry {
        contact,
        view,
        filter: &trigger.filter,
        properties: Some(&event.properties.0),
        trigger: event_view(event),
        key,
    };
    enter(tx, wf, entry, now, max_attempts).await
}

/// A contact about to enter a workflow, and why.
pub struct Entry<'a> {
    pub contact: &'a Contact,
    /// The contact as conditions see it ([`contact_view`]).
    pub view: &'a Value,
    /// Trigger-specific conditions (an event trigger's `where`).
    pub filter: &'a [Condition],
    /// Properties of the triggering event, for `property` conditions.
    pub properties: Option<&'a Value>,
    /// What templates see as `event`.
    pub trigger: Value,
    /// Scopes "one active journey" and re-entry: an event's `key`, or a time trigger's occurrence.
    pub key: String,
}

/// Starts a journey for `entry.contact` unless a condition, an active journey for the same key,
/// or the re-entry policy says no. Returns the new journey's id.
pub async fn enter(
    tx: &mut Tx,
    wf: &Compiled,
    entry: Entry<'_>,
    now: DateTime<Utc>,
    max_attempts: i64,
) -> Result<Option<String>> {
    let subject = Subject {
        contact_id: &entry.contact.id,
        contact: entry.view,
        event: entry.properties,
        journey_id: None,
        journey_since: None,
        now,
    };
    let no_steps = |_: &str| None;
    for cond in entry.filter.iter().chain(&wf.def.conditions) {
        if !evaluate(cond, &subject, tx, &no_steps).await? {
            return Ok(None);
        }
    }
    if let Some(last) = tx
        .latest_journey(&wf.def.name, &entry.contact.id, &entry.key)
        .await?
    {
        let allowed = last.status != journey_status::ACTIVE
            && match wf.def.reentry {
                Reentry::Never => false,
                Reentry::Always => true,
                Reentry::After(d) => last.entered_at + d.0 <= now,
            };
        if !allowed {
            return Ok(None);
        }
    }
    let Some(first) = wf.program.first.clone() else {
        return Ok(None);
    };
    let journey = Journey {
        id: uuid::Uuid::now_v7().to_string(),
        workflow: wf.def.name.clone(),
        contact_id: entry.contact.id.clone(),
        journey_key: entry.key,
        status: journey_status::ACTIVE.to_owned(),
        step: Some(first),
        context: Json(json!({ "event": entry.trigger })),
        entered_at: now,
        updated_at: now,
        ended_at: None,
        end_reason: None,
        note: None,
    };
    if !tx.insert_journey(&journey).await? {
        return Ok(None);
    }
    tx.insert_job(&journey_job(&journey.id, now, max_attempts))
        .await?;
    Ok(Some(journey.id))
}

/// The triggering event as templates see it (`event.name`, `event.properties`, `event.timestamp`).
pub fn event_view(event: &Event) -> Value {
    json!({
        "id": event.id,
        "name": event.name,
        "properties": event.properties.0,
        "timestamp": event.occurred_at.to_rfc3339(),
    })
}

/// A queued job that runs the journey's next step at `run_at`.
pub fn journey_job(journey_id: &str, run_at: DateTime<Utc>, max_attempts: i64) -> Job {
    Job {
        id: uuid::Uuid::now_v7().to_string(),
        kind: "journey".to_owned(),
        journey_id: Some(journey_id.to_owned()),
        payload: Json(json!({})),
        status: job_status::QUEUED.to_owned(),
        run_at,
        attempts: 0,
        max_attempts,
        locked_by: None,
        locked_until: None,
        last_error: None,
        created_at: run_at,
        updated_at: run_at,
    }
}
