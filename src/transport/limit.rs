//! Per-transport limits: messages per second (`rate`) and requests in flight (`concurrency`),
//! shared by every worker of the process. A sender over the limit waits for its turn; it never
//! fails for it.
//!
//! The rate is paced, not bursted: each send reserves the next free slot on a timeline with one
//! slot every `1/rate` seconds, so in any one-second window at most `rate` sends start — what a
//! provider that counts per second will accept — and waiters are served in the order they
//! arrived. Time comes from the injected [`Clock`], so tests count sends per second with a
//! manual clock.
//!
//! On PostgreSQL the rate holds across nodes: the timeline is one row per transport in the
//! database ([`Store::reserve_send_slot`]), so N nodes together start at most `rate` sends a
//! second. `concurrency` bounds one process's requests in flight (it protects that process
//! and its connections); with N nodes a provider sees up to N times it.

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::clock::Clock;
use crate::store::Store;

/// Waits for the turn of each send on one transport.
#[derive(Debug)]
pub struct Limiter {
    pacer: Option<Pacer>,
    permits: Option<Semaphore>,
}

/// A send's turn: while it lives, it holds one of the `concurrency` slots.
#[must_use = "the concurrency slot is released when the permit is dropped"]
#[derive(Debug)]
pub struct Permit<'a> {
    _slot: Option<SemaphorePermit<'a>>,
}

struct Pacer {
    interval: TimeDelta,
    /// The earliest instant the next send may start, on this node's own timeline.
    next_slot: Mutex<Option<DateTime<Utc>>>,
    /// The cluster-wide timeline (a PostgreSQL store and the transport's name), when shared.
    shared: Option<(Store, String)>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("interval", &self.interval)
            .field("shared", &self.shared.as_ref().map(|(_, name)| name))
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter for `rate` messages per second (positive, finite) and `concurrency` requests
    /// at once (at least 1); `None` means no limit of that kind.
    pub fn new(rate: Option<f64>, concurrency: Option<usize>) -> Limiter {
        let pacer = rate.filter(|r| r.is_finite() && *r > 0.0).map(|rate| {
            // Microseconds match the clock's resolution; at least 1 µs between sends.
            let micros = (1_000_000.0 / rate).round().clamp(1.0, i64::MAX as f64) as i64;
            Pacer {
                interval: TimeDelta::microseconds(micros),
                next_slot: Mutex::new(None),
                shared: None,
            }
        });
        Limiter {
            pacer,
            permits: concurrency.map(|n| Semaphore::new(n.max(1))),
        }
    }

    /// Shares the rate with every node on `store` when it is PostgreSQL, under the transport's
    /// `name`; on SQLite (one node) the limiter stays in memory.
    pub fn shared(mut self, store: &Store, name: &str) -> Limiter {
        if let Some(pacer) = &mut self.pacer
            && store.backend() == crate::store::Backend::Postgres
        {
            pacer.shared = Some((store.clone(), name.to_owned()));
        }
        self
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Limiter {
        Limiter::new(None, None)
    }

    /// Waits until this send may start: first for a concurrency slot, then for its rate slot
    /// (in that order, so a reserved rate slot is never left unused while waiting for a
    /// concurrency slot).
    pub async fn acquire(&self, clock: &Clock) -> Permit<'_> {
        let slot = match &self.permits {
            // The semaphore is never closed, so acquiring only waits.
            Some(permits) => permits.acquire().await.ok(),
            None => None,
        };
        if let Some(pacer) = &self.pacer {
            let start = pacer.reserve_slot(clock.now()).await;
            if start > clock.now() {
                clock.sleep_until(start).await;
            }
        }
        Permit { _slot: slot }
    }
}

impl Pacer {
    /// Reserves the next free slot at or after `now` on the shared timeline when there is
    /// one, else on this node's, and returns when it starts.
    async fn reserve_slot(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        if let Some((store, name)) = &self.shared {
            match store.reserve_send_slot(name, now, self.interval).await {
                Ok(Some(start)) => return start,
                Ok(None) => {}
                // The database is what the send needs next anyway; pacing alone meanwhile
                // keeps this node within the rate.
                Err(e) => tracing::warn!(transport = %name, error = %e,
                    "cannot reserve a shared send slot; pacing this node alone"),
            }
        }
        self.reserve(now)
    }

    /// Reserves the next free slot at or after `now` on this node's timeline and returns
    /// when it starts.
    fn reserve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut next = self
            .next_slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let start = next.map_or(now, |next| next.max(now));
        *next = Some(start + self.interval);
        start
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(micros: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap() + TimeDelta::microseconds(micros)
    }

    #[test]
    fn slots_are_spaced_by_the_interval_and_idle_time_is_not_banked() {
        let Some(pacer) = Limiter::new(Some(4.0), None).pacer else {
            panic!("a rate makes a pacer");
        };
        assert_eq!(pacer.interval, TimeDelta::milliseconds(250));
        assert_eq!(pacer.reserve(at(0)), at(0));
        assert_eq!(pacer.reserve(at(0)), at(250_000));
        assert_eq!(pacer.reserve(at(10)), at(500_000));
        // After a quiet period the next send starts at once, but no burst is allowed.
        assert_eq!(pacer.reserve(at(5_000_000)), at(5_000_000));
        assert_eq!(pacer.reserve(at(5_000_000)), at(5_250_000));
    }

    #[test]
    fn fractional_rates_are_supported() {
        let Some(pacer) = Limiter::new(Some(0.5), None).pacer else {
            panic!("a rate makes a pacer");
        };
        assert_eq!(pacer.interval, TimeDelta::seconds(2));
        assert!(Limiter::unlimited().pacer.is_none());
    }
}
