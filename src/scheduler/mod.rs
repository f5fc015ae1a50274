//! Workers: claim due jobs with a lease, run them with bounded concurrency, re-queue expired
//! leases, and sleep until the next due instant (or a wake-up from new work), so an idle Herald
//! starts a due job within a second of its due time without minute-granularity polling.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::Core;
use crate::segment::evaluate::earliest;
use crate::segment::membership;
use crate::store::{Job, Result, Tx};
use crate::workflow::engine::{Outcome, run_journey_job};

mod ticks;
pub use ticks::{SCHEDULE_FIRE_JOB, reschedule_contact, run_paging_batch, sync_definitions, tick};

const BACKOFF_BASE: TimeDelta = TimeDelta::seconds(10);
const BACKOFF_CAP: TimeDelta = TimeDelta::hours(1);

/// Delay before retry number `attempts + 1`: exponential from 10 s, capped at an hour, with
/// jitter (50–100 %) so retries from one outage spread out; never sooner than `retry_after`.
pub fn backoff(attempts: i64, retry_after: Option<Duration>) -> TimeDelta {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let full = BACKOFF_BASE
        .checked_mul(1 << exp)
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP);
    let jitter = rand::rng().random_range(0.5..=1.0);
    let delay = TimeDelta::milliseconds((full.num_milliseconds() as f64 * jitter) as i64);
    let floor = retry_after
        .and_then(|d| TimeDelta::from_std(d).ok())
        .unwrap_or_default();
    delay.max(floor)
}

pub async fn mark_dead(tx: &mut Tx, job_id: &str, reason: &str, now: DateTime<Utc>) -> Result<()> {
    tx.mark_job_dead(job_id, reason, now).await
}

async fn run_job(core: &Core, job: &Job) -> Outcome {
    let result = match job.kind.as_str() {
        ticks::BACKFILL_JOB | ticks::SCHEDULE_FIRE_JOB => ticks::run_paging_job(core, job).await,
        membership::RECOMPUTE_JOB | membership::REFRESH_JOB => membership::run_job(core, job).await,
        _ => run_journey_job(core, job).await,
    };
    match result {
        Ok(outcome) => outcome,
        Err(e) => {
            // A database error mid-step: the lease will expire and the reaper re-queues it.
            tracing::error!(job = %job.id, error = %e, "job failed with a database error");
            Outcome::LeaseLost
        }
    }
}

/// Reaps expired leases, fires due time triggers, then claims and runs every due job until none
/// is due. Returns how many jobs ran. Tests drive the engine with this and a manual clock.
pub async fn run_due(core: &Core) -> Result<usize> {
    let mut ran = 0;
    core.store.reap_expired_leases(core.clock.now()).await?;
    tick(core).await?;
    loop {
        let now = core.clock.now();
        let jobs = core
            .store
            .claim_jobs(&core.worker_id, now, now + core.lease, 64)
            .await?;
        if jobs.is_empty() {
            return Ok(ran);
        }
        for job in &jobs {
            run_job(core, job).await;
            ran += 1;
        }
    }
}

/// The worker loop of `herald serve`: runs until `shutdown`, then lets in-flight jobs finish
/// for up to `grace`.
pub async fn run(core: Arc<Core>, shutdown: CancellationToken, grace: Duration) {
    let permits = Arc::new(Semaphore::new(core.settings.workers.concurrency));
    let tracker = TaskTracker::new();
    let mut next_reap = core.clock.now();
    while !shutdown.is_cancelled() {
        let now = core.clock.now();
        if now >= next_reap {
            match core.store.reap_expired_leases(now).await {
                Ok((requeued, dead)) if requeued + dead > 0 => {
                    tracing::info!(requeued, dead, "re-queued jobs whose lease expired");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "lease reaper failed"),
            }
            next_reap = now + core.lease / 2;
        }
        if let Err(e) = tick(&core).await {
            tracing::error!(error = %e, "firing time triggers failed");
        }
        let free = permits.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match core
                .store
                .claim_jobs(&core.worker_id, now, now + core.lease, free as i64)
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "claiming jobs failed");
                    Vec::new()
                }
            }
        };
        let saturated = !claimed.is_empty() && claimed.len() == free;
        for job in claimed {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let core = Arc::clone(&core);
            tracker.spawn(async move {
                run_job(&core, &job).await;
                drop(permit);
                core.wake_scheduler();
            });
        }
        if saturated {
            // More may be due: wait for a free worker, not for the clock.
            tokio::select! {
                _ = core.woken() => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        let fallback = now + core.poll;
        let deadline = match next_wakeup(&core).await {
            Ok(Some(at)) => at.min(fallback).min(next_reap),
            Ok(None) => fallback.min(next_reap),
            Err(e) => {
                tracing::error!(error = %e, "reading the next due job failed");
                fallback
            }
        };
        tokio::select! {
            _ = core.clock.sleep_until(deadline) => {}
            _ = core.woken() => {}
            _ = shutdown.cancelled() => {}
        }
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            "shutdown grace period over with jobs still running; their leases will expire"
        );
    }
}

/// The earliest instant a job, a time trigger or a segment change is due.
async fn next_wakeup(core: &Core) -> Result<Option<DateTime<Utc>>> {
    let jobs = core.store.next_wakeup().await?;
    let triggers = core.store.next_trigger_time().await?;
    let segments = core.store.next_segment_due().await?;
    let refresh = membership::next_refresh(core).await?;
    Ok([triggers, segments, refresh]
        .into_iter()
        .fold(jobs, earliest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff(1, None);
        assert!(first >= TimeDelta::seconds(5) && first <= TimeDelta::seconds(10));
        let later = backoff(30, None);
        assert!(later <= BACKOFF_CAP && later >= BACKOFF_CAP / 2);
        assert!(backoff(1, Some(Duration::from_secs(120))) >= TimeDelta::seconds(120));
    }
}
