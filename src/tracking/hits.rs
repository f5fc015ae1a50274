//! `GET /t/o/{token}` (open pixel) and `GET /t/c/{token}` (click redirect). A hit is recorded
//! through `feedback` like any delivery report. Machine hits are flagged, not dropped: Apple
//! Mail Privacy Protection and scanners by user agent, and link scanners by timing (a click
//! within seconds of sending, or several clicks on one message within seconds).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::TimeDelta;

use super::links::{CLICK, OPEN};
use crate::api::AppState;
use crate::core::Core;
use crate::feedback::{Report, emit_behavior, record};
use crate::webhook::{DeliveryKind, is_machine_user_agent};

/// A click this soon after sending is a security scanner, not a reader.
const SCANNER_AFTER_SEND: TimeDelta = TimeDelta::seconds(10);
/// Several clicks on one message within this window: a scanner following every link.
const SCANNER_BURST: TimeDelta = TimeDelta::seconds(5);

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/t/o/{token}", get(open))
        .route("/t/c/{token}", get(click))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn user_agent_is_machine(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_machine_user_agent)
}

async fn open(
    State(core): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(message_id) = core.tokens.verify(OPEN, &token) else {
        return not_found();
    };
    let machine = user_agent_is_machine(&headers);
    if let Err(e) = hit(&core, &message_id, DeliveryKind::Opened { machine }).await {
        tracing::error!(error = %e, "recording an open failed");
    }
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
        ],
        PIXEL,
    )
        .into_response()
}

async fn click(
    State(core): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(payload) = core.tokens.verify(CLICK, &token) else {
        return not_found();
    };
    let Some((message_id, url)) = payload.split_once('\n') else {
        return not_found();
    };
    let machine = user_agent_is_machine(&headers) || looks_like_scanner(&core, message_id).await;
    if let Err(e) = hit(
        &core,
        message_id,
        DeliveryKind::Clicked {
            url: url.to_owned(),
            machine,
        },
    )
    .await
    {
        tracing::error!(error = %e, "recording a click failed");
    }
    // The URL came out of a signed token: only links Herald itself put in the message.
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, url.to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

async fn looks_like_scanner(core: &Core, message_id: &str) -> bool {
    let now = core.clock.now();
    let check = async {
        let mut tx = core.store.read().await?;
        let message = tx.get_message(message_id).await?;
        let recent = tx.clicks_since(message_id, now - SCANNER_BURST).await?;
        tx.commit().await?;
        let fresh = message
            .and_then(|m| m.sent_at)
            .is_some_and(|sent| now - sent < SCANNER_AFTER_SEND);
        Ok::<bool, crate::store::StoreError>(fresh || recent >= 2)
    };
    check.await.unwrap_or(false)
}

async fn hit(core: &Core, message_id: &str, kind: DeliveryKind) -> crate::store::Result<()> {
    let now = core.clock.now();
    let mut tx = core.store.write().await?;
    let report = Report {
        source: "herald".to_owned(),
        source_event_id: uuid::Uuid::now_v7().to_string(),
        herald_message_id: Some(message_id.to_owned()),
        provider_message_id: None,
        recipient: None,
        occurred_at: now,
        kind,
    };
    if let Some(recorded) = record(&mut tx, core, &report, now).await? {
        emit_behavior(&mut tx, core, &recorded, now).await?;
    }
    tx.commit().await
}
