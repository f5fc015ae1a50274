//! Workers: claim due jobs with a lease, run them with bounded concurrency, re-queue expired
//! leases, and sleep until the next due instant (or a wake-up from new work), so an idle Herald
//! starts a due job within a second of its due time without minute-granularity polling.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::segment::membership;
use crate::store::{Job, Result, Tx, earliest};
use crate::workflow::engine::{Outcome, run_journey_job};

mod ticks;
pub mod wake;
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

/// Where a paging job (a recompute, a backfill) continues: the id after which its next batch
/// starts.
pub(crate) fn page_cursor(payload: &serde_json::Value) -> &str {
    payload["cursor"].as_str().unwrap_or_default()
}

/// Moves a paging job's cursor past `last` (when its batch had one) and renews the job's lease
/// in `tx`, so the two commit together. `false`: another worker holds the job now.
pub(crate) async fn turn_page(
    tx: &mut Tx,
    core: &Core,
    job: &Job,
    payload: &mut serde_json::Value,
    last: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    if let Some(last) = last {
        payload["cursor"] = serde_json::json!(last);
    }
    tx.renew_job(&job.id, &core.worker_id, now + core.lease, Some(payload))
        .await
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
        let jobs = claim(core, now, 64).await?;
        if jobs.is_empty() {
            return Ok(ran);
        }
        for job in &jobs {
            run_job(core, job).await;
            ran += 1;
        }
    }
}

/// Claims up to `limit` due jobs for this worker. The claim joins the grouped write
/// transaction of whatever else is being stored at the moment (see `GroupCommit`), so on
/// SQLite it runs on the writer thread instead of taking the writer connection for itself.
async fn claim(core: &Core, now: DateTime<Utc>, limit: i64) -> Result<Vec<Job>> {
    let (worker, lease_until) = (Arc::<str>::from(core.worker_id.as_str()), now + core.lease);
    core.group
        .run(core, &core.store, move |_, tx| {
            let worker = Arc::clone(&worker);
            Box::pin(async move { tx.claim_jobs(&worker, now, lease_until, limit).await })
        })
        .await
}

/// The most jobs one claim takes.
const CLAIM_BATCH: usize = 64;

/// How many workers must be free before the loop claims again while jobs are still due: a
/// quarter of them, so claims come in batches instead of one per finished job.
fn claim_low_water(workers: usize) -> usize {
    (workers / 4).clamp(1, CLAIM_BATCH)
}

/// The worker loop of `herald serve`: runs until `shutdown`, then stops claiming, lets
/// in-flight jobs finish for up to `workers.shutdown_grace`, cancels the rest and releases
/// their leases so another node takes them over at once instead of after the lease.
///
/// It claims due jobs in batches of up to the free workers, and only when at least
/// [`claim_low_water`] are free (or all of them) while more jobs are due. It reads the
/// database only to claim, to reap expired leases every half lease, to fire time triggers when
/// one is due, and, when nothing more is due, once to learn how long to sleep: a finished job
/// wakes the loop only while due jobs wait for a worker, and new work (ingested events,
/// re-queued jobs) wakes it through [`Core::wake_scheduler`].
pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let workers = core.settings.workers.concurrency.max(1);
    let low_water = claim_low_water(workers);
    let permits = Arc::new(Semaphore::new(workers));
    let finished = Arc::new(Notify::new());
    let mut running = JoinSet::new();
    let mut next_reap = core.clock.now();
    let mut next_tick = core.clock.now();
    // Whether due jobs may be waiting: true until a claim comes back short, and again after
    // new work or a deadline.
    let mut more_due = true;
    while !shutdown.is_cancelled() {
        while running.try_join_next().is_some() {}
        let now = core.clock.now();
        if now >= next_reap {
            match core.store.reap_expired_leases(now).await {
                Ok((requeued, dead)) if requeued + dead > 0 => {
                    tracing::info!(requeued, dead, "re-queued jobs whose lease expired");
                    more_due = true;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "lease reaper failed"),
            }
            next_reap = now + core.lease / 2;
        }
        if now >= next_tick {
            match tick(&core).await {
                Ok(fired) => more_due |= fired > 0,
                Err(e) => tracing::error!(error = %e, "firing time triggers failed"),
            }
            // A contact change may bring a trigger time closer: look again within a poll.
            next_tick = now + core.poll;
        }
        let free = permits.available_permits();
        if more_due && (free >= low_water || free == workers) {
            let want = free.min(CLAIM_BATCH);
            let claimed = match claim(&core, now, want as i64).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "claiming jobs failed");
                    Vec::new()
                }
            };
            more_due = claimed.len() == want;
            for job in claimed {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let (core, finished) = (Arc::clone(&core), Arc::clone(&finished));
                running.spawn(async move {
                    run_job(&core, &job).await;
                    drop(permit);
                    finished.notify_one();
                });
            }
        }
        if more_due {
            // Due jobs wait for workers: wait for one to finish, not for the clock.
            tokio::select! {
                _ = finished.notified() => {}
                _ = core.woken() => {}
                _ = core.clock.sleep_until(next_reap.min(next_tick)) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        let fallback = (now + core.poll).min(next_reap);
        let deadline = match core.store.next_due().await {
            Ok(next) => {
                if let Some(at) = next.trigger {
                    next_tick = next_tick.min(at);
                }
                earliest(next.job, Some(next_tick))
                    .unwrap_or(fallback)
                    .min(fallback)
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the next due job failed");
                fallback
            }
        };
        tokio::select! {
            _ = core.clock.sleep_until(deadline) => more_due = true,
            _ = core.woken() => more_due = true,
            _ = shutdown.cancelled() => {}
        }
    }
    finish_in_flight(&core, running).await;
}

/// Lets the running jobs finish within the grace period, then cancels the rest and hands
/// their jobs back to the queue. A cancelled send is safe to hand back: its message row says
/// `sending`, so whoever runs the job next records it as `unknown` instead of sending again;
/// unless no transport had seen it yet (it waited for its turn), then it is `pending` again and
/// goes out on the job's next run.
async fn finish_in_flight(core: &Core, mut running: JoinSet<()>) {
    let in_flight = running.len();
    let all_done = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(core.shutdown_grace, all_done)
        .await
        .is_ok()
    {
        tracing::info!(in_flight, "in-flight jobs finished");
        return;
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
    match crate::send::reopen_cancelled(core).await {
        Ok(0) => {}
        Ok(reopened) => {
            tracing::info!(
                reopened,
                "messages cancelled before any transport saw them are pending again"
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reopen the messages cancelled before sending; they will be recorded unknown")
        }
    }
    match core
        .store
        .release_leases(&core.worker_id, core.clock.now())
        .await
    {
        Ok(released) => tracing::warn!(
            released,
            "shutdown grace period over: cancelled the jobs still running and released their leases"
        ),
        Err(e) => tracing::error!(error = %e, "releasing leases failed; they will expire"),
    }
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
