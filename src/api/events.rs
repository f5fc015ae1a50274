//! `/v1/events` and the job listing.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, AppState};
use crate::ingest::EventInput;
use crate::store::job_status;

pub async fn ingest_one(
    State(core): State<AppState>,
    ApiJson(input): ApiJson<EventInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut receipts = core.ingest_events(vec![input]).await?;
    let receipt = receipts.pop().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no event stored",
        )
    })?;
    let status = if receipt.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(json!({ "event": receipt }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    events: Vec<EventInput>,
}

pub async fn ingest_batch(
    State(core): State<AppState>,
    ApiJson(batch): ApiJson<Batch>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let receipts = core.ingest_events(batch.events).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "events": receipts }))))
}

#[derive(Deserialize)]
pub struct JobsQuery {
    status: Option<String>,
}

/// `GET /v1/jobs?status=dead`: jobs by status (default `dead`), so failures are visible.
pub async fn jobs(
    State(core): State<AppState>,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = q.status.unwrap_or_else(|| job_status::DEAD.to_owned());
    if ![
        job_status::QUEUED,
        job_status::RUNNING,
        job_status::DONE,
        job_status::DEAD,
    ]
    .contains(&status.as_str())
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "status: one of queued, running, done, dead",
        ));
    }
    let mut tx = core.store.read().await?;
    let jobs = tx.jobs_by_status(&status, 500).await?;
    tx.commit().await?;
    Ok(Json(json!({ "jobs": jobs })))
}
