//! Integration tests of the cflow API gateway: a real server on 127.0.0.1:0 driven over real
//! sockets with reqwest, on SQLite and (where configured) PostgreSQL.

mod artifacts_http;
mod audit;
mod auth;
mod bad_input;
mod bad_input_orch;
mod claude;
mod common;
mod cost;
mod events;
mod hooks;
mod hooks_dest;
mod hooks_outbox;
mod limits;
mod llm_e2e;
mod llmconfig;
mod memory;
mod model_routing;
mod modelhost;
mod ops;
mod orchestration;
mod route_walk;
mod sandbox;
mod sched;
mod secrets;
mod shutdown;
mod tls;
mod workers_http;
