//! The records the store returns and the parameters it takes. Times are Unix milliseconds.

use cflow_core::Role;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// A principal (user, service account or worker) and the role binding its key carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The public id (the `<id>` of `cflow_<id>_<secret>`).
    pub id: String,
    pub tenant_id: String,
    pub principal_id: String,
    pub name: String,
    pub role: Role,
    /// When set, the key's role applies only inside this project.
    pub project: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// What to create with [`crate::Store::create_key`].
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub project: Option<String>,
    pub expires_at: Option<i64>,
}

/// A key just created: the record and the token, which exists nowhere else and is shown once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub token: String,
}

/// The result of presenting a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// A live key: the caller is this key's principal with this key's role.
    Valid(ApiKey),
    /// Not of the token format, no such key id, or a wrong secret (indistinguishable to callers).
    Invalid,
    Revoked(ApiKey),
    Expired(ApiKey),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub namespace: String,
    pub key: String,
    pub value: serde_json::Value,
    pub tags: Vec<String>,
    /// Starts at 1 and grows on every write of the key and never repeats, even across deletes
    /// and purges: an entry created after one starts one past its predecessor's last version.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
}

/// A memory write. The caller has validated the fields with `cflow_core::validate`.
#[derive(Debug, Clone)]
pub struct MemoryPut {
    pub namespace: String,
    pub key: String,
    pub value: serde_json::Value,
    pub tags: Vec<String>,
    pub ttl_seconds: Option<i64>,
    pub precondition: Precondition,
}

/// Compare-and-set conditions on a write or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there.
    None,
    /// Write only if the live entry has exactly this version (`If-Match`).
    Version(i64),
    /// Write only if no live entry exists (`If-None-Match: *`).
    Absent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub entry: MemoryEntry,
    /// Higher is more relevant; comparable only within one result list.
    pub score: f64,
}

/// A page request: an opaque cursor from the previous page and a limit (1–1000).
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub cursor: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when there may be more items: pass it back as the cursor.
    pub next_cursor: Option<String>,
}

/// Who did something, from where, as part of which request: recorded on every audit entry.
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub tenant_id: Option<String>,
    pub principal_id: Option<String>,
    pub request_id: Option<String>,
    pub source: Option<String>,
}

/// An audit entry that is not tied to a change in the store (a denied request, a login failure).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// The result of walking the whole ledger.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Entries that verified, in order, before the first break (all of them when intact).
    pub verified: u64,
    /// The first entry that does not fit the chain, and why.
    pub first_break: Option<(i64, cflow_core::audit::Break)>,
}

/// Filter for listing the ledger.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this tenant's entries (`None`: all, for a superadmin).
    pub tenant_id: Option<String>,
    /// Only entries at or after this time (Unix ms).
    pub since: Option<i64>,
}
