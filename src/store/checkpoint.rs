//! SQLite WAL checkpoints away from the writer. Left to itself, SQLite checkpoints inside the
//! commit that pushes the WAL past `wal_autocheckpoint`: that commit copies every page to the
//! database file and syncs it while all other writes wait (about 70 ms every ten hit batches,
//! a quarter of the writer's time under a flood of tracking hits). A task on a connection of
//! its own copies committed pages in the background instead (a PASSIVE checkpoint never blocks
//! the writer), so the writer's own checkpoint, which still bounds the WAL and restarts it,
//! finds little left to copy.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tokio_util::sync::CancellationToken;

/// How often the background checkpoint copies committed pages. Each checkpoint disturbs the
/// writer a little (per-event p99 1.9 ms at 50 ms against 1.45–1.7 ms at 500 ms, 200k contacts),
/// and a page written many times in between is copied once; 500 ms still keeps the WAL far
/// below the writer's own bound under a flood of tracking hits.
const INTERVAL: Duration = Duration::from_millis(500);

/// WAL pages after which the writer checkpoints in its commit, restarting the WAL: the bound
/// on the WAL (4 KiB pages, 128 MiB) should the background checkpoint fall behind.
pub(super) const WRITER_AUTOCHECKPOINT: u32 = 32_000;

/// Runs checkpoints until the last clone of the store is dropped or the store is closed.
pub struct Checkpointer {
    stop: CancellationToken,
}

impl Checkpointer {
    pub(super) fn spawn(options: SqliteConnectOptions) -> Checkpointer {
        let stop = CancellationToken::new();
        tokio::spawn(run(options, stop.clone()));
        Checkpointer { stop }
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run(options: SqliteConnectOptions, stop: CancellationToken) {
    let mut conn = match SqliteConnection::connect_with(&options).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "background WAL checkpoints are off; the writer checkpoints");
            return;
        }
    };
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(INTERVAL) => {}
        }
        // (busy, WAL pages, pages copied); busy only means another checkpoint was running.
        let done: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await;
        match done {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "background WAL checkpoint failed; retrying");
            }
            Err(_) => {}
        }
    }
    let _ = conn.close().await;
}
