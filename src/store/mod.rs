//! Persistence. `Store` is the only place that knows SQL; it is an enum over a SQLite and a
//! PostgreSQL pool with the same behavior. Work that must be atomic runs in a [`Tx`]; SQLite
//! write transactions start with `BEGIN IMMEDIATE` on a single-connection writer pool, so
//! writers queue in the pool instead of failing with `SQLITE_BUSY`.

mod checkpoint;
mod contacts;
pub mod direct;
mod events;
mod group;
mod jobs;
mod journeys;
mod messages;
pub mod models;
mod nodelay;
mod notify;
mod pace;
mod segments;
mod triggers;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

pub use direct::Sql;
pub use events::Ids;
pub use group::{GroupCommit, TxFuture};
pub use jobs::{NextDue, earliest};
pub use models::*;
pub use notify::WorkListener;
pub use segments::{FactRead, FactRow, Membership};
pub use writer::{WriterCpu, WriterThread};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a batched write was abandoned before it committed")]
    Abandoned,
    #[error("unsupported database url `{0}`: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("database name `{0}`: use lowercase letters, digits and `_`")]
    DatabaseName(String),
    #[error("the SQLite writer thread: {0}")]
    WriterThread(String),
    #[error("database error: {0}")]
    Direct(#[from] rusqlite::Error),
    #[error("statement parameter `{0}`: use `$N` or `?`")]
    Parameter(String),
    #[error("column `{0}` does not hold the expected type")]
    Column(String),
    /// Code written for sqlx alone reached a direct transaction (see [`direct`]); the batch
    /// runs again through sqlx.
    #[error("{0} cannot run on the direct SQLite connection")]
    Indirect(&'static str),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long a pooled PostgreSQL connection may sit idle before it is pinged on its way out of
/// the pool (a server restarted meanwhile would have closed it).
const IDLE_BEFORE_PING: Duration = Duration::from_secs(10);

/// Which database engine a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub enum Store {
    Sqlite {
        /// Statements the direct writer connection keeps prepared; declared before `writer`
        /// so they are finalized before the pool can close the connection.
        prepared: Arc<direct::Prepared>,
        writer: SqlitePool,
        /// The thread the writer connection was opened from, where grouped writes run.
        writer_thread: Arc<WriterThread>,
        reader: SqlitePool,
        checkpoints: Arc<checkpoint::Checkpointer>,
    },
    Postgres(PgPool),
}

/// One database transaction on either backend.
pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
    /// The SQLite writer connection used directly, for grouped writes.
    Direct(direct::Direct),
}

/// Runs the same query code against whichever connection a [`Tx`] holds. The body is
/// compiled once per backend, so shared SQL stays written once.
macro_rules! on_conn {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Sqlite(t) => {
                let $c: &mut sqlx::SqliteConnection = &mut *t;
                $body
            }
            $crate::store::Tx::Postgres(t) => {
                let $c: &mut sqlx::PgConnection = &mut *t;
                $body
            }
            $crate::store::Tx::Direct(_) => {
                return Err(
                    $crate::store::StoreError::Indirect(concat!(file!(), ":", line!())).into(),
                )
            }
        }
    };
}
pub(crate) use on_conn;

impl Store {
    /// Opens the database named by `url` (`sqlite://path` or `postgres://…`); on SQLite the
    /// writer thread keeps to `writer_cpu`.
    pub async fn connect(url: &str, max_connections: u32, writer_cpu: WriterCpu) -> Result<Store> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // The one writer keeps the pages it touches (ledger and event indexes, 16 MiB) and
            // its statement journals in memory, and leaves most checkpointing to `checkpoint`.
            // Not more: SQLite walks the whole page cache at some commits, and with 64 MiB that
            // walk was the per-event tail (p99 1.46–2.05 ms against 0.87–1.31 at 8 MiB and
            // 0.92–0.98 at 16 MiB, 200k contacts), with no gain for the recompute.
            // A SQLite connection is a file handle in this process: it cannot go stale the way
            // a network connection can, so the pool does not ping it before every transaction
            // (each ping is a round trip to its thread).
            // Serialized: the direct connection's statements may be finalized from any thread
            // (see `direct::Prepared`).
            let writer_options = options
                .clone()
                .serialized(true)
                .pragma("cache_size", "-16384")
                .pragma("temp_store", "memory")
                .pragma(
                    "wal_autocheckpoint",
                    checkpoint::WRITER_AUTOCHECKPOINT.to_string(),
                );
            // Opened on the writer thread so sqlx's worker thread for it shares that thread's
            // CPU; kept open for good, so it is never reopened from another thread.
            let (writer_thread, writer) = WriterThread::start(writer_cpu, move || async move {
                Ok(SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .test_before_acquire(false)
                    .connect_with(writer_options)
                    .await?)
            })
            .await?;
            let checkpoints = Arc::new(checkpoint::Checkpointer::spawn(options.clone()));
            let reader = SqlitePoolOptions::new()
                .max_connections(max_connections.max(2))
                .test_before_acquire(false)
                .connect_with(options.read_only(false))
                .await?;
            Ok(Store::Sqlite {
                prepared: Arc::default(),
                writer,
                writer_thread: Arc::new(writer_thread),
                reader,
                checkpoints,
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(2))
                .acquire_timeout(Duration::from_secs(30))
                // sqlx pings every connection it hands out by default: one round trip more for
                // every transaction. A connection that answered its ping on release (sqlx does
                // that too) moments ago is alive; only one idle for a while is pinged first.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for > IDLE_BEFORE_PING {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        if !nodelay::set_on(conn).await? {
                            tracing::debug!("TCP_NODELAY not set on a PostgreSQL connection");
                        }
                        Ok(())
                    })
                })
                .connect_with(options)
                .await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite { .. } => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// The thread where grouped SQLite writes run; none on PostgreSQL.
    pub fn writer_thread(&self) -> Option<&WriterThread> {
        match self {
            Store::Sqlite { writer_thread, .. } => Some(writer_thread),
            Store::Postgres(_) => None,
        }
    }

    /// Applies pending migrations from `migrations/sqlite` or `migrations/postgres`.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Sqlite { writer, .. } => {
                sqlx::migrate!("./migrations/sqlite").run(writer).await?
            }
            Store::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Starts a transaction that will write.
    pub async fn write(&self) -> Result<Tx> {
        Ok(match self {
            Store::Sqlite { writer, .. } => Tx::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await?),
            Store::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Starts a write transaction for short work on a few rows found by key (an event, a
    /// journey step, a receipt). On PostgreSQL its statements run on one generic plan each:
    /// the planner would otherwise plan some of them (those binding an array of ids) for
    /// every execution, which measured more than running them.
    pub async fn keyed_write(&self) -> Result<Tx> {
        Ok(match self {
            Store::Sqlite { .. } => self.write().await?,
            Store::Postgres(pool) => Tx::Postgres(
                pool.begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
                    .await?,
            ),
        })
    }

    /// Starts a read-only transaction (a consistent snapshot).
    pub async fn read(&self) -> Result<Tx> {
        Ok(match self {
            Store::Sqlite { reader, .. } => Tx::Sqlite(reader.begin().await?),
            Store::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Answers whether the database responds.
    pub async fn ping(&self) -> Result<()> {
        match self {
            Store::Sqlite { reader, .. } => {
                sqlx::query("SELECT 1").execute(reader).await?;
            }
            Store::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// After a bulk job: copies the WAL's committed pages into the SQLite database file and
    /// returns when done (see `Checkpointer::catch_up`); on PostgreSQL, runs a `CHECKPOINT`.
    /// Either way the job's writes reach the data files within the job, rather than in a
    /// checkpoint over the next seconds that the next events' commits would wait behind (on
    /// PostgreSQL at 1M contacts: per-event p99 16–18 ms right after a recompute). PostgreSQL
    /// allows `CHECKPOINT` to superusers and `pg_checkpoint` members only; for anyone else the
    /// server's own checkpoint follows as before.
    pub async fn catch_up_checkpoints(&self) {
        match self {
            Store::Sqlite { checkpoints, .. } => checkpoints.catch_up().await,
            Store::Postgres(pool) => {
                if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
                    tracing::debug!(error = %e, "no CHECKPOINT after the bulk job");
                }
            }
        }
    }

    /// After a bulk job rewrote `tables`: PostgreSQL gathers their statistics afresh, which
    /// also drops the plans its connections cached for them. Those were planned when the
    /// tables were a fraction of their size (a fresh install's first recompute), and
    /// autovacuum's own analyze comes minutes later: meanwhile one event took 20 ms instead of
    /// 1, reading memberships by a scan planned for a table of a few thousand rows. SQLite
    /// plans each statement as it prepares it.
    pub async fn analyze(&self, tables: &[&str]) -> Result<()> {
        if let Store::Postgres(pool) = self {
            // Only the caller's constant table names are spliced in.
            let sql = format!("ANALYZE {}", tables.join(", "));
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite {
                prepared,
                writer,
                writer_thread,
                reader,
                checkpoints,
            } => {
                checkpoints.stop();
                // sqlx cannot close a connection with statements it does not know of.
                prepared.close();
                writer.close().await;
                writer_thread.stop();
                reader.close().await;
            }
            Store::Postgres(pool) => pool.close().await,
        }
    }

    /// Returns the value stored under `key`, storing `make()` first if there is none. Used for
    /// installation secrets that must stay stable across restarts and nodes.
    pub async fn meta_get_or_insert(
        &self,
        key: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let mut tx = self.write().await?;
        let candidate = make();
        let value: (String,) = on_conn!(&mut tx, c => {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(&candidate)
                .execute(&mut *c)
                .await?;
            sqlx::query_as("SELECT value FROM meta WHERE key = $1").bind(key).fetch_one(&mut *c).await?
        });
        tx.commit().await?;
        Ok(value.0)
    }
}

/// Creates the PostgreSQL database `name` on the server `server_url` connects to (for scratch
/// databases of benchmarks). `name` must be a plain identifier: lowercase letters, digits and
/// `_`.
pub async fn create_postgres_database(server_url: &str, name: &str) -> Result<()> {
    postgres_admin(
        server_url,
        &format!("CREATE DATABASE {}", plain_identifier(name)?),
    )
    .await
}

/// Drops the PostgreSQL database `name`, disconnecting its sessions.
pub async fn drop_postgres_database(server_url: &str, name: &str) -> Result<()> {
    let name = plain_identifier(name)?;
    postgres_admin(
        server_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await
}

fn plain_identifier(name: &str) -> Result<&str> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        Ok(name)
    } else {
        Err(StoreError::UnsupportedUrl(format!(
            "database name `{name}`"
        )))
    }
}

/// Runs a statement that cannot run in a transaction on its own connection.
async fn postgres_admin(server_url: &str, statement: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(())
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
            Tx::Direct(d) => d.commit()?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
            // Dropping it rolls back.
            Tx::Direct(d) => drop(d),
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) | Tx::Direct(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }

    /// Statements of this transaction read and write batches of contacts by key: PostgreSQL
    /// plans them by index, without parallel workers, and once per statement and connection
    /// (a generic plan). A bulk job fills tables faster than autovacuum analyzes them, and
    /// without statistics PostgreSQL guesses what share of a table a batch of keys selects: it
    /// planned reads of 500 contacts' memberships as scans of the whole table, and a full
    /// recompute of 1M contacts took 275 s instead of about 150; with sequential scans off
    /// every plan of these statements goes by index, so one plan serves every batch size
    /// (planning a 500-key read for its values took 2.3 ms of the 12 ms it cost). Workers
    /// cost more to start than such a read takes (15–19 ms with two, 9.5 ms without, for a
    /// batch's events at 1M), and the job runs several batches side by side already.
    pub async fn plan_for_batches(&mut self) -> Result<()> {
        if let Tx::Postgres(t) = self {
            sqlx::raw_sql(
                "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;
                 SET LOCAL max_parallel_workers_per_gather = 0",
            )
            .execute(&mut **t)
            .await?;
        }
        Ok(())
    }

    /// Appended to a `SELECT` whose rows are read to be written back: PostgreSQL locks them
    /// until the transaction ends; SQLite's write transactions are serialized already.
    pub(crate) fn row_lock(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    fn versions(dir: &str) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .split('_')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn both_backends_have_the_same_migration_versions() {
        let root = env!("CARGO_MANIFEST_DIR");
        assert_eq!(
            versions(&format!("{root}/migrations/sqlite")),
            versions(&format!("{root}/migrations/postgres"))
        );
    }
}
