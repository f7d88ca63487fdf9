//! Test support for cflow: temporary SQLite stores, throwaway PostgreSQL databases and real
//! servers on `127.0.0.1:0`, so that tests drive the real thing over real sockets.
//!
//! # Layout
//! - `db` and `server` (feature `server`, on by default): stores and running cflow servers.
//! - `pg` (feature `pg`, part of `server`): fresh databases on the test PostgreSQL server.
//! - `llm_mock` (feature `llm-mock`, on by default): a fake model server speaking the Anthropic
//!   Messages and OpenAI chat-completions streaming formats, played from a script of turns.

#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "llm-mock")]
pub mod llm_mock;
#[cfg(feature = "pg")]
pub mod pg;
#[cfg(feature = "server")]
pub mod server;
