//! `cflow up` (embedded: SQLite in the data directory) and `cflow server` (PostgreSQL with
//! `--database`). Both build a `ServerConfig` from the layered configuration and run the server
//! until SIGINT or SIGTERM, then shut down gracefully.

use crate::config::{Loaded, layer_name};
use crate::output::note;
use anyhow::{Context, Result, anyhow};
use cflow_server::ServerConfig;
use std::io::IsTerminal;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cflow up`: always SQLite in the data directory.
    Embedded,
    /// `cflow server`: the configured database, SQLite when there is none.
    Server,
}

pub fn run(loaded: Loaded, mode: Mode) -> Result<ExitCode> {
    let mut config: ServerConfig = loaded.config.server.clone();
    let db_path = config.data_dir.join(super::audit::SQLITE_FILE);
    match (mode, &config.database_url) {
        (Mode::Embedded, Some(_)) => {
            let from = loaded
                .figment
                .find_metadata("server.database_url")
                .map(|md| layer_name(md, "server.database_url"))
                .unwrap_or_default();
            note(&format!(
                "note: 'cflow up' always uses SQLite at {}; ignoring the database URL from {from} (use 'cflow server' for PostgreSQL)",
                db_path.display()
            ));
            config.database_url = None;
        }
        (Mode::Server, None) => note(&format!(
            "note: no --database/CFLOW_DATABASE_URL given: using SQLite at {} (pass --database postgres://… for scale-out)",
            db_path.display()
        )),
        _ => {}
    }
    init_tracing(&loaded.config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Registered before the server starts, so that a signal arriving during start-up is
        // not lost (the default action would kill the process without a graceful stop).
        let shutdown = shutdown_signal()?;
        // The server's errors already say what to do (e.g. "address in use — use --listen").
        cflow_server::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A future that resolves on the first SIGINT or SIGTERM.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{which} received: shutting down gracefully");
    })
}

fn init_tracing(filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter '{filter}' (CFLOW_LOG / log)"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: redirected logs stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow!("{e}"))
}
