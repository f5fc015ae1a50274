//! Rows as plain data. Field types decode identically from SQLite and PostgreSQL.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;

use super::direct::direct_row;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Contact {
    pub id: String,
    pub email: String,
    pub attributes: Json<Value>,
    pub subscribed: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The computed profile (engagement, purchase, RFM, lifecycle); written by the segment
    /// engine only.
    pub profile: Json<Value>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Event {
    pub id: String,
    pub contact_id: String,
    pub name: String,
    pub properties: Json<Value>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// Lifecycle of a journey.
pub mod journey_status {
    pub const ACTIVE: &str = "active";
    pub const COMPLETED: &str = "completed";
    pub const EXITED: &str = "exited";
    pub const FAILED: &str = "failed";
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Journey {
    pub id: String,
    pub workflow: String,
    pub contact_id: String,
    pub journey_key: String,
    pub status: String,
    /// Key of the next step to run; `None` once the journey has ended.
    pub step: Option<String>,
    /// The triggering event and journey-scoped data (split variants, …).
    pub context: Json<Value>,
    pub entered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    /// The last etiquette decision (`deferred_until …`, `skipped: frequency_cap`).
    pub note: Option<String>,
}

/// Lifecycle of a job.
pub mod job_status {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const DEAD: &str = "dead";
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub journey_id: Option<String>,
    pub payload: Json<Value>,
    pub status: String,
    pub run_at: DateTime<Utc>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Lifecycle of an outgoing message.
pub mod message_status {
    /// Row written, transport not called yet (or called and failed transiently).
    pub const PENDING: &str = "pending";
    /// Handed to the transport; a crash here leaves the fate unknown.
    pub const SENDING: &str = "sending";
    pub const SENT: &str = "sent";
    pub const FAILED: &str = "failed";
    /// The process stopped between handing over and the receipt: never re-sent.
    pub const UNKNOWN: &str = "unknown";
    pub const SUPPRESSED: &str = "suppressed";
    /// Never sent because of the frequency cap (`outcome = "skip"`).
    pub const SKIPPED: &str = "skipped";
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Message {
    pub id: String,
    pub journey_id: String,
    pub step: String,
    pub iteration: i64,
    pub contact_id: String,
    pub workflow: String,
    pub template: String,
    pub category: String,
    pub to_email: String,
    pub subject: Option<String>,
    pub status: String,
    pub transport: Option<String>,
    pub provider_message_id: Option<String>,
    pub detail: Option<String>,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// What delivery feedback needs of a message, and of its contact.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageFacts {
    pub id: String,
    pub contact_id: String,
    pub workflow: String,
    pub step: String,
    pub template: String,
    pub to_email: String,
    pub provider_message_id: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    pub contact: ContactActivity,
}

/// What delivery feedback needs to know about a contact before applying its events.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContactActivity {
    /// The contact row exists.
    pub known: bool,
    /// The contact has an active journey.
    pub active_journey: bool,
}

/// One delivery-ledger entry: a provider webhook event, an own tracking hit, or engagement
/// posted as an event. `message_id` is `None` for orphans no message could be matched to.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct DeliveryRow {
    pub id: String,
    pub provider: String,
    pub provider_event_id: String,
    pub message_id: Option<String>,
    pub provider_message_id: Option<String>,
    pub recipient: Option<String>,
    pub kind: String,
    /// Bounces: `hard` or `soft`.
    pub severity: Option<String>,
    pub detail: Json<Value>,
    pub machine: bool,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Suppression {
    pub email: String,
    pub reason: String,
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A contact's next fire of a date trigger or contact-local schedule.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct TriggerTime {
    pub workflow: String,
    pub contact_id: String,
    pub fire_at: DateTime<Utc>,
    pub occurrence: String,
}

direct_row!(Contact {
    id,
    email,
    attributes,
    subscribed,
    created_at,
    updated_at,
    profile
});
direct_row!(Event {
    id,
    contact_id,
    name,
    properties,
    occurred_at,
    received_at
});
direct_row!(Journey {
    id,
    workflow,
    contact_id,
    journey_key,
    status,
    step,
    context,
    entered_at,
    updated_at,
    ended_at,
    end_reason,
    note,
});
direct_row!(Job {
    id,
    kind,
    journey_id,
    payload,
    status,
    run_at,
    attempts,
    max_attempts,
    locked_by,
    locked_until,
    last_error,
    created_at,
    updated_at,
});
direct_row!(Message {
    id,
    journey_id,
    step,
    iteration,
    contact_id,
    workflow,
    template,
    category,
    to_email,
    subject,
    status,
    transport,
    provider_message_id,
    detail,
    attempts,
    created_at,
    updated_at,
    sent_at,
});
direct_row!(Suppression {
    email,
    reason,
    detail,
    created_at
});
direct_row!(DeliveryRow {
    id,
    provider,
    provider_event_id,
    message_id,
    provider_message_id,
    recipient,
    kind,
    severity,
    detail,
    machine,
    occurred_at,
    received_at,
});
direct_row!(TriggerTime {
    workflow,
    contact_id,
    fire_at,
    occurrence
});
