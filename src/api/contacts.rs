//! `/v1/contacts`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, AppState};
use crate::ingest::ContactInput;

/// Journeys and messages shown with a contact.
const HISTORY_LIMIT: i64 = 100;

pub async fn upsert_one(
    State(core): State<AppState>,
    ApiJson(input): ApiJson<ContactInput>,
) -> Result<Json<Value>, ApiError> {
    let mut stored = core.upsert_contacts(vec![input]).await?;
    let contact = stored.pop().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no contact stored",
        )
    })?;
    Ok(Json(json!({ "contact": contact })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    contacts: Vec<ContactInput>,
}

pub async fn upsert_batch(
    State(core): State<AppState>,
    ApiJson(batch): ApiJson<Batch>,
) -> Result<Json<Value>, ApiError> {
    let stored = core.upsert_contacts(batch.contacts).await?;
    Ok(Json(json!({ "upserted": stored.len() })))
}

pub async fn show(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut tx = core.store.read().await?;
    let Some(contact) = tx.get_contact(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "contact_not_found",
            format!("contact `{id}` does not exist"),
        ));
    };
    let journeys = tx.contact_journeys(&id, HISTORY_LIMIT).await?;
    let open_jobs = tx.contact_open_jobs(&id).await?;
    let messages = tx.contact_messages(&id, HISTORY_LIMIT).await?;
    let suppression = tx.suppression(&contact.email).await?;
    let segments: Vec<Value> = tx
        .memberships(std::slice::from_ref(&id))
        .await?
        .into_iter()
        .map(|(_, segment, entered_at)| json!({ "name": segment, "entered_at": entered_at }))
        .collect();
    tx.commit().await?;
    Ok(Json(json!({
        "contact": contact,
        "segments": segments,
        "suppression": suppression,
        "journeys": journeys.iter().map(|j| {
            let job = open_jobs.iter().find(|job| job.journey_id.as_deref() == Some(&j.id));
            let mut view = json!(j);
            view["next_run_at"] = json!(job.map(|job| job.run_at));
            view["attempts"] = json!(job.map(|job| job.attempts));
            view["last_error"] = json!(job.and_then(|job| job.last_error.clone()));
            view
        }).collect::<Vec<_>>(),
        "messages": messages,
    })))
}
