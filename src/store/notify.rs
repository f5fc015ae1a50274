//! Cross-node wake-ups over PostgreSQL `LISTEN`/`NOTIFY`: a node that queues work announces it
//! on one channel, and idle workers on other nodes listening there look for due jobs at once
//! instead of at their next poll. SQLite has one node, so it has no channel.

use sqlx::postgres::PgListener;

use super::{Result, Store};

/// The channel work announcements travel on.
const CHANNEL: &str = "herald_work";

/// A dedicated connection listening for work announcements.
pub struct WorkListener(PgListener);

impl Store {
    /// Announces new or sooner work to every listening node; `sender` identifies this node
    /// so it can ignore its own announcement. Does nothing on SQLite.
    pub async fn announce_work(&self, sender: &str) -> Result<()> {
        if let Store::Postgres(pool) = self {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(sender)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Starts listening for work announcements, on PostgreSQL only. The listener holds one
    /// of the pool's connections.
    pub async fn listen_for_work(&self) -> Result<Option<WorkListener>> {
        match self {
            Store::Sqlite { .. } => Ok(None),
            Store::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(CHANNEL).await?;
                Ok(Some(WorkListener(listener)))
            }
        }
    }
}

impl WorkListener {
    /// Waits for the next announcement and answers its sender, or `None` when the connection
    /// was lost (it reconnects on the next call; announcements made meanwhile are gone).
    pub async fn next(&mut self) -> Result<Option<String>> {
        Ok(self.0.try_recv().await?.map(|n| n.payload().to_owned()))
    }
}
