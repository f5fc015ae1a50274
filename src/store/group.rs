//! Group commit on SQLite: short write transactions submitted at the same time run one after
//! another in one database transaction, so a burst of them pays for one `BEGIN`/`COMMIT` and
//! one turn of the single writer connection instead of one each. On PostgreSQL each runs in a
//! transaction of its own, concurrently (measured: sharing one was slower there).
//!
//! On SQLite the batches run on the writer thread ([`super::WriterThread`]), next to the
//! connection's own thread, so their statements do not cross CPUs: the first submission
//! starts a loop there that takes whatever is queued, runs it as one transaction, and goes on
//! until the queue is empty.
//!
//! Each operation must be re-runnable: when any operation of a batch fails, or the commit does,
//! the batch is rolled back and every operation runs again alone, so one failure never costs
//! another its write.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use tokio::sync::oneshot;

use super::direct::Direct;
use super::{Backend, Result, Store, StoreError, Tx};

/// A future that borrows the transaction it runs in.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 't>>;

type Op<C> = Box<dyn for<'t> FnMut(&'t C, &'t mut Tx) -> TxFuture<'t, ()> + Send>;

struct Pending<C> {
    op: Op<C>,
    done: oneshot::Sender<Result<()>>,
}

/// Most operations in one transaction.
const MAX_BATCH: usize = 256;

/// Operations queued for one transaction. Each gets a `&C` (the same context for every
/// submitter, e.g. the `Core` that owns this) and the transaction.
pub struct GroupCommit<C> {
    queue: Arc<Queue<C>>,
    /// The shared context, once it is in an `Arc`: batches need an owned one to run on the
    /// writer thread.
    owner: OnceLock<Weak<C>>,
}

struct Queue<C> {
    pending: Mutex<Vec<Pending<C>>>,
    /// A drain loop is running (or about to) on the writer thread.
    draining: AtomicBool,
}

impl<C> Queue<C> {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending<C>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_batch(&self) -> Vec<Pending<C>> {
        let mut pending = self.pending();
        let n = pending.len().min(MAX_BATCH);
        pending.drain(..n).collect()
    }
}

impl<C> Default for GroupCommit<C> {
    fn default() -> Self {
        GroupCommit {
            queue: Arc::new(Queue {
                pending: Mutex::new(Vec::new()),
                draining: AtomicBool::new(false),
            }),
            owner: OnceLock::new(),
        }
    }
}

impl<C: Send + Sync + 'static> GroupCommit<C> {
    /// Lets batches run on the store's writer thread, with `owner` as their context. Until
    /// then each operation runs alone, on the submitting task.
    pub fn bind(&self, owner: &Arc<C>) {
        let _ = self.owner.set(Arc::downgrade(owner));
    }

    /// The context [`GroupCommit::bind`] was given, while it lives.
    pub fn owner(&self) -> Option<Arc<C>> {
        self.owner.get().and_then(Weak::upgrade)
    }

    /// Runs `op` in a write transaction of `store`, possibly together with other operations
    /// submitted meanwhile, and answers once that transaction committed (or `op` failed).
    pub async fn run<T, F>(&self, ctx: &C, store: &Store, mut op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'t> FnMut(&'t C, &'t mut Tx) -> TxFuture<'t, T> + Send + 'static,
    {
        if store.backend() == Backend::Postgres {
            // PostgreSQL runs concurrent transactions on separate connections and groups their
            // WAL flushes itself; one shared transaction would only serialize them.
            // Keyed work mostly; batches that bind many keys (sweeps, rescoring) ask for index
            // plans without parallel workers as well (`Tx::plan_for_batches`).
            let mut tx = store.keyed_write().await?;
            let value = op(ctx, &mut tx).await?;
            tx.commit().await?;
            return Ok(value);
        }
        let slot = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        let erased: Op<C> = Box::new(move |ctx, tx| {
            let future = op(ctx, tx);
            let out = Arc::clone(&out);
            Box::pin(async move {
                let value = future.await?;
                *out.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
                Ok(())
            })
        });
        let (done, answer) = oneshot::channel();
        let pending = Pending { op: erased, done };
        match (store.writer_thread(), self.owner()) {
            (Some(thread), Some(owner)) => {
                self.queue.pending().push(pending);
                if !self.queue.draining.swap(true, Ordering::SeqCst) {
                    thread.spawn(drain(Arc::clone(&self.queue), owner, store.clone()));
                }
            }
            // Not bound to its context yet: the operation runs alone, here.
            _ => run_batch(ctx, store, vec![pending]).await,
        }
        answer.await.map_err(|_| StoreError::Abandoned)??;
        let value = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        value.ok_or(StoreError::Abandoned)
    }
}

/// The writer thread's loop: runs batch after batch while operations are queued, so the
/// writer connection goes from one transaction straight to the next, with no hand-off
/// through a submitting task in between.
fn drain<C: Send + Sync + 'static>(
    queue: Arc<Queue<C>>,
    owner: Arc<C>,
    store: Store,
) -> impl Future<Output = ()> + Send {
    // Made before the loop first runs: if the thread drops the loop, even unstarted (the store
    // is closing), or it panics, queued submitters hear `Abandoned` and the next submitter
    // starts a loop again.
    let mut unfinished = Unfinished(Some(Arc::clone(&queue)));
    async move {
        loop {
            let batch = queue.next_batch();
            if batch.is_empty() {
                queue.draining.store(false, Ordering::SeqCst);
                // A submitter that queued after the batch was taken, and saw the loop still
                // running, relies on this one.
                if queue.pending().is_empty() || queue.draining.swap(true, Ordering::SeqCst) {
                    unfinished.finished();
                    return;
                }
                continue;
            }
            run_batch(owner.as_ref(), &store, batch).await;
            // Lets the thread's other work (the recompute's writes) take turns.
            tokio::task::yield_now().await;
        }
    }
}

/// The queue of a drain loop that has not finished on its own.
struct Unfinished<C>(Option<Arc<Queue<C>>>);

impl<C> Unfinished<C> {
    fn finished(&mut self) {
        self.0 = None;
    }
}

impl<C> Drop for Unfinished<C> {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            // Dropping the queued operations answers their submitters.
            queue.pending().clear();
            queue.draining.store(false, Ordering::SeqCst);
        }
    }
}

async fn run_batch<C: Sync>(ctx: &C, store: &Store, mut batch: Vec<Pending<C>>) {
    if store.backend() == Backend::Sqlite {
        match direct(ctx, store, &mut batch).await {
            Ok(()) => return committed(batch),
            Err(e) => {
                tracing::debug!(error = %e, ops = batch.len(), "direct write failed; running it through sqlx");
            }
        }
    }
    if batch.len() > 1 {
        match together(ctx, store, &mut batch).await {
            Ok(()) => return committed(batch),
            Err(e) => {
                tracing::debug!(error = %e, ops = batch.len(), "batched write failed; running its operations one by one");
            }
        }
    }
    for mut p in batch {
        let result = alone(ctx, store, &mut p.op).await;
        let _ = p.done.send(result);
    }
}

/// Tells every submitter of a committed batch.
fn committed<C>(batch: Vec<Pending<C>>) {
    for p in batch {
        let _ = p.done.send(Ok(()));
    }
}

/// Runs the batch on the writer connection used directly (see [`super::direct`]).
async fn direct<C: Sync>(ctx: &C, store: &Store, batch: &mut [Pending<C>]) -> Result<()> {
    let (mut conn, prepared) = store.writer_connection().await?;
    let mut handle = conn.lock_handle().await?;
    // Declared after `handle`, so dropped (rolled back, unless committed) before it.
    let mut tx = Tx::Direct(Direct::begin(&mut handle, &prepared)?);
    for p in batch.iter_mut() {
        (p.op)(ctx, &mut tx).await?;
    }
    tx.commit().await
}

async fn together<C: Sync>(ctx: &C, store: &Store, batch: &mut [Pending<C>]) -> Result<()> {
    let mut tx = store.write().await?;
    for p in batch.iter_mut() {
        if let Err(e) = (p.op)(ctx, &mut tx).await {
            tx.rollback().await?;
            return Err(e);
        }
    }
    tx.commit().await
}

async fn alone<C: Sync>(ctx: &C, store: &Store, op: &mut Op<C>) -> Result<()> {
    let mut tx = store.write().await?;
    op(ctx, &mut tx).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Sql, WriterCpu};

    /// The thread a grouped write ran on, and the CPUs it was allowed.
    async fn where_a_grouped_write_runs(cpu: WriterCpu) -> (Option<String>, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, 2, cpu).await.expect("connect");
        let owner = Arc::new(());
        let group = GroupCommit::<()>::default();
        group.bind(&owner);
        let seen = group
            .run(&owner, &store, |_, tx| {
                Box::pin(async move {
                    super::super::on_conn!(tx, c => { sqlx::query("SELECT 1").execute(&mut *c).await?; });
                    let status = std::fs::read_to_string("/proc/thread-self/status")
                        .unwrap_or_default();
                    let allowed = status
                        .lines()
                        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    Ok((std::thread::current().name().map(str::to_owned), allowed))
                })
            })
            .await
            .expect("grouped write");
        store.close().await;
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_sqlite_writes_run_on_the_writer_thread() {
        let (thread, allowed) = where_a_grouped_write_runs(WriterCpu::Off).await;
        assert_eq!(thread.as_deref(), Some("herald-writer"));
        let all = allowed;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if let Some(last) = cores.last().filter(|_| cores.len() > 1) {
            // Pinned by default to the last CPU the process may use.
            let (_, pinned) = where_a_grouped_write_runs(WriterCpu::Auto).await;
            assert_eq!(pinned, last.id.to_string());
            assert_ne!(pinned, all);
            let first = cores[0].id;
            let (_, chosen) = where_a_grouped_write_runs(WriterCpu::Cpu(first)).await;
            assert_eq!(chosen, first.to_string());
        }
    }

    /// Many writers at once land in few transactions, each gets its own answer, and a write
    /// submitted after the store closed fails instead of waiting forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_all_land_and_a_closed_store_answers_at_once() {
        let (_dir, store) = crate::store::direct::tests::sqlite().await;
        let owner = Arc::new(GroupCommit::<()>::default());
        let context = Arc::new(());
        owner.bind(&context);
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let (group, store, context) =
                    (Arc::clone(&owner), store.clone(), Arc::clone(&context));
                tokio::spawn(async move {
                    group
                        .run(&context, &store, move |_, tx| {
                            Box::pin(async move {
                                tx.run(
                                    Sql::new("INSERT INTO meta (key, value) VALUES ($1, $2)")
                                        .arg(format!("k{i}"))
                                        .arg(format!("v{i}")),
                                )
                                .await?;
                                Ok(i)
                            })
                        })
                        .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for write in writes {
            answers.push(write.await.expect("task").expect("write"));
        }
        assert_eq!(answers, (0..200).collect::<Vec<_>>());
        let mut tx = store.read().await.expect("read");
        let (stored,): (i64,) = tx
            .one(Sql::new("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'"))
            .await
            .expect("count");
        tx.commit().await.expect("commit");
        assert_eq!(stored, 200);

        store.close().await;
        let late = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            owner.run(&context, &store, |_, _| Box::pin(async { Ok(()) })),
        )
        .await
        .expect("a write on a closed store answers instead of hanging");
        assert!(late.is_err());
    }

    #[tokio::test]
    async fn a_cpu_the_process_may_not_use_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let err = Store::connect(&url, 2, WriterCpu::Cpu(100_000))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("database.writer_cpu: CPU 100000"), "{err}");
    }
}
