//! Behavioral event rows.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, FromRow, Row};

use super::direct::{List, Params, Sql, raw_json, texts};
use super::{Backend, Contact, Event, Result, Tx};

/// Where stored events' ids come from.
#[derive(Clone, Copy)]
pub enum Ids {
    /// From the client or an import: an id stored before means the same event again.
    Given,
    /// Made here (UUID v7) for events Herald emits: they cannot collide, so the insert skips the
    /// conflict check, which costs PostgreSQL 1.6× a plain insert per row.
    Fresh,
}

impl Tx {
    /// Stores the event unless one with the same id exists; answers whether it was new.
    pub async fn insert_event(&mut self, event: &Event) -> Result<bool> {
        let q = self.event_insert(std::slice::from_ref(event), Ids::Given);
        Ok(self.run(q).await? == 1)
    }

    /// Reads the event's contact, locked as [`Tx::lock_and_get_contact`] locks when `lock`,
    /// and stores the event if the contact exists (nothing otherwise). Answers the contact and
    /// whether the event is new (false: its id was stored before). PostgreSQL does it all in
    /// one statement: a round trip less for every event.
    pub async fn contact_and_insert_event(
        &mut self,
        event: &Event,
        lock: bool,
    ) -> Result<Option<(Contact, bool)>> {
        if let Tx::Postgres(t) = self {
            let sql = format!(
                "WITH c AS (SELECT * FROM contacts WHERE id = $2{}),
                 e AS (INSERT INTO events (id, contact_id, name, properties, occurred_at, received_at)
                       SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM c)
                       ON CONFLICT (id) DO NOTHING RETURNING 1)
                 SELECT c.*, EXISTS (SELECT 1 FROM e) AS inserted FROM c",
                if lock { " FOR UPDATE" } else { "" }
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(&event.id)
                .bind(&event.contact_id)
                .bind(&event.name)
                .bind(&event.properties)
                .bind(event.occurred_at)
                .bind(event.received_at)
                .fetch_optional(&mut **t)
                .await?;
            return Ok(match row {
                Some(row) => Some((Contact::from_row(&row)?, row.try_get("inserted")?)),
                None => None,
            });
        }
        let contact = match lock {
            true => self.lock_and_get_contact(&event.contact_id).await?,
            false => self.get_contact(&event.contact_id).await?,
        };
        let Some(contact) = contact else {
            return Ok(None);
        };
        let new = self.insert_event(event).await?;
        Ok(Some((contact, new)))
    }

    /// Stores events in one statement, skipping ids that exist; answers how many were new.
    /// Keep `events` within the bind-parameter limit (6 per event).
    pub async fn insert_events(&mut self, events: &[Event]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let q = self.event_insert(events, Ids::Given);
        self.run(q).await
    }

    /// [`Tx::insert_events`]' statement. With [`Ids::Given`] an event whose id is stored
    /// already is skipped.
    pub(super) fn event_insert(&self, events: &[Event], ids: Ids) -> Sql {
        let on_conflict = match ids {
            Ids::Given => "ON CONFLICT (id) DO NOTHING",
            Ids::Fresh => "",
        };
        match self.backend() {
            Backend::Sqlite => {
                let sql = format!(
                    "INSERT INTO events (id, contact_id, name, properties, occurred_at, received_at)
                     VALUES {} {on_conflict}",
                    Params::new(self.backend()).rows(events.len(), 6)
                );
                let mut q = Sql::new(sql);
                for e in events {
                    q = q
                        .arg(&e.id)
                        .arg(&e.contact_id)
                        .arg(&e.name)
                        .arg(&e.properties)
                        .arg(e.occurred_at)
                        .arg(e.received_at);
                }
                q
            }
            // Arrays: one statement text (and one prepared statement) for any number of events.
            Backend::Postgres => Sql::new(format!(
                "INSERT INTO events (id, contact_id, name, properties, occurred_at, received_at)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[],
                                      $5::timestamptz[], $6::timestamptz[])
                 {on_conflict}"
            ))
            .arg(texts(events.iter().map(|e| e.id.as_str())))
            .arg(texts(events.iter().map(|e| e.contact_id.as_str())))
            .arg(texts(events.iter().map(|e| e.name.as_str())))
            .arg(List::Json(
                events.iter().map(|e| raw_json(&e.properties.0)).collect(),
            ))
            .arg(List::Time(events.iter().map(|e| e.occurred_at).collect()))
            .arg(List::Time(events.iter().map(|e| e.received_at).collect())),
        }
    }

    /// The contact's events named `name` that occurred at or after `since` (all when `None`).
    pub async fn contact_events(
        &mut self,
        contact_id: &str,
        name: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Event>> {
        let q = match since {
            Some(since) => Sql::new(
                "SELECT * FROM events WHERE contact_id = $1 AND name = $2 AND occurred_at >= $3
                 ORDER BY occurred_at",
            )
            .arg(contact_id)
            .arg(name)
            .arg(since),
            None => Sql::new(
                "SELECT * FROM events WHERE contact_id = $1 AND name = $2 ORDER BY occurred_at",
            )
            .arg(contact_id)
            .arg(name),
        };
        self.all(q).await
    }

    /// The events named `name` of the contacts with ids after `from` and up to `to` (to the
    /// last without `to`), by contact and then time: a population pass over one page of
    /// contacts.
    pub async fn events_named_in(
        &mut self,
        name: &str,
        (from, to): (&str, Option<&str>),
    ) -> Result<Vec<(String, DateTime<Utc>, Json<Value>)>> {
        // An upper bound only when there is one (see `Tx::lock_contacts_in`).
        let upper = if to.is_some() {
            " AND contact_id <= $3"
        } else {
            ""
        };
        let mut q = Sql::new(format!(
            "SELECT contact_id, occurred_at, properties FROM events
             WHERE name = $1 AND contact_id > $2{upper} ORDER BY contact_id, occurred_at"
        ))
        .arg(name)
        .arg(from);
        if let Some(to) = to {
            q = q.arg(to);
        }
        self.all(q).await
    }

    /// The contact's most recent events, newest first.
    pub async fn recent_events(&mut self, contact_id: &str, limit: i64) -> Result<Vec<Event>> {
        self.all::<Event>(
            Sql::new(
                "SELECT * FROM events WHERE contact_id = $1 ORDER BY occurred_at DESC LIMIT $2",
            )
            .arg(contact_id)
            .arg(limit),
        )
        .await
    }

    /// SQLite numbers rows in the order they are stored (`rowid`; events are never deleted),
    /// so this number marks a point in the stream of events: [`Tx::contacts_with_events_after`]
    /// finds what was stored since. PostgreSQL keeps no such order: `None` there.
    pub async fn newest_event_number(&mut self) -> Result<Option<i64>> {
        if self.backend() == Backend::Postgres {
            return Ok(None);
        }
        // A bare MAX(rowid) is one seek to the end of the table; wrapped in another function
        // (COALESCE) SQLite would scan every row instead.
        let newest: Option<(Option<i64>,)> = self
            .optional(Sql::new("SELECT MAX(rowid) FROM events"))
            .await?;
        Ok(Some(newest.and_then(|(n,)| n).unwrap_or_default()))
    }

    /// Contacts with an event stored after [`Tx::newest_event_number`] answered `after`
    /// (SQLite; nothing on PostgreSQL). A range of the table's own b-tree, not an index scan.
    pub async fn contacts_with_events_after(&mut self, after: i64) -> Result<Vec<String>> {
        if self.backend() == Backend::Postgres {
            return Ok(Vec::new());
        }
        // NOT INDEXED: SQLite would rather walk all of the (contact_id, …) index for the
        // DISTINCT than seek the few newest rows of the table.
        let rows: Vec<(String,)> = self
            .all(Sql::new("SELECT contact_id FROM events NOT INDEXED WHERE rowid > $1").arg(after))
            .await?;
        let mut ids: Vec<String> = rows.into_iter().map(|(id,)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}
