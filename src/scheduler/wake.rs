//! Waking workers when work is queued: in this process through a `Notify`, and across nodes
//! through the store's work announcements (PostgreSQL `NOTIFY`). Announcements are coalesced —
//! at most one per [`ANNOUNCE_SPACING`] per node — so a burst of ingestion costs a few
//! notifications, not one per event. Polling (`workers.poll_interval`) stays the fallback for
//! announcements lost while a listener reconnects.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::Core;

/// The least time between two announcements of one node.
const ANNOUNCE_SPACING: Duration = Duration::from_millis(20);
/// How long to wait before listening again after the database refused.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Waker {
    local: Notify,
    /// Holds at most one permit, so wake-ups during an announcement's spacing coalesce.
    announce: Notify,
}

impl Waker {
    /// New or sooner work exists: wake this process's workers and tell the other nodes.
    pub fn wake(&self) {
        self.local.notify_one();
        self.announce.notify_one();
    }

    /// Wakes only this process's workers (another node announced work).
    fn wake_local(&self) {
        self.local.notify_one();
    }

    /// Resolves at the next wake-up.
    pub async fn woken(&self) {
        self.local.notified().await;
    }
}

/// Sends this node's work announcements until `stop`. Runs on PostgreSQL only.
pub async fn announce(core: Arc<Core>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = core.waker.announce.notified() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = core.store.announce_work(&core.worker_id).await {
            tracing::warn!(error = %e, "announcing work to other nodes failed; they will poll");
        }
        tokio::select! {
            _ = tokio::time::sleep(ANNOUNCE_SPACING) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Wakes this node's workers when another node announces work, until `stop`. Returns at once
/// on SQLite, which has no other nodes.
pub async fn listen(core: Arc<Core>, stop: CancellationToken) {
    let mut listener = loop {
        match core.store.listen_for_work().await {
            Ok(Some(listener)) => break listener,
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "cannot listen for work; polling meanwhile"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RELISTEN_AFTER) => {}
            _ = stop.cancelled() => return,
        }
    };
    loop {
        let next = tokio::select! {
            next = listener.next() => next,
            _ = stop.cancelled() => return,
        };
        match next {
            Ok(Some(sender)) if sender == core.worker_id => {}
            // Another node's work, or a lost connection that may have swallowed some.
            Ok(_) => core.waker.wake_local(),
            Err(e) => {
                tracing::warn!(error = %e, "listening for work failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(RELISTEN_AFTER) => {}
                    _ = stop.cancelled() => return,
                }
                core.waker.wake_local();
            }
        }
    }
}
