//! Test support for cflow: temporary SQLite stores, throwaway PostgreSQL databases and real
//! servers on `127.0.0.1:0`, so that tests drive the real thing over real sockets.

pub mod db;
pub mod server;
