//! The group-commit writer: the one task per store that performs every change (on PostgreSQL,
//! every change but plain submissions and attempt reports, which other writers of the same kind
//! perform: see [`Role`]).
//!
//! Callers send an [`Op`] with a reply channel. The writer takes one request, drains whatever
//! else is already queued (up to `max_batch`), and runs them all in one transaction together
//! with their audit entries, then commits once and answers every caller. Under light load a batch
//! is one op (low latency); under heavy load one durable commit serves hundreds of ops.
//!
//! Isolation between the ops of a batch: every op checks its preconditions with reads before it
//! writes anything, so a domain failure (precondition failed, not found, conflict) leaves no
//! trace but its audit entry and needs no rollback. A statement that fails unexpectedly aborts the
//! whole transaction (PostgreSQL aborts it anyway); the batch is then rolled back and each of its
//! ops re-run in a transaction of its own, so only the op at fault fails. This replaces one
//! savepoint per op: that would cost two more round trips per op on PostgreSQL, and more than 64
//! subtransactions in one transaction slow down every other session's snapshots there.
//!
//! Within a batch, a run of plain memory writes (no precondition, different entries) is written
//! by one multi-row statement: a round trip per op is most of the writer's cost otherwise.
//!
//! Durable before answered: the writer commits without waiting for the log flush and hands the
//! batch's answers to `durable::Syncer`, which sends them once a flush covers the commit, while
//! the writer goes on with the next batch.
//!
//! Audit order is total: the chain head is read inside the transaction, after taking a
//! transaction-scoped advisory lock on PostgreSQL (so several writers and server nodes
//! serialise their appends) and under SQLite's write lock (`BEGIN IMMEDIATE`).
//!
//! On PostgreSQL a store has more than one writer, each on a connection of its own: the main
//! one, one for plain submissions and a few for attempt reports, which run alongside each other
//! under the locks described at [`Role`].

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::attempts::{AgentInfo, AttemptOp};
use crate::audit::{self, Draft};
use crate::exec::{self, WConn};
use crate::orch_types::{
    Agent, Attempt, Cancelled, DirectAssign, Message, NewMessage, NewTask, Settled, Submitted,
    Swarm, TenantQuota,
};
use crate::swarms::SwarmOp;
use crate::types::{
    ApiKey, AuditContext, AuditEvent, CreatedKey, MemoryEntry, MemoryPut, NewKey, Precondition,
    Tenant,
};
use crate::{
    Backend, Error, Result, artifacts, attempts, batch, db, keys, leases, memory, messages, quotas,
    swarms, tasks, tenants,
};

/// Times the writer yields to let more writes arrive before it commits a batch.
const GATHER_YIELDS: u32 = 2;

/// How long `close` waits for queued writes to commit before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A change for the writer to make.
#[derive(Debug)]
pub(crate) enum Op {
    Bootstrap,
    CreateTenant {
        name: String,
    },
    CreateKey {
        tenant_id: String,
        new: NewKey,
    },
    RevokeKey {
        tenant_id: String,
        key_id: String,
    },
    MemoryPut {
        tenant_id: String,
        put: MemoryPut,
        /// `put.value` serialised once, by the caller that checked its size.
        value_text: String,
    },
    MemoryDelete {
        tenant_id: String,
        namespace: String,
        key: String,
        precondition: Precondition,
    },
    PurgeExpired {
        now: i64,
        limit: i64,
    },
    AuditAppend {
        event: AuditEvent,
    },
    Swarm(SwarmOp),
    SubmitTasks {
        tenant_id: String,
        tasks: Vec<NewTask>,
        /// Empty, or one element per task: see [`crate::DirectAssign`].
        direct: Vec<Option<DirectAssign>>,
    },
    Attempt(AttemptOp),
    /// Several attempt ops sent as one message, answered element by element.
    AttemptBatch(Vec<AttemptOp>),
    SetQuota {
        tenant_id: String,
        quota: TenantQuota,
    },
    SendMessage {
        tenant_id: String,
        new: NewMessage,
        /// `new.body` serialised once, by the caller that checked its size.
        body: String,
    },
    /// Heartbeats of one worker; bookkeeping, so no audit entry (expiry is audited).
    ExtendLeases {
        worker_id: String,
        held: Vec<(String, i64)>,
        until: i64,
    },
    /// An attempt's artifact, with the SHA-256 of its content computed by the caller.
    PutArtifact {
        req: crate::orch_types::ArtifactPut,
        sha256: String,
    },
    SetTenantSandbox {
        tenant_id: String,
        sandbox: Option<serde_json::Value>,
    },
    /// A tenant's model providers (`None`: the operator's).
    SetTenantLlm {
        tenant_id: String,
        providers: Option<serde_json::Value>,
    },
    /// One of a tenant's other JSON settings (`None` clears it).
    SetTenantSetting {
        tenant_id: String,
        setting: crate::tenants::Setting,
        value: Option<serde_json::Value>,
    },
    /// Model calls (not audited) and budgets (audited).
    Cost(crate::cost::CostOp),
    /// Tenants' sealed secrets (audited without the value).
    Secret(crate::secrets::SecretOp),
    /// Hooks (audited) and their outbox (bookkeeping, except dead letters and re-queues).
    Hook(crate::hooks::HookOp),
    /// Records a key's last use; bookkeeping, so it has no audit entry and no caller waiting.
    TouchKey {
        key_id: String,
        at: i64,
    },
}

/// What an op produced.
#[derive(Debug)]
pub(crate) enum Output {
    Unit,
    Tenant(Tenant),
    Bootstrap(Option<CreatedKey>),
    Created(CreatedKey),
    Key(ApiKey),
    Memory(MemoryEntry),
    Count(u64),
    Swarm(Swarm),
    Agent(Agent),
    Agents(Vec<Agent>),
    /// Each task's answer, and the attempt of each task assigned at once (see
    /// [`crate::DirectAssign`]), in submission order.
    Submitted(Vec<Submitted>, Vec<Option<Attempt>>),
    Assigned(Attempt),
    Settled(Settled),
    Cancelled(Cancelled),
    Quota(TenantQuota),
    Message(Message),
    /// The `(task, epoch)` pairs a worker holds that are not its live attempts.
    Stale(Vec<(String, i64)>),
    Artifact(crate::orch_types::ArtifactMeta),
    Batch(Vec<Result<Output>>),
    Secret(crate::secrets::SecretMeta),
    Cost(crate::cost::CostOutput),
    Hook(crate::hooks::HookOutput),
}

/// The result of applying one op inside the batch transaction: its answer and the audit entry to
/// append for it (for a success or a domain failure alike).
pub(crate) struct Step {
    pub result: Result<Output>,
    pub audit: Vec<Draft>,
}

impl Step {
    pub fn done(output: Output, audit: Draft) -> Step {
        Step {
            result: Ok(output),
            audit: vec![audit],
        }
    }

    /// A domain failure: nothing was written; the audit entry records why.
    pub fn failed(err: Error, audit: Draft) -> Step {
        let audit = audit.with_outcome(outcome_of(&err));
        Step {
            result: Err(err),
            audit: vec![audit],
        }
    }

    pub fn silent(output: Output) -> Step {
        Step {
            result: Ok(output),
            audit: Vec::new(),
        }
    }
}

/// The audit outcome that records a failed op.
fn outcome_of(err: &Error) -> &'static str {
    match err {
        Error::NotFound(_) => "not_found",
        Error::Conflict(_) => "conflict",
        Error::PreconditionFailed { .. } => "precondition_failed",
        Error::Invalid(_) => "invalid",
        Error::State(_) => "conflict",
        Error::StaleEpoch { .. } => "stale_epoch",
        _ => "error",
    }
}

/// What an op sees while it runs: the batch's transaction, the batch's clock and its caller.
pub(crate) struct OpCx<'a> {
    pub conn: &'a mut WConn,
    pub backend: Backend,
    /// Unix ms, the same for every op of the batch.
    pub now: i64,
    /// The agents a batch's leading run of submissions names, read with the batch's `BEGIN` on
    /// PostgreSQL (`tasks::submit_agent_ids`); taken by that run.
    pub agents: Option<HashMap<String, AgentInfo>>,
    /// The ids of the completions of the run of attempts that follows a batch's leading
    /// submissions, and what `batch_fast::read_live` reads for them, read with the `BEGIN` on
    /// PostgreSQL ([`live_prefetch`]); taken by that run's first read.
    pub live: Option<LiveRead>,
    /// PostgreSQL: the batch runs alongside other writers' batches ([`Role::Attempts`]), so
    /// work beyond the set-based path of its own tasks waits for [`OpCx::serialize`] first.
    pub shared: bool,
    /// Whether this transaction holds `SETTLE_LOCK` (taken by [`OpCx::serialize`]).
    pub serialized: bool,
}

impl OpCx<'_> {
    /// Before an op of a batch that runs alongside other writers' batches ([`Role::Attempts`])
    /// reads or writes rows another such batch may be changing at the same time (a dependent's
    /// count of unmet dependencies, a quorum's votes, anything off the set-based path): takes
    /// `SETTLE_LOCK`, held until the transaction ends, so that such work of two batches runs
    /// one after the other and the second sees what the first committed. Nothing on a writer
    /// that runs alone (the main one, which excludes the others by `OPS_LOCK`, and SQLite's).
    pub async fn serialize(&mut self) -> Result<()> {
        if self.shared && !self.serialized {
            exec::raw(self.conn, PG_SETTLE_LOCK).await?;
            self.serialized = true;
        }
        Ok(())
    }
}

/// The task ids of a run of completions and `batch_fast::read_live`'s packed answer for them.
pub(crate) type LiveRead = (Vec<String>, String);

async fn apply(cx: &mut OpCx<'_>, op: &Op) -> Result<Step> {
    match op {
        Op::Bootstrap => tenants::bootstrap(cx).await,
        Op::CreateTenant { name } => tenants::create(cx, name).await,
        Op::CreateKey { tenant_id, new } => keys::create(cx, tenant_id, new).await,
        Op::RevokeKey { tenant_id, key_id } => keys::revoke(cx, tenant_id, key_id).await,
        Op::TouchKey { key_id, at } => keys::touch(cx, key_id, *at).await,
        Op::MemoryPut {
            tenant_id,
            put,
            value_text,
        } => memory::put(cx, tenant_id, put, value_text).await,
        Op::MemoryDelete {
            tenant_id,
            namespace,
            key,
            precondition,
        } => memory::delete(cx, tenant_id, namespace, key, *precondition).await,
        Op::PurgeExpired { now, limit } => memory::purge(cx, *now, *limit).await,
        Op::Swarm(op) => swarms::apply(cx, op).await,
        Op::SubmitTasks {
            tenant_id,
            tasks,
            direct,
        } => tasks::submit(cx, tenant_id, tasks, direct).await,
        Op::Attempt(op) => attempts::apply(cx, op).await,
        Op::AttemptBatch(ops) => batch::apply(cx, ops).await,
        Op::PutArtifact { req, sha256 } => artifacts::put(cx, req, sha256).await,
        Op::SetTenantSandbox { tenant_id, sandbox } => {
            artifacts::set_sandbox(cx, tenant_id, sandbox.as_ref()).await
        }
        Op::SetTenantLlm {
            tenant_id,
            providers,
        } => tenants::set_llm(cx, tenant_id, providers.as_ref()).await,
        Op::SetTenantSetting {
            tenant_id,
            setting,
            value,
        } => tenants::set_setting(cx, tenant_id, *setting, value.as_ref()).await,
        Op::SetQuota { tenant_id, quota } => quotas::set(cx, tenant_id, quota).await,
        Op::Secret(op) => crate::secrets::apply(cx, op).await,
        Op::Hook(op) => crate::hooks::apply(cx, op).await,
        Op::Cost(op) => crate::cost::apply(cx, op).await,
        Op::SendMessage {
            tenant_id,
            new,
            body,
        } => messages::send(cx, tenant_id, new, body).await,
        Op::ExtendLeases {
            worker_id,
            held,
            until,
        } => leases::extend(cx, worker_id, held, *until).await,
        Op::AuditAppend { event } => Ok(Step::done(
            Output::Unit,
            Draft {
                tenant_id: None,
                action: event.action.clone(),
                resource: event.resource.clone(),
                outcome: event.outcome.clone(),
                detail: event.detail.clone(),
            },
        )),
    }
}

/// Most plain puts written by one statement.
const PUT_GROUP: usize = 64;

/// The end of the run of plain puts (no precondition, all on different entries) that starts at
/// `start`. Such puts cannot fail on a domain rule and do not depend on each other, so one
/// multi-row statement writes them all: one round trip to the database instead of one each,
/// which is most of the writer's cost per op.
fn plain_put_run(reqs: &[Request], start: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut end = start;
    while end < reqs.len() && end - start < PUT_GROUP {
        match &reqs[end].op {
            Op::MemoryPut { tenant_id, put, .. }
                if put.precondition == Precondition::None
                    && seen.insert((
                        tenant_id.as_str(),
                        put.namespace.as_str(),
                        put.key.as_str(),
                    )) =>
            {
                end += 1;
            }
            _ => break,
        }
    }
    end
}

/// Most submissions [`submit_run`] joins, and most tasks in all of them.
const SUBMIT_GROUP: usize = 64;
const SUBMIT_GROUP_TASKS: usize = crate::tasks::MAX_SUBMIT;

/// The end of the run of submissions that starts at `start` and `tasks::submit_many` can apply
/// together (one tenant, no idempotency key twice, see `tasks::can_join`).
fn submit_run(reqs: &[Request], start: usize) -> usize {
    let Op::SubmitTasks {
        tenant_id: first, ..
    } = &reqs[start].op
    else {
        return start;
    };
    let mut keys = std::collections::HashSet::new();
    let mut total = 0;
    let mut end = start;
    while end < reqs.len() && end - start < SUBMIT_GROUP {
        match &reqs[end].op {
            Op::SubmitTasks {
                tenant_id, tasks, ..
            } if tenant_id == first
                && total + tasks.len() <= SUBMIT_GROUP_TASKS
                && crate::tasks::can_join(&mut keys, tenant_id, tasks) =>
            {
                total += tasks.len();
                end += 1;
            }
            _ => break,
        }
    }
    end
}

/// Most attempt ops [`attempt_run`] joins.
const ATTEMPT_GROUP_OPS: usize = 4096;

/// The end of the run of attempt batches of one kind that starts at `start` (see
/// `batch::apply_many`).
fn attempt_run(reqs: &[Request], start: usize) -> usize {
    let kind = group_of(&reqs[start].op);
    let mut total = 0;
    let mut end = start;
    while end < reqs.len() {
        match &reqs[end].op {
            Op::AttemptBatch(ops)
                if total + ops.len() <= ATTEMPT_GROUP_OPS && group_of(&reqs[end].op) == kind =>
            {
                total += ops.len();
                end += 1;
            }
            _ => break,
        }
    }
    end
}

/// Where an op goes when a batch is put in order before it runs: ops that runs can join
/// (submissions by tenant, attempt batches by kind, memory puts) next to each other, every
/// other op first, each group in arrival order. The ops of a batch were all in flight at once
/// (each caller waits for its answer), so any order of them is one they could have arrived in.
fn group_of(op: &Op) -> (u8, &str) {
    match op {
        Op::SubmitTasks { tenant_id, .. } => (1, tenant_id),
        Op::AttemptBatch(ops) => (
            2,
            match ops.first() {
                Some(AttemptOp::Assign { .. }) => "assign",
                Some(AttemptOp::Start { .. }) => "start",
                Some(AttemptOp::Complete { .. }) => "complete",
                _ => "",
            },
        ),
        Op::MemoryPut { .. } => (3, ""),
        _ => (0, ""),
    }
}

/// The kinds of a batch's ops for its trace line: each op's kind (`group_of`, `other` for the
/// rest) with, for attempt batches, how many elements and how many hand-overs they carry, e.g.
/// `complete:64+60 assign:3`.
fn kinds_of(reqs: &[Request]) -> String {
    let mut out = String::new();
    for r in reqs {
        if !out.is_empty() {
            out.push(' ');
        }
        match &r.op {
            Op::AttemptBatch(ops) => {
                let next = ops
                    .iter()
                    .filter(|o| matches!(o, AttemptOp::Complete { next: Some(_), .. }))
                    .count();
                let kind = match group_of(&r.op).1 {
                    "" => "attempts",
                    k => k,
                };
                out.push_str(&format!("{kind}:{}+{next}", ops.len()));
            }
            Op::SubmitTasks { tasks, .. } => out.push_str(&format!("submit:{}", tasks.len())),
            Op::MemoryPut { .. } => out.push_str("memory"),
            _ => out.push_str("other"),
        }
    }
    out
}

struct Request {
    ctx: AuditContext,
    op: Op,
    reply: Option<oneshot::Sender<Result<Output>>>,
}

// Nearly every message is a request, so boxing it would only add an allocation per write.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Req(Request),
    Shutdown,
}

/// The callers' side of the writer.
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Msg>,
    closed: AtomicBool,
    /// Set when the database's writes can no longer be made durable (see `durable`).
    durability_lost: Arc<AtomicBool>,
    /// Fires when the writer has stopped (or is dropped if its thread died).
    task: Mutex<Option<oneshot::Receiver<()>>>,
    /// The elements (tasks, attempt reports) of the calls sent and not yet answered: how far
    /// behind the writer is ([`WriterHandle::load`]).
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Takes a call's elements off [`WriterHandle::in_flight`] when it is answered or abandoned.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize, usize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// How many elements an op carries, for [`WriterHandle::load`].
fn weight(op: &Op) -> usize {
    match op {
        Op::SubmitTasks { tasks, .. } => tasks.len(),
        Op::AttemptBatch(ops) => ops.len(),
        _ => 1,
    }
}

impl WriterHandle {
    /// Starts the writer on a thread of its own with `conn` (set up), or with a connection it
    /// opens on its own runtime when `None`.
    pub fn start(
        conn: Option<WConn>,
        url: String,
        backend: Backend,
        max_batch: usize,
        wal: Option<Arc<db::WalWatch>>,
        role: Role,
    ) -> Result<Self> {
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(4).max(1024));
        // The writer is every change's critical path, so it runs on a thread and a runtime of
        // its own: its many short waits on the database (a round trip per statement) are not
        // queued behind request handlers on the shared runtime, whose workers pick up a task
        // woken from outside (by the database thread) only after up to 61 local ones.
        let mut runtime = tokio::runtime::Builder::new_current_thread();
        match backend {
            // SQLite needs no I/O driver (its connection runs on this thread, or is a thread of
            // its own): parking on a futex is cheaper than on epoll.
            Backend::Sqlite => runtime.enable_time(),
            Backend::Postgres => runtime.enable_all(),
        };
        let runtime = runtime
            .build()
            .map_err(|e| Error::Config(format!("cannot start the store writer's runtime: {e}")))?;
        let durability_lost = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            url,
            backend,
            conn,
            rx,
            max_batch,
            wal,
            syncer: None,
            flushes_itself: false,
            tag: None,
            durability_lost: durability_lost.clone(),
            // SQLite has one writer, which runs alone.
            role: match backend {
                Backend::Sqlite => Role::Main,
                Backend::Postgres => role,
            },
        };
        let (done_tx, done_rx) = oneshot::channel();
        let name = match role {
            Role::Main => "cflow-writer",
            Role::Submissions => "cflow-writer-sub",
            Role::Attempts => "cflow-writer-att",
        };
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(writer.run());
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Config(format!("cannot start the store writer's thread: {e}")))?;
        Ok(WriterHandle {
            tx,
            closed: AtomicBool::new(false),
            durability_lost,
            task: Mutex::new(Some(done_rx)),
            in_flight: Default::default(),
        })
    }

    /// Runs `op` and waits until it is committed (or failed).
    pub async fn call(&self, ctx: &AuditContext, op: Op) -> Result<Output> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let n = weight(&op);
        self.in_flight.fetch_add(n, Ordering::Relaxed);
        let _in_flight = InFlight(&self.in_flight, n);
        let (reply, answer) = oneshot::channel();
        let req = Request {
            ctx: ctx.clone(),
            op,
            reply: Some(reply),
        };
        self.tx
            .send(Msg::Req(req))
            .await
            .map_err(|_| Error::Closed)?;
        // The writer drops the reply only when it stops without answering (a panic).
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Queues `op` without waiting for it; dropped when the queue is full or the store closed,
    /// which is fine for the bookkeeping it is used for.
    pub fn call_detached(&self, op: Op) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let req = Request {
            ctx: AuditContext::default(),
            op,
            reply: None,
        };
        let _ = self.tx.try_send(Msg::Req(req));
    }

    /// The elements of the calls sent to this writer and not yet answered.
    pub fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether a failed flush stopped the writer's acknowledgements (see `durable`).
    pub fn durability_lost(&self) -> bool {
        self.durability_lost.load(Ordering::Acquire)
    }

    /// Refuses new ops, lets the writer commit what is queued, and waits for it to stop.
    pub async fn shutdown(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Shutdown).await;
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task
            && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
        {
            tracing::error!("the store writer did not stop within {SHUTDOWN_GRACE:?}");
        }
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// A statement failed: the batch rolled back; some op in it is at fault.
    Op(Error),
    /// The connection failed before COMMIT was sent: nothing committed, safe to retry.
    Connection(Error),
    /// COMMIT failed, or the connection broke while it ran: the outcome may be unknown.
    Commit(Error),
}

impl BatchError {
    fn into_error(self) -> Error {
        match self {
            BatchError::Op(e) | BatchError::Connection(e) | BatchError::Commit(e) => e,
        }
    }
}

/// Sorts a failure inside the transaction into a statement failure (the op's fault) or a
/// connection failure (nobody's op).
fn classify(e: Error) -> BatchError {
    match &e {
        Error::Database(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed,
        ) => BatchError::Connection(e),
        _ => BatchError::Op(e),
    }
}

/// The error of the op found at fault when its batch was re-run op by op.
fn op_error(e: Error) -> Error {
    if let Error::Database(sqlx::Error::Database(db)) = &e
        && db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation
    {
        // The only references an op's input can break are to its tenant.
        return Error::NotFound("tenant".to_string());
    }
    e
}

/// A copy of `e` for every other op of a failed batch (errors are not `Clone`).
fn duplicate(e: &Error) -> Error {
    match e {
        Error::NotFound(s) => Error::NotFound(s.clone()),
        Error::Conflict(s) => Error::Conflict(s.clone()),
        Error::PreconditionFailed { current } => Error::PreconditionFailed { current: *current },
        Error::Invalid(v) => Error::Invalid(v.clone()),
        Error::InvalidCursor => Error::InvalidCursor,
        Error::Closed => Error::Closed,
        Error::Database(inner) => Error::Database(sqlx::Error::Io(std::io::Error::other(format!(
            "the write batch failed: {inner}"
        )))),
        Error::Migrate(inner) => Error::Config(inner.to_string()),
        Error::Corrupt { what, detail } => Error::Corrupt {
            what: what.clone(),
            detail: detail.clone(),
        },
        Error::Config(s) => Error::Config(s.clone()),
        Error::State(s) => Error::State(s.clone()),
        Error::StaleEpoch {
            task_id,
            epoch,
            current,
        } => Error::StaleEpoch {
            task_id: task_id.clone(),
            epoch: *epoch,
            current: *current,
        },
    }
}

struct Writer {
    url: String,
    backend: Backend,
    /// The writer's own connection; `None` after it failed, reopened on the next batch.
    conn: Option<WConn>,
    rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    /// SQLite's WAL, watched by `db::checkpointer`.
    wal: Option<Arc<db::WalWatch>>,
    /// Flushes the log and then answers, when the writer's connection commits without waiting
    /// for the flush (PostgreSQL; a SQLite file in WAL mode; see `durable`). Started with the
    /// first such connection.
    syncer: Option<crate::durable::Syncer>,
    /// SQLite: the writer's connection flushes at every commit by itself (not in WAL mode), so
    /// no syncer is needed; found once, not asked again before every batch.
    flushes_itself: bool,
    /// The syncer's tag read before the earliest `COMMIT` of the batch being answered.
    tag: Option<u64>,
    /// Shared with the handle: set by the syncer when a flush failed for good.
    durability_lost: Arc<AtomicBool>,
    /// What this writer does; always [`Role::Main`] on SQLite.
    role: Role,
}

/// What a writer does. Every store has a main writer; on PostgreSQL, others take the writes
/// that can run alongside it or alongside each other (see `Store::write`), each on a connection
/// (a server process) of its own, so that more than one core does the database's share of the
/// work. Three advisory locks (transaction-scoped, so every server node takes part) keep them
/// apart, always taken in this order, so that no writer waits for a lock while holding one
/// another is waiting for:
///
/// 1. `OPS_LOCK` ("cflowops"): exclusive for the main writer's batches, shared for the attempt writers':
///    a main batch runs alone (its reads see everything it depends on committed, as if it were
///    the only writer), attempt batches run together.
/// 2. `SETTLE_LOCK` ("cflowdep"): taken by an attempt batch before anything beyond the set-based path of
///    its own tasks ([`OpCx::serialize`]).
/// 3. The ledger's lock ("cflowaud"): serialises the appends, so the chain is total. The main
///    writer takes it with its `BEGIN`; the others just before they append and commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// Every op not given to another writer.
    Main,
    /// New tasks with no dependency, idempotency key or offered agent only: they write new rows
    /// and read nothing another op writes, so they take neither of the first two locks and run
    /// alongside every other writer.
    Submissions,
    /// Batches of assignments, starts and completions (with the hand-over of each agent's next
    /// task): each writes the rows of the tasks and attempts it names (distinct from those of
    /// another batch in flight, since each is reported by the one holder of its attempt, and
    /// guarded by the state and epoch it expects if not) and adds to the counters of their
    /// agents. Several run at once.
    Attempts,
}

/// [`OpCx::serialize`]'s statement: `SETTLE_LOCK`. The key is "cflowdep" in ASCII (checked by
/// a test).
const PG_SETTLE_LOCK: &str = "SELECT 1 FROM pg_advisory_xact_lock(7162531483379590512)";

/// How an attempt writer's batch starts: its share of `OPS_LOCK`, whose key is "cflowops" in
/// ASCII (checked by a test).
const PG_BEGIN_SHARED: &str =
    "BEGIN; SELECT 1 FROM pg_advisory_xact_lock_shared(7162531483380314227)";

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut batch = Vec::new();
            self.take(first, &mut batch);
            self.gather(&mut batch).await;
            if batch.is_empty() {
                continue;
            }
            batch.sort_by(|a, b| group_of(&a.op).cmp(&group_of(&b.op)));
            // A bug that panics in one batch must not take every later write down with it.
            let outcome = AssertUnwindSafe(self.commit_batch(batch))
                .catch_unwind()
                .await;
            if outcome.is_err() {
                tracing::error!("the store writer panicked in a batch; its callers get an error");
                self.conn = None;
            }
            self.checkpoint_if_wanted().await;
        }
        // Everything committed is answered (once flushed) before the writer reports it stopped.
        if let Some(syncer) = self.syncer.take() {
            syncer.stop();
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    /// Checkpoints on the writer's own connection, between two batches, when the checkpointer
    /// asked for it (see `db::checkpointer`): with nothing appended in between, the next write
    /// transaction starts the WAL over.
    async fn checkpoint_if_wanted(&mut self) {
        let Some(wal) = &self.wal else { return };
        if !wal.wanted.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let t0 = std::time::Instant::now();
        match exec::query_as::<(i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(conn)
            .await
        {
            Ok((_, frames, copied)) => tracing::trace!(
                frames,
                copied,
                us = t0.elapsed().as_micros(),
                "the store writer checkpointed the WAL"
            ),
            Err(e) => tracing::warn!(error = %e, "the store writer's WAL checkpoint failed"),
        }
    }

    /// Adds what is queued to the batch. When the queue runs dry, yields its thread (at most
    /// [`GATHER_YIELDS`] times) and looks again: callers answered by the previous commit are
    /// usually about to send their next writes, and without this pause the writer would commit a
    /// batch of one and make them all wait a whole commit. Under light load the pause costs a
    /// couple of yields, not a timer.
    async fn gather(&mut self, batch: &mut Vec<Request>) {
        let mut yields = 0;
        while batch.len() < self.max_batch {
            match self.rx.try_recv() {
                Ok(msg) => self.take(msg, batch),
                Err(_) if yields < GATHER_YIELDS => {
                    yields += 1;
                    // Nothing else runs on the writer's runtime: let the callers' threads run.
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
    }

    fn take(&mut self, msg: Msg, batch: &mut Vec<Request>) {
        match msg {
            Msg::Req(req) => batch.push(req),
            // Already-queued requests are still received after `close`, and are committed.
            Msg::Shutdown => self.rx.close(),
        }
    }

    async fn commit_batch(&mut self, batch: Vec<Request>) {
        self.tag = None;
        let results = match self.run_with_retry(&batch).await {
            Ok(results) => results,
            // An attempt writer's batch may also fail because another one changed its rows
            // first (a report sent twice at once, each to its own writer: the second one's guarded
            // update waits for the first to commit and then matches nothing) or, rarely, on a
            // deadlock between them: each op then runs again on its own, after the other
            // committed, and reads what it did.
            Err(BatchError::Op(e)) if batch.len() > 1 || self.role == Role::Attempts => {
                tracing::warn!(error = %e, ops = batch.len(), "write batch failed; re-running its ops one by one");
                let mut results = Vec::with_capacity(batch.len());
                for req in &batch {
                    let result = match self.run_with_retry(std::slice::from_ref(req)).await {
                        Ok(mut r) => r.pop().unwrap_or(Ok(Output::Unit)),
                        Err(e) => Err(op_error(e.into_error())),
                    };
                    results.push(result);
                }
                results
            }
            Err(BatchError::Op(e)) => vec![Err(op_error(e))],
            Err(e) => {
                let e = e.into_error();
                tracing::error!(error = %e, ops = batch.len(), "write batch failed");
                let mut results: Vec<Result<Output>> =
                    (1..batch.len()).map(|_| Err(duplicate(&e))).collect();
                results.insert(0, Err(e));
                results
            }
        };
        let answers = batch
            .into_iter()
            .zip(results)
            .filter_map(|(req, result)| req.reply.map(|reply| (reply, result)));
        match &self.syncer {
            // Answered once the WAL is flushed, while the writer goes on with the next batch.
            Some(syncer) => {
                syncer.hand(self.tag.unwrap_or_else(|| syncer.tag()), answers.collect())
            }
            None => {
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Starts the syncer when the writer's connection is one that commits without flushing
    /// (PostgreSQL, see [`pg_prepare`]; `db::open_lite` in WAL mode).
    async fn start_syncer_if_needed(&mut self) -> Result<()> {
        if self.syncer.is_some() || self.flushes_itself {
            return Ok(());
        }
        if self.backend == Backend::Postgres {
            self.syncer = Some(crate::durable::Syncer::for_postgres(self.url.clone()).await?);
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if !matches!(conn, WConn::Lite(_)) {
            return Ok(());
        }
        // 1 = NORMAL (2 = FULL flushes at every commit by itself).
        let level: i64 = exec::query_scalar("PRAGMA synchronous")
            .fetch_one(conn)
            .await?;
        if level >= 2 {
            self.flushes_itself = true;
            return Ok(());
        }
        let Some(path) = db::sqlite_path(&self.url) else {
            return Err(Error::Config(format!(
                "the store writer commits without flushing but has no database file ({})",
                self.url
            )));
        };
        let mut wal = path.into_os_string();
        wal.push("-wal");
        self.syncer = Some(crate::durable::Syncer::for_wal(
            wal.into(),
            self.durability_lost.clone(),
        )?);
        Ok(())
    }

    /// Runs a batch; once more on a fresh connection when the connection failed before COMMIT.
    async fn run_with_retry(
        &mut self,
        reqs: &[Request],
    ) -> Result<Vec<Result<Output>>, BatchError> {
        let mut retried = false;
        loop {
            let result = self.run_once(reqs).await;
            if matches!(
                result,
                Err(BatchError::Connection(_) | BatchError::Commit(_))
            ) {
                // Whatever state the connection is in, a new one is the safe start.
                self.conn = None;
            }
            match result {
                Err(BatchError::Connection(e)) if !retried => {
                    tracing::warn!(error = %e, "store writer connection failed; reconnecting");
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// Rolls the open transaction back: nothing of the batch stays. A connection that cannot
    /// even roll back is replaced before the next batch.
    async fn roll_back(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            // Writes held back for the next round trip (PostgreSQL) are dropped with the rest.
            exec::discard(conn);
            if exec::raw(conn, "ROLLBACK").await.is_err() {
                self.conn = None;
            }
        }
    }

    async fn run_once(&mut self, reqs: &[Request]) -> Result<Vec<Result<Output>>, BatchError> {
        let backend = self.backend;
        if self.conn.is_none() {
            let mut conn = db::connect_writer(&self.url, backend)
                .await
                .map_err(BatchError::Connection)?;
            if backend == Backend::Postgres {
                exec::raw_string(&mut conn, pg_prepare())
                    .await
                    .map_err(|e| BatchError::Connection(e.into()))?;
            }
            self.conn = Some(conn);
        }
        self.start_syncer_if_needed()
            .await
            .map_err(BatchError::Connection)?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(BatchError::Connection(Error::Closed));
        };
        let started = std::time::Instant::now();
        let (mut agents, mut live) = (None, None);
        let head = match backend {
            // Take the write lock up front: a deferred transaction that upgrades later can fail
            // with SQLITE_BUSY without waiting when another process holds the lock.
            Backend::Sqlite => {
                exec::raw(conn, "BEGIN IMMEDIATE")
                    .await
                    .map_err(|e| classify(e.into()))?;
                None
            }
            // The advisory lock, the ledger's head, the leading submissions' agents and the
            // completions after them come with the `BEGIN`.
            Backend::Postgres => {
                let (head, infos, prefetched) =
                    begin_pg(conn, reqs, self.role).await.map_err(classify)?;
                (agents, live) = (infos, prefetched);
                head
            }
        };
        let t0 = std::time::Instant::now();
        let shared = self.role == Role::Attempts;
        let applied = apply_batch(conn, backend, head, (agents, live), reqs, shared).await;
        let (results, t1, t2, commit) = match applied {
            Ok((results, applied_at, commit)) => (results, applied_at - t0, t0.elapsed(), commit),
            Err(e) => {
                self.roll_back().await;
                return Err(e);
            }
        };
        if let Some(syncer) = &self.syncer {
            let tag = syncer.tag();
            self.tag = Some(self.tag.map_or(tag, |t| t.min(tag)));
        }
        match commit {
            // The ledger insert and COMMIT in one round trip: a database error is the insert's
            // (PostgreSQL then skips the COMMIT), so nothing committed; any other failure
            // leaves the outcome unknown.
            Some(sql) => match exec::raw_string(conn, sql).await {
                Ok(()) => {}
                Err(e @ sqlx::Error::Database(_)) => {
                    self.roll_back().await;
                    return Err(BatchError::Op(e.into()));
                }
                Err(e) => return Err(BatchError::Commit(e.into())),
            },
            None => match exec::raw(conn, "COMMIT").await {
                Ok(()) => {}
                // On PostgreSQL, writes held back for this round trip go before the `COMMIT`
                // (see `exec::Deferred`): a database error is theirs, and nothing committed.
                Err(e @ sqlx::Error::Database(_)) if backend == Backend::Postgres => {
                    self.roll_back().await;
                    return Err(BatchError::Op(e.into()));
                }
                Err(e) => return Err(BatchError::Commit(e.into())),
            },
        }
        tracing::trace!(
            role = ?self.role,
            ops = reqs.len(),
            kinds = %kinds_of(reqs),
            begin_us = (t0 - started).as_micros(),
            apply_us = t1.as_micros(),
            audit_us = (t2 - t1).as_micros(),
            commit_us = (t0.elapsed() - t2).as_micros(),
            "write batch committed"
        );
        Ok(results)
    }
}

/// PostgreSQL: how a main batch's transaction starts, in one round trip (a simple query of
/// several statements): `BEGIN`; the transaction-scoped advisory locks that keep it apart from
/// the attempt writers' batches (`OPS_LOCK`, exclusive) and serialise the ledger's appends
/// across writers and server nodes (any key works as long as every node uses the same one; this
/// one is "cflowaud" in ASCII; both checked by a test; selected `FROM` the function so that its
/// row holds an integer, not `void`, which sqlx's `Any` driver cannot decode); the ledger's head;
/// and, when the batch starts with submissions, the agents they name. Each statement takes its
/// own snapshot, so the reads see every batch committed before the locks were granted, exactly
/// as if sent on their own after them; the writer holds the locks and writes nothing before
/// them.
const PG_BEGIN_AND_HEAD: &str = "BEGIN; SELECT 1 FROM pg_advisory_xact_lock(7162531483380314227); \
     SELECT 1 FROM pg_advisory_xact_lock(7162531483379397988); EXECUTE cflow_head";

/// PostgreSQL: how the writer sets up each new connection: sequential scans off, commits that
/// do not wait for the log flush (the writer answers only after `durable::Syncer`'s barrier
/// confirms the flush), then the statements it prepares (planned once; the batches `EXECUTE`
/// them in simple queries).
///
/// Every statement the writer runs finds its rows by a key that an index covers, but
/// PostgreSQL plans a prepared statement once for all ("generic plan", after five runs) with the
/// statistics of that moment and keeps that plan until the table is analyzed again. On a fresh
/// or small database those statistics say the tables are nearly empty, where a sequential scan
/// is the cheapest plan, so the batch updates (`UPDATE tasks ... FROM <the batch's rows> WHERE
/// tasks.id = ...`), the foreign key checks and the reads of ended attempts went on scanning
/// whole tables as they grew, 3-15 ms a statement at a few thousand tasks, until the analyzer
/// (see [`crate::db`]) caught up: the first seconds of a fresh database at 1,000 tasks/s held
/// most of the slowest submissions (`auto_explain` showed the sequential scans). With them off
/// for this connection the planner takes the index whenever one applies, whatever the
/// statistics say; a statement that no index serves still scans (the penalty only ranks it
/// last), and read connections keep the planner's defaults.
fn pg_prepare() -> String {
    format!(
        "SET enable_seqscan = off; SET synchronous_commit = off; {}; PREPARE cflow_agent_infos(text) AS {}; \
         PREPARE cflow_read_live(text) AS {}; PREPARE cflow_assign(text) AS {}",
        audit::pg_prepare(),
        crate::batch_fast::agent_infos_sql(Backend::Postgres, 1),
        crate::batch_fast::read_live_sql(Backend::Postgres, true),
        crate::batch_fast::assign_pg_sql()
    )
}

/// What [`begin_pg`] reads with the `BEGIN`: the ledger's head, the agents of the leading
/// submissions (if the batch starts with some) and the prefetched completions
/// ([`OpCx::live`]).
type Begun = (
    Option<audit::Head>,
    Option<HashMap<String, AgentInfo>>,
    Option<LiveRead>,
);

/// Starts a batch on PostgreSQL ([`PG_BEGIN_AND_HEAD`]): the ledger's head, the agents the
/// batch's leading run of submissions names, if it has one, and the tasks and attempts the
/// completions after that run report on ([`live_prefetch`]).
async fn begin_pg(conn: &mut WConn, reqs: &[Request], role: Role) -> Result<Begun> {
    let end = submit_run(reqs, 0);
    let subs: Vec<(&[NewTask], &[Option<DirectAssign>])> = reqs[..end]
        .iter()
        .filter_map(|r| match &r.op {
            Op::SubmitTasks { tasks, direct, .. } => Some((tasks.as_slice(), direct.as_slice())),
            _ => None,
        })
        .collect();
    let ids = tasks::submit_agent_ids(&subs);
    // The locks' rows (one column each) come first.
    let (mut sql, locks) = match role {
        Role::Main => (PG_BEGIN_AND_HEAD.to_string(), 2),
        Role::Submissions => ("BEGIN".to_string(), 0),
        Role::Attempts => (PG_BEGIN_SHARED.to_string(), 1),
    };
    let lock = role == Role::Main;
    if !subs.is_empty() && !ids.is_empty() {
        let json = crate::bulk::ids_json(ids.iter().copied());
        sql.push_str(&format!(
            "; EXECUTE cflow_agent_infos({})",
            crate::bulk::dollar_quoted(&json)
        ));
    }
    let live_ids = live_prefetch(reqs, end);
    if let Some(ids) = &live_ids {
        let json = crate::bulk::ids_json(ids.iter().map(String::as_str));
        sql.push_str(&format!(
            "; EXECUTE cflow_read_live({})",
            crate::bulk::dollar_quoted(&json)
        ));
    }
    let rows = exec::raw_rows_pg(conn, sql).await?;
    // After the locks' rows: the head's if read and the ledger has one (three columns); then
    // the agents' (five columns each), then the completions' (one).
    let mut rows = rows.iter().skip(locks).peekable();
    let head = match (lock, rows.next_if(|r| lock && sqlx::Row::len(*r) == 3)) {
        (false, _) => None,
        (true, Some(r)) => Some(audit::Head::from_row(r)?),
        (true, None) => Some(audit::Head::genesis()),
    };
    let mut infos = HashMap::new();
    let mut live = None;
    for r in rows {
        if live_ids.is_some() && sqlx::Row::len(r) == 1 {
            live = Some(sqlx::Row::try_get::<String, _>(r, 0)?);
        } else {
            let a = crate::attempts::agent_info(r)?;
            infos.insert(a.id.clone(), a);
        }
    }
    let live = match (live_ids, live) {
        (Some(ids), Some(packed)) => Some((ids, packed)),
        (None, None) => None,
        _ => {
            return Err(sqlx::Error::Protocol(
                "the completions read with BEGIN returned no row, or one not asked for".into(),
            )
            .into());
        }
    };
    Ok((head, (!subs.is_empty()).then_some(infos), live))
}

/// The task ids of the completions that [`begin_pg`] can read with the `BEGIN`: those of the
/// run of attempt batches at `at` (right after the leading submissions), when every op of that
/// run is a completion, of distinct tasks. The submissions before it write only rows of new
/// tasks (their tasks and attempts), unless a task depends on another: a new dependency edge
/// must be seen by the completions' "has dependents" read, so no submission before them may
/// have one. Anything else before them (no batch puts other ops there: `group_of`) would also
/// rule it out.
fn live_prefetch(reqs: &[Request], at: usize) -> Option<Vec<String>> {
    let leading_ok = reqs[..at].iter().all(|r| match &r.op {
        Op::SubmitTasks { tasks, .. } => tasks.iter().all(|t| t.depends_on.is_empty()),
        _ => false,
    });
    if !leading_ok || at >= reqs.len() || !matches!(reqs[at].op, Op::AttemptBatch(_)) {
        return None;
    }
    let end = attempt_run(reqs, at);
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    for r in &reqs[at..end] {
        let Op::AttemptBatch(ops) = &r.op else {
            return None;
        };
        for op in ops {
            match op {
                AttemptOp::Complete { task_id, .. } if seen.insert(task_id.as_str()) => {
                    ids.push(task_id.clone());
                }
                _ => return None,
            }
        }
    }
    (!ids.is_empty()).then_some(ids)
}

/// What a batch read with its `BEGIN` for its first runs: [`OpCx::agents`] and [`OpCx::live`].
type Prefetched = (Option<HashMap<String, AgentInfo>>, Option<LiveRead>);

/// What [`apply_batch`] returns.
type Applied = (Vec<Result<Output>>, std::time::Instant, Option<String>);

/// Runs a batch's ops and appends their audit entries, inside the open transaction (`head`: the
/// ledger's head if already read). Returns the answers, when the ops were done (before the
/// audit insert) and, on PostgreSQL, the statement that inserts the audit entries and commits
/// (`None`: they are inserted; the caller commits).
async fn apply_batch(
    conn: &mut WConn,
    backend: Backend,
    head: Option<audit::Head>,
    prefetched: Prefetched,
    reqs: &[Request],
    shared: bool,
) -> Result<Applied, BatchError> {
    let (mut agents, mut live) = prefetched;
    let live_at = submit_run(reqs, 0);
    let now = db::now_ms();
    // Each entry with its request's context, sealed once the ledger's head is known.
    let mut drafts: Vec<(&AuditContext, Draft)> = Vec::new();
    let mut results = Vec::with_capacity(reqs.len());
    let mut start = 0;
    // Whether the transaction holds `SETTLE_LOCK` (a lock outlives the run that took it).
    let mut serialized = false;
    while start < reqs.len() {
        let mut cx = OpCx {
            conn: &mut *conn,
            backend,
            now,
            // Read for the leading run only.
            agents: if start == 0 { agents.take() } else { None },
            // Read for the run right after the leading submissions only.
            live: if start == live_at { live.take() } else { None },
            shared,
            serialized,
        };
        let end = submit_run(reqs, start)
            .max(plain_put_run(reqs, start))
            .max(attempt_run(reqs, start));
        let steps =
            if let (true, Op::SubmitTasks { tenant_id, .. }) = (end - start > 1, &reqs[start].op) {
                let subs: Vec<(&[NewTask], &[Option<DirectAssign>])> = reqs[start..end]
                    .iter()
                    .filter_map(|r| match &r.op {
                        Op::SubmitTasks { tasks, direct, .. } => {
                            Some((tasks.as_slice(), direct.as_slice()))
                        }
                        _ => None,
                    })
                    .collect();
                crate::tasks::submit_many(&mut cx, tenant_id, &subs)
                    .await
                    .map_err(classify)?
            } else if let (true, Op::AttemptBatch(_)) = (end - start > 1, &reqs[start].op) {
                let groups: Vec<&[AttemptOp]> = reqs[start..end]
                    .iter()
                    .filter_map(|r| match &r.op {
                        Op::AttemptBatch(ops) => Some(ops.as_slice()),
                        _ => None,
                    })
                    .collect();
                batch::apply_many(&mut cx, &groups)
                    .await
                    .map_err(classify)?
            } else if end - start > 1 {
                let puts = reqs[start..end].iter().filter_map(|r| match &r.op {
                    Op::MemoryPut {
                        tenant_id,
                        put,
                        value_text,
                    } => Some((tenant_id.as_str(), put, value_text.as_str())),
                    _ => None,
                });
                memory::put_many(&mut cx, &puts.collect::<Vec<_>>())
                    .await
                    .map_err(classify)?
            } else {
                vec![apply(&mut cx, &reqs[start].op).await.map_err(classify)?]
            };
        serialized = cx.serialized;
        for (req, step) in reqs[start..].iter().zip(steps) {
            for draft in audit::coalesce(step.audit) {
                drafts.push((&req.ctx, draft));
            }
            results.push(step.result);
        }
        start = end.max(start + 1);
    }
    let applied = std::time::Instant::now();
    // The head read with the `BEGIN` (PostgreSQL's main writer), else now: on SQLite under the
    // write lock the transaction holds, on PostgreSQL after taking the ledger's lock, which
    // serialises every appender (see `Role`).
    let mut head = match head {
        Some(h) => h,
        None if backend == Backend::Postgres => {
            audit::lock_and_head_pg(conn).await.map_err(classify)?
        }
        None => audit::head(conn).await.map_err(classify)?,
    };
    let entries: Vec<audit::Sealed> = drafts
        .into_iter()
        .map(|(ctx, draft)| head.append(ctx, draft, now))
        .collect();
    if backend == Backend::Postgres
        && let Some(sql) = audit::insert_and_commit_pg(&entries).map_err(classify)?
    {
        return Ok((results, applied, Some(sql)));
    }
    audit::insert(conn, backend, entries)
        .await
        .map_err(classify)?;
    Ok((results, applied, None))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pg_begin_statements_take_the_locks_in_order() {
        let key = i64::from_be_bytes(*b"cflowaud");
        let ops = i64::from_be_bytes(*b"cflowops");
        let settle = i64::from_be_bytes(*b"cflowdep");
        let sql = super::PG_BEGIN_AND_HEAD;
        assert_eq!(
            sql,
            format!(
                "BEGIN; SELECT 1 FROM pg_advisory_xact_lock({ops}); \
                 SELECT 1 FROM pg_advisory_xact_lock({key}); EXECUTE cflow_head"
            )
        );
        assert_eq!(
            super::PG_BEGIN_SHARED,
            format!("BEGIN; SELECT 1 FROM pg_advisory_xact_lock_shared({ops})")
        );
        assert_eq!(
            super::PG_SETTLE_LOCK,
            format!("SELECT 1 FROM pg_advisory_xact_lock({settle})")
        );
        // The submissions' writer takes the same lock, later (`Role::Submissions`).
        assert!(
            sql.ends_with(crate::audit::PG_LOCK_AND_HEAD),
            "{sql} / {}",
            crate::audit::PG_LOCK_AND_HEAD
        );
    }
}
