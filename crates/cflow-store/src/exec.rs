//! How the writer runs its statements: [`WConn`] is the writer's connection, either sqlx's
//! `AnyConnection` (PostgreSQL) or a synchronous SQLite connection (`rusqlite`) owned by the
//! writer's own thread.
//!
//! Through sqlx, every SQLite statement is a round trip to the connection's worker thread (two
//! thread wake-ups); a write batch runs a dozen or more, so at 1,000 requests/s most of the
//! writer's time went to those hops. On its own thread, the writer runs SQLite in-line.
//!
//! The API mirrors the subset of sqlx's that the ops use (`query`, `query_scalar`, `query_as`,
//! `bind`, `execute`, `fetch_one`, `fetch_optional`, `fetch_all`) so an op reads the same on both
//! backends; rows are read by index through [`GetCol`], implemented for sqlx's `AnyRow` (reads
//! on the pool) and for [`DbRow`] (the writer's rows), so one row parser serves both.
//!
//! Statements use PostgreSQL's `$N` placeholders on both backends: SQLite takes `$1` as a named
//! parameter, so each is bound by its name's number, not by its position.

use std::fmt;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, SqlSafeStr, SqlStr};

/// A bound value. A null keeps its type: PostgreSQL needs it.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Null(Kind),
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Int,
    Real,
    Text,
    Blob,
    Bool,
}

/// A value that can be bound to a statement.
pub(crate) trait Bind {
    fn into_val(self) -> Val;
    fn kind() -> Kind;
}

macro_rules! bind_as {
    ($t:ty, $kind:ident, $v:ident => $e:expr) => {
        impl Bind for $t {
            fn into_val(self) -> Val {
                let $v = self;
                Val::$kind($e)
            }
            fn kind() -> Kind {
                Kind::$kind
            }
        }
    };
}

bind_as!(i64, Int, v => v);
bind_as!(i32, Int, v => i64::from(v));
bind_as!(u32, Int, v => i64::from(v));
bind_as!(f64, Real, v => v);
bind_as!(bool, Bool, v => v);
bind_as!(String, Text, v => v);
bind_as!(&str, Text, v => v.to_string());
bind_as!(&String, Text, v => v.clone());
bind_as!(Vec<u8>, Blob, v => v);
bind_as!(&[u8], Blob, v => v.to_vec());

impl<T: Bind> Bind for Option<T> {
    fn into_val(self) -> Val {
        match self {
            Some(v) => v.into_val(),
            None => Val::Null(T::kind()),
        }
    }
    fn kind() -> Kind {
        T::kind()
    }
}

/// A column type a row can be read as.
pub(crate) trait Col:
    Sized + for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>
{
    /// The value read by the synchronous SQLite connection.
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String>;
}

fn mismatch(want: &str, got: rusqlite::types::ValueRef<'_>) -> String {
    format!("expected {want}, found {:?}", got.data_type())
}

impl Col for i64 {
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String> {
        match v {
            rusqlite::types::ValueRef::Integer(i) => Ok(i),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl Col for i32 {
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String> {
        let i = i64::from_lite(v)?;
        i32::try_from(i).map_err(|_| format!("{i} is out of range for i32"))
    }
}

impl Col for f64 {
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String> {
        match v {
            rusqlite::types::ValueRef::Real(f) => Ok(f),
            rusqlite::types::ValueRef::Integer(i) => Ok(i as f64),
            other => Err(mismatch("a real", other)),
        }
    }
}

impl Col for bool {
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String> {
        match v {
            rusqlite::types::ValueRef::Integer(i) => Ok(i != 0),
            other => Err(mismatch("a boolean", other)),
        }
    }
}

impl Col for String {
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String> {
        match v {
            rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t)
                .map(str::to_string)
                .map_err(|e| format!("text that is not UTF-8: {e}")),
            other => Err(mismatch("text", other)),
        }
    }
}

impl Col for Vec<u8> {
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String> {
        match v {
            rusqlite::types::ValueRef::Blob(b) => Ok(b.to_vec()),
            other => Err(mismatch("a blob", other)),
        }
    }
}

impl<T: Col> Col for Option<T> {
    fn from_lite(v: rusqlite::types::ValueRef<'_>) -> Result<Self, String> {
        match v {
            rusqlite::types::ValueRef::Null => Ok(None),
            v => T::from_lite(v).map(Some),
        }
    }
}

/// A row of the writer's synchronous SQLite connection.
#[derive(Debug)]
pub(crate) struct LiteRow(Vec<rusqlite::types::Value>);

/// A row the writer read.
pub(crate) enum DbRow {
    Any(AnyRow),
    Lite(LiteRow),
}

impl fmt::Debug for DbRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbRow::Any(_) => f.write_str("DbRow::Any"),
            DbRow::Lite(r) => r.fmt(f),
        }
    }
}

/// Reading a row's columns by index, whichever connection read it.
pub(crate) trait GetCol {
    fn try_get<T: Col>(&self, index: usize) -> Result<T, sqlx::Error>;
}

impl GetCol for AnyRow {
    fn try_get<T: Col>(&self, index: usize) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

impl GetCol for LiteRow {
    fn try_get<T: Col>(&self, index: usize) -> Result<T, sqlx::Error> {
        let v = self
            .0
            .get(index)
            .ok_or(sqlx::Error::ColumnIndexOutOfBounds {
                index,
                len: self.0.len(),
            })?;
        T::from_lite(rusqlite::types::ValueRef::from(v)).map_err(|e| sqlx::Error::ColumnDecode {
            index: index.to_string(),
            source: e.into(),
        })
    }
}

impl GetCol for DbRow {
    fn try_get<T: Col>(&self, index: usize) -> Result<T, sqlx::Error> {
        match self {
            DbRow::Any(r) => GetCol::try_get(r, index),
            DbRow::Lite(r) => r.try_get(index),
        }
    }
}

/// Rows read into a tuple (`query_as`).
pub(crate) trait FromRow: Sized {
    fn from_row(r: &DbRow) -> Result<Self, sqlx::Error>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Col),+> FromRow for ($($t,)+) {
            fn from_row(r: &DbRow) -> Result<Self, sqlx::Error> {
                Ok(($(r.try_get::<$t>($i)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);

/// What `execute` reports.
#[derive(Debug)]
pub(crate) struct Done {
    rows: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows
    }
}

/// The writer's connection.
pub(crate) enum WConn {
    Any(AnyConnection, Deferred),
    Lite(rusqlite::Connection),
}

/// PostgreSQL: writes held back by [`Query::defer`] to travel with the connection's next round
/// trip, and the statements prepared for them.
///
/// A write batch used to send each write as soon as it was built, so a typical batch at a
/// thousand tasks a second (`BEGIN` with its reads, the submissions' insert, the completions'
/// update, the ledger insert with `COMMIT`) was four round trips, each a wake-up of the server
/// process and of the writer. A write whose caller needs nothing back waits instead and goes
/// in front of whatever the writer sends next: the `COMMIT`'s round trip (`raw_string`, one
/// simple query: an error in a held-back write skips the rest, so nothing commits), or, before
/// any other statement, a round trip of its own, so reads always see every earlier write.
pub(crate) struct Deferred {
    /// Whether writes are held back at all (PostgreSQL only).
    on: bool,
    /// `EXECUTE …;` of the held-back writes, in order.
    sql: String,
    /// The statement texts (with their parameter types) prepared on this connection, and
    /// their names.
    prepared: std::collections::HashMap<String, String>,
}

impl Deferred {
    pub(crate) fn new(on: bool) -> Self {
        Deferred {
            on,
            sql: String::new(),
            prepared: std::collections::HashMap::new(),
        }
    }
}

/// Sends the held-back writes, if any, in a round trip of their own.
async fn flush(conn: &mut AnyConnection, d: &mut Deferred) -> Result<(), sqlx::Error> {
    if d.sql.is_empty() {
        return Ok(());
    }
    let sql = std::mem::take(&mut d.sql);
    sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(sqlx::AssertSqlSafe(sql))).await?;
    Ok(())
}

/// Drops the held-back writes (the transaction is being rolled back).
pub(crate) fn discard(c: &mut WConn) {
    if let WConn::Any(_, d) = c {
        d.sql.clear();
    }
}

/// PostgreSQL: the type of a parameter and the literal of its value in a simple query, or
/// `None` for a value held-back writes do not take.
fn pg_literal(v: &Val) -> Option<(&'static str, String)> {
    let ty = |k: &Kind| match k {
        Kind::Int => "bigint",
        Kind::Real => "double precision",
        Kind::Text => "text",
        Kind::Blob => "bytea",
        Kind::Bool => "boolean",
    };
    Some(match v {
        Val::Null(k) => (ty(k), "NULL".to_string()),
        Val::Int(i) => ("bigint", i.to_string()),
        Val::Text(t) => ("text", crate::bulk::dollar_quoted(t)),
        Val::Bool(b) => ("boolean", b.to_string()),
        Val::Real(_) | Val::Blob(_) => return None,
    })
}

impl fmt::Debug for WConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WConn::Any(..) => f.write_str("WConn::Any"),
            WConn::Lite(_) => f.write_str("WConn::Lite"),
        }
    }
}

impl WConn {
    /// Closes the connection (a transaction still open is rolled back).
    pub async fn close(self) {
        match self {
            WConn::Any(c, _) => {
                let _ = sqlx::Connection::close(c).await;
            }
            WConn::Lite(c) => {
                let _ = c.close();
            }
        }
    }
}

/// Runs statements without arguments or results (`BEGIN`, `COMMIT`, settings), in one round
/// trip.
pub(crate) async fn raw(c: &mut WConn, sql: &'static str) -> Result<(), sqlx::Error> {
    match c {
        WConn::Any(_, d) if !d.sql.is_empty() => raw_string(c, sql.to_string()).await,
        WConn::Any(conn, _) => {
            sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(sql)).await?;
            Ok(())
        }
        WConn::Lite(conn) => conn.execute_batch(sql).map_err(lite_error),
    }
}

/// [`raw`] with a statement text built at run time (by the store: no caller-supplied SQL).
/// Held-back writes go first, in the same round trip.
pub(crate) async fn raw_string(c: &mut WConn, sql: String) -> Result<(), sqlx::Error> {
    match c {
        WConn::Any(conn, d) => {
            let sql = if d.sql.is_empty() {
                sql
            } else {
                let mut all = std::mem::take(&mut d.sql);
                all.push_str(&sql);
                all
            };
            sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(sqlx::AssertSqlSafe(sql))).await?;
            Ok(())
        }
        WConn::Lite(conn) => conn.execute_batch(&sql).map_err(lite_error),
    }
}

/// PostgreSQL: runs a simple query of several statements (built by the store: no caller-supplied
/// SQL) in one round trip and returns the rows of all of them, in order. Without arguments, each statement takes its own snapshot (read
/// committed), as if sent one by one.
pub(crate) async fn raw_rows_pg(c: &mut WConn, sql: String) -> Result<Vec<AnyRow>, sqlx::Error> {
    match c {
        WConn::Any(conn, d) => {
            flush(conn, d).await?;
            sqlx::Executor::fetch_all(&mut *conn, sqlx::raw_sql(sqlx::AssertSqlSafe(sql))).await
        }
        WConn::Lite(_) => Err(sqlx::Error::Protocol(
            "a multi-statement query with results is for PostgreSQL only".into(),
        )),
    }
}

/// PostgreSQL: whether writes are held back on this connection ([`Deferred`]), so that a
/// statement can travel in the same round trip as them ([`fetch_last_pg`]).
pub(crate) fn defers(c: &WConn) -> bool {
    matches!(c, WConn::Any(_, d) if d.on)
}

/// PostgreSQL: runs the held-back writes and then `sql` (statements built by the store: no
/// caller-supplied SQL) as one simple query, one round trip, and returns the first column of
/// the last row it returns (`sql`'s, which must return one row). An error in a held-back write
/// skips the rest, as at `COMMIT`.
pub(crate) async fn fetch_last_pg(c: &mut WConn, sql: &str) -> Result<String, sqlx::Error> {
    match c {
        WConn::Any(conn, d) => {
            let mut all = std::mem::take(&mut d.sql);
            all.push_str(sql);
            let rows =
                sqlx::Executor::fetch_all(&mut *conn, sqlx::raw_sql(sqlx::AssertSqlSafe(all)))
                    .await?;
            match rows.last() {
                Some(r) => sqlx::Row::try_get(r, 0),
                None => Err(sqlx::Error::RowNotFound),
            }
        }
        WConn::Lite(_) => Err(sqlx::Error::Protocol(
            "a multi-statement query with results is for PostgreSQL only".into(),
        )),
    }
}

/// A statement and its arguments.
pub(crate) struct Query {
    sql: SqlStr,
    args: Vec<Val>,
}

pub(crate) fn query(sql: impl SqlSafeStr) -> Query {
    Query {
        sql: sql.into_sql_str(),
        args: Vec::new(),
    }
}

/// A statement whose rows are single values.
pub(crate) struct QueryScalar<T> {
    q: Query,
    _t: std::marker::PhantomData<T>,
}

pub(crate) fn query_scalar<T: Col>(sql: impl SqlSafeStr) -> QueryScalar<T> {
    QueryScalar {
        q: query(sql),
        _t: std::marker::PhantomData,
    }
}

/// A statement whose rows are tuples.
pub(crate) struct QueryAs<T> {
    q: Query,
    _t: std::marker::PhantomData<T>,
}

pub(crate) fn query_as<T: FromRow>(sql: impl SqlSafeStr) -> QueryAs<T> {
    QueryAs {
        q: query(sql),
        _t: std::marker::PhantomData,
    }
}

impl Query {
    pub fn bind<B: Bind>(mut self, v: B) -> Self {
        self.args.push(v.into_val());
        self
    }

    pub fn bind_val(mut self, v: Val) -> Self {
        self.args.push(v);
        self
    }

    pub async fn execute(self, c: &mut WConn) -> Result<Done, sqlx::Error> {
        match c {
            WConn::Any(conn, d) => {
                flush(conn, d).await?;
                let done = sqlx::Executor::execute(&mut *conn, self.any()).await?;
                Ok(Done {
                    rows: done.rows_affected(),
                })
            }
            WConn::Lite(conn) => {
                let t0 = std::time::Instant::now();
                {
                    let mut stmt = self.prepare(conn)?;
                    // Stepped to its end like sqlx does; rows it returns are dropped.
                    let mut rows = stmt.raw_query();
                    while rows.next().map_err(lite_error)?.is_some() {}
                }
                let rows = conn.changes();
                traced(&self.sql, t0, rows);
                Ok(Done { rows })
            }
        }
    }

    /// Runs a write whose caller needs nothing back (no rows, no count: a check belongs in the
    /// statement, raising an error): on PostgreSQL it is held back and sent in front of the
    /// connection's next round trip (see [`Deferred`]), as `EXECUTE` of a statement prepared
    /// once per connection; on SQLite, and for values a literal cannot carry, it runs now.
    pub async fn defer(self, c: &mut WConn) -> Result<(), sqlx::Error> {
        let WConn::Any(conn, d) = c else {
            return self.execute(c).await.map(|_| ());
        };
        let lits: Option<Vec<(&str, String)>> = self.args.iter().map(pg_literal).collect();
        let Some(lits) = lits.filter(|_| d.on) else {
            return self.execute(c).await.map(|_| ());
        };
        let types: Vec<&str> = lits.iter().map(|(t, _)| *t).collect();
        let key = format!("{}\n{}", types.join(","), self.sql.as_str());
        let name = match d.prepared.get(&key) {
            Some(name) => name.clone(),
            None => {
                let name = format!("cflow_w{}", d.prepared.len());
                let prepare = if types.is_empty() {
                    format!("PREPARE {name} AS {}", self.sql.as_str())
                } else {
                    format!(
                        "PREPARE {name} ({}) AS {}",
                        types.join(", "),
                        self.sql.as_str()
                    )
                };
                // A prepared statement outlives the transaction, whatever its outcome.
                sqlx::Executor::execute(&mut *conn, sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)))
                    .await?;
                d.prepared.insert(key, name.clone());
                name
            }
        };
        d.sql.push_str("EXECUTE ");
        d.sql.push_str(&name);
        if !lits.is_empty() {
            d.sql.push('(');
            for (i, (_, lit)) in lits.iter().enumerate() {
                if i > 0 {
                    d.sql.push_str(", ");
                }
                d.sql.push_str(lit);
            }
            d.sql.push(')');
        }
        d.sql.push_str("; ");
        Ok(())
    }

    pub async fn fetch_all(self, c: &mut WConn) -> Result<Vec<DbRow>, sqlx::Error> {
        match c {
            WConn::Any(conn, d) => {
                flush(conn, d).await?;
                Ok(sqlx::Executor::fetch_all(&mut *conn, self.any())
                    .await?
                    .into_iter()
                    .map(DbRow::Any)
                    .collect())
            }
            WConn::Lite(conn) => {
                let t0 = std::time::Instant::now();
                let mut stmt = self.prepare(conn)?;
                let n = stmt.column_count();
                let mut rows = stmt.raw_query();
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(lite_error)? {
                    out.push(DbRow::Lite(lite_row(row, n)?));
                }
                traced(&self.sql, t0, out.len() as u64);
                Ok(out)
            }
        }
    }

    pub async fn fetch_optional(self, c: &mut WConn) -> Result<Option<DbRow>, sqlx::Error> {
        match c {
            WConn::Any(conn, d) => {
                flush(conn, d).await?;
                Ok(sqlx::Executor::fetch_optional(&mut *conn, self.any())
                    .await?
                    .map(DbRow::Any))
            }
            WConn::Lite(conn) => {
                let t0 = std::time::Instant::now();
                let mut stmt = self.prepare(conn)?;
                let n = stmt.column_count();
                let mut rows = stmt.raw_query();
                let first = match rows.next().map_err(lite_error)? {
                    Some(row) => Some(DbRow::Lite(lite_row(row, n)?)),
                    None => None,
                };
                // Run the statement to its end, as sqlx does (an `UPDATE … RETURNING` changes
                // every row it returns).
                while rows.next().map_err(lite_error)?.is_some() {}
                traced(&self.sql, t0, u64::from(first.is_some()));
                Ok(first)
            }
        }
    }

    pub async fn fetch_one(self, c: &mut WConn) -> Result<DbRow, sqlx::Error> {
        self.fetch_optional(c)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The sqlx query with the same arguments.
    fn any(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        let mut q = sqlx::query(self.sql.clone());
        for v in &self.args {
            q = match v {
                Val::Null(Kind::Int) => q.bind(None::<i64>),
                Val::Null(Kind::Real) => q.bind(None::<f64>),
                Val::Null(Kind::Text) => q.bind(None::<String>),
                Val::Null(Kind::Blob) => q.bind(None::<Vec<u8>>),
                Val::Null(Kind::Bool) => q.bind(None::<bool>),
                Val::Int(i) => q.bind(*i),
                Val::Real(f) => q.bind(*f),
                Val::Text(s) => q.bind(s.as_str()),
                Val::Blob(b) => q.bind(b.as_slice()),
                Val::Bool(b) => q.bind(*b),
            };
        }
        q
    }

    /// The cached statement with every `$N` bound to argument N.
    fn prepare<'c>(
        &self,
        conn: &'c rusqlite::Connection,
    ) -> Result<rusqlite::CachedStatement<'c>, sqlx::Error> {
        let mut stmt = conn.prepare_cached(self.sql.as_str()).map_err(lite_error)?;
        for i in 1..=stmt.parameter_count() {
            let n = stmt
                .parameter_name(i)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "parameter {i} of a statement is not of the form $N: {}",
                        self.sql.as_str()
                    ))
                })?;
            let v = self.args.get(n - 1).ok_or_else(|| {
                sqlx::Error::Protocol(format!(
                    "statement parameter ${n} has no argument ({} bound)",
                    self.args.len()
                ))
            })?;
            let bound = match v {
                Val::Null(_) => stmt.raw_bind_parameter(i, rusqlite::types::Null),
                Val::Int(x) => stmt.raw_bind_parameter(i, x),
                Val::Real(x) => stmt.raw_bind_parameter(i, x),
                Val::Text(x) => stmt.raw_bind_parameter(i, x.as_str()),
                Val::Blob(x) => stmt.raw_bind_parameter(i, x.as_slice()),
                Val::Bool(x) => stmt.raw_bind_parameter(i, i64::from(*x)),
            };
            bound.map_err(lite_error)?;
        }
        Ok(stmt)
    }
}

impl<T: Col + Send + Unpin> QueryScalar<T> {
    pub fn bind<B: Bind>(mut self, v: B) -> Self {
        self.q = self.q.bind(v);
        self
    }

    pub async fn fetch_one(self, c: &mut WConn) -> Result<T, sqlx::Error> {
        self.q.fetch_one(c).await?.try_get(0)
    }

    pub async fn fetch_optional(self, c: &mut WConn) -> Result<Option<T>, sqlx::Error> {
        match self.q.fetch_optional(c).await? {
            Some(r) => r.try_get(0).map(Some),
            None => Ok(None),
        }
    }

    pub async fn fetch_all(self, c: &mut WConn) -> Result<Vec<T>, sqlx::Error> {
        self.q
            .fetch_all(c)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect()
    }
}

impl<T: FromRow> QueryAs<T> {
    pub fn bind<B: Bind>(mut self, v: B) -> Self {
        self.q = self.q.bind(v);
        self
    }

    pub async fn fetch_one(self, c: &mut WConn) -> Result<T, sqlx::Error> {
        T::from_row(&self.q.fetch_one(c).await?)
    }

    pub async fn fetch_all(self, c: &mut WConn) -> Result<Vec<T>, sqlx::Error> {
        self.q.fetch_all(c).await?.iter().map(T::from_row).collect()
    }
}

/// Each statement of the writer's SQLite connection, with its time, at `trace` level
/// (`CFLOW_LOG=cflow_store::exec=trace`): what sqlx's statement log was for the other paths.
fn traced(sql: &SqlStr, t0: std::time::Instant, rows: u64) {
    tracing::trace!(
        statement = sql.as_str().trim().get(..60).unwrap_or(sql.as_str().trim()),
        us = t0.elapsed().as_micros(),
        rows,
        "statement"
    );
}

fn lite_row(row: &rusqlite::Row<'_>, n: usize) -> Result<LiteRow, sqlx::Error> {
    let mut vals = Vec::with_capacity(n);
    for i in 0..n {
        let v = row.get_ref(i).map_err(lite_error)?;
        vals.push(
            rusqlite::types::Value::try_from(v).map_err(|e| sqlx::Error::ColumnDecode {
                index: i.to_string(),
                source: Box::new(e),
            })?,
        );
    }
    Ok(LiteRow(vals))
}

/// An error of the synchronous SQLite connection, as the sqlx error the rest of the store
/// classifies (constraint kinds included).
pub(crate) fn lite_error(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Database(Box::new(LiteError(e)))
}

#[derive(Debug)]
struct LiteError(rusqlite::Error);

impl fmt::Display for LiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for LiteError {}

impl sqlx::error::DatabaseError for LiteError {
    fn message(&self) -> &str {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m,
            _ => "SQLite error",
        }
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        match &self.0 {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code.to_string().into()),
            _ => None,
        }
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        match &self.0 {
            rusqlite::Error::SqliteFailure(e, _) => match e.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    sqlx::error::ErrorKind::UniqueViolation
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlx::error::ErrorKind::ForeignKeyViolation,
                ffi::SQLITE_CONSTRAINT_NOTNULL => sqlx::error::ErrorKind::NotNullViolation,
                ffi::SQLITE_CONSTRAINT_CHECK => sqlx::error::ErrorKind::CheckViolation,
                _ => sqlx::error::ErrorKind::Other,
            },
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lite() -> WConn {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE p (id TEXT PRIMARY KEY);
             CREATE TABLE t (id TEXT PRIMARY KEY, p TEXT REFERENCES p (id), n BIGINT, x REAL,
                             b BLOB, flag BIGINT);",
        )
        .unwrap();
        WConn::Lite(c)
    }

    #[tokio::test]
    async fn parameters_bind_by_their_number_not_their_position() {
        let mut c = lite();
        query("INSERT INTO p (id) VALUES ($1)")
            .bind("p1")
            .execute(&mut c)
            .await
            .unwrap();
        // `$2` appears first: SQLite numbers parameters by first appearance.
        let done = query("INSERT INTO t (n, id, p, x, b, flag) VALUES ($2, $1, $3, $4, $5, $6)")
            .bind("a")
            .bind(7_i64)
            .bind(Some("p1"))
            .bind(None::<f64>)
            .bind(vec![1u8, 2])
            .bind(true)
            .execute(&mut c)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        let row = query("SELECT id, n, p, x, b, flag FROM t WHERE id = $1")
            .bind("a")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String>(0).unwrap(), "a");
        assert_eq!(row.try_get::<i64>(1).unwrap(), 7);
        assert_eq!(
            row.try_get::<Option<String>>(2).unwrap().as_deref(),
            Some("p1")
        );
        assert_eq!(row.try_get::<Option<f64>>(3).unwrap(), None);
        assert_eq!(row.try_get::<Vec<u8>>(4).unwrap(), vec![1, 2]);
        assert!(row.try_get::<bool>(5).unwrap());
        // A wrong type or index is an error, not a default.
        assert!(row.try_get::<i64>(0).is_err());
        assert!(row.try_get::<String>(9).is_err());
        let (n, id): (i64, String) = query_as("SELECT n, id FROM t")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!((n, id.as_str()), (7, "a"));
        let missing: Option<i64> = query_scalar("SELECT n FROM t WHERE id = $1")
            .bind("b")
            .fetch_optional(&mut c)
            .await
            .unwrap();
        assert_eq!(missing, None);
        // A statement that lacks an argument is refused instead of binding NULL.
        let err = query("SELECT n FROM t WHERE id = $1 AND n = $2")
            .bind("a")
            .fetch_all(&mut c)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("$2"), "{err}");
    }

    #[tokio::test]
    async fn constraint_failures_keep_their_kind() {
        let mut c = lite();
        let err = query("INSERT INTO t (id, p) VALUES ($1, $2)")
            .bind("a")
            .bind("nope")
            .execute(&mut c)
            .await
            .unwrap_err();
        let sqlx::Error::Database(db) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(db.kind(), sqlx::error::ErrorKind::ForeignKeyViolation);
        query("INSERT INTO p (id) VALUES ($1)")
            .bind("p1")
            .execute(&mut c)
            .await
            .unwrap();
        let err = query("INSERT INTO p (id) VALUES ($1)")
            .bind("p1")
            .execute(&mut c)
            .await
            .unwrap_err();
        let sqlx::Error::Database(db) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(db.kind(), sqlx::error::ErrorKind::UniqueViolation);
    }

    #[tokio::test]
    async fn a_rolled_back_batch_leaves_nothing() {
        let mut c = lite();
        raw(&mut c, "BEGIN IMMEDIATE").await.unwrap();
        query("INSERT INTO p (id) VALUES ($1)")
            .bind("gone")
            .execute(&mut c)
            .await
            .unwrap();
        raw(&mut c, "ROLLBACK").await.unwrap();
        let n: i64 = query_scalar("SELECT COUNT(*) FROM p")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }

    /// PostgreSQL: a held-back write goes in front of the next round trip: a read sees it, a
    /// `COMMIT` commits it, and an error it raises stops the rest of its round trip (nothing
    /// commits). Its prepared statement outlives a rolled-back transaction.
    #[tokio::test]
    async fn postgres_held_back_writes_go_first_and_their_errors_stop_the_commit() {
        let Some(url) = cflow_test_support::db::fresh_postgres_url().await else {
            return;
        };
        // Migrated (for `cflow_expect`), then closed: the test's own connection is the writer.
        let store = crate::Store::open(&url, crate::StoreOptions::default())
            .await
            .unwrap();
        store.close().await;
        let mut c = crate::db::connect_writer(&url, crate::Backend::Postgres)
            .await
            .unwrap();
        raw(&mut c, "CREATE TABLE held (id TEXT PRIMARY KEY)")
            .await
            .unwrap();
        async fn count(c: &mut WConn) -> i64 {
            query_scalar::<i64>("SELECT COUNT(*) FROM held")
                .fetch_one(c)
                .await
                .unwrap()
        }
        let insert = |id: &str| query("INSERT INTO held (id) VALUES ($1)").bind(id.to_string());

        raw(&mut c, "BEGIN").await.unwrap();
        insert("a").defer(&mut c).await.unwrap();
        assert!(matches!(&c, WConn::Any(_, d) if d.sql.starts_with("EXECUTE cflow_w0(")));
        assert_eq!(count(&mut c).await, 1, "a read sees the held-back write");
        insert("b").defer(&mut c).await.unwrap();
        raw(&mut c, "COMMIT").await.unwrap();
        assert_eq!(count(&mut c).await, 2, "COMMIT carried the held-back write");

        raw(&mut c, "BEGIN").await.unwrap();
        query("SELECT cflow_expect('rows', $1, $2)")
            .bind(1i64)
            .bind(2i64)
            .defer(&mut c)
            .await
            .unwrap();
        let err = raw_string(&mut c, "INSERT INTO held (id) VALUES ('c'); COMMIT".into())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("matched 1 rows of 2"), "{err}");
        // Migration 0018's wording: a duplicate report at two attempt writers is one cause.
        assert!(err.to_string().contains("another writer changed"), "{err}");
        discard(&mut c);
        raw(&mut c, "ROLLBACK").await.unwrap();
        assert_eq!(count(&mut c).await, 2, "nothing after the failed check ran");

        raw(&mut c, "BEGIN").await.unwrap();
        insert("d").defer(&mut c).await.unwrap();
        raw(&mut c, "COMMIT").await.unwrap();
        assert_eq!(count(&mut c).await, 3);
        let WConn::Any(_, d) = &c else {
            panic!("a PostgreSQL writer connection")
        };
        assert_eq!(d.prepared.len(), 2, "one statement prepared per text");
        c.close().await;
    }
}
