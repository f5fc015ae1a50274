//! `GET /v1/messages/{id}`: one message and everything reported about it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub async fn show(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut tx = core.store.read().await?;
    let Some(message) = tx.get_message(&id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "message_not_found",
            format!("message `{id}` does not exist"),
        ));
    };
    let events = tx.message_deliveries(&id).await?;
    tx.commit().await?;
    Ok(Json(json!({ "message": message, "events": events })))
}
