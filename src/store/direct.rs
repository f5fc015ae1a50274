//! Statements written once for every way of reaching the database, and the SQLite writer
//! connection used directly.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands it every statement: two
//! thread switches per statement, which on this kind of machine cost several times what the
//! statement does (about 35 µs against 2–7 µs). A grouped write transaction
//! ([`super::GroupCommit`]) therefore takes the writer connection's handle from sqlx for the
//! whole transaction ([`sqlx::SqliteConnection::lock_handle`]) and runs its statements itself,
//! through rusqlite, on the writer thread: one hand-off per transaction instead of one per
//! statement.
//!
//! A statement that should run that way is written as a [`Sql`] (text and arguments) and run
//! with [`Tx::run`], [`Tx::optional`] or [`Tx::all`], which work on every [`Tx`]: sqlx on
//! SQLite and PostgreSQL, or the direct connection. Code still written against sqlx alone
//! (`on_conn!`) fails on a direct transaction with [`StoreError::Indirect`], and the batch runs
//! again through sqlx, so such code is slower there but never wrong.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use rusqlite::types::ValueRef;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::sqlite::{LockedSqliteHandle, SqliteRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, FromRow};

use super::{Backend, Result, Store, StoreError, Tx};

impl Store {
    /// The SQLite writer connection, for a [`Direct`] transaction, and what it keeps prepared.
    pub async fn writer_connection(
        &self,
    ) -> Result<(sqlx::pool::PoolConnection<sqlx::Sqlite>, Arc<Prepared>)> {
        match self {
            Store::Sqlite {
                writer, prepared, ..
            } => Ok((writer.acquire().await?, Arc::clone(prepared))),
            Store::Postgres(_) => Err(StoreError::Indirect("a PostgreSQL store")),
        }
    }

    /// A SQLite reader connection, for a [`Direct::begin_read`] transaction; `None` on
    /// PostgreSQL.
    pub async fn reader_connection(
        &self,
    ) -> Result<Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>> {
        match self {
            Store::Sqlite { reader, .. } => Ok(Some(reader.acquire().await?)),
            Store::Postgres(_) => Ok(None),
        }
    }
}

/// One value bound to a statement. `None` is SQL `NULL` of the value's type (PostgreSQL
/// wants typed nulls).
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
    /// JSON already serialized, so a document is not copied before it is written.
    Json(Option<Box<RawValue>>),
    /// A PostgreSQL array (for `unnest(…)` or `= ANY(…)`): one parameter however many rows,
    /// so the statement's text, and the statement PostgreSQL keeps prepared, stay the same.
    /// SQLite gets the list as a JSON array.
    List(List),
}

/// The values of an [`Arg::List`].
#[derive(Debug, Clone)]
pub enum List {
    Text(Vec<String>),
    Int(Vec<i64>),
    Time(Vec<DateTime<Utc>>),
    Json(Vec<Box<RawValue>>),
}

impl List {
    /// The list as a JSON array, as SQLite gets it.
    fn to_json(&self) -> String {
        let items: Vec<Value> = match self {
            List::Text(v) => v.iter().map(|s| Value::from(s.as_str())).collect(),
            List::Int(v) => v.iter().map(|&i| Value::from(i)).collect(),
            List::Time(v) => v.iter().map(|&t| Value::from(sqlite_time(t))).collect(),
            List::Json(v) => v
                .iter()
                .map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
                .collect(),
        };
        Value::Array(items).to_string()
    }
}

impl From<List> for Arg {
    fn from(v: List) -> Arg {
        Arg::List(v)
    }
}

/// The texts as a [`List`].
pub fn texts<'a>(values: impl IntoIterator<Item = &'a str>) -> List {
    List::Text(values.into_iter().map(str::to_owned).collect())
}

macro_rules! arg_from {
    ($($t:ty => $variant:ident($conv:expr)),* $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                Arg::$variant(Some(($conv)(v)))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Arg {
                Arg::$variant(v.map($conv))
            }
        }
    )*};
}

arg_from! {
    &str => Text(str::to_owned),
    &String => Text(String::clone),
    String => Text(std::convert::identity),
    i64 => Int(std::convert::identity),
    f64 => Real(std::convert::identity),
    bool => Bool(std::convert::identity),
    DateTime<Utc> => Time(std::convert::identity),
    &Value => Json(raw_json),
    &Json<Value> => Json(|j: &Json<Value>| raw_json(&j.0)),
    Json<&Value> => Json(|j: Json<&Value>| raw_json(j.0)),
}

impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Arg {
        Arg::Text(v.clone())
    }
}

/// `value` serialized, as sqlx would write it.
pub fn raw_json(value: &Value) -> Box<RawValue> {
    // A `Value` always serializes, so this never falls back. (Not `value.to_string()`: its
    // `Display` goes through `fmt` for every token, a tenth of a recompute's own CPU.)
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// A statement and its arguments, runnable on any [`Tx`]. Parameters are `$N` (or `?` for
/// SQLite-only text), as in sqlx.
#[derive(Debug, Clone)]
pub struct Sql {
    text: Cow<'static, str>,
    args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: impl Into<Cow<'static, str>>) -> Sql {
        Sql {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// Appends the value of the next parameter.
    pub fn arg(mut self, value: impl Into<Arg>) -> Sql {
        self.args.push(value.into());
        self
    }

    /// Binds texts for a [`Params::in_set`]: one parameter each on SQLite, one array on
    /// PostgreSQL.
    pub fn set<'a>(mut self, backend: Backend, values: impl IntoIterator<Item = &'a str>) -> Sql {
        match backend {
            Backend::Sqlite => self.args.extend(values.into_iter().map(Arg::from)),
            Backend::Postgres => self.args.push(texts(values).into()),
        }
        self
    }
}

/// PostgreSQL statements as the `WITH` queries of one statement, their parameters renumbered
/// to follow each other.
fn together(statements: Vec<Sql>) -> Sql {
    let mut args = Vec::new();
    let queries: Vec<String> = statements
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let text = shift_parameters(&q.text, args.len());
            args.extend(q.args);
            format!("w{i} AS ({text})")
        })
        .collect();
    Sql {
        text: format!("WITH {} SELECT 1", queries.join(", ")).into(),
        args,
    }
}

/// `text` with every `$N` made `$(N + by)`. The statements written here put `$` only in
/// placeholders (never in a literal), so each `$` followed by digits is one.
fn shift_parameters(text: &str, by: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Placeholders for values bound in the order they appear in the statement: `$1, $2, …` on
/// PostgreSQL, `?, ?, …` on SQLite. SQLite finds a named or numbered parameter by a linear scan,
/// both when it prepares a statement and when sqlx binds each value, so statements with
/// thousands of `$N` values took quadratic time (a fifth of a full recompute); bare `?`
/// parameters skip the scan.
pub(super) struct Params {
    backend: Backend,
    next: usize,
}

impl Params {
    pub(super) fn new(backend: Backend) -> Params {
        Params { backend, next: 1 }
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    pub(super) fn one(&mut self) -> String {
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => {
                self.next += 1;
                format!("${}", self.next - 1)
            }
        }
    }

    /// A test against a set of `n` values bound with [`Sql::set`]: `IN (?, ?, …)` on SQLite,
    /// `= ANY($k)` on PostgreSQL, whose statement then reads the same for any `n`.
    pub(super) fn in_set(&mut self, n: usize) -> String {
        match self.backend {
            Backend::Sqlite => format!("IN ({})", self.list(n)),
            Backend::Postgres => format!("= ANY({})", self.one()),
        }
    }

    /// `n` placeholders, comma-separated.
    pub(super) fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.one()).collect::<Vec<_>>().join(", ")
    }

    /// `(…), (…)`: `n` rows of `width` placeholders.
    pub(super) fn rows(&mut self, n: usize, width: usize) -> String {
        (0..n)
            .map(|_| format!("({})", self.list(width)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Binds every argument of a [`Sql`] to a sqlx query of the backend named first: an
/// [`Arg::List`] as an array on PostgreSQL, as JSON text on SQLite.
macro_rules! bind_args {
    ($backend:ident, $query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
                Arg::Real(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
                Arg::Time(v) => query.bind(v),
                Arg::Json(v) => query.bind(v.map(Json)),
                Arg::List(v) => bind_args!(@list $backend, query, v),
            };
        }
        query
    }};
    (@list sqlite, $query:ident, $v:ident) => {
        $query.bind($v.to_json())
    };
    (@list postgres, $query:ident, $v:ident) => {
        match $v {
            List::Text(v) => $query.bind(v),
            List::Int(v) => $query.bind(v),
            List::Time(v) => $query.bind(v),
            List::Json(v) => $query.bind(v.into_iter().map(Json).collect::<Vec<_>>()),
        }
    };
}

/// A row type every kind of [`Tx`] can read.
pub trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + FromDirect + Send + Unpin + 'static
{
}

impl<T> Row for T where
    T: for<'r> FromRow<'r, SqliteRow>
        + for<'r> FromRow<'r, PgRow>
        + FromDirect
        + Send
        + Unpin
        + 'static
{
}

impl Tx {
    /// Runs a statement; answers how many rows it changed.
    pub async fn run(&mut self, q: Sql) -> Result<u64> {
        Ok(match self {
            Tx::Sqlite(t) => bind_args!(sqlite, sqlx::query(AssertSqlSafe(q.text)), q.args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
            Tx::Postgres(t) => bind_args!(postgres, sqlx::query(AssertSqlSafe(q.text)), q.args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
            Tx::Direct(d) => d.run(&q)?,
        })
    }

    /// Runs statements that do not read each other's effects, in one round trip where the
    /// backend allows: on PostgreSQL, as the data-modifying `WITH` queries of one statement.
    /// There they all see the same snapshot, so none may read, or change, a row another one
    /// changes.
    pub async fn run_all(&mut self, statements: Vec<Sql>) -> Result<()> {
        if self.backend() == Backend::Postgres && statements.len() > 1 {
            self.run(together(statements)).await?;
            return Ok(());
        }
        for q in statements {
            self.run(q).await?;
        }
        Ok(())
    }

    /// The first row a statement returns, if any.
    pub async fn optional<T: Row>(&mut self, q: Sql) -> Result<Option<T>> {
        Ok(match self {
            Tx::Sqlite(t) => {
                bind_args!(
                    sqlite,
                    sqlx::query_as::<_, T>(AssertSqlSafe(q.text)),
                    q.args
                )
                .fetch_optional(&mut **t)
                .await?
            }
            Tx::Postgres(t) => {
                bind_args!(
                    postgres,
                    sqlx::query_as::<_, T>(AssertSqlSafe(q.text)),
                    q.args
                )
                .fetch_optional(&mut **t)
                .await?
            }
            Tx::Direct(d) => d.rows(&q, Some(1))?.pop(),
        })
    }

    /// The first row a statement returns; an error when there is none.
    pub async fn one<T: Row>(&mut self, q: Sql) -> Result<T> {
        self.optional(q)
            .await?
            .ok_or(StoreError::Sqlx(sqlx::Error::RowNotFound))
    }

    /// Every row a statement returns.
    pub async fn all<T: Row>(&mut self, q: Sql) -> Result<Vec<T>> {
        Ok(match self {
            Tx::Sqlite(t) => {
                bind_args!(
                    sqlite,
                    sqlx::query_as::<_, T>(AssertSqlSafe(q.text)),
                    q.args
                )
                .fetch_all(&mut **t)
                .await?
            }
            Tx::Postgres(t) => {
                bind_args!(
                    postgres,
                    sqlx::query_as::<_, T>(AssertSqlSafe(q.text)),
                    q.args
                )
                .fetch_all(&mut **t)
                .await?
            }
            Tx::Direct(d) => d.rows(&q, None)?,
        })
    }
}

/// The writer connection as rusqlite sees it, kept between transactions with its prepared
/// statements: a transaction of one event would otherwise prepare every statement again
/// (measured: preparing was 15 % of the writer thread's time per event).
///
/// The statements stay prepared on sqlx's connection between transactions. sqlx never sees
/// them, but its close fails while they exist, so [`Store::close`] clears this before it
/// closes the writer pool (and from then on keeps nothing), and a [`Store`] drops this before
/// its writer pool. The writer connection is opened serialized, so finalizing them is safe
/// from any thread.
#[derive(Default)]
pub struct Prepared(std::sync::Mutex<Keeping>);

#[derive(Default)]
struct Keeping {
    kept: Option<Kept>,
    /// The store is closing: nothing is kept any more.
    closed: bool,
}

/// The connection and the handle it was made from.
struct Kept {
    raw: usize,
    conn: rusqlite::Connection,
}

impl Prepared {
    /// The kept connection, if it was made from `raw`. One made from another handle (the pool
    /// opened a new connection) is dropped.
    fn take(&self, raw: usize) -> Option<rusqlite::Connection> {
        let kept = self.keeping().kept.take()?;
        (kept.raw == raw).then_some(kept.conn)
    }

    /// Keeps `conn` for the next transaction, unless the store is closing (then its
    /// statements are finalized here, while the caller still holds the handle).
    fn put(&self, raw: usize, conn: rusqlite::Connection) {
        let mut keeping = self.keeping();
        if !keeping.closed {
            keeping.kept = Some(Kept { raw, conn });
        }
    }

    /// Finalizes the prepared statements, and keeps none from now on.
    pub(super) fn close(&self) {
        let mut keeping = self.keeping();
        keeping.closed = true;
        keeping.kept = None;
    }

    fn keeping(&self) -> std::sync::MutexGuard<'_, Keeping> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A transaction on a SQLite connection taken from sqlx for its duration: a write
/// transaction on the writer connection, or a read transaction on a reader. Rolls back when
/// dropped before [`Direct::commit`].
pub struct Direct {
    conn: Option<rusqlite::Connection>,
    raw: usize,
    /// Where the writer connection's statements are kept between transactions; a reader's
    /// are finalized at the end of the transaction.
    home: Option<Arc<Prepared>>,
    open: bool,
}

impl Direct {
    /// Starts a write transaction on the writer connection, whose handle `handle` holds. The
    /// caller keeps `handle` until this is dropped.
    pub fn begin(handle: &mut LockedSqliteHandle<'_>, home: &Arc<Prepared>) -> Result<Direct> {
        let raw = handle.as_raw_handle().as_ptr();
        let conn = match home.take(raw as usize) {
            Some(conn) => conn,
            None => connection(handle)?,
        };
        Direct::start(
            conn,
            raw as usize,
            Some(Arc::clone(home)),
            "BEGIN IMMEDIATE",
        )
    }

    /// Starts a read transaction on a reader connection, whose handle `handle` holds, so a
    /// long run of reads (a recompute batch) does not hand every row across threads. The
    /// caller keeps `handle` until this is dropped.
    pub fn begin_read(handle: &mut LockedSqliteHandle<'_>) -> Result<Direct> {
        let raw = handle.as_raw_handle().as_ptr() as usize;
        Direct::start(connection(handle)?, raw, None, "BEGIN")
    }

    fn start(
        conn: rusqlite::Connection,
        raw: usize,
        home: Option<Arc<Prepared>>,
        begin: &str,
    ) -> Result<Direct> {
        let mut direct = Direct {
            conn: Some(conn),
            raw,
            home,
            open: false,
        };
        direct.conn()?.execute_batch(begin)?;
        direct.open = true;
        Ok(direct)
    }

    fn conn(&self) -> Result<&rusqlite::Connection> {
        self.conn.as_ref().ok_or(StoreError::Abandoned)
    }

    pub(super) fn commit(mut self) -> Result<()> {
        self.conn()?.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }

    fn prepare(&self, q: &Sql) -> Result<rusqlite::CachedStatement<'_>> {
        let mut stmt = self.conn()?.prepare_cached(&q.text)?;
        let mut next = 0;
        for i in 1..=stmt.parameter_count() {
            // `$N` is the N-th argument wherever it appears; `?` the next one in order.
            let n = match stmt.parameter_name(i) {
                Some(name) => name
                    .strip_prefix(['$', '?'])
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| StoreError::Parameter(name.to_owned()))?,
                None => {
                    next += 1;
                    next
                }
            };
            let Some(arg) = q.args.get(n - 1) else {
                return Err(StoreError::Parameter(format!("${n} has no value")));
            };
            bind(&mut stmt, i, arg)?;
        }
        Ok(stmt)
    }

    fn run(&self, q: &Sql) -> Result<u64> {
        let mut stmt = self.prepare(q)?;
        // Stepped to the end like sqlx does, so a statement that returns rows runs too.
        let mut rows = stmt.raw_query();
        while rows.next()?.is_some() {}
        Ok(self.conn()?.changes())
    }

    fn rows<T: FromDirect>(&self, q: &Sql, limit: Option<usize>) -> Result<Vec<T>> {
        let mut stmt = self.prepare(q)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while limit.is_none_or(|l| out.len() < l)
            && let Some(row) = rows.next()?
        {
            out.push(T::from_direct(row)?);
        }
        Ok(out)
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Leaves the connection outside any transaction, as sqlx expects it; one that will not
        // roll back is not kept.
        if (!self.open || conn.execute_batch("ROLLBACK").is_ok())
            && let Some(home) = &self.home
        {
            home.put(self.raw, conn);
        }
    }
}

/// rusqlite's view of the connection `handle` holds.
#[allow(unsafe_code)]
fn connection(handle: &mut LockedSqliteHandle<'_>) -> Result<rusqlite::Connection> {
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: `raw` is the open connection of `handle`, whose lock keeps sqlx's worker thread
    // off it; the connection made here is used only while a `Direct` holds such a lock, and is
    // dropped (its statements finalized) before sqlx closes the handle: at the end of a read
    // transaction, or for the writer's see `Prepared`. rusqlite does not close a connection
    // made with `from_handle`.
    let conn = unsafe { rusqlite::Connection::from_handle(raw) }?;
    // Room for every statement of the engine's transactions.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Binds one argument the way sqlx-sqlite does, so rows written either way compare and
/// decode the same: times as RFC 3339 text with `+00:00`, JSON as text, booleans as 0/1.
fn bind(stmt: &mut rusqlite::Statement<'_>, i: usize, arg: &Arg) -> rusqlite::Result<()> {
    match arg {
        Arg::Text(v) => stmt.raw_bind_parameter(i, v),
        Arg::Int(v) => stmt.raw_bind_parameter(i, v),
        Arg::Real(v) => stmt.raw_bind_parameter(i, v),
        Arg::Bool(v) => stmt.raw_bind_parameter(i, v.map(i64::from)),
        Arg::Time(v) => stmt.raw_bind_parameter(i, v.map(sqlite_time)),
        Arg::Json(v) => stmt.raw_bind_parameter(i, v.as_ref().map(|raw| raw.get())),
        Arg::List(v) => stmt.raw_bind_parameter(i, v.to_json()),
    }
}

/// A time as sqlx-sqlite writes it.
fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// A row read from the direct connection.
pub trait FromDirect: Sized {
    fn from_direct(row: &rusqlite::Row<'_>) -> Result<Self>;
}

/// A column value read from the direct connection, as sqlx-sqlite would decode it.
pub trait Column: Sized {
    fn column(value: ValueRef<'_>) -> Option<Self>;
}

/// Reads column `name` (or index) of `row` as `T`, naming it when it does not fit.
pub fn column<T: Column, I: rusqlite::RowIndex + std::fmt::Display + Copy>(
    row: &rusqlite::Row<'_>,
    index: I,
) -> Result<T> {
    let value = row.get_ref(index)?;
    T::column(value).ok_or_else(|| StoreError::Column(index.to_string()))
}

impl Column for String {
    fn column(value: ValueRef<'_>) -> Option<Self> {
        value.as_str().ok().map(str::to_owned)
    }
}

impl Column for i64 {
    fn column(value: ValueRef<'_>) -> Option<Self> {
        value.as_i64().ok()
    }
}

impl Column for f64 {
    fn column(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Integer(i) => Some(i as f64),
            ValueRef::Real(r) => Some(r),
            _ => None,
        }
    }
}

impl Column for bool {
    fn column(value: ValueRef<'_>) -> Option<Self> {
        value.as_i64().ok().map(|i| i != 0)
    }
}

impl Column for DateTime<Utc> {
    fn column(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Text(text) => parse_time(std::str::from_utf8(text).ok()?),
            ValueRef::Integer(secs) => DateTime::from_timestamp(secs, 0),
            _ => None,
        }
    }
}

impl Column for Json<Value> {
    fn column(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
                serde_json::from_slice(bytes).ok().map(Json)
            }
            _ => None,
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn column(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Null => Some(None),
            value => T::column(value).map(Some),
        }
    }
}

/// The text forms of a time that sqlx-sqlite reads: RFC 3339, or SQLite's own
/// `YYYY-MM-DD HH:MM:SS[.fff]` in UTC.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| t.and_utc())
}

/// Implements [`FromDirect`] for a struct whose fields are columns of the same names.
macro_rules! direct_row {
    ($t:ident { $($field:ident),* $(,)? }) => {
        impl $crate::store::direct::FromDirect for $t {
            fn from_direct(row: &rusqlite::Row<'_>) -> $crate::store::Result<Self> {
                Ok($t {
                    $($field: $crate::store::direct::column(row, stringify!($field))?,)*
                })
            }
        }
    };
}
pub(crate) use direct_row;

macro_rules! direct_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Column),+> FromDirect for ($($t,)+) {
            fn from_direct(row: &rusqlite::Row<'_>) -> Result<Self> {
                Ok(($(column::<$t, usize>(row, $i)?,)+))
            }
        }
    };
}

direct_tuple!(A 0);
direct_tuple!(A 0, B 1);
direct_tuple!(A 0, B 1, C 2);
direct_tuple!(A 0, B 1, C 2, D 3);

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::TimeZone;

    use super::*;
    use crate::store::{Contact, GroupCommit, WriterCpu, on_conn};

    #[test]
    fn statements_run_together_number_their_parameters_in_turn() {
        let q = together(vec![
            Sql::new("DELETE FROM a WHERE x = $1 AND y = $2")
                .arg("x")
                .arg(1),
            Sql::new("INSERT INTO b SELECT * FROM unnest($1::text[])").arg(texts(["p", "q"])),
            Sql::new("UPDATE c SET v = $2 WHERE id = $1 AND w <> $10")
                .arg("id")
                .arg(2)
                .arg(3),
        ]);
        assert_eq!(
            q.text,
            "WITH w0 AS (DELETE FROM a WHERE x = $1 AND y = $2), \
             w1 AS (INSERT INTO b SELECT * FROM unnest($3::text[])), \
             w2 AS (UPDATE c SET v = $5 WHERE id = $4 AND w <> $13) SELECT 1"
        );
        assert_eq!(q.args.len(), 6);
        assert!(matches!(&q.args[2], Arg::List(List::Text(v)) if v == &["p", "q"]));
    }

    /// A migrated SQLite store in a temporary directory, for the store's unit tests.
    pub(in crate::store) async fn sqlite() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, 2, WriterCpu::Off)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        (dir, store)
    }

    fn contact(id: &str) -> Contact {
        let at = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
            + chrono::Duration::microseconds(123_456);
        Contact {
            id: id.to_owned(),
            email: format!("{id}@example.com"),
            attributes: Json(serde_json::json!({ "plan": "pro", "seats": 3, "tags": ["a"] })),
            subscribed: false,
            created_at: at,
            updated_at: at + chrono::Duration::seconds(1),
            profile: Json(serde_json::json!({})),
        }
    }

    /// The stored text of a contact's columns, as SQLite holds them.
    async fn stored(store: &Store, id: &str) -> (String, String, i64) {
        let mut tx = store.read().await.expect("read");
        tx.one(
            Sql::new("SELECT created_at, attributes, subscribed FROM contacts WHERE id = $1")
                .arg(id),
        )
        .await
        .expect("row")
    }

    async fn contacts(store: &Store) -> i64 {
        let mut tx = store.read().await.expect("read");
        let n: (i64,) = tx
            .one(Sql::new("SELECT COUNT(*) FROM contacts"))
            .await
            .expect("count");
        n.0
    }

    #[tokio::test]
    async fn rows_written_directly_read_and_store_exactly_as_through_sqlx() {
        let (_dir, store) = sqlite().await;
        let mut tx = store.write().await.expect("write");
        tx.put_contact(&contact("via-sqlx")).await.expect("put");
        tx.commit().await.expect("commit");

        let (mut conn, prepared) = store.writer_connection().await.expect("writer");
        let mut handle = conn.lock_handle().await.expect("handle");
        let mut tx = Tx::Direct(Direct::begin(&mut handle, &prepared).expect("begin"));
        tx.put_contact(&contact("direct")).await.expect("put");
        let from_sqlx = tx.get_contact("via-sqlx").await.expect("get").expect("row");
        tx.commit().await.expect("commit");
        drop(handle);
        drop(conn);

        let mut tx = store.read().await.expect("read");
        let from_direct = tx.get_contact("direct").await.expect("get").expect("row");
        drop(tx);
        let json = |c: &Contact| serde_json::to_value(c).expect("json");
        let mut expected = json(&contact("direct"));
        assert_eq!(json(&from_direct), expected);
        expected["id"] = "via-sqlx".into();
        expected["email"] = "via-sqlx@example.com".into();
        assert_eq!(json(&from_sqlx), expected);
        // Same text in the file, so ordering and comparisons in SQL agree.
        let (a, b) = (
            stored(&store, "direct").await,
            stored(&store, "via-sqlx").await,
        );
        assert_eq!(a, b);
        assert_eq!(a.0, "2026-11-29T12:00:00.123456+00:00");
        store.close().await;
    }

    /// A reader taken from sqlx reads a snapshot (a write committed meanwhile is not in it),
    /// and goes back to sqlx usable, with no statement of ours left on it.
    #[tokio::test]
    async fn a_reader_used_directly_reads_a_snapshot_and_goes_back_to_sqlx() {
        let (_dir, store) = sqlite().await;
        let put = |id: &'static str| {
            let store = store.clone();
            async move {
                let mut tx = store.write().await.expect("write");
                tx.put_contact(&contact(id)).await.expect("put");
                tx.commit().await.expect("commit");
            }
        };
        put("before").await;
        let mut conn = store
            .reader_connection()
            .await
            .expect("reader")
            .expect("SQLite");
        let mut handle = conn.lock_handle().await.expect("handle");
        let mut tx = Tx::Direct(Direct::begin_read(&mut handle).expect("begin"));
        let count = Sql::new("SELECT COUNT(*) FROM contacts");
        let (first,): (i64,) = tx.one(count.clone()).await.expect("count");
        put("during").await;
        let (second,): (i64,) = tx.one(count).await.expect("count");
        tx.commit().await.expect("commit");
        drop(handle);
        assert_eq!((first, second), (1, 1));
        let (now,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM contacts")
            .fetch_one(&mut *conn)
            .await
            .expect("sqlx on the same connection");
        assert_eq!(now, 2);
        drop(conn);
        store.close().await;
    }

    #[test]
    fn the_kept_connection_serves_only_its_own_handle_and_nothing_is_kept_after_close() {
        let conn = || rusqlite::Connection::open_in_memory().expect("open");
        let prepared = Prepared::default();
        assert!(prepared.take(1).is_none());
        prepared.put(1, conn());
        assert!(
            prepared.take(2).is_none(),
            "another handle: a new connection"
        );
        assert!(
            prepared.take(1).is_none(),
            "dropped when the handle changed"
        );
        prepared.put(1, conn());
        assert!(prepared.take(1).is_some());
        prepared.put(1, conn());
        prepared.close();
        assert!(prepared.take(1).is_none());
        prepared.put(1, conn());
        assert!(prepared.take(1).is_none(), "a closing store keeps nothing");
    }

    #[tokio::test]
    async fn statements_stay_prepared_between_direct_transactions_and_the_store_still_closes() {
        let (dir, store) = sqlite().await;
        let group = GroupCommit::<()>::default();
        for id in ["c1", "c2"] {
            group
                .run(&(), &store, move |_, tx| {
                    Box::pin(async move { tx.put_contact(&contact(id)).await })
                })
                .await
                .expect("grouped write");
        }
        store.close().await;
        // Closed cleanly: the file opens again with both rows.
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, 2, WriterCpu::Off)
            .await
            .expect("reopen");
        assert_eq!(contacts(&store).await, 2);
        store.close().await;
    }

    #[tokio::test]
    async fn a_batch_with_sqlx_only_code_runs_again_through_sqlx_and_writes_once() {
        let (_dir, store) = sqlite().await;
        let group = GroupCommit::<()>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        group
            .run(&(), &store, move |_, tx| {
                let runs = Arc::clone(&counted);
                Box::pin(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tx.put_contact(&contact("c1")).await?;
                    // Written for sqlx alone: fails on the direct connection.
                    on_conn!(tx, c => {
                        sqlx::query("UPDATE contacts SET subscribed = 1 WHERE id = 'c1'")
                            .execute(c)
                            .await?;
                    });
                    Ok(())
                })
            })
            .await
            .expect("grouped write");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "direct first, then sqlx");
        assert_eq!(stored(&store, "c1").await.2, 1);
        // The direct attempt rolled back: the connection takes the next batch directly.
        let direct = group
            .run(&(), &store, |_, tx| {
                Box::pin(async move {
                    tx.put_contact(&contact("c2")).await?;
                    Ok(matches!(tx, Tx::Direct(_)))
                })
            })
            .await
            .expect("second write");
        assert!(direct);
        assert_eq!(contacts(&store).await, 2);
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_direct_statement_rolls_back_and_names_the_problem() {
        let (_dir, store) = sqlite().await;
        let group = GroupCommit::<()>::default();
        let err = group
            .run(&(), &store, |_, tx| {
                Box::pin(async move {
                    tx.put_contact(&contact("c1")).await?;
                    tx.run(Sql::new("INSERT INTO nowhere VALUES ($1)").arg(1))
                        .await?;
                    Ok(())
                })
            })
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no such table: nowhere"), "{err}");
        let mut tx = store.read().await.expect("read");
        assert!(tx.get_contact("c1").await.expect("get").is_none());
        drop(tx);
        store.close().await;
    }
}
