//! Journey rows: one contact's path through one workflow.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::direct::Sql;
use super::{Journey, Result, Tx, journey_status};

/// A contact's latest journey of a workflow and key (`journeys_contact`, newest first).
const LATEST: &str =
    "SELECT * FROM journeys WHERE workflow = $1 AND contact_id = $2 AND journey_key = $3
     ORDER BY entered_at DESC LIMIT 1";
/// A contact's active journeys (`journeys_active`, whose rows are the active ones only).
const ACTIVE: &str =
    "SELECT * FROM journeys WHERE contact_id = $1 AND status = 'active' ORDER BY entered_at";
/// A contact's journeys, newest first (`journeys_contact`).
const HISTORY: &str =
    "SELECT * FROM journeys WHERE contact_id = $1 ORDER BY entered_at DESC LIMIT $2";

impl Tx {
    /// Inserts a journey; answers false when an active journey for the same
    /// (workflow, contact, key) already exists.
    pub async fn insert_journey(&mut self, j: &Journey) -> Result<bool> {
        let done = self.run(
            Sql::new("INSERT INTO journeys (id, workflow, contact_id, journey_key, status, step, context,
                   entered_at, updated_at, ended_at, end_reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT DO NOTHING")
            .arg(&j.id)
            .arg(&j.workflow)
            .arg(&j.contact_id)
            .arg(&j.journey_key)
            .arg(&j.status)
            .arg(&j.step)
            .arg(&j.context)
            .arg(j.entered_at)
            .arg(j.updated_at)
            .arg(j.ended_at)
            .arg(&j.end_reason),
        )
        .await?;
        Ok(done == 1)
    }

    pub async fn get_journey(&mut self, id: &str) -> Result<Option<Journey>> {
        self.optional::<Journey>(Sql::new("SELECT * FROM journeys WHERE id = $1").arg(id))
            .await
    }

    /// Journey `journey_id` when `worker` holds job `job_id` (one statement for the lease check
    /// and the read). `None` when the lease is lost or the journey is gone.
    pub async fn held_journey(
        &mut self,
        job_id: &str,
        worker: &str,
        journey_id: &str,
    ) -> Result<Option<Journey>> {
        self.optional::<Journey>(
            Sql::new(
                "SELECT journeys.* FROM jobs JOIN journeys ON journeys.id = $3
                 WHERE jobs.id = $1 AND jobs.locked_by = $2 AND jobs.status = 'running'",
            )
            .arg(job_id)
            .arg(worker)
            .arg(journey_id),
        )
        .await
    }

    /// The latest journey of `workflow` for this contact and key, active or not.
    pub async fn latest_journey(
        &mut self,
        workflow: &str,
        contact_id: &str,
        key: &str,
    ) -> Result<Option<Journey>> {
        self.optional::<Journey>(Sql::new(LATEST).arg(workflow).arg(contact_id).arg(key))
            .await
    }

    pub async fn active_journeys(&mut self, contact_id: &str) -> Result<Vec<Journey>> {
        self.all::<Journey>(Sql::new(ACTIVE).arg(contact_id)).await
    }

    pub async fn contact_journeys(&mut self, contact_id: &str, limit: i64) -> Result<Vec<Journey>> {
        self.all::<Journey>(Sql::new(HISTORY).arg(contact_id).arg(limit))
            .await
    }

    /// Moves an active journey to `step`, optionally replacing its context. Answers false when
    /// the journey is no longer active (it exited meanwhile).
    pub async fn advance_journey(
        &mut self,
        id: &str,
        step: &str,
        context: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let q = match context {
            Some(ctx) => Sql::new(
                "UPDATE journeys SET step = $2, context = $3, updated_at = $4
                 WHERE id = $1 AND status = 'active'",
            )
            .arg(id)
            .arg(step)
            .arg(ctx)
            .arg(now),
            None => Sql::new(
                "UPDATE journeys SET step = $2, updated_at = $3 WHERE id = $1 AND status = 'active'",
            )
            .arg(id)
            .arg(step)
            .arg(now),
        };
        Ok(self.run(q).await? == 1)
    }

    /// Records the last etiquette decision about a journey.
    pub async fn set_journey_note(
        &mut self,
        id: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.run(
            Sql::new("UPDATE journeys SET note = $2, updated_at = $3 WHERE id = $1")
                .arg(id)
                .arg(note)
                .arg(now),
        )
        .await?;
        Ok(())
    }

    /// Ends an active journey with `status` without touching jobs: for the worker that has
    /// just finished the journey's only job. Answers false when it had already ended.
    pub async fn close_journey(
        &mut self,
        id: &str,
        status: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        debug_assert!(status != journey_status::ACTIVE);
        let done = self.run(
            Sql::new("UPDATE journeys SET status = $2, step = NULL, ended_at = $3, updated_at = $3, end_reason = $4
                 WHERE id = $1 AND status = 'active'")
            .arg(id)
            .arg(status)
            .arg(now)
            .arg(reason),
        )
        .await?;
        Ok(done == 1)
    }

    /// Ends an active journey with `status` (see [`journey_status`]) and stops its job.
    /// Answers false when it had already ended.
    pub async fn end_journey(
        &mut self,
        id: &str,
        status: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = self.close_journey(id, status, reason, now).await?;
        self.run(
            Sql::new("UPDATE jobs SET status = 'done', locked_by = NULL, locked_until = NULL, updated_at = $2
                 WHERE journey_id = $1 AND status IN ('queued', 'running')")
            .arg(id)
            .arg(now),
        )
        .await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::direct::tests::sqlite;

    /// Every journey lookup names the contact, so none may read the whole table: a journey
    /// index that stopped serving one would turn each event into a table scan.
    #[tokio::test]
    async fn journey_lookups_search_an_index_by_contact() {
        let (_dir, store) = sqlite().await;
        let mut tx = store.read().await.expect("read");
        for (sql, index) in [
            (LATEST, "journeys_contact"),
            (ACTIVE, "journeys_active"),
            (HISTORY, "journeys_contact"),
        ] {
            let plan: Vec<(i64, i64, i64, String)> = tx
                .all(Sql::new(format!("EXPLAIN QUERY PLAN {sql}")))
                .await
                .expect("plan");
            let steps: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
            assert!(
                steps.iter().any(|s| s.starts_with(&format!(
                    "SEARCH journeys USING INDEX {index} (contact_id=?"
                ))),
                "{sql}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN")),
                "{sql}: {steps:?}"
            );
        }
    }
}
