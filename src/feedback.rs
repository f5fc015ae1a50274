//! Delivery feedback becomes state. Every report — a provider webhook event, a hit on Herald's
//! own open/click/unsubscribe links, or engagement posted as an event — goes into one ledger
//! (`delivery_events`), idempotently, correlated to our message by our id and else by the
//! provider's; unmatched reports are kept as orphans. Then it acts: hard bounces and
//! complaints suppress the address at once, soft bounces after a limit, unsubscribes end
//! consent; and a correlated report becomes a contact event (`email_opened`, …) that segments,
//! branches and triggers see.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::core::Core;
use crate::store::{ContactActivity, DeliveryRow, Event, MessageFacts, Result, Tx};
use crate::webhook::{DeliveryEvent, DeliveryKind};
use crate::workflow::trigger::on_event;

/// Reports per round of statements. A ledger row takes 12 bind parameters, so a round stays far
/// below SQLite's limit of 32,766 and PostgreSQL's 65,535.
const CHUNK: usize = 500;

/// One report about a message, from any source.
#[derive(Debug, Clone)]
pub struct Report {
    /// `sendgrid`, `postmark`, … for webhooks; `herald` for own tracking; `api` for events.
    pub source: String,
    /// Stable per source: a retried report carries the same id and changes nothing.
    pub source_event_id: String,
    pub herald_message_id: Option<String>,
    pub provider_message_id: Option<String>,
    pub recipient: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub kind: DeliveryKind,
}

impl From<&DeliveryEvent> for Report {
    fn from(e: &DeliveryEvent) -> Report {
        Report {
            source: e.provider.as_str().to_owned(),
            source_event_id: e.provider_event_id.clone(),
            herald_message_id: e.herald_message_id.clone(),
            provider_message_id: e.provider_message_id.clone(),
            recipient: e.recipient.clone(),
            occurred_at: e.occurred_at,
            kind: e.kind.clone(),
        }
    }
}

fn detail(kind: &DeliveryKind) -> (Option<&'static str>, Value, bool) {
    match kind {
        DeliveryKind::Bounced { hard, code, reason } => (
            Some(if *hard { "hard" } else { "soft" }),
            json!({ "code": code, "reason": reason }),
            false,
        ),
        DeliveryKind::Deferred { reason } | DeliveryKind::Dropped { reason } => {
            (None, json!({ "reason": reason }), false)
        }
        DeliveryKind::Opened { machine } => (None, json!({}), *machine),
        DeliveryKind::Clicked { url, machine } => (None, json!({ "url": url }), *machine),
        DeliveryKind::Delivered | DeliveryKind::Complained | DeliveryKind::Unsubscribed => {
            (None, json!({}), false)
        }
    }
}

/// What recording a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Reports stored now.
    pub stored: usize,
    /// Reports stored before (a retried webhook), or repeated within the batch.
    pub duplicates: usize,
}

/// Whether a stored report also becomes the contact's `email_<kind>` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    Emit,
    /// The report came in as that contact event (engagement posted to the events API).
    AlreadyEmitted,
}

/// Stores reports, in order, with all their effects: suppression and consent, and for
/// correlated reports the contact's `email_<kind>` event applied to journeys. A report stored
/// before, or repeated within `reports`, changes nothing. The work is done in a few statements
/// per [`CHUNK`] reports rather than several per report; the outcome is the one recording them
/// one by one would give.
pub async fn record_batch(
    tx: &mut Tx,
    core: &Core,
    reports: &[Report],
    now: DateTime<Utc>,
) -> Result<Tally> {
    let mut tally = Tally::default();
    for chunk in reports.chunks(CHUNK) {
        let t = record_chunk(tx, core, chunk, now, Behavior::Emit).await?;
        tally.stored += t.stored;
        tally.duplicates += t.duplicates;
    }
    Ok(tally)
}

/// Stores a report that arrived as the contact's behavioral event itself, with its effects on
/// suppression and consent. Answers false when the same report was stored before.
pub async fn record(tx: &mut Tx, core: &Core, report: &Report, now: DateTime<Utc>) -> Result<bool> {
    let reports = std::slice::from_ref(report);
    let tally = record_chunk(tx, core, reports, now, Behavior::AlreadyEmitted).await?;
    Ok(tally.stored == 1)
}

/// A report about to be stored, with the message it was matched to.
struct Pending<'a> {
    row: DeliveryRow,
    kind: &'a DeliveryKind,
    message: Option<&'a MessageFacts>,
}

async fn record_chunk(
    tx: &mut Tx,
    core: &Core,
    reports: &[Report],
    now: DateTime<Utc>,
    behavior: Behavior,
) -> Result<Tally> {
    let messages = correlate(tx, reports).await?;
    let mut seen = HashSet::new();
    let mut pending = Vec::with_capacity(reports.len());
    for report in reports {
        if seen.insert((report.source.as_str(), report.source_event_id.as_str())) {
            let message = message_for(&messages, report);
            pending.push(Pending {
                row: ledger_row(report, message, now),
                kind: &report.kind,
                message,
            });
        }
    }
    // In key order, so concurrent transactions storing the same reports (a webhook retried
    // while the first delivery is still being stored) cannot deadlock on PostgreSQL.
    let mut insert: Vec<&DeliveryRow> = pending.iter().map(|p| &p.row).collect();
    insert.sort_unstable_by(|a, b| {
        (&a.provider, &a.provider_event_id).cmp(&(&b.provider, &b.provider_event_id))
    });
    let stored: HashSet<String> = tx.insert_deliveries(&insert).await?.into_iter().collect();
    pending.retain(|p| stored.contains(&p.row.id));
    let tally = Tally {
        stored: pending.len(),
        duplicates: reports.len() - pending.len(),
    };
    let with_effects = match behavior {
        Behavior::Emit => emit_behavior(tx, core, &pending, now).await?,
        Behavior::AlreadyEmitted => vec![None; pending.len()],
    };
    let since = now - soft_bounce_window(core);
    for (i, (p, event)) in pending.iter().zip(with_effects).enumerate() {
        if let Some(address) = &p.row.recipient {
            // Recording one by one, this report would not see the soft bounces after it.
            let later = pending[i + 1..]
                .iter()
                .filter(|q| is_soft_bounce_of(&q.row, address, since))
                .count();
            suppress_for(tx, core, address, p.kind, now, since, later).await?;
        }
        if let Some(event) = event
            && tx.insert_event(&event).await?
        {
            apply_effects(tx, core, &event, now).await?;
        }
    }
    Ok(tally)
}

/// The messages the reports are about: by our message id, else by the provider's.
async fn correlate(tx: &mut Tx, reports: &[Report]) -> Result<Messages> {
    let ours: Vec<&str> = distinct(
        reports
            .iter()
            .filter_map(|r| r.herald_message_id.as_deref()),
    );
    let by_id: HashMap<String, MessageFacts> = tx
        .message_facts(&ours)
        .await?
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    let theirs: Vec<&str> = distinct(
        reports
            .iter()
            .filter(|r| {
                r.herald_message_id
                    .as_ref()
                    .is_none_or(|id| !by_id.contains_key(id))
            })
            .filter_map(|r| r.provider_message_id.as_deref()),
    );
    let mut by_provider_id = HashMap::new();
    for m in tx.message_facts_by_provider_ids(&theirs).await? {
        if let Some(pid) = m.provider_message_id.clone() {
            by_provider_id.entry(pid).or_insert(m);
        }
    }
    Ok(Messages {
        by_id,
        by_provider_id,
    })
}

struct Messages {
    by_id: HashMap<String, MessageFacts>,
    by_provider_id: HashMap<String, MessageFacts>,
}

fn message_for<'a>(messages: &'a Messages, report: &Report) -> Option<&'a MessageFacts> {
    report
        .herald_message_id
        .as_ref()
        .and_then(|id| messages.by_id.get(id))
        .or_else(|| {
            report
                .provider_message_id
                .as_ref()
                .and_then(|pid| messages.by_provider_id.get(pid))
        })
}

/// Each value once, in first-seen order.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}

fn ledger_row(report: &Report, message: Option<&MessageFacts>, now: DateTime<Utc>) -> DeliveryRow {
    let recipient = report
        .recipient
        .clone()
        .or_else(|| message.map(|m| m.to_email.clone()))
        .map(|r| r.trim().to_lowercase());
    let (severity, detail, machine) = detail(&report.kind);
    DeliveryRow {
        id: uuid::Uuid::now_v7().to_string(),
        provider: report.source.clone(),
        provider_event_id: report.source_event_id.clone(),
        message_id: message.map(|m| m.id.clone()),
        provider_message_id: report.provider_message_id.clone(),
        recipient,
        kind: report.kind.name().to_owned(),
        severity: severity.map(str::to_owned),
        detail: Json(detail),
        machine,
        occurred_at: report.occurred_at,
        received_at: now,
    }
}

/// `suppression.soft_bounce_window` (validated at start; zero if it somehow is not valid).
fn soft_bounce_window(core: &Core) -> TimeDelta {
    crate::workflow::model::Duration::parse_setting(
        "suppression.soft_bounce_window",
        &core.settings.suppression.soft_bounce_window,
    )
    .map(|d| d.0)
    .unwrap_or_default()
}

/// Whether `row` is a soft bounce of `address` that counts towards suppression.
fn is_soft_bounce_of(row: &DeliveryRow, address: &str, since: DateTime<Utc>) -> bool {
    row.kind == "bounced"
        && row.severity.as_deref() == Some("soft")
        && row.recipient.as_deref() == Some(address)
        && row.occurred_at >= since
}

/// Suppression and consent consequences of a report about `address`. `later` soft bounces of
/// the address, stored in the same statement, are not counted: they come after this report.
async fn suppress_for(
    tx: &mut Tx,
    core: &Core,
    address: &str,
    kind: &DeliveryKind,
    now: DateTime<Utc>,
    since: DateTime<Utc>,
    later: usize,
) -> Result<()> {
    let reason = match kind {
        DeliveryKind::Bounced {
            hard: true,
            reason,
            code,
        } => {
            let why = reason.clone().or_else(|| code.clone());
            tx.suppress(address, "hard_bounce", why.as_deref(), now)
                .await?;
            return Ok(());
        }
        DeliveryKind::Bounced { hard: false, .. } => {
            let stored = tx.soft_bounces_since(address, since).await?;
            let count = stored - i64::try_from(later).unwrap_or(i64::MAX);
            if count >= i64::from(core.settings.suppression.soft_bounce_limit) {
                let why = format!(
                    "{count} soft bounces within {}",
                    core.settings.suppression.soft_bounce_window
                );
                tx.suppress(address, "soft_bounce", Some(&why), now).await?;
            }
            return Ok(());
        }
        DeliveryKind::Complained => "complaint",
        DeliveryKind::Unsubscribed => "unsubscribed",
        _ => return Ok(()),
    };
    tx.suppress(address, reason, None, now).await?;
    for mut contact in tx.contacts_by_email(address).await? {
        if contact.subscribed {
            contact.subscribed = false;
            contact.updated_at = now;
            tx.put_contact(&contact).await?;
        }
    }
    Ok(())
}

/// Turns correlated reports into their contacts' behavioral events `email_<kind>`, which
/// journeys (exits, waits, triggers) react to like any other event. Events of contacts whose
/// events can have no effect are stored here, together; for the others the answer holds the
/// event at the report's position, to be stored and applied in order with the rest of the
/// batch, exactly as if the reports came one by one.
async fn emit_behavior(
    tx: &mut Tx,
    core: &Core,
    pending: &[Pending<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Option<Event>>> {
    let events: Vec<Option<Event>> = pending
        .iter()
        .map(|p| {
            p.message
                .filter(|m| m.contact.known)
                .map(|m| behavior_event(&p.row, m, now))
        })
        .collect();
    // One contact's events go one way: an event that starts a journey must be seen by the
    // contact's next event, and entry conditions count the contact's earlier events.
    let affected: HashSet<String> = pending
        .iter()
        .zip(&events)
        .filter_map(|(p, e)| Some((p.message?, e.as_ref()?)))
        .filter(|(m, e)| needs_effects(core, &m.contact, &e.name))
        .map(|(m, _)| m.contact_id.clone())
        .collect();
    let mut plain = Vec::new();
    let mut in_order = Vec::with_capacity(events.len());
    for event in events {
        match event {
            Some(e) if !affected.contains(&e.contact_id) => {
                plain.push(e);
                in_order.push(None);
            }
            other => in_order.push(other),
        }
    }
    tx.insert_events(&plain).await?;
    crate::segment::membership::observe_batch(tx, core, &plain, now).await?;
    Ok(in_order)
}

/// Whether a contact's `email_<kind>` event named `event` can change anything beyond being
/// stored: the contact is in a journey (an `exit_on` or `wait_for` may match), a workflow
/// starts on that event, or a segment reads it. When this is false for all of a contact's
/// events in a batch, they are stored in bulk, the profile takes them in bulk too, and
/// [`apply_effects`] is skipped.
fn needs_effects(core: &Core, contact: &ContactActivity, event: &str) -> bool {
    contact.active_journey
        || core.workflows.triggered_by(event).next().is_some()
        || core.segments.event_names().contains(event)
}

/// What a stored `email_<kind>` event does beyond being stored: journeys end, resume or start.
async fn apply_effects(tx: &mut Tx, core: &Core, event: &Event, now: DateTime<Utc>) -> Result<()> {
    // Read now: an unsubscribe earlier in the batch may have changed the contact.
    // Locked as read: the profile is built on it (see `membership::on_event`).
    let Some(contact) = tx.lock_and_get_contact(&event.contact_id).await? else {
        return Ok(());
    };
    // Profile and segments first, so journeys see the contact's new memberships.
    let contact = crate::segment::membership::on_event(tx, core, &contact, event, now).await?;
    on_event(tx, &core.workflows, &contact, event, now, core.max_attempts).await?;
    Ok(())
}

/// The contact event `email_<kind>` of a stored report about `message`.
fn behavior_event(row: &DeliveryRow, message: &MessageFacts, now: DateTime<Utc>) -> Event {
    let mut properties = json!({
        "message_id": message.id,
        "workflow": message.workflow,
        "step": message.step,
        "template": message.template,
        "source": row.provider,
        "machine": row.machine,
    });
    if let (Value::Object(p), Value::Object(d)) = (&mut properties, &row.detail.0) {
        p.extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(severity) = &row.severity {
        properties["bounce"] = json!(severity);
    }
    Event {
        id: format!("delivery:{}", row.id),
        contact_id: message.contact_id.clone(),
        name: format!("email_{}", row.kind),
        properties: Json(properties),
        occurred_at: row.occurred_at,
        received_at: now,
    }
}
