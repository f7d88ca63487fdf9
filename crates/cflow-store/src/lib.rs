//! Durable storage for cflow: one [`Store`] API over an embedded SQLite file or a PostgreSQL
//! server, with migrations for each, a group-commit writer and the hash-chained audit ledger.
//!
//! # Invariants
//! - Every query on tenant data filters on `tenant_id`; methods that touch tenant data take the
//!   tenant id as their first argument after the audit context.
//! - Every change is committed together with its audit entry, in one transaction, by the
//!   writer task, which also computes the audit hash chain so that its order is total (on
//!   PostgreSQL a second writer takes plain submissions and appends to the chain under the same
//!   lock, between two of the main writer's batches: `writer::Role`).
//! - A method that returns `Ok` for a write has committed it durably: the writer commits without
//!   waiting for the log flush (SQLite `synchronous=NORMAL` in WAL mode, PostgreSQL
//!   `synchronous_commit=off` for its session) and answers only after a flush that covers the
//!   commit (`durable::Syncer`: `fdatasync` of the WAL, or a barrier transaction with
//!   `synchronous_commit=on` on a connection alive since before the commit); every other
//!   connection commits with `synchronous=FULL` / `synchronous_commit=on`. A committed batch can
//!   be seen by other connections up to one flush before it is durable. A write that returns an
//!   error other than a domain failure, or whose caller stops waiting, may or may not have
//!   committed: the writer finishes what it was given, and a lost connection during COMMIT (or
//!   before the flush is confirmed) leaves the outcome unknown.
//!
//! # Boundary
//! Only this crate knows SQL. Callers see [`types`] and [`Error`].
//!
//! # Audit entries
//! Every write is audited, whether it succeeds (`success`) or fails on a domain rule
//! (`precondition_failed`, `not_found`, `conflict`). Actions: `tenant.create`, `key.create`,
//! `key.revoke`, `memory.write`, `memory.delete`, `memory.purge` (one entry per tenant that lost
//! expired entries, only when something was deleted), `bootstrap`, `swarm.create`,
//! `swarm.pause`, `swarm.resume`, `swarm.stop`, `swarm.pools`, `agent.create`, `agent.state`,
//! `tenant.quota`, `tenant.sandbox`, `budget.set`, `budget.delete`, `artifact.put`, `secret.put`, `secret.delete` (the name only), `hook.create`, `hook.delete`, `hook.dead`, `hook.retry`, `message.send` (without the body), `task.submit`
//! (one entry per submission, listing the created and the idempotently matched ids),
//! `task.assign`, `task.start`, `task.complete`, `task.lease_lost`, `task.cancel`, `task.retry`
//! (one entry per promotion that queued something); a batched attempt op writes one entry per
//! element, exactly as the single ops would. A quorum vote decided by a replica's ending is in
//! that ending's entry (`parent`). Plus whatever callers append
//! with [`Store::audit_append`]. An entry's `tenant_id` is the tenant whose data changed (for
//! example the tenant a superadmin created a key in), else the caller's from [`AuditContext`].
//! Details never hold secrets, tokens or memory values. Lease extensions (heartbeats) are
//! bookkeeping like a key's last use and are not audited when accepted (single heartbeats and
//! [`Store::extend_leases`] alike); a refused report (stale epoch, unknown task) is, with
//! outcome `stale_epoch` or `not_found`. Starts stay audited: on the lifecycle benchmark all
//! audit work (sealing and inserting) was under a quarter of the writer's time and starts are a
//! third of the entries, a gain too small to measure on a shared machine and not worth losing
//! the record of when an attempt began.
//!
//! # Layout
//! - `lib.rs`: [`Store`], its options and public methods, which validate input and then read
//!   through the read pool or send an op to the writer.
//! - [`types`], [`error`]: the records, parameters and error type of the API.
//! - `writer`: the group-commit writer task (batching, one transaction per batch, isolation of a
//!   failing op, audit sealing, shutdown).
//! - `db`: URLs, per-connection settings, the read pool and the embedded migrations
//!   (`migrations/sqlite`, `migrations/postgres`).
//! - `tenants`, `keys`, `memory`, `search`, `audit`: each resource's writer ops and reads.
//! - [`orch_types`]: the records and parameters of orchestration (swarms, agents, tasks,
//!   attempts); re-exported at the crate root.
//! - `swarms`: swarms and agents (ops, reads, `Store` methods), with the capacity check made
//!   inside the writer's transaction.
//! - `tasks`: bulk submission (validated by `cflow_core::task`, planned by
//!   `cflow_core::dag::plan` in the writer's transaction, all or nothing, idempotency keys
//!   resolved to existing tasks) and the task reads (`ready_tasks` rebuilds the scheduler's
//!   queue).
//! - `attempts`: assignment with a lease and an epoch, and the epoch-fenced reports (start,
//!   heartbeat, complete, lease lost); `settle`: dependents, cancellation and retry promotion;
//!   `attempts_api`: their `Store` methods. Task states always come from
//!   `cflow_core::task::transition`.
//! - `batch`, `batch_fast`: assignments, starts and completions in bulk, as one writer op; a
//!   batch of one kind of op on distinct tasks is decided in memory after a few set-based reads
//!   and written with a few multi-row statements, with the single ops' checks.
//! - `replicas`: quorum parents and their replicas (created when the parent becomes ready, the
//!   vote taken with `cflow_core::quorum` whenever a replica ends).
//! - `artifacts`: content-addressed artifacts of attempts (fenced uploads, tenant-scoped reads)
//!   and the tenants' sandbox policy overrides.
//! - `pools`, `quotas`, `messages`, `leases`, `rebuild`: swarm agent pools, tenant quotas, agent
//!   messages, bulk lease extension, and the all-tenant reads the scheduler rebuilds from.
//! - `cost`: model calls (one unaudited insert each), cost rollups, and budgets (audited) with
//!   the spend of their current period.
//! - `secrets`: tenants' secrets, sealed by the server (`secret.put`, `secret.delete` audited
//!   with the name only; the store never sees a value in the clear).
//! - [`hooks`], `hooks_api`: lifecycle hooks (`hook.create`, `hook.delete` audited) and their
//!   durable outbox of deliveries: idempotent enqueue per (hook, event), claims under a lease
//!   fenced at completion, retries, dead letters (`hook.dead`) and re-queues (`hook.retry`).
//! - [`page`]: opaque cursors and the limit rule.
//!
//! Both backends run the same SQL (`$1…$n` placeholders, BIGINT Unix-ms times, TEXT JSON):
//! reads through sqlx's `Any` pool, writes through `exec` (sqlx on PostgreSQL, the writer's own
//! synchronous SQLite connection on SQLite); only full-text search, the purge statement and
//! transaction locking differ, chosen by [`Backend`].
//!
//! The conformance suite (`tests/it`) runs every case on both backends; see
//! `cflow_test_support::db` and `scripts/pg-test.sh` for the PostgreSQL side.

/// Unwraps the writer's output of the expected kind.
macro_rules! expect_output {
    ($out:expr, $pat:pat => $val:expr) => {
        match $out {
            $pat => Ok($val),
            other => Err(Error::Corrupt {
                what: "writer".to_string(),
                detail: format!("unexpected output {other:?}"),
            }),
        }
    };
}

mod artifacts;
mod attempts;
mod attempts_api;
mod audit;
mod batch;
mod batch_fast;
mod bulk;
mod cost;
mod db;
mod durable;
pub mod error;
mod exec;
pub mod hooks;
mod hooks_api;
mod keys;
mod leases;
mod memory;
mod messages;
pub mod orch_types;
pub mod page;
mod pools;
mod quotas;
mod rebuild;
mod replicas;
mod retries;
mod search;
mod secrets;
mod settle;
mod swarms;
mod tasks;
mod tenants;
pub mod types;
mod writer;

pub use artifacts::sha256_hex;
pub use attempts::MAX_LEASE_MS;
pub use cost::{Budget, CostBy, CostRow, NewBudget, NewModelCall};
pub use db::sqlite_url;
pub use durable::PG_SYNC_APPLICATION;
pub use error::{Error, Result};
pub use hooks::{Hook, HookDelivery, NewDelivery, NewHook, SendResult};
pub use keys::TOUCH_INTERVAL_MS;
pub use messages::{MAX_MESSAGE_BYTES, MAX_TOPIC_LEN};
pub use orch_types::*;
pub use quotas::MAX_WEIGHT;
pub use secrets::{SealedSecret, SecretMeta};
pub use tasks::MAX_SUBMIT;
pub use tenants::{BOOTSTRAP_PRINCIPAL, BOOTSTRAP_TENANT};
pub use types::*;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cflow_core::validate;
use sqlx::AnyPool;

use crate::writer::{Op, Output, Role, WriterHandle};

/// Whether a write may go to the submissions' writer (`writer::Role::Submissions`), whose
/// batches run alongside the main writer's and see none of its uncommitted writes: a submission
/// of new tasks that reads only what no other op changes under it. Excluded: dependencies
/// (their states are read, and a dependency may end meanwhile), idempotency keys (two
/// submissions of one key must be decided one after the other), and agents offered to take
/// tasks at once (an assignment).
fn submits_alone(op: &Op) -> bool {
    match op {
        Op::SubmitTasks { direct, .. } => new_rows_only(op) && direct.iter().all(Option::is_none),
        _ => false,
    }
}

/// Whether an op is a submission of new tasks with no dependency and no idempotency key: it
/// inserts rows and reads no task.
fn new_rows_only(op: &Op) -> bool {
    match op {
        Op::SubmitTasks { tasks, .. } => tasks
            .iter()
            .all(|t| t.depends_on.is_empty() && t.idempotency_key.is_none()),
        _ => false,
    }
}

/// Whether a write may go to an attempt writer (`writer::Role::Attempts`), whose batches run
/// alongside each other (never alongside the main writer's): a batch of assignments, starts and
/// completions (the local pool's and remote workers' reports, with the hand-over of each agent's
/// next task), which writes the rows of the tasks it names and adds to their agents' counters,
/// and a submission of new tasks that agents take at once (the scheduler's offers, checked
/// against the agents' states, which only main batches change), which inserts rows only.
/// Heartbeats, cancellations, lease expiry and the rest stay on the main writer.
fn attempts_alone(op: &Op) -> bool {
    use crate::attempts::AttemptOp;
    match op {
        Op::SubmitTasks { direct, .. } => new_rows_only(op) && direct.iter().any(Option::is_some),
        Op::AttemptBatch(ops) => {
            !ops.is_empty()
                && ops.iter().all(|o| {
                    matches!(
                        o,
                        AttemptOp::Assign { .. }
                            | AttemptOp::Start { .. }
                            | AttemptOp::Complete { .. }
                    )
                })
        }
        _ => false,
    }
}

/// The default of [`StoreOptions::attempt_spill_after`]. Under `cflow bench tasks` on PostgreSQL
/// (256 slots) 64 did best of 8, 16, 64 and 256 (11,342 and 11,700 tasks/s against 10,603,
/// 10,610 and 8,797; one writer alone 9,226).
pub const SPILL_AFTER: usize = 64;

/// Expired entries deleted per writer op by [`Store::memory_purge_expired`], so that a large
/// purge does not hold the writer (and every other write) for long.
const PURGE_CHUNK: i64 = 1000;

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections for reads (the writer has its own).
    pub max_read_connections: u32,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// SQLite: WAL frames (pages) past which the writer checkpoints between two batches, so the
    /// WAL starts over instead of growing under a steady load (8,192 frames: about 32 MiB).
    pub wal_restart_frames: u32,
    /// PostgreSQL: a second writer, with a connection of its own, for submissions of new tasks
    /// that read nothing another op writes (no dependency, no idempotency key, no agent offered
    /// to take them): their rows are written while the main writer's batches run, and they
    /// append to the ledger between two of its batches (see `writer::Role`). Off: every write
    /// goes through the one writer.
    pub submission_writer: bool,
    /// PostgreSQL: writers, each with a connection of its own, for batches of assignments,
    /// starts and completions and for submissions with offers, which run alongside each other
    /// (see `writer::Role::Attempts`). 0: they go through the main writer.
    pub attempt_writers: usize,
    /// How many elements (tasks, reports) the first attempt writer may have in flight before the
    /// next batch goes to a less busy one ([`SPILL_AFTER`]; 0: each batch to the next writer in
    /// turn, whatever their loads).
    pub attempt_spill_after: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_read_connections: 8,
            max_batch: 512,
            wal_restart_frames: 8192,
            submission_writer: true,
            attempt_writers: 2,
            attempt_spill_after: SPILL_AFTER,
        }
    }
}

/// The store. Cheap to clone; all clones share one pool and one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// The database URL without its password, for `Debug`.
    redacted_url: String,
    /// Serves every read.
    pool: AnyPool,
    /// Performs every write but those of `submitter`.
    writer: WriterHandle,
    /// PostgreSQL: writes the submissions that [`submits_alone`] accepts
    /// ([`StoreOptions::submission_writer`]).
    submitter: Option<WriterHandle>,
    /// PostgreSQL: write the batches that [`attempts_alone`] accepts
    /// ([`StoreOptions::attempt_writers`]), each to the one [`Store::attempter`] picks.
    attempters: Vec<WriterHandle>,
    /// [`StoreOptions::attempt_spill_after`].
    spill_after: usize,
    /// With `spill_after` 0: the attempt writer whose turn is next (modulo their number).
    turn: std::sync::atomic::AtomicUsize,
    touches: keys::TouchTracker,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .field("database", &self.inner.redacted_url)
            .field("closed", &self.inner.writer.is_closed())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH` or `postgres://…`),
    /// applies migrations and starts the writer.
    pub async fn open(url: &str, opts: StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = db::backend_of(url)?;
        let url = db::prepare_url(url, backend)?;
        let mut conn = db::connect(&url, backend).await?;
        db::migrate(&mut conn, backend).await?;
        let pool = db::read_pool(&url, backend, opts.max_read_connections).await?;
        let wal = (backend == Backend::Sqlite).then(|| {
            let watch = Arc::new(db::WalWatch {
                restart_frames: i64::from(opts.wal_restart_frames),
                wanted: Default::default(),
            });
            db::checkpointer(pool.clone(), watch.clone());
            watch
        });
        if backend == Backend::Postgres {
            db::analyzer(pool.clone());
        }
        let redacted_url = db::redact(&url);
        let conn = match backend {
            // The writer's own SQLite connection, on its thread (see `exec`).
            Backend::Sqlite => Some(db::writer_conn(conn, &url).await?),
            // A PostgreSQL socket belongs to the runtime it was opened on: the writer opens its
            // own on its runtime (the first batch connects, as after a failure).
            Backend::Postgres => None,
        };
        let submitter = if backend == Backend::Postgres && opts.submission_writer {
            Some(WriterHandle::start(
                None,
                url.clone(),
                backend,
                opts.max_batch,
                None,
                Role::Submissions,
            )?)
        } else {
            None
        };
        let mut attempters = Vec::new();
        if backend == Backend::Postgres {
            for _ in 0..opts.attempt_writers {
                attempters.push(WriterHandle::start(
                    None,
                    url.clone(),
                    backend,
                    opts.max_batch,
                    None,
                    Role::Attempts,
                )?);
            }
        }
        let writer = WriterHandle::start(conn, url, backend, opts.max_batch, wal, Role::Main)?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                redacted_url,
                pool,
                writer,
                submitter,
                attempters,
                spill_after: opts.attempt_spill_after,
                turn: Default::default(),
                touches: keys::TouchTracker::default(),
            }),
        })
    }

    /// Opens the SQLite database file at `path`, creating it and its directory if needed.
    pub async fn open_sqlite(path: &Path, opts: StoreOptions) -> Result<Store> {
        let path = std::path::absolute(path).map_err(|e| {
            Error::Config(format!("cannot resolve the path {}: {e}", path.display()))
        })?;
        Store::open(&sqlite_url(&path), opts).await
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The read pool, or `Closed` once [`Store::close`] has begun.
    fn pool(&self) -> Result<&AnyPool> {
        if self.inner.writer.is_closed() {
            return Err(Error::Closed);
        }
        Ok(&self.inner.pool)
    }

    async fn write(&self, ctx: &AuditContext, op: Op) -> Result<Output> {
        if let Some(submitter) = &self.inner.submitter
            && submits_alone(&op)
        {
            return submitter.call(ctx, op).await;
        }
        if !self.inner.attempters.is_empty() && attempts_alone(&op) {
            return self.attempter().call(ctx, op).await;
        }
        self.inner.writer.call(ctx, op).await
    }

    /// The attempt writer for the next batch: the first one unless it is behind by more than
    /// [`StoreOptions::attempt_spill_after`] elements, else the least behind. Under a light load
    /// one writer takes everything, as one would alone: its batches gather what arrives
    /// together, where two writers taking turns would each commit (and flush) one op at a time
    /// (at 1,000 tasks/s submit→start p99 was 2.4 and 3.5 ms with one attempt writer, 4.9 with
    /// two in turn); under a heavy one they all work.
    fn attempter(&self) -> &WriterHandle {
        let all = &self.inner.attempters;
        if self.inner.spill_after == 0 {
            let i = self
                .inner
                .turn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return &all[i % all.len()];
        }
        let first = &all[0];
        if first.load() <= self.inner.spill_after {
            return first;
        }
        all.iter().min_by_key(|w| w.load()).unwrap_or(first)
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        if self.inner.writer.durability_lost()
            || self
                .inner
                .submitter
                .iter()
                .chain(&self.inner.attempters)
                .any(WriterHandle::durability_lost)
        {
            return Err(Error::Config(
                "the database's writes can no longer be made durable (fsync of the WAL failed); \
                 restart cflow and check the disk"
                    .into(),
            ));
        }
        sqlx::query("SELECT 1").execute(self.pool()?).await?;
        Ok(())
    }

    /// Stops accepting writes, commits what is queued, and closes every connection.
    pub async fn close(&self) {
        for other in self.inner.submitter.iter().chain(&self.inner.attempters) {
            other.shutdown().await;
        }
        self.inner.writer.shutdown().await;
        // Waits for borrowed connections to come back; a reader stuck on a dead server must not
        // make shutdown hang.
        if tokio::time::timeout(Duration::from_secs(10), self.inner.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("store read pool did not close within 10 s");
        }
    }

    /// On an empty database: creates tenant `default`, principal `admin` and a `superadmin` key,
    /// and returns it (the only time its token exists). On a database with tenants: `None`.
    pub async fn bootstrap(&self, ctx: &AuditContext) -> Result<Option<CreatedKey>> {
        let out = self.write(ctx, Op::Bootstrap).await?;
        expect_output!(out, Output::Bootstrap(k) => k)
    }

    /// Creates a tenant; `Conflict` if the name is taken.
    pub async fn create_tenant(&self, ctx: &AuditContext, name: &str) -> Result<Tenant> {
        validate::name("name", name)?;
        let op = Op::CreateTenant {
            name: name.to_string(),
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Tenant(t) => t)
    }

    /// A tenant by id or by name.
    pub async fn get_tenant(&self, id_or_name: &str) -> Result<Option<Tenant>> {
        tenants::get(self.pool()?, id_or_name).await
    }

    /// Tenants ordered by name.
    pub async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        tenants::list(self.pool()?, page).await
    }

    /// Creates a service principal named after the key, binds `role` to it at tenant scope (or
    /// project scope when `project` is set, creating the project if needed), and creates its key.
    /// Names are labels: several keys of a tenant may share one.
    pub async fn create_key(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        new: NewKey,
    ) -> Result<CreatedKey> {
        validate::name("name", &new.name)?;
        if let Some(project) = &new.project {
            validate::name("project", project)?;
        }
        let op = Op::CreateKey {
            tenant_id: tenant_id.to_string(),
            new,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Created(k) => k)
    }

    /// Keys of a tenant ordered by creation time, newest last (keys created in the same
    /// millisecond in id order).
    pub async fn list_keys(&self, tenant_id: &str, page: &PageRequest) -> Result<Page<ApiKey>> {
        keys::list(self.pool()?, tenant_id, page).await
    }

    /// Revokes a key of the tenant; `NotFound` if the tenant has no such key. Revoking twice is
    /// not an error (the first revocation time stays).
    pub async fn revoke_key(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<ApiKey> {
        let op = Op::RevokeKey {
            tenant_id: tenant_id.to_string(),
            key_id: key_id.to_string(),
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Key(k) => k)
    }

    /// Checks a presented token at time `now`. Records `last_used_at` (at most once a minute per
    /// key, off the request's path).
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<AuthOutcome> {
        let (outcome, touch) =
            keys::authenticate(self.pool()?, &self.inner.touches, token, now).await?;
        if touch && let AuthOutcome::Valid(key) = &outcome {
            // Queued without waiting: authentication stays one read.
            self.inner.writer.call_detached(Op::TouchKey {
                key_id: key.id.clone(),
                at: now,
            });
        }
        Ok(outcome)
    }

    /// Writes a memory entry under its precondition. Returns the entry as written.
    /// `PreconditionFailed` writes nothing (but is audited).
    pub async fn memory_put(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        put: MemoryPut,
    ) -> Result<MemoryEntry> {
        validate::namespace(&put.namespace)?;
        validate::memory_key(&put.key)?;
        validate::tags(&put.tags)?;
        if let Some(ttl) = put.ttl_seconds {
            validate::ttl_seconds(ttl)?;
        }
        let value_text = put.value.to_string();
        validate::value_size(value_text.len())?;
        let op = Op::MemoryPut {
            tenant_id: tenant_id.to_string(),
            put,
            value_text,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Memory(e) => e)
    }

    /// A live (not expired) entry.
    pub async fn memory_get(
        &self,
        tenant_id: &str,
        namespace: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<MemoryEntry>> {
        memory::get(self.pool()?, tenant_id, namespace, key, now).await
    }

    /// Deletes a live entry under its precondition; `NotFound` if there is none.
    pub async fn memory_delete(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        namespace: &str,
        key: &str,
        precondition: Precondition,
    ) -> Result<()> {
        let op = Op::MemoryDelete {
            tenant_id: tenant_id.to_string(),
            namespace: namespace.to_string(),
            key: key.to_string(),
            precondition,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Unit => ())
    }

    /// Live entries of a namespace whose key starts with `prefix`, ordered by key.
    pub async fn memory_list(
        &self,
        tenant_id: &str,
        namespace: &str,
        prefix: &str,
        now: i64,
        page: &PageRequest,
    ) -> Result<Page<MemoryEntry>> {
        memory::list(self.pool()?, tenant_id, namespace, prefix, now, page).await
    }

    /// Full-text search of live entries (key, value text and tags) for entries matching every
    /// term, most relevant first, optionally only in one namespace or below a namespace prefix.
    pub async fn memory_search(
        &self,
        tenant_id: &str,
        terms: &[String],
        namespace: Option<&str>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<SearchHit>> {
        let pool = self.pool()?;
        search::search(
            pool,
            self.inner.backend,
            tenant_id,
            terms,
            namespace,
            now,
            limit,
        )
        .await
    }

    /// Deletes entries that expired before `now`; returns how many.
    pub async fn memory_purge_expired(&self, now: i64) -> Result<u64> {
        let system = AuditContext::default();
        let mut total = 0u64;
        loop {
            let op = Op::PurgeExpired {
                now,
                limit: PURGE_CHUNK,
            };
            let out = self.write(&system, op).await?;
            let n = expect_output!(out, Output::Count(n) => n)?;
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Appends an entry that records no change (a denied or failed request).
    pub async fn audit_append(&self, ctx: &AuditContext, event: AuditEvent) -> Result<()> {
        let out = self.write(ctx, Op::AuditAppend { event }).await?;
        expect_output!(out, Output::Unit => ())
    }

    /// Ledger entries in `seq` order.
    pub async fn audit_list(
        &self,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<cflow_core::audit::AuditEntry>> {
        audit::list(self.pool()?, query, page).await
    }

    /// Walks the whole chain and reports the first entry that does not fit.
    pub async fn audit_verify(&self) -> Result<VerifyReport> {
        audit::verify(self.pool()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(tasks: Vec<NewTask>, direct: Vec<Option<DirectAssign>>) -> Op {
        Op::SubmitTasks {
            tenant_id: "t".into(),
            tasks,
            direct,
        }
    }

    #[test]
    fn only_submissions_that_read_nothing_others_change_go_alone() {
        let plain = || NewTask::new(serde_json::json!({"command": ["true"]}));
        assert!(submits_alone(&submit(vec![plain(), plain()], vec![])));
        assert!(submits_alone(&submit(vec![plain()], vec![None])));
        let keyed = NewTask {
            idempotency_key: Some("k".into()),
            ..plain()
        };
        assert!(!submits_alone(&submit(vec![plain(), keyed], vec![])));
        let dependent = NewTask {
            depends_on: vec!["other".into()],
            ..plain()
        };
        assert!(!submits_alone(&submit(vec![dependent], vec![])));
        let offer = DirectAssign {
            task_id: "x".into(),
            agent_id: "a".into(),
            worker_id: "w".into(),
            lease_ms: 1_000,
        };
        assert!(!submits_alone(&submit(vec![plain()], vec![Some(offer)])));
        assert!(!submits_alone(&Op::PurgeExpired { now: 0, limit: 1 }));
    }
}
