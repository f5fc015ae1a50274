//! The HTTP API (FORMATS.md "HTTP API"): a thin axum adapter over `Core`. Errors are JSON
//! bodies `{"error": {"code", "message"}}`; `/v1` takes optional bearer keys.

mod contacts;
mod error;
mod events;
mod messages;
mod segments;
mod suppressions;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::{ApiError, ApiJson};

use crate::core::Core;

pub type AppState = Arc<Core>;

pub fn router(core: Arc<Core>) -> Router {
    let limit = core.settings.server.body_limit;
    let v1 = Router::new()
        .route("/contacts", post(contacts::upsert_one))
        .route("/contacts/batch", post(contacts::upsert_batch))
        .route("/contacts/{id}", get(contacts::show))
        .route("/events", post(events::ingest_one))
        .route("/events/batch", post(events::ingest_batch))
        .route("/jobs", get(events::jobs))
        .route("/messages/{id}", get(messages::show))
        .route("/segments", get(segments::list))
        .route("/segments/{name}/members", get(segments::members))
        .route(
            "/suppressions",
            get(suppressions::list).post(suppressions::add),
        )
        .route(
            "/suppressions/{email}",
            axum::routing::delete(suppressions::remove),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&core),
            require_api_key,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/webhooks/{provider}", post(webhooks::receive))
        .merge(crate::tracking::unsubscribe::routes())
        .merge(crate::tracking::hits::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }))
        .with_state(core)
}

async fn healthz(State(core): State<AppState>) -> Response {
    match core.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Rejects `/v1` requests without one of the configured bearer keys (when any are configured).
async fn require_api_key(State(core): State<AppState>, request: Request, next: Next) -> Response {
    let keys = &core.settings.server.api_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = presented.is_some_and(|p| {
        keys.iter()
            .any(|k| subtle::ConstantTimeEq::ct_eq(k.as_bytes(), p.as_bytes()).into())
    });
    if valid {
        next.run(request).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer API key",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}
