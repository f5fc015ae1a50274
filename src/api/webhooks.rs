//! `POST /webhooks/{provider}`: raw bytes in, verified by `webhook::Verifier`, recorded through
//! `feedback` in one transaction with the replay check, so a forged request stores nothing and
//! a retried one changes nothing.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::feedback::{Report, record_batch};
use crate::webhook::{Outcome, Provider, WebhookError, WebhookRequest};

/// How long confirming an SNS subscription may take before SNS is asked to retry.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn webhook_error(e: &WebhookError) -> ApiError {
    let code = match e {
        WebhookError::Unauthorized(_) => "unauthorized",
        WebhookError::Replay(_) => "replay",
        WebhookError::Malformed(_) => "malformed",
        WebhookError::NotConfigured(_) => "not_configured",
        _ => "certificate_unavailable",
    };
    ApiError::new(e.status(), code, e.to_string())
}

pub async fn receive(
    State(core): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider: Provider = provider.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_provider",
            format!("no webhook provider `{provider}`"),
        )
    })?;
    let now = core.clock.now();
    let parsed = core
        .verifier
        .handle(
            provider,
            WebhookRequest {
                headers: &headers,
                body: &body,
                now,
            },
        )
        .await
        .map_err(|e| webhook_error(&e))?;
    // The replay check and the events share a write transaction, and webhooks arriving
    // together share one (group commit on SQLite): a burst of batches pays for one commit and
    // writes each index page it touches once.
    let replay = Arc::new(parsed.replay_key);
    let reports: Arc<[Report]> = match &parsed.outcome {
        Outcome::Events(events) => events.iter().map(Report::from).collect(),
        _ => Arc::from([]),
    };
    let recorded = core
        .group
        .run(&core, &core.store, move |core, tx| {
            let (replay, reports) = (Arc::clone(&replay), Arc::clone(&reports));
            Box::pin(async move {
                if let Some(key) = replay.as_ref()
                    && !tx
                        .remember_replay_key(&key.key, key.expires_at, now)
                        .await?
                {
                    return Ok(None);
                }
                record_batch(tx, core, &reports, now).await.map(Some)
            })
        })
        .await?;
    let Some(tally) = recorded else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "replay",
            "this webhook token was already used",
        ));
    };
    match parsed.outcome {
        Outcome::Events(_) => Ok(Json(
            json!({ "stored": tally.stored, "duplicates": tally.duplicates }),
        )
        .into_response()),
        Outcome::Ignored => Ok(Json(json!({ "stored": 0, "ignored": true })).into_response()),
        Outcome::SubscriptionConfirmation {
            subscribe_url,
            topic_arn,
        } => {
            confirm_subscription(&subscribe_url).await.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "confirmation_failed",
                    format!("confirming {topic_arn}: {e}"),
                )
            })?;
            tracing::info!(%topic_arn, "confirmed the SNS subscription");
            Ok(Json(json!({ "confirmed": topic_arn })).into_response())
        }
    }
}

/// Visits the (verified, SNS-hosted) SubscribeURL, as SNS asks.
async fn confirm_subscription(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(CONFIRM_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("SNS answered {}", response.status()))
    }
}
