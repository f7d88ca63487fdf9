//! Domain types and pure policy for cflow: roles, the permission matrix, input validation,
//! API-key token format, the audit hash chain and search-query parsing.
//!
//! # Invariant
//! This crate does no I/O, has no async runtime and never reads the clock or a random source:
//! callers pass time and randomness in. Everything here is deterministic and unit-testable.
//!
//! # Layout
//! - [`authz`]: roles, actions and the permission matrix.
//! - [`validate`]: limits and rules for names, namespaces, keys, tags, TTLs and values.
//! - [`apikey`]: the `cflow_<id>_<secret>` token format and secret hashing.
//! - [`audit`]: the canonical audit entry and its hash chain.
//! - [`search`]: turning a user's search text into safe search terms.
//! - [`timefmt`]: RFC 3339 formatting of Unix-millisecond timestamps.

pub mod apikey;
pub mod audit;
pub mod authz;
pub mod search;
pub mod timefmt;
pub mod validate;

pub use authz::{Action, Role};
pub use validate::ValidationError;
