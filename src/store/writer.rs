//! The SQLite writer's own thread. sqlx runs each SQLite connection on a worker thread and
//! hands it every statement; a statement costs two thread wake-ups, and when the two threads
//! sit on different CPUs each wake-up is an inter-processor interrupt, which on a virtual
//! machine wakes a halted virtual CPU (measured here: an event of about ten statements took
//! 0.94 ms with its threads on two CPUs and 0.20 ms on one). So the writer connection is
//! opened from one thread pinned to one CPU, which its sqlx worker inherits, and that thread
//! runs a runtime of its own where grouped write transactions ([`super::GroupCommit`]) and the
//! segment recompute's writes execute: their statements then hop between two threads on the
//! same CPU, a plain context switch.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Result, StoreError};

/// Which CPU the writer thread keeps to (`database.writer_cpu`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriterCpu {
    /// The last CPU the process may use, when it may use more than one.
    #[default]
    Auto,
    /// Not pinned: the operating system places the threads.
    Off,
    /// This CPU.
    Cpu(usize),
}

impl WriterCpu {
    /// Reads `auto`, `off` or a CPU number.
    pub fn parse(value: &str) -> Option<WriterCpu> {
        match value.trim() {
            "auto" => Some(WriterCpu::Auto),
            "off" => Some(WriterCpu::Off),
            n => n.parse().ok().map(WriterCpu::Cpu),
        }
    }

    /// The CPU to pin to, if any, among those the process may use.
    fn choose(self) -> Result<Option<core_affinity::CoreId>> {
        let allowed = core_affinity::get_core_ids().unwrap_or_default();
        match self {
            WriterCpu::Off => Ok(None),
            WriterCpu::Auto if allowed.len() > 1 => Ok(allowed.last().copied()),
            WriterCpu::Auto => Ok(None),
            WriterCpu::Cpu(n) => allowed
                .iter()
                .find(|core| core.id == n)
                .copied()
                .map(Some)
                .ok_or_else(|| {
                    let ids: Vec<String> = allowed.iter().map(|c| c.id.to_string()).collect();
                    StoreError::WriterThread(format!(
                        "database.writer_cpu: CPU {n} is not one this process may use ({})",
                        ids.join(", ")
                    ))
                }),
        }
    }
}

/// A thread with a single-threaded runtime, kept to one CPU (see [`WriterCpu`]).
pub struct WriterThread {
    handle: Handle,
    stop: CancellationToken,
}

impl WriterThread {
    /// Starts the thread and runs `open` on it (so whatever threads `open` starts inherit its
    /// CPU), returning what `open` made.
    pub(super) async fn start<T, F, Fut>(cpu: WriterCpu, open: F) -> Result<(WriterThread, T)>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        let core = cpu.choose()?;
        let (ready, opened) = oneshot::channel();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("herald-writer".to_owned())
            .spawn(move || {
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    tracing::warn!(cpu = core.id, "could not pin the SQLite writer thread");
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(StoreError::WriterThread(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let made = open().await.map(|value| (Handle::current(), value));
                    let failed = made.is_err();
                    if ready.send(made).is_err() || failed {
                        return;
                    }
                    // Runs the tasks handed to it until the store closes.
                    stopped.cancelled().await;
                });
            })
            .map_err(|e| StoreError::WriterThread(e.to_string()))?;
        let (handle, value) = opened
            .await
            .map_err(|_| StoreError::WriterThread("the thread stopped while starting".into()))??;
        let writer = WriterThread { handle, stop };
        Ok((writer, value))
    }

    /// Runs `task` on the writer thread and waits for its result.
    pub async fn run<T, Fut>(&self, task: Fut) -> Result<T>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.handle
            .spawn(task)
            .await
            .map_err(|_| StoreError::Abandoned)
    }

    /// Starts `task` on the writer thread without waiting for it.
    pub fn spawn<Fut>(&self, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(task));
    }

    /// Stops the thread once the tasks it runs are done.
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.stop();
    }
}
