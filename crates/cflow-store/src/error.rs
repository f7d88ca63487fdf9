//! The store's error type. Variants are the cases a caller must tell apart; database detail is
//! kept for logs, never for clients.

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    /// A compare-and-set failed; `current` is the live version (`None` when absent).
    #[error("precondition failed (current version: {current:?})")]
    PreconditionFailed { current: Option<i64> },
    #[error("invalid {0}")]
    Invalid(#[from] cflow_core::ValidationError),
    /// The cursor was not produced by this store for this listing.
    #[error("invalid cursor")]
    InvalidCursor,
    /// The store is shutting down and accepts no more writes.
    #[error("store is closed")]
    Closed,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt data in {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("{0}")]
    Config(String),
    /// The resource exists but its state forbids the change (a stopped swarm, a finished
    /// task); the message says which state. The API answers 409.
    #[error("{0}")]
    State(String),
    /// A report about an attempt carried an epoch that is no longer the task's live one: the
    /// attempt was re-assigned, lost or ended. Nothing changed. The API answers 409.
    #[error("stale epoch {epoch} for task {task_id} (live epoch: {current:?})")]
    StaleEpoch {
        task_id: String,
        epoch: i64,
        current: Option<i64>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
