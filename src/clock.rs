//! The one source of time. Production uses the system clock; tests use [`ManualClock`] and move
//! time forward explicitly, which also wakes every task sleeping on the clock. The rest of the
//! crate is kept off `Utc::now()`/`SystemTime::now()` by `clippy.toml`.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use tokio::sync::watch;

/// Shared handle to a clock.
#[derive(Clone)]
pub enum Clock {
    System,
    Manual(ManualClock),
}

impl Clock {
    /// Current instant, truncated to microseconds so it round-trips identically through SQLite
    /// text and PostgreSQL `timestamptz`.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            #[allow(clippy::disallowed_methods)] // the single sanctioned call
            Clock::System => Utc::now().trunc_subsecs(6),
            Clock::Manual(m) => m.now(),
        }
    }

    /// Sleeps until `deadline` by this clock's notion of time.
    pub async fn sleep_until(&self, deadline: DateTime<Utc>) {
        match self {
            Clock::System => {
                let wait = (deadline - self.now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Clock::Manual(m) => m.sleep_until(deadline).await,
        }
    }
}

/// A clock that only moves when told to.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    ticks: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let start = start.trunc_subsecs(6);
        let (ticks, _) = watch::channel(start);
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            ticks,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves time forward by `by` and wakes sleepers whose deadline has passed.
    pub fn advance(&self, by: TimeDelta) {
        self.set(self.now() + by);
    }

    pub fn set(&self, to: DateTime<Utc>) {
        let to = to.trunc_subsecs(6);
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
        self.ticks.send_replace(to);
    }

    /// How many tasks are sleeping on this clock right now — lets a test wait until a worker
    /// is idle before checking what wakes it.
    pub fn sleepers(&self) -> usize {
        self.ticks.receiver_count()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let mut rx = self.ticks.subscribe();
        // `wait_for` checks the current value first, so a deadline already passed returns at once.
        let _ = rx.wait_for(|now| *now >= deadline).await;
    }
}
