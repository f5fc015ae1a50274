//! Delivery feedback becomes state. Every report — a provider webhook event, a hit on Herald's
//! own open/click/unsubscribe links, or engagement posted as an event — goes into one ledger
//! (`delivery_events`), idempotently, correlated to our message by our id and else by the
//! provider's; unmatched reports are kept as orphans. Then it acts: hard bounces and
//! complaints suppress the address at once, soft bounces after a limit, unsubscribes end
//! consent; and a correlated report becomes a contact event (`email_opened`, …) that segments,
//! branches and triggers see.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::core::Core;
use crate::store::{DeliveryRow, Event, Message, Result, Tx};
use crate::webhook::{DeliveryEvent, DeliveryKind};
use crate::workflow::trigger::on_event;

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

/// A stored report and the message it belongs to.
pub struct Recorded {
    pub row: DeliveryRow,
    pub message: Option<Message>,
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

/// Stores a report and applies its effects on suppression and consent. Returns `None` when the
/// same report was stored before.
pub async fn record(
    tx: &mut Tx,
    core: &Core,
    report: &Report,
    now: DateTime<Utc>,
) -> Result<Option<Recorded>> {
    let mut message = match &report.herald_message_id {
        Some(id) => tx.get_message(id).await?,
        None => None,
    };
    if message.is_none()
        && let Some(pid) = &report.provider_message_id
    {
        message = tx.message_by_provider_id(pid).await?;
    }
    let recipient = report
        .recipient
        .clone()
        .or_else(|| message.as_ref().map(|m| m.to_email.clone()))
        .map(|r| r.trim().to_lowercase());
    let (severity, detail, machine) = detail(&report.kind);
    let row = DeliveryRow {
        id: uuid::Uuid::now_v7().to_string(),
        provider: report.source.clone(),
        provider_event_id: report.source_event_id.clone(),
        message_id: message.as_ref().map(|m| m.id.clone()),
        provider_message_id: report.provider_message_id.clone(),
        recipient: recipient.clone(),
        kind: report.kind.name().to_owned(),
        severity: severity.map(str::to_owned),
        detail: Json(detail),
        machine,
        occurred_at: report.occurred_at,
        received_at: now,
    };
    if !tx.insert_delivery(&row).await? {
        return Ok(None);
    }
    if let Some(address) = &recipient {
        suppress_for(tx, core, address, &report.kind, now).await?;
    }
    Ok(Some(Recorded { row, message }))
}

/// Suppression and consent consequences of a report about `address`.
async fn suppress_for(
    tx: &mut Tx,
    core: &Core,
    address: &str,
    kind: &DeliveryKind,
    now: DateTime<Utc>,
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
            let window = crate::workflow::model::Duration::parse_setting(
                "suppression.soft_bounce_window",
                &core.settings.suppression.soft_bounce_window,
            )
            .map(|d| d.0)
            .unwrap_or_default();
            let count = tx.soft_bounces_since(address, now - window).await?;
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

/// Turns a correlated report into the contact's behavioral event `email_<kind>`, which journeys
/// (exits, triggers) react to like any other event.
pub async fn emit_behavior(
    tx: &mut Tx,
    core: &Core,
    recorded: &Recorded,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(message) = &recorded.message else {
        return Ok(());
    };
    let Some(contact) = tx.get_contact(&message.contact_id).await? else {
        return Ok(());
    };
    let mut properties = json!({
        "message_id": message.id,
        "workflow": message.workflow,
        "step": message.step,
        "template": message.template,
        "source": recorded.row.provider,
        "machine": recorded.row.machine,
    });
    if let (Value::Object(p), Value::Object(d)) = (&mut properties, &recorded.row.detail.0) {
        p.extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(severity) = &recorded.row.severity {
        properties["bounce"] = json!(severity);
    }
    let event = Event {
        id: format!("delivery:{}", recorded.row.id),
        contact_id: contact.id.clone(),
        name: format!("email_{}", recorded.row.kind),
        properties: Json(properties),
        occurred_at: recorded.row.occurred_at,
        received_at: now,
    };
    if tx.insert_event(&event).await? {
        let contact = crate::segment::membership::on_event(tx, core, &contact, &event, now).await?;
        on_event(
            tx,
            &core.workflows,
            &contact,
            &event,
            now,
            core.max_attempts,
        )
        .await?;
    }
    Ok(())
}
