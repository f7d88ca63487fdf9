//! Durable storage for cflow: one [`Store`] API over an embedded SQLite file or a PostgreSQL
//! server, with migrations for each, a group-commit writer and the hash-chained audit ledger.
//!
//! # Invariants
//! - Every query on tenant data filters on `tenant_id`; methods that touch tenant data take the
//!   tenant id as their first argument after the audit context.
//! - Every change is committed together with its audit entry, in one transaction, by the single
//!   writer task, which also computes the audit hash chain so that its order is total.
//! - A method that returns `Ok` for a write has committed it durably (SQLite `synchronous=FULL`,
//!   PostgreSQL `synchronous_commit=on`).
//!
//! # Boundary
//! Only this crate knows SQL. Callers see [`types`] and [`Error`].
//!
//! # Layout
//! (filled in by the implementation)

pub mod error;
pub mod types;

pub use error::{Error, Result};
pub use types::*;

use std::path::Path;

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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_read_connections: 8,
            max_batch: 512,
        }
    }
}

/// The store. Cheap to clone; all clones share one pool and one writer.
#[derive(Clone)]
pub struct Store {
    _private: (),
}

#[allow(unused_variables)]
impl Store {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH` or `postgres://…`),
    /// applies migrations and starts the writer.
    pub async fn open(url: &str, opts: StoreOptions) -> Result<Store> {
        unimplemented!()
    }

    /// Opens the SQLite database file at `path`, creating it and its directory if needed.
    pub async fn open_sqlite(path: &Path, opts: StoreOptions) -> Result<Store> {
        unimplemented!()
    }

    pub fn backend(&self) -> Backend {
        unimplemented!()
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        unimplemented!()
    }

    /// Stops accepting writes, commits what is queued, and closes every connection.
    pub async fn close(&self) {
        unimplemented!()
    }

    /// On an empty database: creates tenant `default`, principal `admin` and a `superadmin` key,
    /// and returns it (the only time its token exists). On a database with tenants: `None`.
    pub async fn bootstrap(&self, ctx: &AuditContext) -> Result<Option<CreatedKey>> {
        unimplemented!()
    }

    /// Creates a tenant; `Conflict` if the name is taken.
    pub async fn create_tenant(&self, ctx: &AuditContext, name: &str) -> Result<Tenant> {
        unimplemented!()
    }

    /// A tenant by id or by name.
    pub async fn get_tenant(&self, id_or_name: &str) -> Result<Option<Tenant>> {
        unimplemented!()
    }

    /// Tenants ordered by name.
    pub async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        unimplemented!()
    }

    /// Creates a service principal named after the key, binds `role` to it at tenant scope (or
    /// project scope when `project` is set, creating the project if needed), and creates its key.
    pub async fn create_key(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        new: NewKey,
    ) -> Result<CreatedKey> {
        unimplemented!()
    }

    /// Keys of a tenant ordered by creation, newest last.
    pub async fn list_keys(&self, tenant_id: &str, page: &PageRequest) -> Result<Page<ApiKey>> {
        unimplemented!()
    }

    /// Revokes a key of the tenant; `NotFound` if the tenant has no such key. Revoking twice is
    /// not an error (the first revocation time stays).
    pub async fn revoke_key(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<ApiKey> {
        unimplemented!()
    }

    /// Checks a presented token at time `now`. Records `last_used_at` (at most once a minute per
    /// key, off the request's path).
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<AuthOutcome> {
        unimplemented!()
    }

    /// Writes a memory entry under its precondition. Returns the entry as written.
    /// `PreconditionFailed` writes nothing (but is audited).
    pub async fn memory_put(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        put: MemoryPut,
    ) -> Result<MemoryEntry> {
        unimplemented!()
    }

    /// A live (not expired) entry.
    pub async fn memory_get(
        &self,
        tenant_id: &str,
        namespace: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<MemoryEntry>> {
        unimplemented!()
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
        unimplemented!()
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
        unimplemented!()
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
        unimplemented!()
    }

    /// Deletes entries that expired before `now`; returns how many.
    pub async fn memory_purge_expired(&self, now: i64) -> Result<u64> {
        unimplemented!()
    }

    /// Appends an entry that records no change (a denied or failed request).
    pub async fn audit_append(&self, ctx: &AuditContext, event: AuditEvent) -> Result<()> {
        unimplemented!()
    }

    /// Ledger entries in `seq` order.
    pub async fn audit_list(
        &self,
        query: &AuditQuery,
        page: &PageRequest,
    ) -> Result<Page<cflow_core::audit::AuditEntry>> {
        unimplemented!()
    }

    /// Walks the whole chain and reports the first entry that does not fit.
    pub async fn audit_verify(&self) -> Result<VerifyReport> {
        unimplemented!()
    }
}
