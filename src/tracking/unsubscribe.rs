//! Unsubscribe links (RFC 8058). `POST /u/{token}` unsubscribes at once — mail clients' one-click
//! button and our confirmation form both post here. `GET /u/{token}` only shows a page with a
//! button: link scanners fetch every URL in a message, so a GET must never unsubscribe.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::api::AppState;
use crate::feedback::{Report, record_batch};
use crate::webhook::DeliveryKind;

/// Token purpose for unsubscribe links.
pub const PURPOSE: &str = "unsubscribe";

pub fn routes() -> Router<AppState> {
    Router::new().route("/u/{token}", get(confirm_page).post(unsubscribe))
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head><body style=\"font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;\
         max-width:480px;margin:64px auto;padding:0 16px;color:#1f2933\"><h1 style=\"font-size:22px\">{title}</h1>{body}</body></html>"
    );
    (status, Html(html)).into_response()
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<p>This unsubscribe link is not valid.</p>",
    )
}

async fn confirm_page(State(core): State<AppState>, Path(token): Path<String>) -> Response {
    if core.tokens.verify(PURPOSE, &token).is_none() {
        return not_found();
    }
    page(
        StatusCode::OK,
        "Unsubscribe",
        "<p>Stop receiving marketing email from us?</p><form method=\"post\">\
         <button type=\"submit\" style=\"background:#1f2933;color:#fff;border:0;border-radius:6px;padding:12px 20px;\
         font-size:16px;cursor:pointer\">Unsubscribe</button></form>",
    )
}

async fn unsubscribe(State(core): State<AppState>, Path(token): Path<String>) -> Response {
    let Some(payload) = core.tokens.verify(PURPOSE, &token) else {
        return not_found();
    };
    let Some((contact_id, message_id)) = payload.split_once('\n') else {
        return not_found();
    };
    let now = core.clock.now();
    let result: crate::store::Result<bool> = async {
        let mut tx = core.store.write().await?;
        let Some(contact) = tx.get_contact(contact_id).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        let report = Report {
            source: "herald".to_owned(),
            // One unsubscribe per message link: clicking twice changes nothing.
            source_event_id: format!("unsubscribe:{message_id}"),
            herald_message_id: Some(message_id.to_owned()),
            provider_message_id: None,
            recipient: Some(contact.email.clone()),
            occurred_at: now,
            kind: DeliveryKind::Unsubscribed,
        };
        record_batch(&mut tx, &core, &[report], now).await?;
        tx.commit().await?;
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => page(
            StatusCode::OK,
            "You're unsubscribed",
            "<p>You won't receive marketing email from us any more.</p>",
        ),
        Ok(false) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record that right now.</p>",
            )
        }
    }
}
