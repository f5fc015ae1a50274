//! Behavioral event rows.

use chrono::{DateTime, Utc};

use super::{Event, Result, Tx, on_conn};

impl Tx {
    /// Stores the event unless one with the same id exists; answers whether it was new.
    pub async fn insert_event(&mut self, event: &Event) -> Result<bool> {
        let done = on_conn!(self, c => {
            sqlx::query(
                "INSERT INTO events (id, contact_id, name, properties, occurred_at, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&event.contact_id)
            .bind(&event.name)
            .bind(&event.properties)
            .bind(event.occurred_at)
            .bind(event.received_at)
            .execute(c)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Stores events in one statement, skipping ids that exist; answers how many were new.
    /// Keep `events` within the bind-parameter limit (6 per event).
    pub async fn insert_events(&mut self, events: &[Event]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        Ok(on_conn!(self, c => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO events (id, contact_id, name, properties, occurred_at, received_at) ",
            );
            q.push_values(events, |mut v, e| {
                v.push_bind(&e.id)
                    .push_bind(&e.contact_id)
                    .push_bind(&e.name)
                    .push_bind(&e.properties)
                    .push_bind(e.occurred_at)
                    .push_bind(e.received_at);
            });
            q.push(" ON CONFLICT (id) DO NOTHING");
            q.build().execute(c).await?.rows_affected()
        }))
    }

    /// The contact's events named `name` that occurred at or after `since` (all when `None`).
    pub async fn contact_events(
        &mut self,
        contact_id: &str,
        name: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Event>> {
        Ok(on_conn!(self, c => {
            match since {
                Some(since) => sqlx::query_as::<_, Event>(
                    "SELECT * FROM events WHERE contact_id = $1 AND name = $2 AND occurred_at >= $3
                     ORDER BY occurred_at",
                )
                .bind(contact_id)
                .bind(name)
                .bind(since)
                .fetch_all(c)
                .await?,
                None => sqlx::query_as::<_, Event>(
                    "SELECT * FROM events WHERE contact_id = $1 AND name = $2 ORDER BY occurred_at",
                )
                .bind(contact_id)
                .bind(name)
                .fetch_all(c)
                .await?,
            }
        }))
    }

    /// The contact's most recent events, newest first.
    pub async fn recent_events(&mut self, contact_id: &str, limit: i64) -> Result<Vec<Event>> {
        Ok(on_conn!(self, c => {
            sqlx::query_as::<_, Event>(
                "SELECT * FROM events WHERE contact_id = $1 ORDER BY occurred_at DESC LIMIT $2",
            )
            .bind(contact_id)
            .bind(limit)
            .fetch_all(c)
            .await?
        }))
    }
}
