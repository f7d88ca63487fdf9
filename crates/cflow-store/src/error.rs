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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
