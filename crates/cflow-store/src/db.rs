//! Connections: URLs, per-connection settings, the read pool and the embedded migrations.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool};

use crate::exec::WConn;
use sqlx::{AssertSqlSafe, Connection, Executor, SqlSafeStr};

use crate::{Backend, Error, Result};

/// How long a SQLite connection waits for a lock held by another connection or process.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// The milliseconds since the Unix epoch, from the system clock.
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The microseconds since the Unix epoch, from the system clock.
pub(crate) fn now_us() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// The `sqlite://` URL that [`crate::Store::open`] accepts for the database file at `path`,
/// creating the file if it is missing. Characters that a URL would read as syntax are
/// percent-encoded, so any path works.
pub fn sqlite_url(path: &Path) -> String {
    let raw = path.to_string_lossy();
    let mut out = String::with_capacity(raw.len() + 20);
    out.push_str("sqlite://");
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str("?mode=rwc");
    out
}

/// Which backend a URL names.
pub(crate) fn backend_of(url: &str) -> Result<Backend> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(Error::Config(format!(
            "unsupported database URL '{}': expected sqlite://PATH or postgres://…",
            redact(url)
        )))
    }
}

/// A URL without its password, for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// For a SQLite URL: the database file (percent-decoded), if it names one.
pub(crate) fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return None;
    }
    let decoded = percent_decode(file);
    Some(PathBuf::from(decoded))
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates a missing database file empty (SQLite takes an empty file as a new database) and
/// readable by its owner only: it holds key hashes, sealed secrets, task specs and the audit
/// ledger, and SQLite gives its WAL and shared-memory files the mode of the database file. An
/// existing file keeps the mode its operator gave it.
fn create_private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Config(format!(
            "cannot create the database file {}: {e}",
            path.display()
        ))),
    }
}

/// Prepares a URL for opening: for SQLite, creates the file's directory and asks for the file to
/// be created when missing (unless the URL already says which mode it wants).
pub(crate) fn prepare_url(url: &str, backend: Backend) -> Result<String> {
    if backend != Backend::Sqlite {
        return Ok(url.to_string());
    }
    if let Some(path) = sqlite_path(url)
        && let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!(
                "cannot create the database directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let has_mode = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("mode=")));
    let creates = !has_mode || url.contains("mode=rwc");
    if creates && let Some(path) = sqlite_path(url) {
        create_private(&path)?;
    }
    Ok(if has_mode {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// Settings every connection gets. SQLite's are per connection, so they are applied on each:
/// `synchronous=FULL` makes a commit durable before it returns (in WAL mode NORMAL would not;
/// the writer's own connections relax this, see `durable`, and `open_lite`),
/// foreign keys are off by default in SQLite, and the busy timeout lets a second process wait for
/// the write lock instead of failing at once. PostgreSQL's `synchronous_commit` is set explicitly
/// because a server default of `off` would silently break "accepted means durable".
///
/// SQLite's automatic WAL checkpoint is off: it runs inside the commit that crosses the
/// threshold, on the writer's connection, so every thousandth page or so a commit (and every
/// write queued behind it) waited for the copy into the database file. [`checkpointer`] does it
/// off that path instead.
pub(crate) async fn setup_connection(conn: &mut AnyConnection, backend: Backend) -> Result<()> {
    match backend {
        Backend::Sqlite => {
            conn.execute(AssertSqlSafe(sqlite_settings())).await?;
        }
        Backend::Postgres => {
            conn.execute("SET synchronous_commit = on").await?;
        }
    }
    Ok(())
}

fn sqlite_settings() -> String {
    format!(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
    )
}

/// The size SQLite truncates the WAL file to when it starts it over (after a burst grew it).
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// Opens one connection with the settings above.
pub(crate) async fn connect(url: &str, backend: Backend) -> Result<AnyConnection> {
    let mut conn = AnyConnection::connect(url).await?;
    setup_connection(&mut conn, backend).await?;
    Ok(conn)
}

/// The writer's connection to a SQLite file: a synchronous one (see `exec`) with the settings
/// of [`setup_connection`], replacing `migrated` (closed); `migrated` itself for a database
/// without a file (`:memory:`).
pub(crate) async fn writer_conn(migrated: AnyConnection, url: &str) -> Result<WConn> {
    let Some(path) = sqlite_path(url) else {
        return Ok(WConn::Any(migrated, crate::exec::Deferred::new(false)));
    };
    let _ = sqlx::Connection::close(migrated).await;
    open_lite(&path).map(WConn::Lite)
}

fn open_lite(path: &std::path::Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let fail = |e: rusqlite::Error| {
        Error::Config(format!(
            "cannot open the database file {} for writing: {e}",
            path.display()
        ))
    };
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.execute_batch(&sqlite_settings()).map_err(fail)?;
    // In WAL mode the writer's commits only write their frames; `durable::Syncer` flushes the
    // WAL before any of them is answered. Any other journal mode keeps syncing at commit.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(fail)?;
    if mode.eq_ignore_ascii_case("wal") {
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(fail)?;
    }
    // Every statement the writer runs, prepared once.
    conn.set_prepared_statement_cache_capacity(512);
    Ok(conn)
}

/// Opens the writer's connection again after a failure.
pub(crate) async fn connect_writer(url: &str, backend: Backend) -> Result<WConn> {
    if backend == Backend::Sqlite
        && let Some(path) = sqlite_path(url)
    {
        return open_lite(&path).map(WConn::Lite);
    }
    connect(url, backend)
        .await
        .map(|c| WConn::Any(c, crate::exec::Deferred::new(backend == Backend::Postgres)))
}

/// How often [`checkpointer`] copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Where the WAL stands, shared by the [`checkpointer`] and the writer.
#[derive(Debug)]
pub(crate) struct WalWatch {
    /// WAL frames (pages) past which the writer checkpoints the rest itself.
    pub restart_frames: i64,
    /// Set by the checkpointer when the WAL has grown past `restart_frames`.
    pub wanted: AtomicBool,
}

/// Copies committed WAL frames into the database file every [`CHECKPOINT_EVERY`], on a read
/// connection, until the pool closes. `PASSIVE` never blocks the writer or readers: frames a
/// reader still needs are left for the next round.
///
/// That alone does not keep the file small under a steady stream of commits: SQLite writes the
/// WAL from its beginning again only when a write transaction starts with every frame already
/// copied, and the writer has always appended more by the time a round ends (the WAL grew by
/// ~40 MB/s at 1,000 tasks/s). So when a round sees more than `restart_frames` frames, it asks
/// the writer to checkpoint between two batches on its own connection (`WalWatch::wanted`):
/// little is left to copy after this connection's rounds, nothing is appended in between, and
/// the writer's next transaction starts the WAL over.
pub(crate) fn checkpointer(pool: AnyPool, watch: Arc<WalWatch>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            // (busy, frames in the WAL, frames copied)
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await
            {
                Ok((_, frames, _)) if frames > watch.restart_frames => {
                    watch.wanted.store(true, Ordering::Release);
                }
                Ok(_) => {}
                Err(e) if !pool.is_closed() => {
                    tracing::warn!(error = %e, "SQLite WAL checkpoint failed; retrying");
                }
                Err(_) => {}
            }
        }
    });
}

/// How often [`analyzer`] looks at how much the tables changed.
const ANALYZE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Changed rows (inserted, updated, deleted) since a table's last analysis past which
/// [`analyzer`] analyzes it: at least this many, and at least [`ANALYZE_GROWTH`] times as many
/// as the table held then.
const ANALYZE_MIN_CHANGES: i64 = 1_000;
const ANALYZE_GROWTH: i64 = 4;

/// The advisory lock that lets one node at a time analyze (a second one skips its round).
const ANALYZE_LOCK: i64 = 7_162_531_483_379_397_989;

/// Keeps PostgreSQL's statistics up with a table that grows fast (PostgreSQL only; until the
/// pool closes). The writer's statements are prepared once and soon run on a generic plan,
/// chosen with the statistics of that moment; on a fresh database those say the tables are
/// nearly empty, so the batch updates (`UPDATE tasks ... FROM <the batch's rows> WHERE
/// tasks.id = ...`) were planned as a hash join over a sequential scan, and every completion
/// scanned the whole table until autovacuum got round to it (it looks once a minute): a
/// statement of 2-3 ms at 3,000 tasks, growing with the table (at 1,000 tasks/s on a fresh
/// database, submit->start p50 / p99 were 11.7-14.5 / 47-58 ms over 40 s, 5.2-6.3 / 22-31 ms
/// with this). Analyzing a table each time it has changed by four times as many rows as it held
/// (so a number of times logarithmic in its growth) invalidates those plans and the next ones
/// use the indexes; a table of steady size is left to autovacuum, and so is the ledger (`audit`),
/// which no writer statement plans with statistics (its head read and inserts go by its primary
/// key), and whose analysis was the dearest (about 140 ms of a core at 25,000 entries, a spike
/// in the latency of every request then). Runs on a read connection,
/// beside the writer (`ANALYZE` takes a lock that row writes do not wait for), one node at a
/// time.
pub(crate) fn analyzer(pool: AnyPool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ANALYZE_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            match analyze_grown(&pool).await {
                Ok(tables) if !tables.is_empty() => {
                    tracing::debug!(?tables, "analyzed tables that grew");
                }
                Ok(_) => {}
                Err(e) if !pool.is_closed() => {
                    tracing::warn!(error = %e, "analyzing grown tables failed; retrying");
                }
                Err(_) => {}
            }
        }
    });
}

/// Analyzes the tables of the current schema that changed by at least
/// `max(ANALYZE_MIN_CHANGES, ANALYZE_GROWTH × rows at the last analysis)` rows since; returns
/// their names.
async fn analyze_grown(pool: &AnyPool) -> Result<Vec<String>> {
    let grown: Vec<(String,)> = sqlx::query_as(
        "SELECT s.relname::text FROM pg_stat_user_tables s \
         JOIN pg_class c ON c.oid = s.relid \
         WHERE s.schemaname = current_schema() AND s.relname <> 'audit' \
         AND s.n_mod_since_analyze >= GREATEST($1, $2 * c.reltuples::bigint) \
         ORDER BY s.relname",
    )
    .bind(ANALYZE_MIN_CHANGES)
    .bind(ANALYZE_GROWTH)
    .fetch_all(pool)
    .await?;
    if grown.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let (mine,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
        .bind(ANALYZE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !mine {
        return Ok(Vec::new());
    }
    let mut done = Vec::with_capacity(grown.len());
    for (table,) in grown {
        // The name comes from the catalog; quoted as an identifier all the same.
        let sql = format!("ANALYZE \"{}\"", table.replace('"', "\"\""));
        tx.execute(AssertSqlSafe(sql)).await?;
        done.push(table);
    }
    tx.commit().await?;
    Ok(done)
}

/// The pool that serves reads. WAL lets SQLite readers run while the writer commits.
pub(crate) async fn read_pool(url: &str, backend: Backend, max: u32) -> Result<AnyPool> {
    let pool = AnyPoolOptions::new()
        .max_connections(max.max(1))
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        // A SQLite connection cannot go stale; a PostgreSQL one can (server restart, proxy
        // timeout), and a ping is cheaper than a failed request.
        .test_before_acquire(backend == Backend::Postgres)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                setup_connection(conn, backend).await.map_err(|e| match e {
                    Error::Database(e) => e,
                    other => sqlx::Error::Configuration(other.to_string().into()),
                })
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// The schema, embedded in the binary. Built by hand rather than with `sqlx::migrate!` because
/// that macro needs sqlx's `macros` feature, which would change sqlx's feature set (and rebuild
/// it) for the whole workspace.
fn migrator(backend: Backend) -> Migrator {
    let files: &[(i64, &str, &str)] = match backend {
        Backend::Sqlite => &[
            (
                1,
                "init",
                include_str!("../migrations/sqlite/0001_init.sql"),
            ),
            (
                2,
                "orchestration",
                include_str!("../migrations/sqlite/0002_orchestration.sql"),
            ),
            (
                3,
                "memory tombstones",
                include_str!("../migrations/sqlite/0003_memory_tombstones.sql"),
            ),
            (
                4,
                "scheduling",
                include_str!("../migrations/sqlite/0004_scheduling.sql"),
            ),
            (
                5,
                "sandbox",
                include_str!("../migrations/sqlite/0005_sandbox.sql"),
            ),
            (
                6,
                "secrets",
                include_str!("../migrations/sqlite/0006_secrets.sql"),
            ),
            (
                7,
                "cost",
                include_str!("../migrations/sqlite/0007_cost.sql"),
            ),
            (
                8,
                "tenant llm",
                include_str!("../migrations/sqlite/0008_tenant_llm.sql"),
            ),
            (
                9,
                "hooks",
                include_str!("../migrations/sqlite/0009_hooks.sql"),
            ),
            (
                10,
                "claude policy",
                include_str!("../migrations/sqlite/0010_claude_policy.sql"),
            ),
            (
                11,
                "hook windows",
                include_str!("../migrations/sqlite/0011_hook_windows.sql"),
            ),
            (
                12,
                "lease index",
                include_str!("../migrations/sqlite/0012_lease_index.sql"),
            ),
            (
                13,
                "tasks by tenant",
                include_str!("../migrations/sqlite/0013_tasks_by_tenant.sql"),
            ),
        ],
        Backend::Postgres => &[
            (
                1,
                "init",
                include_str!("../migrations/postgres/0001_init.sql"),
            ),
            (
                2,
                "orchestration",
                include_str!("../migrations/postgres/0002_orchestration.sql"),
            ),
            (
                3,
                "memory tombstones",
                include_str!("../migrations/postgres/0003_memory_tombstones.sql"),
            ),
            (
                4,
                "scheduling",
                include_str!("../migrations/postgres/0004_scheduling.sql"),
            ),
            (
                5,
                "sandbox",
                include_str!("../migrations/postgres/0005_sandbox.sql"),
            ),
            (
                6,
                "secrets",
                include_str!("../migrations/postgres/0006_secrets.sql"),
            ),
            (
                7,
                "cost",
                include_str!("../migrations/postgres/0007_cost.sql"),
            ),
            (
                8,
                "tenant llm",
                include_str!("../migrations/postgres/0008_tenant_llm.sql"),
            ),
            (
                9,
                "hooks",
                include_str!("../migrations/postgres/0009_hooks.sql"),
            ),
            (
                10,
                "claude policy",
                include_str!("../migrations/postgres/0010_claude_policy.sql"),
            ),
            (
                11,
                "bulk functions",
                include_str!("../migrations/postgres/0011_bulk_functions.sql"),
            ),
            (
                12,
                "hook windows",
                include_str!("../migrations/postgres/0012_hook_windows.sql"),
            ),
            (
                13,
                "bulk rows",
                include_str!("../migrations/postgres/0013_bulk_rows.sql"),
            ),
            (
                14,
                "bulk functions in plpgsql",
                include_str!("../migrations/postgres/0014_bulk_functions_plpgsql.sql"),
            ),
            (
                15,
                "expect",
                include_str!("../migrations/postgres/0015_expect.sql"),
            ),
            (
                16,
                "tasks by tenant",
                include_str!("../migrations/postgres/0016_tasks_by_tenant.sql"),
            ),
            (
                17,
                "hot path checks",
                include_str!("../migrations/postgres/0017_hot_path_checks.sql"),
            ),
            (
                18,
                "expect message",
                include_str!("../migrations/postgres/0018_expect_message.sql"),
            ),
        ],
    };
    Migrator::with_migrations(
        files
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Brings the database to the current schema. Safe to run from several processes at once: sqlx
/// takes a lock (an advisory lock on PostgreSQL, the write lock on SQLite).
pub(crate) async fn migrate(conn: &mut AnyConnection, backend: Backend) -> Result<()> {
    if backend == Backend::Sqlite {
        // WAL is a property of the file, so setting it once here covers every later connection.
        // It lets readers run while the writer commits.
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode; reads will wait for writes");
        }
    }
    // `Migrator::run` goes through `Acquire`, whose impl for `&mut AnyConnection` trips a
    // higher-ranked lifetime bound and makes this future (and so `Store::open`) not `Send`.
    // `run_direct`, which `run` calls after acquiring, is sqlx's own way around that: it takes
    // the connection as it is, and does the same (lock, check applied migrations, apply, unlock).
    migrator(backend)
        .run_direct(None, &mut *conn, false)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_round_trip_paths() {
        let p = Path::new("/tmp/a dir/wé#?.db");
        let url = sqlite_url(p);
        assert!(url.starts_with("sqlite:///tmp/a%20dir/"), "{url}");
        assert!(url.ends_with("?mode=rwc"));
        assert_eq!(sqlite_path(&url).unwrap(), p);
        assert_eq!(backend_of(&url).unwrap(), Backend::Sqlite);
    }

    #[test]
    fn backends_and_redaction() {
        assert_eq!(
            backend_of("postgres://u:p@h/db").unwrap(),
            Backend::Postgres
        );
        assert!(backend_of("mysql://h/db").is_err());
        let r = redact("postgres://user:secret@host/db");
        assert!(!r.contains("secret"), "{r}");
    }

    #[test]
    fn prepare_adds_create_mode() {
        let dir = std::env::temp_dir().join(format!("cflow-db-test-{}", std::process::id()));
        let file = dir.join("sub/x.db");
        let url = format!("sqlite://{}", file.display());
        let prepared = prepare_url(&url, Backend::Sqlite).unwrap();
        assert!(prepared.ends_with("?mode=rwc"));
        assert!(file.parent().unwrap().is_dir());
        let with_mode = prepare_url(&format!("{url}?mode=ro"), Backend::Sqlite).unwrap();
        assert!(with_mode.ends_with("?mode=ro"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
