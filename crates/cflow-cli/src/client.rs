//! The HTTP client for the cflow API: builds URLs (namespaces as one percent-encoded segment),
//! attaches the token, and turns every failure into an error that says what went wrong and what
//! to do about it.

use crate::config::{Config, Loaded, layer_name};
use crate::env;
use anyhow::{Context, Result, bail};
use cflow_core::{Action, Role};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The name of the file in which the server leaves the bootstrap superadmin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A client bound to one server and one token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
    /// Where the token came from, for error hints (`--token`, `CFLOW_TOKEN`, a file path).
    token_origin: String,
    data_dir: PathBuf,
}

impl Client {
    /// A client for the configured server, with the token from the configuration or, for a
    /// server on this machine, from `<data-dir>/admin.token`.
    pub fn from_config(loaded: &Loaded) -> Result<Self> {
        let config = &loaded.config;
        let base = parse_server_url(&config.client.server)?;
        let (token, token_origin) = match &config.client.token {
            Some(t) => {
                let origin = loaded
                    .figment
                    .find_metadata("client.token")
                    .map(|md| layer_name(md, "client.token"))
                    .unwrap_or_else(|| "the configuration".into());
                (t.trim().to_string(), origin)
            }
            None => admin_token(config, &base)?,
        };
        Self::new(base, token, token_origin, config.server.data_dir.clone())
    }

    pub fn new(base: Url, token: String, token_origin: String, data_dir: PathBuf) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("cflow-cli/", env!("CARGO_PKG_VERSION")));
        if base.scheme() == "http" {
            // Loading the system's root certificates costs milliseconds at every start, and a
            // plain-HTTP server needs none of them.
            builder = builder.tls_certs_only(Vec::new());
        }
        let http = builder.build().context("creating the HTTP client")?;
        Ok(Self {
            http,
            base,
            token,
            token_origin,
            data_dir,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// `<base>/api/v1/<segments…>`, each segment percent-encoded on its own, so that a namespace
    /// such as `project/web` travels as the single segment `project%2Fweb`.
    pub fn url(&self, segments: &[&str]) -> Url {
        api_url(&self.base, segments)
    }

    /// A request with the token attached.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    /// Sends a request; any non-2xx answer becomes an [`ApiError`]. `action` is what the request
    /// needs permission for, so that a 403 can say which roles have it.
    pub async fn send(&self, req: RequestBuilder, action: Action) -> Result<Response> {
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.unwrap_or_default();
        let problem: Problem = serde_json::from_slice(&body).unwrap_or_else(|_| Problem {
            detail: Some(String::from_utf8_lossy(&body).trim().to_string())
                .filter(|s| !s.is_empty()),
            ..Problem::default()
        });
        Err(ApiError {
            status,
            problem,
            action,
            retry_after,
            token_origin: self.token_origin.clone(),
            admin_token_path: self.data_dir.join(ADMIN_TOKEN_FILE),
        }
        .into())
    }

    /// Sends a request and parses the JSON answer.
    pub async fn json(&self, req: RequestBuilder, action: Action) -> Result<Value> {
        let resp = self.send(req, action).await?;
        let url = resp.url().clone();
        resp.json::<Value>()
            .await
            .with_context(|| format!("reading the answer of {url}"))
    }

    /// Follows `next_cursor` from page to page, calling `each` with every page's items.
    pub async fn pages(
        &self,
        url: Url,
        action: Action,
        mut each: impl FnMut(Vec<Value>) -> Result<()>,
    ) -> Result<()> {
        let mut cursor: Option<String> = None;
        loop {
            let mut u = url.clone();
            if let Some(c) = &cursor {
                u.query_pairs_mut().append_pair("cursor", c);
            }
            let page = self.json(self.request(Method::GET, u), action).await?;
            let (items, next) = split_page(page);
            each(items)?;
            match next {
                Some(c) if cursor.as_ref() != Some(&c) => cursor = Some(c),
                _ => return Ok(()),
            }
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let reason = root_cause(&e);
        if e.is_connect() || e.is_timeout() {
            anyhow::anyhow!(
                "cannot reach cflow server at {} ({reason}) — start it with 'cflow up' or set --server/{}",
                shown(&self.base),
                env_name("client.server")
            )
        } else {
            anyhow::anyhow!(
                "request to cflow server at {} failed: {reason}",
                shown(&self.base)
            )
        }
    }
}

/// `<base>/api/v1/<segments…>` (see [`Client::url`]).
pub fn api_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(["api", "v1"]).extend(segments);
    }
    url
}

/// A server URL as users write it (without the trailing slash the URL parser adds).
pub fn shown(url: &Url) -> &str {
    url.as_str().trim_end_matches('/')
}

/// Splits a `{items, next_cursor}` page.
pub fn split_page(page: Value) -> (Vec<Value>, Option<String>) {
    let next = page
        .get("next_cursor")
        .and_then(Value::as_str)
        .map(str::to_string);
    let items = match page {
        Value::Object(mut m) => match m.remove("items") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    (items, next)
}

/// Validates `--server`: an http(s) URL.
pub fn parse_server_url(s: &str) -> Result<Url> {
    let url = Url::parse(s).with_context(|| {
        format!(
            "'{s}' is not a server URL — pass e.g. --server http://127.0.0.1:7700 (or set {})",
            env_name("client.server")
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        bail!("'{s}' is not an http:// or https:// server URL");
    }
    Ok(url)
}

/// Whether the URL points at this machine, where `admin.token` may be read from the data dir.
pub fn is_local(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn admin_token(config: &Config, base: &Url) -> Result<(String, String)> {
    let token_var = env_name("client.token");
    if !is_local(base) {
        bail!(
            "no API token for {} — pass --token or set {token_var} (the admin.token fallback applies only to a server on this machine)",
            shown(base)
        );
    }
    let path = config.server.data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok((t.trim().to_string(), path.display().to_string())),
        Ok(_) => bail!(
            "{} is empty — pass --token or set {token_var}",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no API token: pass --token or set {token_var}; for a local server started with 'cflow up' the admin token is read from {}, which does not exist (is --data-dir/{} right? start the server with 'cflow up')",
            path.display(),
            env_name("server.data_dir")
        ),
        Err(e) => {
            Err(e).with_context(|| format!("reading the admin token from {}", path.display()))
        }
    }
}

fn env_name(key: &str) -> &'static str {
    env::by_key(key).map(|v| v.name).unwrap_or("CFLOW_*")
}

/// The innermost cause of a transport error, e.g. "connection refused".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let s = cur.to_string();
    // An I/O error's text carries "(os error 111)"; users need the words only.
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    pub title: Option<String>,
    pub detail: Option<String>,
    pub field: Option<String>,
    pub request_id: Option<String>,
    pub current_version: Option<i64>,
}

/// A non-2xx answer from the server.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub problem: Problem,
    pub action: Action,
    pub retry_after: Option<String>,
    token_origin: String,
    admin_token_path: PathBuf,
}

impl ApiError {
    /// The problem's detail, with the offending field when the server named one.
    fn what(&self) -> String {
        let p = &self.problem;
        let mut s = p
            .detail
            .clone()
            .or_else(|| p.title.clone())
            .unwrap_or_else(|| self.status.to_string());
        if let Some(f) = &p.field
            && !s.contains(f.as_str())
        {
            s.push_str(&format!(" (field: {f})"));
        }
        s
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.what();
        match self.status {
            StatusCode::UNAUTHORIZED => write!(
                f,
                "the server rejected the token from {} ({what}) — pass --token or set {}; for a local server the admin token is in {}",
                self.token_origin,
                env_name("client.token"),
                self.admin_token_path.display()
            ),
            StatusCode::FORBIDDEN => {
                let roles: Vec<&str> = Role::ALL
                    .into_iter()
                    .filter(|r| cflow_core::authz::allows(*r, self.action))
                    .map(Role::as_str)
                    .collect();
                write!(
                    f,
                    "permission denied ({what}) — this needs a key with one of the roles: {}; check yours with 'cflow whoami'",
                    roles.join(", ")
                )
            }
            StatusCode::NOT_FOUND if what.contains("not found") => f.write_str(&what),
            StatusCode::NOT_FOUND => write!(f, "not found: {what}"),
            StatusCode::CONFLICT => write!(f, "conflict: {what}"),
            StatusCode::PRECONDITION_FAILED => {
                write!(f, "version conflict: {what}")?;
                match self.problem.current_version {
                    Some(v) if !what.contains(&v.to_string()) => {
                        write!(f, " (current version: {v})")?
                    }
                    None if !what.contains("not exist") && !what.contains("absent") => {
                        f.write_str(" (the entry does not exist)")?
                    }
                    _ => {}
                }
                f.write_str("; nothing was changed")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                write!(f, "request too large: {what} — send a smaller value")
            }
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                write!(f, "invalid request: {what}")
            }
            StatusCode::TOO_MANY_REQUESTS => write!(
                f,
                "rate limited ({what}) — retry in {} s",
                self.retry_after.as_deref().unwrap_or("a few")
            ),
            s if s.is_server_error() => write!(
                f,
                "the server failed ({s}{}) — see the server log{}",
                if what == s.to_string() {
                    String::new()
                } else {
                    format!(": {what}")
                },
                self.problem
                    .request_id
                    .as_ref()
                    .map(|r| format!(" for request {r}"))
                    .unwrap_or_default()
            ),
            s => write!(f, "the server answered {s}: {what}"),
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_one_segment() {
        let base = Url::parse("http://127.0.0.1:7700").unwrap();
        let u = api_url(&base, &["memory", "project/web", "a key"]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:7700/api/v1/memory/project%2Fweb/a%20key"
        );
        let prefixed = Url::parse("https://h/cflow/").unwrap();
        assert_eq!(
            api_url(&prefixed, &["whoami"]).path(),
            "/cflow/api/v1/whoami"
        );
    }

    #[test]
    fn local_servers() {
        for u in [
            "http://127.0.0.1:7700",
            "http://localhost",
            "http://[::1]:1",
        ] {
            assert!(is_local(&Url::parse(u).unwrap()), "{u}");
        }
        assert!(!is_local(&Url::parse("http://10.0.0.1").unwrap()));
        assert!(parse_server_url("ftp://x").is_err());
        assert!(parse_server_url("127.0.0.1:7700").is_err());
    }
}
