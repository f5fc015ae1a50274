//! The cluster-wide timeline of a transport's send slots (PostgreSQL): one row per transport
//! holding its next free slot, advanced atomically by whichever node sends.

use chrono::{DateTime, TimeDelta, Utc};

use super::{Result, Store};

impl Store {
    /// Reserves the next free send slot of `transport` at or after `now`, with `interval`
    /// between slots, and answers when it starts. PostgreSQL only: on SQLite it answers
    /// `None` and the caller paces in memory.
    pub async fn reserve_send_slot(
        &self,
        transport: &str,
        now: DateTime<Utc>,
        interval: TimeDelta,
    ) -> Result<Option<DateTime<Utc>>> {
        let Store::Postgres(pool) = self else {
            return Ok(None);
        };
        let micros = interval.num_microseconds().unwrap_or(i64::MAX);
        let (start,): (DateTime<Utc>,) = sqlx::query_as(
            "INSERT INTO transport_pace AS p (transport, next_slot)
                 VALUES ($1, $2 + $3 * INTERVAL '1 microsecond')
             ON CONFLICT (transport) DO UPDATE
                 SET next_slot = GREATEST(p.next_slot, $2) + $3 * INTERVAL '1 microsecond'
             RETURNING next_slot - $3 * INTERVAL '1 microsecond'",
        )
        .bind(transport)
        .bind(now)
        .bind(micros)
        .fetch_one(pool)
        .await?;
        Ok(Some(start))
    }
}
