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
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the background checkpoint copies committed pages. Each checkpoint disturbs the
/// writer a little (per-event p99 1.9 ms at 50 ms against 1.45–1.7 ms at 500 ms, 200k contacts),
/// and a page written many times in between is copied once; 500 ms still keeps the WAL far
/// below the writer's own bound under a flood of tracking hits.
const INTERVAL: Duration = Duration::from_millis(500);

/// WAL pages after which the writer checkpoints in its commit, restarting the WAL: the bound
/// on the WAL (4 KiB pages, 128 MiB) should the background checkpoint fall behind.
pub(super) const WRITER_AUTOCHECKPOINT: u32 = 32_000;

/// How many checkpoints a catch-up runs at most, [`CATCH_UP_PAUSE`] apart, while readers
/// still use pages it cannot copy yet.
const CATCH_UP_TRIES: u32 = 100;
const CATCH_UP_PAUSE: Duration = Duration::from_millis(20);

/// Runs checkpoints until the last clone of the store is dropped or the store is closed.
pub struct Checkpointer {
    stop: CancellationToken,
    catch_up: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Checkpointer {
    pub(super) fn spawn(options: SqliteConnectOptions) -> Checkpointer {
        let stop = CancellationToken::new();
        let (catch_up, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(options, stop.clone(), requests));
        Checkpointer { stop, catch_up }
    }

    /// Copies every committed page into the database file now, and returns when done (or
    /// after [`CATCH_UP_TRIES`] checkpoints, should readers hold some back). A bulk job calls
    /// it before it ends: otherwise the first commits after it find the WAL past
    /// [`WRITER_AUTOCHECKPOINT`] and copy the backlog themselves, while events wait.
    pub(super) async fn catch_up(&self) {
        let (done, answer) = oneshot::channel();
        if self.catch_up.send(done).is_ok() {
            // An error only means the checkpointer stopped; nothing is left to wait for.
            let _ = answer.await;
        }
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

async fn run(
    options: SqliteConnectOptions,
    stop: CancellationToken,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
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
            Some(done) = requests.recv() => {
                for _ in 0..CATCH_UP_TRIES {
                    match checkpoint(&mut conn, &mut failing).await {
                        Some((_, pages, copied)) if copied >= pages => break,
                        None => break,
                        Some(_) => tokio::time::sleep(CATCH_UP_PAUSE).await,
                    }
                }
                let _ = done.send(());
                continue;
            }
        }
        checkpoint(&mut conn, &mut failing).await;
    }
    let _ = conn.close().await;
}

/// One PASSIVE checkpoint: `(busy, WAL pages, pages copied)`, `None` if it failed (logged
/// once until one succeeds again). Busy only means another checkpoint was running.
async fn checkpoint(conn: &mut SqliteConnection, failing: &mut bool) -> Option<(i64, i64, i64)> {
    let done = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await;
    match done {
        Ok(counts) => {
            *failing = false;
            Some(counts)
        }
        Err(e) => {
            if !*failing {
                *failing = true;
                tracing::warn!(error = %e, "background WAL checkpoint failed; retrying");
            }
            None
        }
    }
}
