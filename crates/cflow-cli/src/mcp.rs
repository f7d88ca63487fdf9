//! `cflow mcp`: cflow's MCP tools and resources (crates/cflow-mcp) over stdio, as a thin client
//! of a running cflow server: every call becomes requests to the HTTP API with the user's token,
//! so RBAC, tenancy and audit apply exactly as over HTTP.

use crate::client::{ApiError, Client};
use anyhow::{Context, Result};
use cflow_mcp::{Api, ApiFailure, ApiRequest, Raw};
use rmcp::ServiceExt;

/// The API over HTTP with the CLI's client, or the reason there is no client (no token, a bad
/// server URL): then every call fails with that reason, so that a misconfigured MCP server
/// still starts and tells the model what to fix instead of vanishing.
pub struct HttpApi {
    client: Result<Client, String>,
}

impl HttpApi {
    pub fn new(client: Result<Client, String>) -> Self {
        Self { client }
    }
}

impl Api for HttpApi {
    async fn fetch(&self, req: ApiRequest) -> Result<Raw, ApiFailure> {
        let client = self.client.as_ref().map_err(|e| ApiFailure {
            status: None,
            message: format!("cflow mcp is not configured: {e}"),
        })?;
        let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
        let mut url = client.url(&segments);
        if !req.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &req.query {
                pairs.append_pair(k, v);
            }
        }
        let mut builder = client.request(req.method, url);
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }
        let failure = |e: anyhow::Error| ApiFailure {
            status: e.downcast_ref::<ApiError>().map(|a| a.status.as_u16()),
            message: format!("{e:#}"),
        };
        let resp = client.send(builder, req.action).await.map_err(failure)?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .context("reading the server's answer")
            .map_err(failure)?;
        Ok(Raw {
            content_type,
            body: body.to_vec(),
        })
    }
}

/// Serves the tools on stdin/stdout until the client closes the connection.
pub async fn serve_stdio(api: HttpApi) -> Result<()> {
    let records = tokio_util::task::TaskTracker::new();
    let service = cflow_mcp::CflowTools::with_records(std::sync::Arc::new(api), records.clone())
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    let served = service.waiting().await.context("serving MCP on stdio");
    // The last calls' ledger entries are written after their answers: let them land.
    records.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), records.wait()).await;
    served?;
    Ok(())
}

/// How long `--start` waits for the server it started to become ready.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `cflow mcp --start`: when no server answers at the configured URL (which must be on this
/// machine), starts `cflow up` on that address in the background, in its own process group so
/// that it outlives this MCP session (and serves the next ones), with its output appended to
/// `<data_dir>/cflow-up.log` (mode 0600: the first start prints the admin token), and waits
/// until it is ready. Progress goes to stderr; stdout belongs to the MCP protocol.
pub async fn ensure_server(
    loaded: &crate::config::Loaded,
    config_file: Option<&std::path::Path>,
) -> Result<()> {
    use anyhow::bail;
    let base = crate::client::parse_server_url(&loaded.config.client.server)?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(800))
        .tls_certs_only(Vec::new())
        .build()
        .context("creating the HTTP client")?;
    let ready_url = base.join("readyz").context("the server URL")?;
    let ready = || async {
        http.get(ready_url.clone())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    if ready().await {
        return Ok(());
    }
    if !crate::client::is_local(&base) {
        bail!(
            "no cflow server answers at {} and --start only starts one on this machine: start it there, or point --server at a local address",
            crate::client::shown(&base)
        );
    }
    if base.scheme() != "http" {
        bail!("--start starts a plain-HTTP server: use an http:// --server URL");
    }
    let host = base.host_str().unwrap_or("127.0.0.1");
    let port = base.port_or_known_default().unwrap_or(80);
    let listen = if host.contains(':') {
        format!("{host}:{port}")
    } else {
        format!(
            "{}:{port}",
            if host.eq_ignore_ascii_case("localhost") {
                "127.0.0.1"
            } else {
                host
            }
        )
    };
    let data_dir = &loaded.config.server.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let log_path = data_dir.join("cflow-up.log");
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?
    };
    let exe = std::env::current_exe().context("locating the cflow binary")?;
    let mut cmd = std::process::Command::new(exe);
    if let Some(file) = config_file {
        cmd.arg("--config").arg(file);
    }
    cmd.args(["up", "--listen", &listen])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting 'cflow up'")?;
    eprintln!(
        "cflow mcp: no server at {}: started 'cflow up --listen {listen}' (pid {}, log {})",
        crate::client::shown(&base),
        child.id(),
        log_path.display()
    );
    let deadline = std::time::Instant::now() + START_WAIT;
    loop {
        if ready().await {
            return Ok(());
        }
        // Another session may have started a server on the address first: then ours exits
        // (address in use) and theirs answers.
        if let Ok(Some(status)) = child.try_wait()
            && !ready().await
        {
            bail!(
                "'cflow up' exited ({status}) before it was ready: see {}",
                log_path.display()
            );
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "'cflow up' was not ready after {} s: see {}",
                START_WAIT.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
