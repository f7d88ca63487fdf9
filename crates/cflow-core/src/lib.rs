//! Domain types and pure policy for cflow: roles, the permission matrix, input validation,
//! API-key token format, the audit hash chain, search-query parsing, and the policy of the
//! orchestration layer (topologies, task DAGs and states, fair queuing, load balancing, circuit
//! breakers and result quorums).
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
//! - [`topology`]: swarm topologies and who may message or delegate to whom.
//! - [`dag`]: checking a task DAG and tracking unmet dependencies.
//! - [`task`]: task states and transitions, retry backoff, limits on scheduling fields.
//! - [`fairshare`]: the ready queue: weighted fair share between tenants, priority within one.
//! - [`balance`]: choosing an agent by smooth weighted round robin or least load.
//! - [`breaker`]: the circuit breaker for failing agents and providers.
//! - [`quorum`]: output normalisation, digests and the replica vote.
//! - [`secrets`]: the master key and AES-256-GCM sealing of tenants' secrets.
//! - [`mask`]: masking secret values and credential patterns out of text.
//! - [`pricing`]: model prices and the cost of a call in micro-dollars.
//! - [`budget`]: budget periods (UTC day, ISO week, calendar month) and the spent message.
//! - [`claude`]: Claude Code's hook events and a tenant's hook policy (deny-lists, context).

pub mod agent_type;
pub mod apikey;
pub mod audit;
pub mod authz;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod claude;
pub mod dag;
pub mod fairshare;
pub mod mask;
pub mod pricing;
pub mod quorum;
pub mod search;
pub mod secrets;
pub mod task;
pub mod timefmt;
pub mod topology;
pub mod validate;

pub use authz::{Action, Role};
pub use validate::ValidationError;
