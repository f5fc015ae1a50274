//! `GET /t/o/{token}` (open pixel) and `GET /t/c/{token}` (click redirect). A hit is recorded
//! through `feedback` like any delivery report. Machine hits are flagged, not dropped: Apple
//! Mail Privacy Protection and scanners by user agent, and link scanners by timing (a click
//! within seconds of sending, or several clicks on one message within seconds).
//!
//! The answer does not wait for the database: a hit goes into a bounded queue that a task (the
//! recorder, started by `Application::run`) drains, recording up to [`BATCH`] hits per
//! transaction. A full queue holds the answer until there is room (recording hits one per
//! transaction instead would only slow the recorder down further). The recorder drains the
//! queue before Herald stops; a hit that finds the queue closed is recorded before the answer,
//! so an accepted hit is never lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::links::{CLICK, OPEN};
use crate::api::AppState;
use crate::core::Core;
use crate::feedback::{Report, record_batch};
use crate::store::{Backend, Tx};
use crate::webhook::{DeliveryKind, is_machine_user_agent};

/// A click this soon after sending is a security scanner, not a reader.
const SCANNER_AFTER_SEND: TimeDelta = TimeDelta::seconds(10);
/// Several clicks on one message within this window: a scanner following every link.
const SCANNER_BURST: TimeDelta = TimeDelta::seconds(5);

/// Hits the queue holds before answers wait for room.
const QUEUE: usize = 8192;
/// Hits recorded per transaction at most.
pub const BATCH: usize = 256;
/// Transactions recording hits side by side on PostgreSQL.
const PG_LANES: usize = 4;

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
    let hit = Hit {
        message_id,
        at: core.clock.now(),
        kind: HitKind::Open { machine },
    };
    accept(&core, hit).await;
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
    let hit = Hit {
        message_id: message_id.to_owned(),
        at: core.clock.now(),
        kind: HitKind::Click {
            url: url.to_owned(),
            machine_agent: user_agent_is_machine(&headers),
        },
    };
    accept(&core, hit).await;
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

/// A hit on a tracked link, as its request left it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub message_id: String,
    /// When the request came in: the report's `occurred_at`.
    pub at: DateTime<Utc>,
    pub kind: HitKind,
}

#[derive(Debug, Clone)]
pub enum HitKind {
    Open {
        machine: bool,
    },
    /// Whether a click is a scanner's is decided when it is recorded, against the clicks
    /// recorded before it.
    Click {
        url: String,
        machine_agent: bool,
    },
}

enum Queued {
    Hit(Hit),
    /// Answered once every hit queued before it is recorded.
    Flush(oneshot::Sender<()>),
}

/// The queue between the tracking endpoints and the recorder.
#[derive(Default)]
pub struct HitQueue {
    /// One queue per lane, set when the recorder starts; until then hits are recorded inline.
    lanes: OnceLock<Vec<mpsc::Sender<Queued>>>,
}

impl HitQueue {
    /// Starts the recorder, which runs until `stop` and then records what is still queued.
    /// Answers `None` when a recorder was started before.
    ///
    /// SQLite has one writer, so one lane records everything. PostgreSQL takes several
    /// transactions at once: [`PG_LANES`] lanes record side by side, each message's hits always
    /// in the same lane, so its clicks are still judged in order.
    pub fn start(&self, core: Arc<Core>, stop: CancellationToken) -> Option<JoinHandle<()>> {
        let lanes = match core.store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => PG_LANES,
        };
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..lanes).map(|_| mpsc::channel(QUEUE / lanes)).unzip();
        self.lanes.set(senders).ok()?;
        Some(tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for receiver in receivers {
                running.spawn(run_recorder(Arc::clone(&core), receiver, stop.clone()));
            }
            while running.join_next().await.is_some() {}
        }))
    }

    /// Queues a hit, waiting for room; hands it back when there is no recorder (not started,
    /// or stopped).
    async fn offer(&self, hit: Hit) -> Option<Hit> {
        let Some(lanes) = self.lanes.get() else {
            return Some(hit);
        };
        let lane = &lanes[lane_of(&hit.message_id, lanes.len())];
        match lane.send(Queued::Hit(hit)).await {
            Ok(()) => None,
            Err(mpsc::error::SendError(Queued::Hit(hit))) => Some(hit),
            Err(mpsc::error::SendError(Queued::Flush(_))) => None,
        }
    }

    /// Waits until every hit accepted so far is recorded (or failed to be, and was logged).
    pub async fn flush(&self) {
        let Some(lanes) = self.lanes.get() else {
            return;
        };
        for lane in lanes {
            let (done, recorded) = oneshot::channel();
            if lane.send(Queued::Flush(done)).await.is_ok() {
                let _ = recorded.await;
            }
        }
    }
}

/// The lane of a message's hits.
fn lane_of(message_id: &str, lanes: usize) -> usize {
    let hash = std::hash::BuildHasher::hash_one(
        &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
        message_id,
    );
    usize::try_from(hash % lanes.max(1) as u64).unwrap_or(0)
}

/// Queues a hit for the recorder, or records it now when there is no recorder.
async fn accept(core: &Core, hit: Hit) {
    if let Some(hit) = core.hits.offer(hit).await {
        record_logged(core, &[hit]).await;
    }
}

async fn run_recorder(core: Arc<Core>, mut queue: mpsc::Receiver<Queued>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = queue.recv_many(&mut batch, BATCH) => n,
            () = stop.cancelled() => 0,
        };
        if received == 0 {
            break;
        }
        drain(&core, &mut batch).await;
    }
    // From now on hits are recorded inline; record what was queued before.
    queue.close();
    drain(&core, &mut batch).await;
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        drain(&core, &mut batch).await;
    }
}

async fn drain(core: &Core, batch: &mut Vec<Queued>) {
    let mut hits = Vec::with_capacity(batch.len());
    let mut flushes = Vec::new();
    for queued in batch.drain(..) {
        match queued {
            Queued::Hit(hit) => hits.push(hit),
            Queued::Flush(done) => flushes.push(done),
        }
    }
    if !hits.is_empty() {
        record_logged(core, &hits).await;
    }
    for done in flushes {
        let _ = done.send(());
    }
}

/// Records hits in one transaction; if that fails, one by one, so one bad hit costs only itself.
async fn record_logged(core: &Core, hits: &[Hit]) {
    let Err(e) = record_hits(core, hits).await else {
        return;
    };
    if hits.len() == 1 {
        tracing::error!(error = %e, "recording a tracking hit failed");
        return;
    }
    tracing::warn!(error = %e, hits = hits.len(), "recording tracking hits together failed; one by one");
    for hit in hits {
        if let Err(e) = record_hits(core, std::slice::from_ref(hit)).await {
            tracing::error!(error = %e, "recording a tracking hit failed");
        }
    }
}

async fn record_hits(core: &Core, hits: &[Hit]) -> crate::store::Result<()> {
    let now = core.clock.now();
    let mut tx = core.store.write().await?;
    let reports = reports(&mut tx, hits).await?;
    record_batch(&mut tx, core, &reports, now).await?;
    tx.commit().await
}

/// The reports of `hits`, clicks judged against the clicks stored before and those earlier in
/// `hits`, as if each were recorded on its own.
async fn reports(tx: &mut Tx, hits: &[Hit]) -> crate::store::Result<Vec<Report>> {
    let clicked: Vec<&str> = hits
        .iter()
        .filter(|h| {
            matches!(
                h.kind,
                HitKind::Click {
                    machine_agent: false,
                    ..
                }
            )
        })
        .map(|h| h.message_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let sent_at: HashMap<String, Option<DateTime<Utc>>> = tx
        .message_facts(&clicked)
        .await?
        .into_iter()
        .map(|m| (m.id, m.sent_at))
        .collect();
    let mut reports = Vec::with_capacity(hits.len());
    for (i, hit) in hits.iter().enumerate() {
        let kind = match &hit.kind {
            HitKind::Open { machine } => DeliveryKind::Opened { machine: *machine },
            HitKind::Click { url, machine_agent } => {
                let machine = *machine_agent || {
                    let fresh = sent_at
                        .get(&hit.message_id)
                        .copied()
                        .flatten()
                        .is_some_and(|sent| hit.at - sent < SCANNER_AFTER_SEND);
                    fresh || clicks_before(tx, hits, i).await? >= 2
                };
                DeliveryKind::Clicked {
                    url: url.clone(),
                    machine,
                }
            }
        };
        reports.push(Report {
            source: "herald".to_owned(),
            source_event_id: uuid::Uuid::now_v7().to_string(),
            herald_message_id: Some(hit.message_id.clone()),
            provider_message_id: None,
            recipient: None,
            occurred_at: hit.at,
            kind,
        });
    }
    Ok(reports)
}

/// Clicks on the message of `hits[i]` within [`SCANNER_BURST`] before it: stored ones and
/// those earlier in `hits`.
async fn clicks_before(tx: &mut Tx, hits: &[Hit], i: usize) -> crate::store::Result<i64> {
    let hit = &hits[i];
    let since = hit.at - SCANNER_BURST;
    let stored = tx.clicks_since(&hit.message_id, since).await?;
    let queued = hits[..i]
        .iter()
        .filter(|h| {
            h.message_id == hit.message_id
                && matches!(h.kind, HitKind::Click { .. })
                && h.at >= since
        })
        .count();
    Ok(stored + i64::try_from(queued).unwrap_or(i64::MAX))
}
