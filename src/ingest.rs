//! Contacts and events coming in over the API: their input shapes, validation rules, and the
//! transactions that store them and apply their effects on journeys.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::types::Json;

use crate::core::Core;
use crate::feedback::{Report, record};
use crate::segment::membership;
use crate::store::{Contact, Event, StoreError, Tx};
use crate::webhook::DeliveryKind;
use crate::workflow::trigger::{Effects, on_event};

/// Longest accepted id (contacts, events).
const MAX_ID_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("contact `{0}` does not exist")]
    UnknownContact(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> IngestError {
    IngestError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    pub id: String,
    /// Required when the contact is new.
    pub email: Option<String>,
    /// Merged into the stored attributes; a `null` value removes that attribute.
    pub attributes: Option<Map<String, Value>>,
    /// Default `true` for a new contact; unchanged when omitted on update.
    pub subscribed: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Optional client id; posting the same id twice stores one event.
    pub id: Option<String>,
    pub contact_id: String,
    pub name: String,
    pub properties: Option<Map<String, Value>>,
    pub timestamp: Option<DateTime<Utc>>,
}

/// What storing an event did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventReceipt {
    pub id: String,
    /// True when an event with this id had been stored before; nothing else happened.
    pub duplicate: bool,
    #[serde(flatten)]
    pub effects: Effects,
}

fn check_id(field: &str, id: &str) -> Result<(), IngestError> {
    if id.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Accepts addresses a mail server would deliver to: RFC syntax, a dotted domain, no IP
/// literal, no quoted local part. Returns the address with its domain lowercased.
pub fn normalize_email(field: &str, raw: &str) -> Result<String, IngestError> {
    let raw = raw.trim();
    let parsed: email_address::EmailAddress = raw
        .parse()
        .map_err(|e| invalid(field, format!("`{raw}` is not an email address: {e}")))?;
    let (local, domain) = (parsed.local_part(), parsed.domain());
    if local.starts_with('"')
        || domain.starts_with('[')
        || !domain.contains('.')
        || domain.ends_with('.')
    {
        return Err(invalid(
            field,
            format!("`{raw}` is not a deliverable address"),
        ));
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

/// `input` applied to the contact as stored (`None`: a new contact).
fn merged(
    existing: Option<&Contact>,
    input: &ContactInput,
    email_field: &str,
    now: DateTime<Utc>,
) -> Result<Contact, IngestError> {
    let email = match (&input.email, existing) {
        (Some(e), _) => normalize_email("email", e)?,
        (None, Some(c)) => c.email.clone(),
        (None, None) => return Err(invalid(email_field, "is required for a new contact")),
    };
    let mut attributes = match existing {
        Some(c) => c.attributes.0.as_object().cloned().unwrap_or_default(),
        None => Map::new(),
    };
    for (k, v) in input.attributes.iter().flatten() {
        if v.is_null() {
            attributes.remove(k);
        } else {
            attributes.insert(k.clone(), v.clone());
        }
    }
    Ok(Contact {
        subscribed: input
            .subscribed
            .or(existing.map(|c| c.subscribed))
            .unwrap_or(true),
        created_at: existing.map_or(now, |c| c.created_at),
        id: input.id.clone(),
        email,
        attributes: Json(Value::Object(attributes)),
        updated_at: now,
        profile: existing.map_or_else(|| Json(Value::Object(Map::new())), |c| c.profile.clone()),
    })
}

impl Core {
    /// Creates or updates contacts, in one transaction.
    pub async fn upsert_contacts(
        &self,
        inputs: Vec<ContactInput>,
    ) -> Result<Vec<Contact>, IngestError> {
        let now = self.clock.now();
        for (i, input) in inputs.iter().enumerate() {
            let prefix = if inputs.len() > 1 {
                format!("contacts[{i}].")
            } else {
                String::new()
            };
            check_id(&format!("{prefix}id"), &input.id)?;
            if let Some(email) = &input.email {
                normalize_email(&format!("{prefix}email"), email)?;
            }
        }
        // Written in id order, answered in the request's: PostgreSQL takes each row's lock (or
        // a new id's) as it goes, so two batches naming the same contacts in different orders
        // could each wait for one the other holds, and one would be aborted as a deadlock.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by(|&a, &b| inputs[a].id.cmp(&inputs[b].id));
        let mut stored: Vec<Option<Contact>> = vec![None; inputs.len()];
        let mut tx = self.store.write().await?;
        for i in order {
            let input = &inputs[i];
            let email_field = if i == 0 {
                "email".to_owned()
            } else {
                format!("contacts[{i}].email")
            };
            let contact = loop {
                // Locked as read (PostgreSQL), so the attributes merged here are the latest
                // committed and a concurrent writer of this contact waits for this one.
                let existing = tx.lock_and_get_contact(&input.id).await?;
                let contact = merged(existing.as_ref(), input, &email_field, now)?;
                if existing.is_some() {
                    tx.put_contact(&contact).await?;
                    break contact;
                }
                // New here, unless a concurrent request created it first (PostgreSQL waits for
                // that one to commit): then merge into what it stored.
                if tx.insert_contact(&contact).await? {
                    break contact;
                }
            };
            crate::scheduler::reschedule_contact(
                &mut tx,
                &self.workflows,
                &contact,
                self.settings.default_timezone(),
                now,
            )
            .await?;
            stored[i] = Some(membership::on_contact_changed(&mut tx, self, &contact, now).await?);
        }
        tx.commit().await?;
        // A changed date attribute may have moved a fire time earlier than the worker's sleep.
        self.wake_scheduler();
        Ok(stored.into_iter().flatten().collect())
    }

    /// Stores events and applies them to journeys, in one transaction: either every event and
    /// its effects are stored, or none.
    pub async fn ingest_events(
        &self,
        inputs: Vec<EventInput>,
    ) -> Result<Vec<EventReceipt>, IngestError> {
        let now = self.clock.now();
        let batch = inputs.len() > 1;
        for (i, input) in inputs.iter().enumerate() {
            let prefix = if batch {
                format!("events[{i}].")
            } else {
                String::new()
            };
            if let Some(id) = &input.id {
                check_id(&format!("{prefix}id"), id)?;
            }
            check_id(&format!("{prefix}contact_id"), &input.contact_id)?;
            check_id(&format!("{prefix}name"), &input.name)?;
        }
        let (receipts, started) = if batch {
            let mut tx = self.store.write().await?;
            let stored = store_events(&mut tx, self, inputs, now).await?;
            tx.commit().await?;
            stored
        } else {
            // A single event joins the write transaction of whatever else is being stored at
            // the moment (other requests' events, journey steps, receipts). Its contact is
            // checked before it writes anything, so an unknown contact never leaves a write
            // behind in the shared transaction.
            let inputs = std::sync::Arc::new(inputs);
            self.group
                .run(self, &self.store, move |core, tx| {
                    let inputs = inputs.as_ref().clone();
                    Box::pin(async move {
                        // A database error must fail the op, so the shared transaction rolls
                        // back (and the others run again alone) instead of committing a part.
                        match store_events(tx, core, inputs, now).await {
                            Err(IngestError::Store(e)) => Err(e),
                            stored => Ok(stored),
                        }
                    })
                })
                .await??
        };
        if started {
            self.wake_scheduler();
        }
        Ok(receipts)
    }
}

/// Stores events and applies them to journeys in `tx`. Returns the receipts and whether any
/// journey started or resumed. An unknown contact fails before anything of its event is written.
async fn store_events(
    tx: &mut Tx,
    core: &Core,
    inputs: Vec<EventInput>,
    now: DateTime<Utc>,
) -> Result<(Vec<EventReceipt>, bool), IngestError> {
    let mut receipts = Vec::with_capacity(inputs.len());
    let mut started = false;
    if inputs.len() > 1 {
        // Locked up front, in id order (PostgreSQL): locked one by one as the events come, two
        // batches naming the same contacts in different orders could each wait for a lock the
        // other holds, and one would be aborted as a deadlock.
        let ids: Vec<&str> = inputs.iter().map(|i| i.contact_id.as_str()).collect();
        tx.lock_contacts(&ids).await?;
    }
    for input in inputs {
        let event = Event {
            id: input.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            contact_id: input.contact_id,
            name: input.name,
            properties: Json(Value::Object(input.properties.unwrap_or_default())),
            occurred_at: input.timestamp.unwrap_or(now),
            received_at: now,
        };
        // Locked as read when the event changes the profile, which is built on this read.
        let lock = membership::evaluates(core, &event.name);
        let Some((contact, new)) = tx.contact_and_insert_event(&event, lock).await? else {
            return Err(IngestError::UnknownContact(event.contact_id));
        };
        if !new {
            receipts.push(EventReceipt {
                id: event.id,
                duplicate: true,
                effects: Effects::default(),
            });
            continue;
        }
        record_engagement(tx, core, &event).await?;
        // Segments first, so journeys the event starts see the contact's new memberships.
        let contact = membership::on_event(tx, core, &contact, &event, now).await?;
        let effects = on_event(
            tx,
            &core.workflows,
            &contact,
            &event,
            now,
            core.max_attempts,
        )
        .await?;
        started |= !effects.entered.is_empty() || !effects.resumed.is_empty();
        receipts.push(EventReceipt {
            id: event.id,
            duplicate: false,
            effects,
        });
    }
    Ok((receipts, started))
}

/// Engagement reported as behavioral events (`email_opened`, `email_clicked` with a
/// `message_id` property, e.g. from an external click tracker) also goes into the delivery
/// ledger, where `opened`/`clicked` branches look for it. `"machine": true` marks a proxy or
/// scanner rather than a person.
async fn record_engagement(tx: &mut Tx, core: &Core, event: &Event) -> Result<(), StoreError> {
    let props = &event.properties.0;
    let machine = props
        .get("machine")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let kind = match event.name.as_str() {
        "email_opened" => DeliveryKind::Opened { machine },
        "email_clicked" => DeliveryKind::Clicked {
            url: props
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            machine,
        },
        _ => return Ok(()),
    };
    let Some(message_id) = props.get("message_id").and_then(Value::as_str) else {
        return Ok(());
    };
    // Only the contact's own messages: an event cannot mark someone else's mail as clicked.
    if tx
        .get_message(message_id)
        .await?
        .is_none_or(|m| m.contact_id != event.contact_id)
    {
        return Ok(());
    }
    let report = Report {
        source: "api".to_owned(),
        source_event_id: event.id.clone(),
        herald_message_id: Some(message_id.to_owned()),
        provider_message_id: None,
        recipient: None,
        occurred_at: event.occurred_at,
        kind,
    };
    record(tx, core, &report, event.received_at).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_policy() {
        assert_eq!(
            normalize_email("email", " Ana@Example.COM ").unwrap(),
            "Ana@example.com"
        );
        assert!(normalize_email("email", "a@localhost").is_err());
        assert!(normalize_email("email", "x@[127.0.0.1]").is_err());
        assert!(normalize_email("email", "\"q\"@example.com").is_err());
        assert!(normalize_email("email", "nope").is_err());
    }
}
