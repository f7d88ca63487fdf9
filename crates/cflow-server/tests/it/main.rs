//! Integration tests of the cflow API gateway: a real server on 127.0.0.1:0 driven over real
//! sockets with reqwest, on SQLite and (where configured) PostgreSQL.

mod audit;
mod auth;
mod bad_input;
mod common;
mod limits;
mod memory;
mod ops;
mod route_walk;
mod shutdown;
mod tls;
