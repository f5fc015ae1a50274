//! `/v1/segments`: segment names and sizes, and a segment's members page by page.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};

const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1000;

pub async fn list(State(core): State<AppState>) -> Result<Json<Value>, ApiError> {
    let sizes: HashMap<String, i64> = core.store.segment_sizes().await?.into_iter().collect();
    let segments: Vec<Value> = core
        .segments
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "description": s.description,
                "size": sizes.get(&s.name).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(Json(json!({ "segments": segments })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn members(
    State(core): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    if !core.segments.contains(&name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "segment_not_found",
            format!("segment `{name}` does not exist"),
        ));
    }
    let limit = page.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("limit: must be between 1 and {PAGE_MAX}"),
        ));
    }
    let cursor = page.cursor.unwrap_or_default();
    let rows = core.store.segment_members(&name, &cursor, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.0.clone()))
        .flatten();
    let members: Vec<Value> = rows
        .into_iter()
        .map(|(id, email, entered_at)| json!({ "contact_id": id, "email": email, "entered_at": entered_at }))
        .collect();
    Ok(Json(
        json!({ "segment": name, "members": members, "next_cursor": next }),
    ))
}
