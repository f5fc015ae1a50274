//! The journey engine: runs a claimed journey job step by step until the journey waits, ends or
//! needs a retry. Every move is committed before the next step starts, and every change checks
//! that this worker still holds the job's lease, so a journey never runs on two workers at once.

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveTime, TimeDelta, Utc, Weekday};
use chrono_tz::Tz;
use serde_json::Value;
use sqlx::types::Json;

use super::condition::{Subject, evaluate};
use super::model::{StepKind, Variant, Wait};
use super::program::Node;
use super::timing::local_instant;
use super::trigger::contact_view;
use crate::core::Core;
use crate::send::{self, Delivery, Handover, Prepared};
use crate::store::{Job, Journey, Result, Tx, job_status, journey_status};

/// How a job run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The journey ended (or was already over); the job is done.
    Done,
    /// The journey waits; the job is queued for later.
    Waiting(DateTime<Utc>),
    /// A transient failure; the job is queued for a retry.
    Retrying(DateTime<Utc>),
    /// The provider's quota is used up; the job is queued for when it resets, attempt refunded.
    Deferred(DateTime<Utc>),
    /// Out of attempts: the job is dead and the journey failed.
    Dead,
    /// Another worker took the job over (our lease expired); we stopped touching it.
    LeaseLost,
}

/// Where a journey goes after a step.
enum Move {
    To(Option<String>),
    End(&'static str, String),
}

/// What one step's transaction decided.
enum Step {
    /// This run of the job is over.
    Over(Outcome),
    /// The journey moved on: run its next step.
    Next,
    /// The message is `sending`: hand it over once the transaction committed.
    Send(Box<Handover>, Box<(Journey, Node)>),
}

pub async fn run_journey_job(core: &Core, job: &Job) -> Result<Outcome> {
    let Some(journey_id) = job.journey_id.clone() else {
        return finish(
            core,
            job,
            job_status::DEAD,
            Some("journey job without a journey"),
        )
        .await;
    };
    let job = Arc::new(job.clone());
    let journey_id: Arc<str> = journey_id.into();
    // When the current step became due. A wait counts from there, not from when a (possibly
    // late) worker got to it, so waits that expired while Herald was down end at once.
    let mut due = job.run_at;
    loop {
        let now = core.clock.now();
        // Steps that workers reach together share a transaction (see `GroupCommit`).
        let step = {
            let (job, journey_id) = (Arc::clone(&job), Arc::clone(&journey_id));
            core.group
                .run(core, &core.store, move |core, tx| {
                    let (job, journey_id) = (Arc::clone(&job), Arc::clone(&journey_id));
                    Box::pin(async move { step(core, tx, &job, &journey_id, due, now).await })
                })
                .await?
        };
        let (handover, at) = match step {
            Step::Over(outcome) => return Ok(requeued(core, outcome)),
            Step::Next => continue,
            Step::Send(handover, at) => (handover, at),
        };
        let attempt = keeping_lease(core, &job, send::transmit(core, &handover)).await;
        let now = core.clock.now();
        let receipt = Arc::new(send::receipt(&handover, attempt, now));
        // The receipt and the journey's next move share a transaction, and so do the
        // receipts of sends that finish together.
        let (job2, at) = (Arc::clone(&job), Arc::new(*at));
        let outcome = core
            .group
            .run(core, &core.store, move |core, tx| {
                let (receipt, job, at) = (Arc::clone(&receipt), Arc::clone(&job2), Arc::clone(&at));
                Box::pin(async move {
                    let (journey, node) = &*at;
                    send::record(tx, &receipt, now).await?;
                    next_move(
                        tx,
                        &core.worker_id,
                        &job,
                        journey,
                        node,
                        &receipt.delivery,
                        now,
                    )
                    .await
                })
            })
            .await?;
        due = now;
        match outcome {
            Some(outcome) => return Ok(requeued(core, outcome)),
            None => continue,
        }
    }
}

/// Runs `send` while renewing this worker's lease on `job` every third of a lease. A send may
/// wait for its transport's turn (a slow `rate`, a busy connection pool) longer than the lease;
/// were the lease to run out meanwhile, the reaper would hand the job to another worker, which
/// would find the message `sending` and record it `unknown` while this one sends it.
async fn keeping_lease<T>(core: &Core, job: &Arc<Job>, send: impl Future<Output = T>) -> T {
    let renew = async {
        loop {
            core.clock
                .sleep_until(core.clock.now() + core.lease / 3)
                .await;
            let until = core.clock.now() + core.lease;
            let renewing = Arc::clone(job);
            let renewed = core
                .group
                .run(core, &core.store, move |core, tx| {
                    let job = Arc::clone(&renewing);
                    Box::pin(
                        async move { tx.renew_job(&job.id, &core.worker_id, until, None).await },
                    )
                })
                .await;
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(job = %job.id, "lease lost while sending: another worker may have taken the job over");
                    return std::future::pending::<std::convert::Infallible>().await;
                }
                // Tried again a third of a lease later, well before the lease runs out.
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot renew the lease while sending")
                }
            }
        }
    };
    tokio::select! {
        biased;
        out = send => out,
        never = renew => match never {},
    }
}

/// Runs the journey's current step in `tx`, up to the network: everything but the transport
/// call of a send. Checks first that this worker still holds the job.
async fn step(
    core: &Core,
    tx: &mut Tx,
    job: &Job,
    journey_id: &str,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Step> {
    // One statement checks the lease and reads the journey; only when it finds nothing does a
    // second one tell a lost lease from a journey that is gone.
    let journey = match tx
        .held_journey(&job.id, &core.worker_id, journey_id)
        .await?
    {
        Some(j) if j.status == journey_status::ACTIVE => j,
        found => {
            if found.is_none() && !tx.holds_job(&job.id, &core.worker_id).await? {
                return Ok(Step::Over(Outcome::LeaseLost));
            }
            tx.finish_job(&job.id, &core.worker_id, job_status::DONE, None, now)
                .await?;
            return Ok(Step::Over(Outcome::Done));
        }
    };
    let node = match locate(core, &journey) {
        Ok(node) => node,
        Err(reason) => {
            end(
                tx,
                &core.worker_id,
                job,
                &journey,
                journey_status::FAILED,
                &reason,
                now,
            )
            .await?;
            return Ok(Step::Over(Outcome::Done));
        }
    };
    let mv = match &node.step.kind {
        StepKind::Wait(wait) => {
            let until = wait_until(core, tx, &journey, wait, due.min(now)).await?;
            return park(tx, core, job, &journey, node.next.clone(), None, until, now).await;
        }
        StepKind::WaitFor { event, timeout } => {
            // Wait until the event arrives (trigger::on_event wakes the job) or the timeout.
            let until = due.min(now) + timeout.0;
            let mut context = journey.context.0.clone();
            context["waiting"] =
                serde_json::json!({ "step": node.key, "event": event, "until": until });
            return park(
                tx,
                core,
                job,
                &journey,
                node.next.clone(),
                Some(&context),
                until,
                now,
            )
            .await;
        }
        StepKind::Branch { condition, .. } => {
            let holds = branch_holds(core, tx, &journey, condition, now).await?;
            Move::To(node.children[if holds { 0 } else { 1 }].clone())
        }
        StepKind::Split(variants) => {
            let (index, variant) = choose_variant(&journey, &node.key, variants);
            let mut context = journey.context.0.clone();
            if let Value::Object(map) = &mut context {
                let chosen = map
                    .entry("variants")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(v) = chosen {
                    v.insert(node.key.clone(), Value::String(variant.name.clone()));
                }
            }
            let target = node.children.get(index).cloned().flatten();
            match target.or_else(|| node.next.clone()) {
                Some(next) => {
                    tx.advance_journey(&journey.id, &next, Some(&context), now)
                        .await?;
                    return Ok(Step::Next);
                }
                None => Move::To(None),
            }
        }
        StepKind::Update { attribute, value } => {
            // Locked as read (PostgreSQL): the attributes written back build on the latest.
            if let Some(mut contact) = tx.lock_and_get_contact(&journey.contact_id).await? {
                let mut attributes = contact.attributes.0.clone();
                set_path(&mut attributes, attribute, value.clone());
                tx.set_contact_attributes(&contact.id, &attributes, now)
                    .await?;
                contact.attributes.0 = attributes;
                crate::segment::membership::on_contact_changed(tx, core, &contact, now).await?;
            }
            Move::To(node.next.clone())
        }
        StepKind::Suppress { reason } => {
            if let Some(contact) = tx.get_contact(&journey.contact_id).await? {
                let detail = format!("workflow {}", journey.workflow);
                tx.suppress(&contact.email, reason, Some(&detail), now)
                    .await?;
            }
            Move::To(node.next.clone())
        }
        StepKind::Exit => Move::End(journey_status::COMPLETED, "exit step".to_owned()),
        StepKind::Send(spec) => {
            // The message row and the move to `sending` share this step's transaction, which
            // commits before the transport is called.
            match send::prepare(core, tx, &journey, &node, spec, now).await? {
                Prepared::Done(Delivery::Resolved) => Move::To(node.next.clone()),
                Prepared::Done(delivery) => {
                    let outcome =
                        next_move(tx, &core.worker_id, job, &journey, &node, &delivery, now)
                            .await?;
                    return Ok(outcome.map_or(Step::Next, Step::Over));
                }
                Prepared::Send(handover) => {
                    return Ok(Step::Send(handover, Box::new((journey, node))));
                }
            }
        }
    };
    let outcome = match mv {
        Move::To(target) => go(tx, &core.worker_id, job, &journey, target, now).await?,
        Move::End(status, reason) => {
            end(tx, &core.worker_id, job, &journey, status, &reason, now).await?;
            Some(Outcome::Done)
        }
    };
    Ok(outcome.map_or(Step::Next, Step::Over))
}

/// Moves the journey to `next` and parks its job until `until` (a wait); completes the journey
/// when nothing follows, since waiting to end changes nothing.
#[allow(clippy::too_many_arguments)]
async fn park(
    tx: &mut Tx,
    core: &Core,
    job: &Job,
    journey: &Journey,
    next: Option<String>,
    context: Option<&Value>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Step> {
    let Some(next) = next else {
        end(
            tx,
            &core.worker_id,
            job,
            journey,
            journey_status::COMPLETED,
            "completed",
            now,
        )
        .await?;
        return Ok(Step::Over(Outcome::Done));
    };
    tx.advance_journey(&journey.id, &next, context, now).await?;
    tx.requeue_job(&job.id, &core.worker_id, until, true, None, now)
        .await?;
    Ok(Step::Over(Outcome::Waiting(until)))
}

/// The journey's current step, or why it cannot run.
fn locate(core: &Core, journey: &Journey) -> Result<Node, String> {
    let wf = core
        .workflows
        .get(&journey.workflow)
        .ok_or_else(|| format!("workflow `{}` no longer exists", journey.workflow))?;
    let key = journey.step.as_deref().ok_or("journey has no next step")?;
    wf.program.node(key).cloned().ok_or_else(|| {
        format!(
            "step `{key}` no longer exists in workflow `{}`",
            journey.workflow
        )
    })
}

/// Moves to `target` and keeps running (`None`), or completes the journey at the end. The
/// caller's transaction already checked the lease.
async fn go(
    tx: &mut Tx,
    worker: &str,
    job: &Job,
    journey: &Journey,
    target: Option<String>,
    now: DateTime<Utc>,
) -> Result<Option<Outcome>> {
    match target {
        Some(next) => {
            if tx.advance_journey(&journey.id, &next, None, now).await? {
                Ok(None)
            } else {
                // The journey exited while this step ran.
                tx.finish_job(&job.id, worker, job_status::DONE, None, now)
                    .await?;
                Ok(Some(Outcome::Done))
            }
        }
        None => Ok(Some(
            if end(
                tx,
                worker,
                job,
                journey,
                journey_status::COMPLETED,
                "completed",
                now,
            )
            .await?
            {
                Outcome::Done
            } else {
                Outcome::LeaseLost
            },
        )),
    }
}

/// Finishes the worker's job and ends its journey; answers false, changing nothing, when the
/// worker no longer holds the job. A journey has one job, so finishing it closes the journey's
/// work.
async fn end(
    tx: &mut Tx,
    worker: &str,
    job: &Job,
    journey: &Journey,
    status: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    if !tx
        .finish_job(&job.id, worker, job_status::DONE, None, now)
        .await?
    {
        return Ok(false);
    }
    if status == journey_status::FAILED {
        tracing::warn!(journey = %journey.id, workflow = %journey.workflow, reason, "journey failed");
    }
    tx.close_journey(&journey.id, status, reason, now).await?;
    Ok(true)
}

/// The journey's next move after a send step, in the transaction that records the step's
/// outcome (which commits whatever happens, since a receipt must stay): when this worker still
/// holds the job, move on, retry or defer; else change nothing more. `None`: the journey moved
/// on to its next step; keep running.
async fn next_move(
    tx: &mut Tx,
    worker: &str,
    job: &Job,
    journey: &Journey,
    node: &Node,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<Option<Outcome>> {
    Ok(match delivery {
        // Ending the journey checks the lease in the statement that finishes the job; moving
        // on to a next step checks it first.
        Delivery::Resolved if node.next.is_some() && !tx.holds_job(&job.id, worker).await? => {
            Some(Outcome::LeaseLost)
        }
        Delivery::Resolved => go(tx, worker, job, journey, node.next.clone(), now).await?,
        Delivery::Retry { error, retry_after } => {
            Some(retry(tx, worker, job, journey, node, error, *retry_after, now).await?)
        }
        Delivery::Defer { until, reason } => {
            Some(defer(tx, worker, job, reason, *until, now).await?)
        }
    })
}

/// Wakes the scheduler when a committed outcome queued the job again.
fn requeued(core: &Core, outcome: Outcome) -> Outcome {
    if matches!(
        outcome,
        Outcome::Waiting(_) | Outcome::Retrying(_) | Outcome::Deferred(_)
    ) {
        core.wake_scheduler();
    }
    outcome
}

async fn finish(core: &Core, job: &Job, status: &str, error: Option<&str>) -> Result<Outcome> {
    let mut tx = core.store.write().await?;
    tx.finish_job(&job.id, &core.worker_id, status, error, core.clock.now())
        .await?;
    tx.commit().await?;
    Ok(if status == job_status::DEAD {
        Outcome::Dead
    } else {
        Outcome::Done
    })
}

/// Re-queues the job after a transient send failure, or gives up when out of attempts.
#[allow(clippy::too_many_arguments)]
async fn retry(
    tx: &mut Tx,
    worker: &str,
    job: &Job,
    journey: &Journey,
    node: &Node,
    error: &str,
    retry_after: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    if job.attempts >= job.max_attempts {
        let reason = format!("gave up after {} attempts: {error}", job.attempts);
        send::give_up(tx, journey, &node.key, &reason, now).await?;
        tx.end_journey(&journey.id, journey_status::FAILED, &reason, now)
            .await?;
        // end_journey closed the job as done; mark it dead so it shows up as such.
        crate::scheduler::mark_dead(tx, &job.id, &reason, now).await?;
        return Ok(Outcome::Dead);
    }
    let delay = crate::scheduler::backoff(job.attempts, retry_after);
    let at = now + delay;
    tx.requeue_job(&job.id, worker, at, false, Some(error), now)
        .await?;
    Ok(Outcome::Retrying(at))
}

/// Re-queues the job for `until` (quiet hours end, the frequency cap allows, a provider quota
/// resets) without counting the attempt: waiting is not a failure of the message, and must not
/// exhaust its attempts.
async fn defer(
    tx: &mut Tx,
    worker: &str,
    job: &Job,
    error: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    let at = until.max(now);
    if !tx.defer_job(&job.id, worker, at, error, now).await? {
        return Ok(Outcome::LeaseLost);
    }
    tracing::info!(job = %job.id, until = %at, reason = error, "send deferred");
    Ok(Outcome::Deferred(at))
}

async fn branch_holds(
    core: &Core,
    tx: &mut Tx,
    journey: &Journey,
    condition: &super::model::Condition,
    now: DateTime<Utc>,
) -> Result<bool> {
    let contact = tx.get_contact(&journey.contact_id).await?;
    let view = contact.as_ref().map(contact_view).unwrap_or(Value::Null);
    let event_props = journey.context.0.pointer("/event/properties").cloned();
    let subject = Subject {
        contact_id: &journey.contact_id,
        contact: &view,
        event: event_props.as_ref(),
        journey_id: Some(&journey.id),
        journey_since: Some(journey.entered_at),
        now,
    };
    let program = core
        .workflows
        .get(&journey.workflow)
        .map(|w| w.program.clone())
        .unwrap_or_default();
    let step_key = move |id: &str| program.key_of(id);
    evaluate(condition, &subject, tx, &step_key).await
}

/// Picks a split variant by weight, sticky per contact: the same contact always lands in the
/// same variant of the same step.
fn choose_variant<'v>(
    journey: &Journey,
    step_key: &str,
    variants: &'v [Variant],
) -> (usize, &'v Variant) {
    let total: u64 = variants
        .iter()
        .map(|v| u64::from(v.weight))
        .sum::<u64>()
        .max(1);
    let digest = sha2_digest(&format!(
        "{}/{}/{}",
        journey.workflow, step_key, journey.contact_id
    ));
    let mut point = digest % total;
    for (i, v) in variants.iter().enumerate() {
        if point < u64::from(v.weight) {
            return (i, v);
        }
        point -= u64::from(v.weight);
    }
    (0, &variants[0])
}

fn sha2_digest(text: &str) -> u64 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(bytes)
}

/// Sets `value` at a dotted path inside a JSON object, creating objects on the way.
fn set_path(target: &mut Value, path: &str, value: Value) {
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let mut cursor = target;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = cursor else { return };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        let entry = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
        if !entry.is_object() {
            *entry = Value::Object(Default::default());
        }
        cursor = entry;
    }
}

/// When a `wait` step ends.
async fn wait_until(
    core: &Core,
    tx: &mut Tx,
    journey: &Journey,
    wait: &Wait,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    Ok(match wait {
        Wait::For(d) => now + d.0,
        Wait::Until { until, days } => {
            let zone = match tx.get_contact(&journey.contact_id).await? {
                Some(c) => contact_zone(&c.attributes, core.settings.default_timezone()),
                None => core.settings.default_timezone(),
            };
            next_local_time(now, zone, *until, days)
        }
    })
}

/// The contact's IANA zone from its `timezone` attribute, else `default`.
pub fn contact_zone(attributes: &Json<Value>, default: Tz) -> Tz {
    attributes
        .0
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The first instant after `now` that is `at` local time in `zone` on one of `days` (any day
/// when empty). A local time skipped by a DST change maps to the first valid instant after it.
pub fn next_local_time(
    now: DateTime<Utc>,
    zone: Tz,
    at: NaiveTime,
    days: &[Weekday],
) -> DateTime<Utc> {
    let today = now.with_timezone(&zone).date_naive();
    (0..=8)
        .map(|offset| today + TimeDelta::days(offset))
        .filter(|date| days.is_empty() || days.contains(&date.weekday()))
        .map(|date| local_instant(zone, date.and_time(at)))
        .find(|instant| *instant > now)
        .unwrap_or(now + TimeDelta::days(7))
}
