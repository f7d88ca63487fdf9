//! `cflow up` (embedded: SQLite in the data directory) and `cflow server` (PostgreSQL with
//! `--database`). Both build a `ServerConfig` from the layered configuration and run the server
//! until SIGINT or SIGTERM, then shut down gracefully. With `--demo`, once the server is ready
//! the quickstart workflow (`examples/quickstart.toml`, built into the binary) runs against it
//! with the bootstrap admin token, and the server keeps serving afterwards.

use crate::client::{ADMIN_TOKEN_FILE, Client};
use crate::config::{Loaded, layer_name};
use crate::output::{Printer, emit, note};
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

/// The quickstart workflow that `--demo` runs, built in so it works from any directory.
pub const QUICKSTART: &str = include_str!("../../../../examples/quickstart.toml");

pub fn run(loaded: Loaded, mode: Mode, demo: bool, printer: Printer) -> Result<ExitCode> {
    let mut config: ServerConfig = loaded.config.server.clone();
    // The config file may hold a token: commands never see it.
    if let Some(file) = &loaded.file {
        config.secret_files.push(file.path.clone());
    }
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
        if demo {
            return run_demo(config, shutdown, printer).await;
        }
        // The server's errors already say what to do (e.g. "address in use — use --listen").
        cflow_server::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `--demo`: starts the server, runs the quickstart against it, then serves until the signal.
async fn run_demo(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    printer: Printer,
) -> Result<()> {
    let checked = crate::workflow::parse(QUICKSTART, "examples/quickstart.toml")?;
    let data_dir = config.data_dir.clone();
    let listener = cflow_server::bind(&config.listen)?;
    let running = cflow_server::start(config, listener).await?;
    let token = match (&running.admin_token, &running.admin_token_path) {
        (Some(token), Some(path)) => {
            println!(
                "cflow: created tenant 'default' and a superadmin key (shown once, also saved to {}):\n  {token}",
                path.display()
            );
            token.clone()
        }
        _ => {
            let path = data_dir.join(ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_string())
                .with_context(|| {
                    format!(
                        "--demo runs the quickstart with the bootstrap admin token, but {} cannot be read",
                        path.display()
                    )
                })?
        }
    };
    let url = running.url();
    let base = crate::client::parse_server_url(&url)?;
    let client = Client::new(base, token, "the bootstrap admin token".into(), data_dir)?;
    emit(&format!(
        "cflow demo: running examples/quickstart.toml against {url}"
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    // A signal during the run stops the server too (the run itself cancels its tasks on Ctrl-C).
    let outcome = tokio::select! {
        o = crate::commands::run::run_workflow(&client, &checked, None, printer) => Some(o),
        () = &mut shutdown => None,
    };
    match outcome {
        Some(Ok(o)) if o.interrupted => {
            running.shutdown().await;
            return Ok(());
        }
        Some(Ok(o)) => {
            let verdict = if o.failed.is_empty() {
                "the quickstart succeeded"
            } else {
                "the quickstart FAILED"
            };
            emit(&format!(
                "\ncflow demo: {verdict}. The server keeps serving at {url} — explore with:\n  cflow task list --swarm {}\n  cflow swarm list\n  cflow doctor\nPress Ctrl-C to stop.",
                o.swarm_id
            ));
        }
        Some(Err(e)) => note(&format!(
            "error: the demo workflow did not run: {e:#} (the server keeps serving)"
        )),
        None => {
            running.shutdown().await;
            return Ok(());
        }
    }
    shutdown.await;
    running.shutdown().await;
    Ok(())
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
