//! The send pipeline for one `send` step: message row → policy (consent, suppression) → mark
//! `sending` (the step's transaction ends here) → render → build MIME → transport → receipt.
//! The row is unique per (journey, step), so a retried step reuses it; a row found in
//! `sending` means an earlier process died after handing the message over, and it becomes
//! `unknown` instead of being sent again. No transaction is held across rendering or the
//! transport call.
//!
//! The transport is the step's own `transport`, else the one configured for the workflow's
//! category (`[sending.categories]`), else `sending.transport`; the router may hand the message
//! to a fallback of that transport, and the message row records the one that took it.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::core::Core;
use crate::message::{BuiltMessage, OutgoingEmail, build};
use crate::policy::{CapDecision, Policy, cap_allows, quiet_until};
use crate::store::Journey;
use crate::store::{Contact, Message, Result, Tx, message_status as ms};
use crate::template::Mode;
use crate::transport::SendError;
use crate::transport::route::Sent;
use crate::workflow::engine::contact_zone;
use crate::workflow::model::{CapOutcome, Category, PolicyOverrides, SendSpec};
use crate::workflow::program::Node;
use crate::workflow::trigger::contact_view;

/// What became of a send step.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The message reached a final state (sent, suppressed, failed, unknown): move on.
    Resolved,
    /// A transient failure before the message was handed over: try the step again later.
    Retry {
        error: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Held back — by etiquette (quiet hours, frequency cap) or because every transport that
    /// could carry it has used up its quota: run the step again at `until`, without counting an
    /// attempt.
    Defer {
        until: DateTime<Utc>,
        reason: String,
    },
}

/// A message that passed policy and is marked `sending` in the step's transaction: once that
/// transaction commits, hand it to [`transmit`] (which renders it) and record what happened
/// with [`record`].
pub struct Handover {
    message_id: String,
    transport: String,
    draft: Draft,
}

/// What a handed-over message is rendered from. Rendering happens after the step's
/// transaction, so it never runs on (and holds up) the database writer; a process that dies
/// before the receipt leaves the message `sending`, which becomes `unknown` as for any crash
/// after the hand-over.
struct Draft {
    template: String,
    subject: Option<String>,
    workflow: String,
    event: serde_json::Value,
    contact: Contact,
    marketing: bool,
    /// Links are rewritten for click tracking (marketing only).
    tracked: bool,
}

/// What the step's transaction decided about a send step.
pub enum Prepared {
    /// Nothing goes to a transport: the step is over ([`Delivery::Resolved`]) or held back
    /// ([`Delivery::Defer`]). Whatever was recorded is in the caller's transaction.
    Done(Delivery),
    /// The message is `sending` in the caller's transaction: commit it, then [`transmit`].
    Send(Box<Handover>),
}

/// The first half of a send step, inside the caller's write transaction (which must commit
/// before [`transmit`]): policy, then the message row (unique per journey and step), written
/// at once in the state policy decided (`sending` when it goes out). Never calls the network.
pub async fn prepare(
    core: &Core,
    tx: &mut Tx,
    journey: &Journey,
    node: &Node,
    spec: &SendSpec,
    now: DateTime<Utc>,
) -> Result<Prepared> {
    let wf = core.workflows.get(&journey.workflow);
    let category = wf.map(|w| w.def.category).unwrap_or_default();
    // The step's transport, else the workflow's, else the category's, else the default.
    let transport_name = spec
        .transport
        .clone()
        .or_else(|| wf.and_then(|w| w.def.transport.clone()))
        .unwrap_or_else(|| core.settings.category_transport(category).to_owned());
    let contact = tx.get_contact(&journey.contact_id).await?;
    let to_email = contact
        .as_ref()
        .map(|c| c.email.clone())
        .unwrap_or_default();
    let overrides = wf.map(|w| w.def.policy).unwrap_or_default();
    let verdict = judge(core, tx, contact, category, &transport_name, overrides, now).await?;
    let (status, detail, transport, attempts) = match &verdict {
        Verdict::Send(_) => (ms::SENDING, None, Some(transport_name.clone()), 1),
        Verdict::Resolve { status, detail, .. } => (*status, Some(detail.clone()), None, 0),
        Verdict::Defer { note, .. } => (ms::PENDING, Some(note.clone()), None, 0),
    };
    let row = Message {
        id: uuid::Uuid::now_v7().to_string(),
        journey_id: journey.id.clone(),
        step: node.key.clone(),
        iteration: 0,
        contact_id: journey.contact_id.clone(),
        workflow: journey.workflow.clone(),
        template: spec.template.clone(),
        category: category_name(category).to_owned(),
        to_email,
        subject: None,
        status: status.to_owned(),
        transport,
        provider_message_id: None,
        detail,
        attempts,
        created_at: now,
        updated_at: now,
        sent_at: None,
    };
    let (message, fresh) = tx.insert_message(&row).await?;
    if !fresh {
        // An earlier run of this step left its row.
        match message.status.as_str() {
            ms::PENDING => {}
            ms::SENDING => {
                let detail =
                    "the process stopped after handing the message to the transport; not re-sent";
                tx.transition_message(
                    &message.id,
                    ms::SENDING,
                    ms::UNKNOWN,
                    Some(detail),
                    None,
                    None,
                    None,
                    now,
                )
                .await?;
                tracing::warn!(message = %message.id, "message fate unknown after a restart; not re-sending");
                return Ok(Prepared::Done(Delivery::Resolved));
            }
            _ => return Ok(Prepared::Done(Delivery::Resolved)),
        }
    }
    match verdict {
        Verdict::Send(contact) => {
            let handed_over = fresh
                || tx
                    .transition_message(
                        &message.id,
                        ms::PENDING,
                        ms::SENDING,
                        None,
                        None,
                        None,
                        Some(&transport_name),
                        now,
                    )
                    .await?;
            if !handed_over {
                return Ok(Prepared::Done(Delivery::Resolved));
            }
            Ok(Prepared::Send(Box::new(Handover {
                message_id: message.id,
                transport: transport_name,
                draft: Draft {
                    template: spec.template.clone(),
                    subject: spec.subject.clone(),
                    workflow: journey.workflow.clone(),
                    event: journey.context.0.get("event").cloned().unwrap_or(json!({})),
                    marketing: category == Category::Marketing,
                    tracked: wf
                        .and_then(|w| w.def.tracking)
                        .unwrap_or(core.settings.tracking.enabled),
                    contact: *contact,
                },
            })))
        }
        Verdict::Resolve {
            status,
            detail,
            journey_note,
        } => {
            if let Some(note) = journey_note {
                tx.set_journey_note(&journey.id, note, now).await?;
            }
            if !fresh {
                tx.transition_message(
                    &message.id,
                    ms::PENDING,
                    status,
                    Some(&detail),
                    None,
                    None,
                    None,
                    now,
                )
                .await?;
            }
            tracing::info!(message = %message.id, status, detail, "message not sent");
            Ok(Prepared::Done(Delivery::Resolved))
        }
        Verdict::Defer { until, note } => {
            tx.set_journey_note(&journey.id, &note, now).await?;
            if !fresh {
                tx.set_message_detail(&message.id, &note, now).await?;
            }
            Ok(Prepared::Done(Delivery::Defer {
                until,
                reason: note,
            }))
        }
    }
}

/// What policy decided about a send, before any message row is written.
enum Verdict {
    /// Hand it to the transport.
    Send(Box<Contact>),
    /// A final status without sending, with a note for the journey.
    Resolve {
        status: &'static str,
        detail: String,
        journey_note: Option<&'static str>,
    },
    /// Held back until `until` (quiet hours, a frequency cap).
    Defer { until: DateTime<Utc>, note: String },
}

/// Consent, suppression, etiquette and the transport, in that order: reads only.
async fn judge(
    core: &Core,
    tx: &mut Tx,
    contact: Option<Contact>,
    category: Category,
    transport_name: &str,
    overrides: PolicyOverrides,
    now: DateTime<Utc>,
) -> Result<Verdict> {
    let resolve = |status, detail: &str| Verdict::Resolve {
        status,
        detail: detail.to_owned(),
        journey_note: None,
    };
    let Some(contact) = contact else {
        return Ok(resolve(ms::SUPPRESSED, "contact no longer exists"));
    };
    if let Some(reason) = blocked(tx, &contact, category).await? {
        return Ok(resolve(ms::SUPPRESSED, &reason));
    }
    if category == Category::Marketing {
        let policy = Policy::for_workflow(core.policy, &overrides);
        match etiquette(tx, core, &contact, &policy, now).await? {
            Some(Etiquette::Skip) => {
                const SKIPPED: &str = "skipped: frequency_cap";
                return Ok(Verdict::Resolve {
                    status: ms::SKIPPED,
                    detail: SKIPPED.to_owned(),
                    journey_note: Some(SKIPPED),
                });
            }
            Some(Etiquette::Defer { until, reason }) => {
                let note = format!("deferred_until {}: {reason}", until.to_rfc3339());
                return Ok(Verdict::Defer { until, note });
            }
            None => {}
        }
    }
    if !core.transports.contains(transport_name) {
        let detail = format!("no transport named `{transport_name}`");
        return Ok(resolve(ms::FAILED, &detail));
    }
    Ok(Verdict::Send(Box::new(contact)))
}

/// Renders and builds a handed-over message, outside any transaction (so templating never
/// holds up the database writer). A failure here is the message's, not the transport's.
fn compose(core: &Core, handover: &Handover, now: DateTime<Utc>) -> Result<BuiltMessage, String> {
    let Handover {
        message_id, draft, ..
    } = handover;
    let contact = &draft.contact;
    let unsubscribe_url = core.unsubscribe_url(&contact.id, message_id);
    let context = json!({
        "contact": contact_view(contact),
        "event": draft.event,
        "workflow": { "name": draft.workflow },
        "message": { "id": message_id },
        "unsubscribe_url": unsubscribe_url,
    });
    let rendered = core
        .templates
        .render(
            &draft.template,
            &context,
            draft.subject.as_deref(),
            Mode::Lenient,
        )
        .map_err(|e| format!("render failed: {e}"))?;
    if rendered.missing_variables {
        tracing::warn!(message = %message_id, template = %draft.template, "template rendered with missing variables");
    }
    let mut headers = vec![("X-Herald-Workflow".to_owned(), draft.workflow.clone())];
    let mut html = rendered.html;
    if draft.marketing {
        if draft.tracked {
            let base = core.settings.server.public_url.trim_end_matches('/');
            html = crate::tracking::links::instrument(
                &html,
                &core.tokens,
                base,
                message_id,
                &[&unsubscribe_url],
            );
        }
        let list_unsubscribe = match &core.settings.sending.unsubscribe_mailto {
            Some(mailbox) => format!(
                "<{unsubscribe_url}>, <mailto:{mailbox}?subject=unsubscribe%20{message_id}>"
            ),
            None => format!("<{unsubscribe_url}>"),
        };
        headers.push(("List-Unsubscribe".to_owned(), list_unsubscribe));
        headers.push((
            "List-Unsubscribe-Post".to_owned(),
            "List-Unsubscribe=One-Click".to_owned(),
        ));
    }
    let email = OutgoingEmail {
        message_id: message_id.clone(),
        from: rendered
            .from
            .unwrap_or_else(|| core.settings.sending.from.clone()),
        to: contact.email.clone(),
        subject: rendered.subject,
        html,
        text: rendered.text,
        headers,
        date: now,
    };
    build(&email).map_err(|e| format!("invalid message: {e}"))
}

/// Composes a prepared message and hands it to its transport. Call only after the transaction
/// that marked it `sending` committed; no transaction may be open across this call.
pub async fn transmit(core: &Core, handover: &Handover) -> Attempt {
    let mut watch = UntilHanded {
        core,
        message_id: &handover.message_id,
        handed: AtomicBool::new(false),
        over: false,
    };
    let built = match compose(core, handover, core.clock.now()) {
        Ok(built) => built,
        Err(detail) => {
            watch.over = true;
            return Attempt {
                subject: None,
                result: Err(NotSent::Unsendable(detail)),
            };
        }
    };
    let result = core
        .transports
        .send_noting(&handover.transport, &built, &watch.handed)
        .await
        .map_err(NotSent::Transport);
    watch.over = true;
    Attempt {
        subject: Some(built.subject),
        result,
    }
}

/// Notes a message whose [`transmit`] is dropped (a shutdown cancelled it) before any transport
/// saw it, typically while it waited for its transport's turn: the shutdown puts it back to
/// `pending` (`scheduler::finish_in_flight`), so its job's next run sends it rather than
/// recording it `unknown` as if it might have gone out.
struct UntilHanded<'a> {
    core: &'a Core,
    message_id: &'a str,
    handed: AtomicBool,
    /// `transmit` returned: whatever happened is in its [`Attempt`].
    over: bool,
}

impl Drop for UntilHanded<'_> {
    fn drop(&mut self) {
        if !self.over && !self.handed.load(Ordering::Acquire) {
            self.core
                .cancelled_unsent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.message_id.to_owned());
        }
    }
}

/// Puts the messages whose send a shutdown cancelled before any transport saw them back from
/// `sending` to `pending`, before their jobs' leases are released.
pub async fn reopen_cancelled(core: &Core) -> Result<usize> {
    let ids = std::mem::take(
        &mut *core
            .cancelled_unsent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if ids.is_empty() {
        return Ok(0);
    }
    let now = core.clock.now();
    let mut tx = core.store.write().await?;
    let mut reopened = 0;
    for id in &ids {
        let detail = "cancelled at shutdown before any transport saw it; sent on the next run";
        if tx
            .transition_message(
                id,
                ms::SENDING,
                ms::PENDING,
                Some(detail),
                None,
                None,
                None,
                now,
            )
            .await?
        {
            reopened += 1;
        }
    }
    tx.commit().await?;
    Ok(reopened)
}

/// What became of one handed-over message.
pub struct Attempt {
    /// The rendered subject, when the message could be composed.
    subject: Option<String>,
    result: Result<Sent, NotSent>,
}

/// Why a handed-over message did not go out.
enum NotSent {
    /// It could not be rendered or built; no transport saw it.
    Unsendable(String),
    Transport(SendError),
}

/// What the transport answered about a handed-over message, as it will be recorded.
#[derive(Debug, Clone)]
pub struct Receipt {
    message_id: String,
    /// The message's new status.
    status: &'static str,
    detail: String,
    subject: Option<String>,
    provider_message_id: Option<String>,
    /// The transport that took it (the route's, or a fallback).
    transport: Option<String>,
    /// Suppress this address (a hard bounce).
    suppress: Option<String>,
    /// What the step does next.
    pub delivery: Delivery,
}

/// Turns what became of a handed-over message into the [`Receipt`] to record.
pub fn receipt(handover: &Handover, attempt: Attempt, now: DateTime<Utc>) -> Receipt {
    let message_id = handover.message_id.clone();
    let subject = attempt.subject;
    let receipt = |status, detail, delivery| Receipt {
        message_id: message_id.clone(),
        status,
        detail,
        subject: subject.clone(),
        provider_message_id: None,
        transport: None,
        suppress: None,
        delivery,
    };
    let e = match attempt.result {
        Ok(sent) => {
            return Receipt {
                provider_message_id: sent.receipt.provider_message_id,
                transport: Some(sent.transport),
                ..receipt(ms::SENT, sent.receipt.response, Delivery::Resolved)
            };
        }
        Err(NotSent::Unsendable(detail)) => {
            tracing::info!(message = %message_id, detail, "message not sent");
            return receipt(ms::FAILED, detail, Delivery::Resolved);
        }
        Err(NotSent::Transport(e)) => e,
    };
    match e {
        e if e.after_data => {
            let detail = format!("connection lost after the message was transmitted: {e}");
            receipt(ms::UNKNOWN, detail, Delivery::Resolved)
        }
        e if e.deferred_until.is_some() => {
            let detail = e.to_string();
            let until = e.deferred_until.unwrap_or(now);
            let reason = detail.clone();
            receipt(ms::PENDING, detail, Delivery::Defer { until, reason })
        }
        e if e.is_transient() => {
            let detail = e.to_string();
            let retry = Delivery::Retry {
                error: detail.clone(),
                retry_after: e.retry_after,
            };
            receipt(ms::PENDING, detail, retry)
        }
        e => Receipt {
            suppress: e
                .is_hard_bounce()
                .then(|| handover.draft.contact.email.clone()),
            ..receipt(ms::FAILED, e.to_string(), Delivery::Resolved)
        },
    }
}

/// Records a [`Receipt`] in the caller's write transaction. It does not depend on the job's
/// lease: the message went (or did not) either way.
pub async fn record(tx: &mut Tx, receipt: &Receipt, now: DateTime<Utc>) -> Result<()> {
    if let Some(email) = &receipt.suppress {
        tx.suppress(email, "hard_bounce", Some(&receipt.detail), now)
            .await?;
    }
    tx.transition_message(
        &receipt.message_id,
        ms::SENDING,
        receipt.status,
        Some(&receipt.detail),
        receipt.provider_message_id.as_deref(),
        receipt.subject.as_deref(),
        receipt.transport.as_deref(),
        now,
    )
    .await?;
    Ok(())
}

/// Marks a step's pending message failed when its job runs out of attempts.
pub async fn give_up(
    tx: &mut Tx,
    journey: &Journey,
    step: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if let Some(m) = tx.journey_message(&journey.id, step).await? {
        tx.transition_message(
            &m.id,
            ms::PENDING,
            ms::FAILED,
            Some(reason),
            None,
            None,
            None,
            now,
        )
        .await?;
    }
    Ok(())
}

enum Etiquette {
    Skip,
    Defer {
        until: DateTime<Utc>,
        reason: &'static str,
    },
}

/// Quiet hours, then the frequency cap, for a marketing send due now.
async fn etiquette(
    tx: &mut Tx,
    core: &Core,
    contact: &Contact,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Option<Etiquette>> {
    if let Some(window) = &policy.quiet_hours {
        let zone = contact_zone(&contact.attributes, core.settings.default_timezone());
        if let Some(until) = quiet_until(now, zone, window) {
            return Ok(Some(Etiquette::Defer {
                until,
                reason: "quiet_hours",
            }));
        }
    }
    if let Some(cap) = &policy.frequency_cap {
        // Two journeys of one contact must not both pass the cap on the same count.
        tx.lock_contact(&contact.id).await?;
        let sends = tx
            .recent_marketing_sends(&contact.id, now - cap.per.0)
            .await?;
        if let CapDecision::Over { until } = cap_allows(now, cap, &sends) {
            return Ok(Some(match cap.outcome {
                CapOutcome::Skip => Etiquette::Skip,
                CapOutcome::Defer => Etiquette::Defer {
                    until,
                    reason: "frequency_cap",
                },
            }));
        }
    }
    Ok(None)
}

/// Why this contact must not get this category of mail, if it must not. Marketing needs a
/// subscribed contact and an unsuppressed address; transactional mail ignores unsubscribes
/// but never goes to a bounced, complaining or manually suppressed address.
async fn blocked(tx: &mut Tx, contact: &Contact, category: Category) -> Result<Option<String>> {
    if category == Category::Marketing && !contact.subscribed {
        return Ok(Some("contact is unsubscribed".to_owned()));
    }
    if let Some(s) = tx.suppression(&contact.email).await?
        && (category == Category::Marketing || s.reason != "unsubscribed")
    {
        return Ok(Some(format!("address suppressed: {}", s.reason)));
    }
    Ok(None)
}

pub fn category_name(c: Category) -> &'static str {
    match c {
        Category::Marketing => "marketing",
        Category::Transactional => "transactional",
    }
}
