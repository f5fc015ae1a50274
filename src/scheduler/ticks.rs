//! Time-based triggers at run time. Per-contact triggers (yearly dates, contact-local cron)
//! keep each contact's next fire instant in `trigger_times`, so a sweep reads only the rows that
//! are due; fixed-zone schedules keep one `next_run_at` per workflow. Every advance is a
//! compare-and-set and every fired occurrence is recorded, so each fires once across restarts
//! and nodes. Enrolling a schedule's audience and computing times for existing contacts run as
//! jobs that page through contacts and store their cursor with each batch, so a crash resumes
//! where it stopped without enrolling anyone twice.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::core::Core;
use crate::store::{Contact, Job, Result, TriggerTime, Tx, job_status};
use crate::workflow::engine::{Outcome, contact_zone};
use crate::workflow::timing::{TimeTrigger, next_cron};
use crate::workflow::trigger::{Entry, contact_view, enter};
use crate::workflow::{Compiled, Workflows};

/// Contacts handled per transaction by sweeps and enrollment jobs.
const BATCH: i64 = 500;

pub const BACKFILL_JOB: &str = "trigger_backfill";
pub const SCHEDULE_FIRE_JOB: &str = "schedule_fire";

fn job(kind: &str, payload: Value, now: DateTime<Utc>, max_attempts: i64) -> Job {
    Job {
        id: uuid::Uuid::now_v7().to_string(),
        kind: kind.to_owned(),
        journey_id: None,
        payload: sqlx::types::Json(payload),
        status: job_status::QUEUED.to_owned(),
        run_at: now,
        attempts: 0,
        max_attempts,
        locked_by: None,
        locked_until: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

/// Brings stored trigger state in line with the loaded workflows: a new or edited per-contact
/// trigger gets its times recomputed for every contact (by a backfill job), a fixed-zone
/// schedule gets its next tick, and triggers of removed workflows are forgotten.
pub async fn sync_definitions(core: &Core) -> Result<()> {
    let now = core.clock.now();
    let default_zone = core.settings.default_timezone();
    let mut tx = core.store.write().await?;
    let mut timed = Vec::new();
    for wf in core.workflows.iter() {
        let Some(trigger) = TimeTrigger::of(&wf.def.trigger, default_zone) else {
            continue;
        };
        timed.push(wf.def.name.clone());
        let spec = TimeTrigger::spec(&wf.def.trigger, default_zone);
        let next = match &trigger {
            TimeTrigger::ZoneSchedule { cron, zone, .. } => next_cron(cron, *zone, now),
            _ => None,
        };
        if tx
            .claim_trigger_spec(&wf.def.name, &spec, next, now)
            .await?
            && !matches!(trigger, TimeTrigger::ZoneSchedule { .. })
        {
            tx.delete_workflow_trigger_times(&wf.def.name).await?;
            let payload = json!({ "workflow": wf.def.name, "cursor": "" });
            tx.insert_job(&job(BACKFILL_JOB, payload, now, core.max_attempts))
                .await?;
        }
    }
    tx.retain_trigger_specs(&timed).await?;
    tx.commit().await?;
    Ok(())
}

/// Recomputes one contact's per-contact trigger times (after it was created or changed).
pub async fn reschedule_contact(
    tx: &mut Tx,
    workflows: &Workflows,
    contact: &Contact,
    default_zone: Tz,
    now: DateTime<Utc>,
) -> Result<()> {
    for wf in workflows.iter() {
        reschedule_for(tx, wf, contact, default_zone, now).await?;
    }
    Ok(())
}

async fn reschedule_for(
    tx: &mut Tx,
    wf: &Compiled,
    contact: &Contact,
    default_zone: Tz,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(trigger) = TimeTrigger::of(&wf.def.trigger, default_zone) else {
        return Ok(());
    };
    if matches!(trigger, TimeTrigger::ZoneSchedule { .. }) {
        return Ok(());
    }
    let zone = contact_zone(&contact.attributes, default_zone);
    match trigger.next_for_contact(&contact.attributes.0, zone, now) {
        Some(next) => {
            let row = TriggerTime {
                workflow: wf.def.name.clone(),
                contact_id: contact.id.clone(),
                fire_at: next.at,
                occurrence: next.key,
            };
            tx.put_trigger_time(&row).await
        }
        None => tx.delete_trigger_time(&wf.def.name, &contact.id).await,
    }
}

/// Whether a time trigger's audience includes the contact: subscribed, and a member of the
/// schedule's `audience` segment when it names one.
async fn in_audience(tx: &mut Tx, wf: &Compiled, contact: &Contact) -> Result<bool> {
    let audience = match &wf.def.trigger {
        crate::workflow::model::Trigger::Schedule(s) => s.audience.as_deref(),
        _ => None,
    };
    Ok(contact.subscribed
        && match audience {
            Some(segment) => tx.is_member(segment, &contact.id).await?,
            None => true,
        })
}

/// Enters `contact` into `wf` for one occurrence of its time trigger.
async fn enter_occurrence(
    tx: &mut Tx,
    core: &Core,
    wf: &Compiled,
    contact: &Contact,
    occurrence: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    let view = contact_view(contact);
    let entry = Entry {
        contact,
        view: &view,
        filter: &[],
        properties: None,
        trigger: json!({
            "name": format!("{}:{}", trigger_kind(wf), wf.def.name),
            "properties": { "occurrence": occurrence },
            "timestamp": now.to_rfc3339(),
        }),
        key: occurrence.to_owned(),
    };
    enter(tx, wf, entry, now, core.max_attempts).await
}

fn trigger_kind(wf: &Compiled) -> &'static str {
    match wf.def.trigger {
        crate::workflow::model::Trigger::Date(_) => "date",
        _ => "schedule",
    }
}

/// Fires every due per-contact occurrence and fixed-zone tick. Returns how many fired.
pub async fn tick(core: &Core) -> Result<usize> {
    let mut fired = 0;
    let default_zone = core.settings.default_timezone();
    loop {
        let now = core.clock.now();
        let due = core.store.due_trigger_times(now, BATCH).await?;
        if due.is_empty() {
            break;
        }
        let mut tx = core.store.write().await?;
        for row in &due {
            let (Some(wf), Some(contact)) = (
                core.workflows.get(&row.workflow),
                tx.get_contact(&row.contact_id).await?,
            ) else {
                tx.advance_trigger_time(row, None).await?;
                continue;
            };
            let next = TimeTrigger::of(&wf.def.trigger, default_zone).and_then(|t| {
                let zone = contact_zone(&contact.attributes, default_zone);
                t.next_for_contact(&contact.attributes.0, zone, now.max(row.fire_at))
            });
            let next = next.map(|o| TriggerTime {
                workflow: row.workflow.clone(),
                contact_id: row.contact_id.clone(),
                fire_at: o.at,
                occurrence: o.key,
            });
            // Another node advanced it first: that node fires this occurrence.
            if !tx.advance_trigger_time(row, next.as_ref()).await? {
                continue;
            }
            if in_audience(&mut tx, wf, &contact).await?
                && tx
                    .record_fire(&row.workflow, &row.contact_id, &row.occurrence, now)
                    .await?
                && enter_occurrence(&mut tx, core, wf, &contact, &row.occurrence, now)
                    .await?
                    .is_some()
            {
                fired += 1;
            }
        }
        tx.commit().await?;
    }
    let now = core.clock.now();
    for (name, tick_at) in core.store.due_schedules(now).await? {
        let Some(TimeTrigger::ZoneSchedule { cron, zone, .. }) = core
            .workflows
            .get(&name)
            .and_then(|wf| TimeTrigger::of(&wf.def.trigger, default_zone))
        else {
            continue;
        };
        let Some(next) = next_cron(&cron, zone, now) else {
            continue;
        };
        let mut tx = core.store.write().await?;
        if tx.advance_schedule(&name, tick_at, next).await? {
            let payload =
                json!({ "workflow": name, "occurrence": tick_at.to_rfc3339(), "cursor": "" });
            tx.insert_job(&job(SCHEDULE_FIRE_JOB, payload, now, core.max_attempts))
                .await?;
            fired += 1;
        }
        tx.commit().await?;
    }
    fired += crate::segment::membership::sweep(core).await?;
    if crate::segment::membership::tick_refresh(core).await? {
        fired += 1;
    }
    if fired > 0 {
        core.wake_scheduler();
    }
    Ok(fired)
}

/// Runs a paging job (schedule enrollment or trigger backfill) to the end, one batch per
/// transaction; the cursor is stored with each batch's effects.
pub async fn run_paging_job(core: &Core, job: &Job) -> Result<Outcome> {
    let mut payload = job.payload.0.clone();
    loop {
        if let Some(outcome) = run_paging_batch(core, job, &mut payload).await? {
            return Ok(outcome);
        }
    }
}

/// One batch of a paging job, from the cursor in `payload`, committed together with the
/// advanced cursor: a crash between batches resumes after the last committed one, and nobody is
/// enrolled twice. Returns the outcome once the job is over, `None` while contacts remain.
pub async fn run_paging_batch(
    core: &Core,
    job: &Job,
    payload: &mut Value,
) -> Result<Option<Outcome>> {
    let now = core.clock.now();
    let workflow = payload
        .get("workflow")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut tx = core.store.write().await?;
    let Some(wf) = core.workflows.get(&workflow) else {
        tx.finish_job(
            &job.id,
            &core.worker_id,
            job_status::DONE,
            Some("workflow no longer exists"),
            now,
        )
        .await?;
        tx.commit().await?;
        return Ok(Some(Outcome::Done));
    };
    let cursor = super::page_cursor(payload).to_owned();
    let enrolling = job.kind == SCHEDULE_FIRE_JOB;
    let contacts = tx.contacts_after(&cursor, BATCH, enrolling).await?;
    let occurrence = payload
        .get("occurrence")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for contact in &contacts {
        if !enrolling {
            reschedule_for(&mut tx, wf, contact, core.settings.default_timezone(), now).await?;
        } else if in_audience(&mut tx, wf, contact).await? {
            enter_occurrence(&mut tx, core, wf, contact, &occurrence, now).await?;
        }
    }
    let done = (contacts.len() as i64) < BATCH;
    let last = contacts.last().map(|c| c.id.as_str());
    if !super::turn_page(&mut tx, core, job, payload, last, now).await? {
        tx.rollback().await?;
        return Ok(Some(Outcome::LeaseLost));
    }
    if done {
        tx.finish_job(&job.id, &core.worker_id, job_status::DONE, None, now)
            .await?;
    }
    tx.commit().await?;
    if done {
        core.wake_scheduler();
        return Ok(Some(Outcome::Done));
    }
    Ok(None)
}
