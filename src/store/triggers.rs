//! Rows behind time-based triggers: per-contact fire instants (date triggers, contact-local
//! schedules), fired occurrences, trigger definitions and fixed-zone schedule ticks. Every
//! advance is a compare-and-set, so one node fires each tick however many share the database.

use chrono::{DateTime, Utc};

use super::direct::Sql;
use super::{Contact, Result, Store, TriggerTime, Tx, on_conn};

impl Tx {
    pub async fn put_trigger_time(&mut self, t: &TriggerTime) -> Result<()> {
        self.run(
            Sql::new("INSERT INTO trigger_times (workflow, contact_id, fire_at, occurrence) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (workflow, contact_id) DO UPDATE SET fire_at = excluded.fire_at,
                   occurrence = excluded.occurrence")
            .arg(&t.workflow)
            .arg(&t.contact_id)
            .arg(t.fire_at)
            .arg(&t.occurrence),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_trigger_time(&mut self, workflow: &str, contact_id: &str) -> Result<()> {
        self.run(
            Sql::new("DELETE FROM trigger_times WHERE workflow = $1 AND contact_id = $2")
                .arg(workflow)
                .arg(contact_id),
        )
        .await?;
        Ok(())
    }

    pub async fn delete_workflow_trigger_times(&mut self, workflow: &str) -> Result<()> {
        self.run(Sql::new("DELETE FROM trigger_times WHERE workflow = $1").arg(workflow))
            .await?;
        Ok(())
    }

    /// Moves a due row to its next occurrence (or removes it) if it still says `fire_at`.
    /// Answers false when another worker advanced it first.
    pub async fn advance_trigger_time(
        &mut self,
        due: &TriggerTime,
        next: Option<&TriggerTime>,
    ) -> Result<bool> {
        let n = on_conn!(self, c => {
            match next {
                Some(next) => sqlx::query(
                    "UPDATE trigger_times SET fire_at = $4, occurrence = $5
                     WHERE workflow = $1 AND contact_id = $2 AND fire_at = $3",
                )
                .bind(&due.workflow)
                .bind(&due.contact_id)
                .bind(due.fire_at)
                .bind(next.fire_at)
                .bind(&next.occurrence)
                .execute(c)
                .await?
                .rows_affected(),
                None => sqlx::query(
                    "DELETE FROM trigger_times WHERE workflow = $1 AND contact_id = $2 AND fire_at = $3",
                )
                .bind(&due.workflow)
                .bind(&due.contact_id)
                .bind(due.fire_at)
                .execute(c)
                .await?
                .rows_affected(),
            }
        });
        Ok(n == 1)
    }

    /// Records that an occurrence fired; answers false if it already had.
    pub async fn record_fire(
        &mut self,
        workflow: &str,
        contact_id: &str,
        occurrence: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = self.run(
            Sql::new("INSERT INTO trigger_fires (workflow, contact_id, occurrence, fired_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING")
            .arg(workflow)
            .arg(contact_id)
            .arg(occurrence)
            .arg(now),
        )
        .await?;
        Ok(n == 1)
    }

    /// Stores a trigger's definition; answers true when it is new or changed (the caller then
    /// recomputes what depends on it). Only one of several racing nodes sees true.
    pub async fn claim_trigger_spec(
        &mut self,
        workflow: &str,
        spec: &str,
        next_run_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = self.run(
            Sql::new("INSERT INTO trigger_specs (workflow, spec, next_run_at, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (workflow) DO UPDATE SET spec = excluded.spec, next_run_at = excluded.next_run_at,
                   updated_at = excluded.updated_at
                 WHERE trigger_specs.spec <> excluded.spec")
            .arg(workflow)
            .arg(spec)
            .arg(next_run_at)
            .arg(now),
        )
        .await?;
        Ok(n == 1)
    }

    /// Forgets time triggers of workflows that no longer exist (or no longer have one).
    pub async fn retain_trigger_specs(&mut self, workflows: &[String]) -> Result<()> {
        let stored: Vec<(String,)> = self
            .all(Sql::new("SELECT workflow FROM trigger_specs"))
            .await?;
        for (name,) in stored.into_iter().filter(|(n,)| !workflows.contains(n)) {
            on_conn!(self, c => {
                sqlx::query("DELETE FROM trigger_specs WHERE workflow = $1").bind(&name).execute(&mut *c).await?;
                sqlx::query("DELETE FROM trigger_times WHERE workflow = $1").bind(&name).execute(&mut *c).await?;
            });
        }
        Ok(())
    }

    /// Advances a fixed-zone schedule from `from` to `to`; answers false if another node did.
    pub async fn advance_schedule(
        &mut self,
        workflow: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<bool> {
        let n = self.run(
            Sql::new("UPDATE trigger_specs SET next_run_at = $3 WHERE workflow = $1 AND next_run_at = $2")
            .arg(workflow)
            .arg(from)
            .arg(to),
        )
        .await?;
        Ok(n == 1)
    }

    /// Contacts ordered by id after `cursor` (keyset paging), optionally only subscribed ones.
    pub async fn contacts_after(
        &mut self,
        cursor: &str,
        limit: i64,
        subscribed_only: bool,
    ) -> Result<Vec<Contact>> {
        self.all::<Contact>(
            Sql::new("SELECT * FROM contacts WHERE id > $1 AND (subscribed = $3 OR $4) ORDER BY id LIMIT $2")
            .arg(cursor)
            .arg(limit)
            .arg(true)
            .arg(!subscribed_only),
        )
        .await
    }

    /// The id `n` contacts after `cursor` in id order: where a page of `n` that starts after
    /// `cursor` ends. `None` when fewer than `n` follow.
    pub async fn page_end(&mut self, cursor: &str, n: usize) -> Result<Option<String>> {
        let offset = i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX);
        let row: Option<(String,)> = self
            .optional(
                Sql::new("SELECT id FROM contacts WHERE id > $1 ORDER BY id LIMIT 1 OFFSET $2")
                    .arg(cursor)
                    .arg(offset),
            )
            .await?;
        Ok(row.map(|(id,)| id))
    }

    /// The contacts with ids after `from` and up to `to` (to the last without `to`), in id
    /// order, each locked (PostgreSQL) until the transaction ends: what is decided about them
    /// is written back, and a concurrent event's update waits instead of being overwritten.
    pub async fn lock_contacts_in(&mut self, from: &str, to: Option<&str>) -> Result<Vec<Contact>> {
        // An upper bound only when there is one, rather than `$2 IS NULL OR id <= $2`, which a
        // generic plan would check row by row to the end of the table.
        let upper = if to.is_some() { " AND id <= $2" } else { "" };
        let sql = format!(
            "SELECT * FROM contacts WHERE id > $1{upper} ORDER BY id{}",
            self.row_lock()
        );
        let mut q = Sql::new(sql).arg(from);
        if let Some(to) = to {
            q = q.arg(to);
        }
        self.all::<Contact>(q).await
    }
}

impl Store {
    /// Per-contact trigger times due at `now`, earliest first.
    pub async fn due_trigger_times(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<TriggerTime>> {
        let mut tx = self.read().await?;
        let rows = on_conn!(&mut tx, c => {
            sqlx::query_as::<_, TriggerTime>(
                "SELECT * FROM trigger_times WHERE fire_at <= $1 ORDER BY fire_at LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(c)
            .await?
        });
        tx.commit().await?;
        Ok(rows)
    }

    /// Fixed-zone schedules whose tick is due: (workflow, tick).
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<(String, DateTime<Utc>)>> {
        let mut tx = self.read().await?;
        let rows = on_conn!(&mut tx, c => {
            sqlx::query_as(
                "SELECT workflow, next_run_at FROM trigger_specs WHERE next_run_at <= $1 ORDER BY next_run_at",
            )
            .bind(now)
            .fetch_all(c)
            .await?
        });
        tx.commit().await?;
        Ok(rows)
    }
}
