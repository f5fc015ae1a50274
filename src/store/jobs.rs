//! The durable job queue. A job is claimed by one worker at a time: claiming sets a lease
//! (`locked_until`); every later change to the job names the worker, so a worker whose lease
//! was reaped and re-claimed by another can no longer touch it.

use chrono::{DateTime, Utc};

use super::direct::Sql;
use super::{Backend, Job, Result, Store, Tx, job_status, on_conn};

impl Tx {
    pub async fn insert_job(&mut self, job: &Job) -> Result<()> {
        self.run(
            Sql::new("INSERT INTO jobs (id, kind, journey_id, payload, status, run_at, attempts, max_attempts,
                   locked_by, locked_until, last_error, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
            .arg(&job.id)
            .arg(&job.kind)
            .arg(&job.journey_id)
            .arg(&job.payload)
            .arg(&job.status)
            .arg(job.run_at)
            .arg(job.attempts)
            .arg(job.max_attempts)
            .arg(&job.locked_by)
            .arg(job.locked_until)
            .arg(&job.last_error)
            .arg(job.created_at)
            .arg(job.updated_at),
        )
        .await?;
        Ok(())
    }

    /// Puts a held job back in the queue for `run_at`. With `reset_attempts`, the job starts a
    /// fresh step (the previous one succeeded). Answers false if `worker` no longer holds it.
    pub async fn requeue_job(
        &mut self,
        id: &str,
        worker: &str,
        run_at: DateTime<Utc>,
        reset_attempts: bool,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = self.run(
            Sql::new("UPDATE jobs SET status = 'queued', run_at = $3, locked_by = NULL, locked_until = NULL,
                   attempts = CASE WHEN $4 THEN 0 ELSE attempts END, last_error = $5, updated_at = $6
                 WHERE id = $1 AND locked_by = $2 AND status = 'running'")
            .arg(id)
            .arg(worker)
            .arg(run_at)
            .arg(reset_attempts)
            .arg(error)
            .arg(now),
        )
        .await?;
        Ok(done == 1)
    }

    /// Puts a held job back in the queue for `run_at` and takes back the attempt its claim
    /// counted (a deferral is not a failed attempt). Answers false if `worker` no longer holds
    /// it.
    pub async fn defer_job(
        &mut self,
        id: &str,
        worker: &str,
        run_at: DateTime<Utc>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = self.run(
            Sql::new("UPDATE jobs SET status = 'queued', run_at = $3, locked_by = NULL, locked_until = NULL,
                   attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, last_error = $4,
                   updated_at = $5
                 WHERE id = $1 AND locked_by = $2 AND status = 'running'")
            .arg(id)
            .arg(worker)
            .arg(run_at)
            .arg(error)
            .arg(now),
        )
        .await?;
        Ok(done == 1)
    }

    /// Finishes a held job as `done` or `dead`.
    pub async fn finish_job(
        &mut self,
        id: &str,
        worker: &str,
        status: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        debug_assert!(status == job_status::DONE || status == job_status::DEAD);
        let done = self.run(
            Sql::new("UPDATE jobs SET status = $3, locked_by = NULL, locked_until = NULL, last_error = $4,
                   updated_at = $5
                 WHERE id = $1 AND locked_by = $2 AND status = 'running'")
            .arg(id)
            .arg(worker)
            .arg(status)
            .arg(error)
            .arg(now),
        )
        .await?;
        Ok(done == 1)
    }

    /// Extends `worker`'s lease on job `id` to `until` and stores its progress, when given;
    /// answers false when the worker no longer holds it.
    pub async fn renew_job(
        &mut self,
        id: &str,
        worker: &str,
        until: DateTime<Utc>,
        payload: Option<&serde_json::Value>,
    ) -> Result<bool> {
        let n = self
            .run(
                Sql::new(
                    "UPDATE jobs SET locked_until = $3, payload = COALESCE($4, payload)
                 WHERE id = $1 AND locked_by = $2 AND status = 'running'",
                )
                .arg(id)
                .arg(worker)
                .arg(until)
                .arg(payload),
            )
            .await?;
        Ok(n == 1)
    }

    /// Makes a journey's queued job due at `at` (an awaited event arrived).
    pub async fn wake_journey_job(&mut self, journey_id: &str, at: DateTime<Utc>) -> Result<()> {
        self.run(
            Sql::new("UPDATE jobs SET run_at = $2 WHERE journey_id = $1 AND status = 'queued' AND run_at > $2")
            .arg(journey_id)
            .arg(at),
        )
        .await?;
        Ok(())
    }

    /// Answers whether `worker` still holds job `id`.
    pub async fn holds_job(&mut self, id: &str, worker: &str) -> Result<bool> {
        let n: (i64,) = self.one(
            Sql::new("SELECT COUNT(*) FROM jobs WHERE id = $1 AND locked_by = $2 AND status = 'running'")
            .arg(id)
            .arg(worker),
        )
        .await?;
        Ok(n.0 == 1)
    }

    /// The open (queued or running) job of each of the contact's journeys.
    pub async fn contact_open_jobs(&mut self, contact_id: &str) -> Result<Vec<Job>> {
        self.all::<Job>(
            Sql::new(
                "SELECT jobs.* FROM jobs JOIN journeys ON journeys.id = jobs.journey_id
                 WHERE journeys.contact_id = $1 AND jobs.status IN ('queued', 'running')",
            )
            .arg(contact_id),
        )
        .await
    }

    pub async fn jobs_by_status(&mut self, status: &str, limit: i64) -> Result<Vec<Job>> {
        self.all::<Job>(
            Sql::new("SELECT * FROM jobs WHERE status = $1 ORDER BY run_at LIMIT $2")
                .arg(status)
                .arg(limit),
        )
        .await
    }
}

impl Tx {
    /// Claims up to `limit` due jobs for `worker` with a lease until `lease_until`, in one
    /// statement per backend so two workers never claim the same job.
    pub async fn claim_jobs(
        &mut self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        const SQLITE: &str =
            "UPDATE jobs SET status = 'running', locked_by = $1, locked_until = $2,
                attempts = attempts + 1, updated_at = $3
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $3
                          ORDER BY run_at LIMIT $4)
             RETURNING *";
        const POSTGRES: &str = "WITH next AS (
                SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $3
                ORDER BY run_at LIMIT $4 FOR UPDATE SKIP LOCKED)
             UPDATE jobs j SET status = 'running', locked_by = $1, locked_until = $2,
                attempts = j.attempts + 1, updated_at = $3
             FROM next WHERE j.id = next.id
             RETURNING j.*";
        let sql = match self.backend() {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
        };
        self.all(
            Sql::new(sql)
                .arg(worker)
                .arg(lease_until)
                .arg(now)
                .arg(limit),
        )
        .await
    }
}

impl Store {
    /// [`Tx::claim_jobs`] in a transaction of its own.
    pub async fn claim_jobs(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        let mut tx = self.write().await?;
        let jobs = tx.claim_jobs(worker, now, lease_until, limit).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    /// Returns jobs whose lease expired to the queue (or to `dead` once out of attempts).
    /// Answers how many were re-queued and how many died.
    pub async fn reap_expired_leases(&self, now: DateTime<Utc>) -> Result<(u64, u64)> {
        let mut tx = self.write().await?;
        let (dead, requeued) = on_conn!(&mut tx, c => {
            let dead = sqlx::query(
                "UPDATE jobs SET status = 'dead', locked_by = NULL, locked_until = NULL,
                   last_error = 'lease expired on the last attempt', updated_at = $1
                 WHERE status = 'running' AND locked_until < $1 AND attempts >= max_attempts",
            )
            .bind(now)
            .execute(&mut *c)
            .await?
            .rows_affected();
            let requeued = sqlx::query(
                "UPDATE jobs SET status = 'queued', locked_by = NULL, locked_until = NULL,
                   last_error = 'lease expired', updated_at = $1
                 WHERE status = 'running' AND locked_until < $1",
            )
            .bind(now)
            .execute(&mut *c)
            .await?
            .rows_affected();
            (dead, requeued)
        });
        tx.commit().await?;
        Ok((requeued, dead))
    }

    /// Hands the jobs `worker` still holds back to the queue, due at once, without counting
    /// the interrupted attempt. Answers how many.
    pub async fn release_leases(&self, worker: &str, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.write().await?;
        let released = on_conn!(&mut tx, c => {
            sqlx::query(
                "UPDATE jobs SET status = 'queued', locked_by = NULL, locked_until = NULL,
                   attempts = attempts - 1, last_error = 'released at shutdown',
                   updated_at = $2
                 WHERE status = 'running' AND locked_by = $1",
            )
            .bind(worker)
            .bind(now)
            .execute(c)
            .await?
            .rows_affected()
        });
        tx.commit().await?;
        Ok(released)
    }

    /// When the scheduler next has something to do, in one statement: the earliest queued
    /// job's `run_at` or lease expiry, and the earliest time-trigger or segment-due instant.
    pub async fn next_due(&self) -> Result<NextDue> {
        const SQL: &str = "SELECT
                (SELECT MIN(run_at) FROM jobs WHERE status = 'queued'),
                (SELECT MIN(locked_until) FROM jobs WHERE status = 'running'),
                (SELECT MIN(fire_at) FROM trigger_times),
                (SELECT MIN(next_run_at) FROM trigger_specs),
                (SELECT MIN(due_at) FROM segment_due)";
        type Row = (
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        );
        let (due, lease, fire, schedule, segment): Row = match self {
            Store::Sqlite { reader, .. } => sqlx::query_as(SQL).fetch_one(reader).await?,
            Store::Postgres(pool) => sqlx::query_as(SQL).fetch_one(pool).await?,
        };
        Ok(NextDue {
            job: earliest(due, lease),
            trigger: earliest(earliest(fire, schedule), segment),
        })
    }
}

/// What [`Store::next_due`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextDue {
    /// A queued job becomes due or a lease expires.
    pub job: Option<DateTime<Utc>>,
    /// A per-contact trigger time, a fixed-zone schedule tick, or a contact whose segments can
    /// change by time (the tick also runs the segment sweep).
    pub trigger: Option<DateTime<Utc>>,
}

/// The earlier of two optional instants.
pub fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Tx {
    /// Marks a job dead regardless of who holds it (used when its journey gives up).
    pub async fn mark_job_dead(&mut self, id: &str, error: &str, now: DateTime<Utc>) -> Result<()> {
        self.run(
            Sql::new("UPDATE jobs SET status = 'dead', locked_by = NULL, locked_until = NULL, last_error = $2,
                   updated_at = $3 WHERE id = $1")
            .arg(id)
            .arg(error)
            .arg(now),
        )
        .await?;
        Ok(())
    }
}
