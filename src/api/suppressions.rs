//! `/v1/suppressions`: addresses Herald will not mail. Bounces, complaints and unsubscribes add
//! to it automatically; this is the manual side.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, AppState};
use crate::ingest::normalize_email;

const PAGE: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Add {
    email: String,
    reason: Option<String>,
}

pub async fn add(
    State(core): State<AppState>,
    ApiJson(input): ApiJson<Add>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let email = normalize_email("email", &input.email)?;
    let now = core.clock.now();
    let mut tx = core.store.write().await?;
    tx.suppress(&email, "manual", input.reason.as_deref(), now)
        .await?;
    let stored = tx.suppression(&email).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({ "suppression": stored }))))
}

pub async fn remove(
    State(core): State<AppState>,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = core.store.write().await?;
    let removed = tx.unsuppress(&email).await?;
    tx.commit().await?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_suppressed",
            format!("`{email}` is not suppressed"),
        ))
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
}

pub async fn list(
    State(core): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut tx = core.store.read().await?;
    let rows = tx
        .suppressions(q.after.as_deref().unwrap_or(""), PAGE)
        .await?;
    tx.commit().await?;
    let next = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|r| r.email.clone()))
        .flatten();
    Ok(Json(json!({ "suppressions": rows, "next": next })))
}
