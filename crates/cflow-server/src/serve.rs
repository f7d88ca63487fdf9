//! Starting and stopping a server: data directory, store, bootstrap, listener (HTTP or HTTPS),
//! background loops and graceful shutdown.

use crate::config::ServerConfig;
use crate::edge::edge;
use crate::routes;
use crate::state::{AppState, now_ms};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use cflow_store::{AuditContext, AuditEvent, Store, StoreOptions};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a server could not start or stopped with an error; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "invalid listen address '{addr}': {source} — expected HOST:PORT such as 127.0.0.1:7700"
    )]
    ListenAddress { addr: String, source: io::Error },
    #[error("cannot listen on {addr}: address in use — is another cflow running? use --listen")]
    AddressInUse { addr: String },
    #[error(
        "cannot listen on {addr}: permission denied — ports below 1024 need privileges; use --listen with a higher port"
    )]
    ListenPermission { addr: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("cannot start the scheduler: {0}")]
    Scheduler(String),
    #[error("cannot open the database: {0}")]
    Store(#[from] cflow_store::Error),
    #[error("cannot write the admin token to {}: {source}", path.display())]
    TokenFile { path: PathBuf, source: io::Error },
    #[error("HTTPS needs both tls_cert and tls_key, but only {given} is set")]
    TlsIncomplete { given: &'static str },
    #[error(
        "cannot load TLS certificate {} and key {}: {source} — both must be readable PEM files",
        cert.display(), key.display()
    )]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        source: io::Error,
    },
    #[error("cannot load the master key: {0}")]
    MasterKey(#[from] crate::secrets::KeyError),
    #[error("cannot load the tenants' secrets: {0}")]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("the server stopped with an error: {0}")]
    Serve(io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Binds `addr` with errors a user can act on.
pub fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ServerError::ListenAddress {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    TcpListener::bind(&addrs[..]).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => ServerError::AddressInUse {
            addr: addr.to_string(),
        },
        io::ErrorKind::PermissionDenied => ServerError::ListenPermission {
            addr: addr.to_string(),
        },
        _ => ServerError::Listen {
            addr: addr.to_string(),
            source,
        },
    })
}

/// A server that is accepting connections. Dropping it also begins a graceful stop (without
/// waiting for it); call [`Running::shutdown`] to wait until the store is closed.
pub struct Running {
    pub addr: SocketAddr,
    /// The superadmin token when this start bootstrapped an empty database.
    pub admin_token: Option<String>,
    /// Where the admin token was saved, when it was.
    pub admin_token_path: Option<PathBuf>,
    pub store: Store,
    /// What every handler shares; in-process hooks (the model drivers' budget check and usage
    /// recording) go through it.
    pub state: AppState,
    /// Whether the server speaks HTTPS.
    pub tls: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting connections, lets in-flight requests finish, then closes the store.
    pub async fn shutdown(self) {
        if let Err(e) = self.stop().await {
            tracing::error!(error = %e, "server stopped with an error");
        }
    }

    /// Like [`Running::shutdown`], returning the server's error if it failed.
    pub async fn stop(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops by itself (it only does on an error) or is stopped.
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServerError::Serve(io::Error::other(e))),
        }
    }
}

/// Runs a server on `config.listen` until `shutdown` completes. On the first start (an empty
/// database) prints the superadmin token once and saves it to `<data_dir>/admin.token`.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = bind(&config.listen)?;
    let running = start(config, listener).await?;
    if let (Some(token), Some(path)) = (&running.admin_token, &running.admin_token_path) {
        println!(
            "cflow: created tenant 'default' and a superadmin key (shown once, also saved to {}):\n  {token}",
            path.display()
        );
    }
    let Running { stop, task, .. } = running;
    let mut task = task;
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop.send(true);
            task.await.map_err(|e| ServerError::Serve(io::Error::other(e)))?
        }
        // The server task only ends by itself on an error.
        result = &mut task => result.map_err(|e| ServerError::Serve(io::Error::other(e)))?,
    }
}

fn tls_paths(config: &ServerConfig) -> Result<Option<(&Path, &Path)>, ServerError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ServerError::TlsIncomplete { given: "tls_cert" }),
        (None, Some(_)) => Err(ServerError::TlsIncomplete { given: "tls_key" }),
    }
}

/// Creates the data directory, opens the store and bootstraps it; returns the superadmin token
/// and where it was saved when the database was empty.
async fn open_store(
    config: &ServerConfig,
) -> Result<(Store, Option<(String, PathBuf)>), ServerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let store = match &config.database_url {
        Some(url) => Store::open(url, StoreOptions::default()).await?,
        None => Store::open_sqlite(&dir.join("cflow.db"), StoreOptions::default()).await?,
    };
    let ctx = AuditContext {
        source: Some("bootstrap".to_string()),
        ..AuditContext::default()
    };
    let Some(created) = store.bootstrap(&ctx).await? else {
        return Ok((store, None));
    };
    let path = dir.join("admin.token");
    write_secret_file(&path, &created.token).map_err(|source| ServerError::TokenFile {
        path: path.clone(),
        source,
    })?;
    Ok((store, Some((created.token, path))))
}

/// Writes a secret to a file that is created with mode 0600, so it is never readable by others,
/// not even for a moment. A stale file from an earlier database is replaced, not reused, since
/// its mode could be wider.
pub(crate) fn write_secret_file(path: &Path, secret: &str) -> io::Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// The whole application: routes (`/mcp` too, unless disabled), fallbacks and the per-route
/// middleware; the handle stops `/mcp` at shutdown.
pub fn app(state: AppState, config: &ServerConfig) -> (Router, Option<crate::mcp::McpHandle>) {
    let max_body_bytes = config.max_body_bytes;
    let (router, _) = routes::api_router().split_for_parts();
    let (router, mcp) = crate::mcp::route(router, &config.mcp, &config.listen, max_body_bytes);
    let router = router
        .fallback(routes::fallback)
        // Inner to outer: panics become 500s, then the edge turns every answer into its final
        // form. `Router::layer` wraps each route, so the edge sees the matched route template.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state);
    if let Some(m) = &mcp {
        m.attach(&router);
    }
    (router, mcp)
}

/// Starts a server on an already-bound listener and returns once it accepts connections.
pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<Running, ServerError> {
    let tls = match tls_paths(&config)? {
        Some((cert, key)) => Some(crate::tls::load(cert, key).await?),
        None => None,
    };
    config.hooks.destinations().map_err(ServerError::Config)?;
    // Checked before the store opens, so a bad key changes nothing.
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let master_key = crate::secrets::load_master_key(config.master_key.as_ref(), &config.data_dir)?;
    let (store, admin) = open_store(&config).await?;
    let masks = crate::secrets::Masks::default();
    let secrets = crate::secrets::Secrets::load(master_key, store.clone(), masks.clone()).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let events = crate::events::EventBus::with_masks(config.event_buffer, masks);
    let (drivers, pool_sandbox) = local_drivers(&config)?;
    let sched = crate::sched::Scheduler::start_with(
        store.clone(),
        events.clone(),
        config.sched.clone(),
        drivers,
    )
    .await
    .map_err(|e| ServerError::Scheduler(e.to_string()))?;
    let state = AppState::new(store.clone(), sched, events, secrets, &config);
    if let Some(sandbox) = pool_sandbox {
        state.hooks.runner().share_sandbox(sandbox);
    }
    crate::modelhost::install(&state);
    let (router, mcp) = app(state.clone(), &config);
    let make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let (stop, stopped) = watch::channel(false);
    let background = tokio::spawn(background(
        state.clone(),
        Duration::from_secs(config.memory_purge_interval_secs.max(1)),
        stopped.clone(),
    ));
    // Hooks: events to the outbox, and the outbox to the handlers; both end (the sender after
    // recording its sends in flight) before the store closes.
    let hook_loops = [
        tokio::spawn(crate::hooks::outbox::dispatcher(
            state.clone(),
            stopped.clone(),
        )),
        tokio::spawn(crate::hooks::outbox::sender(state.clone(), stopped.clone())),
    ];

    let is_tls = tls.is_some();
    let serve_store = store.clone();
    let task = tokio::spawn(async move {
        let served = match tls {
            None => {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(ServerError::Serve)?
                    .tap_io(|tcp| {
                        // Small responses must not wait for Nagle's algorithm.
                        let _ = tcp.set_nodelay(true);
                    });
                axum::serve(listener, make_service)
                    .with_graceful_shutdown(until_stopped(stopped))
                    .await
            }
            Some(cfg) => {
                let handle = axum_server::Handle::new();
                let h = handle.clone();
                tokio::spawn(async move {
                    until_stopped(stopped).await;
                    h.graceful_shutdown(None);
                });
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(cfg)
                    .acceptor(axum_server::accept::NoDelayAcceptor::new());
                match axum_server::from_tcp(listener) {
                    Ok(server) => {
                        server
                            .acceptor(acceptor)
                            .handle(handle)
                            .serve(make_service)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let _ = background.await;
        for l in hook_loops {
            let _ = l.await;
        }
        if let Some(m) = &mcp {
            m.close().await;
        }
        serve_store.close().await;
        tracing::info!("server stopped");
        served.map_err(ServerError::Serve)
    });

    let scheme = if is_tls { "https" } else { "http" };
    tracing::info!("cflow listening on {scheme}://{addr}");
    let (admin_token, admin_token_path) = admin.map_or((None, None), |(t, p)| (Some(t), Some(p)));
    Ok(Running {
        addr,
        admin_token,
        admin_token_path,
        store,
        state,
        tls: is_tls,
        stop,
        task,
    })
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stopped.wait_for(|s| *s).await;
}

/// Appends one ledger entry per source address whose failed authentications were refused (429)
/// since the last call, with their number: the ledger shows a flood without growing with it.
async fn audit_suppressed_auth_failures(state: &AppState) {
    for (source, suppressed) in state.limits.take_suppressed() {
        let ctx = AuditContext {
            source: Some(source.clone()),
            ..AuditContext::default()
        };
        let event = AuditEvent {
            action: "auth".to_string(),
            resource: "*".to_string(),
            outcome: "rate_limited".to_string(),
            detail: serde_json::json!({
                "status": 429,
                "reason": "too many failed authentications from this address",
                "suppressed": suppressed,
            }),
        };
        if let Err(e) = state.store.audit_append(&ctx, event).await {
            tracing::warn!(%source, suppressed, error = %e, "could not audit suppressed authentication failures");
        }
    }
}

/// Periodic duties: purge expired memory, drain metric histograms, forget idle rate buckets,
/// audit refused authentication failures in aggregate.
async fn background(state: AppState, purge_every: Duration, stopped: watch::Receiver<bool>) {
    let mut purge = tokio::time::interval(purge_every);
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = until_stopped(stopped);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => {
                // Long-polls and event streams end now, so graceful shutdown does not wait on
                // them; the local pool drains.
                state.sched.shutdown();
                // The store closes only after this task ends.
                audit_suppressed_auth_failures(&state).await;
                return;
            }
            _ = purge.tick() => match state.store.memory_purge_expired(now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "purged expired memory entries"),
                Err(e) => tracing::warn!(error = %e, "purging expired memory failed"),
            },
            _ = upkeep.tick() => {
                state.metrics.upkeep();
                state.limits.shrink();
                state.auth_cache.shrink(now_ms());
                audit_suppressed_auth_failures(&state).await;
            }
        }
    }
}

/// The local pool's drivers: `exec` in the sandbox the config describes. A sandbox that cannot
/// be set up stops the start (with the reason), unless the operator turned it off.
/// Also returns the pool's sandbox, which command hooks share (a second sandbox on the same
/// data directory would sweep this one's live workspaces when it starts).
type LocalDrivers = (
    cflow_agents::Drivers,
    Option<std::sync::Arc<cflow_sandbox::host::Sandbox>>,
);

fn local_drivers(config: &ServerConfig) -> Result<LocalDrivers, ServerError> {
    let exec = cflow_agents::ExecConfig::default();
    if config.sched.local_slots == 0 {
        return Ok((cflow_agents::Drivers::builtin(exec), None));
    }
    let sandbox = config
        .sandbox
        .build(&config.data_dir, &config.secret_files)
        .map_err(|e| ServerError::Scheduler(format!("sandbox: {e}")))?;
    match &sandbox {
        None => tracing::warn!(
            "the sandbox is turned off (sandbox.mode = \"off\"): local commands run unsandboxed"
        ),
        Some(s) => match s.probe() {
            Ok(layers) => {
                let missing: Vec<String> = layers
                    .iter()
                    .filter(|(_, st)| !st.is_active())
                    .map(|(l, st)| format!("{l}: {st}"))
                    .collect();
                if missing.is_empty() {
                    tracing::info!("sandbox: every layer active");
                } else {
                    tracing::warn!(missing = %missing.join("; "), "sandbox: some layers are not active");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sandbox probe failed"),
        },
    }
    let sandbox = sandbox.map(std::sync::Arc::new);
    let drivers = cflow_agents::Drivers::with_sandbox(
        exec,
        sandbox.clone(),
        Some(cflow_agents::ClaudeConfig::from_env(&config.data_dir)),
        Some(cflow_agents::LlmConfig::from_env()),
    );
    Ok((drivers, sandbox))
}
