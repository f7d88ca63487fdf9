//! The worker's view of the scheduler: five calls and how they fail.

use cflow_agents::BoxFuture;
use cflow_agents::host::HostCall;
use cflow_agents::proto::{
    HostReply, PollRequest, PollResponse, Register, Registered, Report, ReportAck,
};
/// A file, patch or log an attempt produced, as the driver hands it over.
pub use cflow_sandbox::artifacts::Artifact;

/// The hint every authentication failure carries: which token a worker needs.
pub const TOKEN_HINT: &str = "use a key of role worker: cflow key create --role worker";

/// How a worker reaches the scheduler: over HTTP ([`HttpLink`](crate::HttpLink)) or in-process
/// (the server's local pool). Implementations classify every failure as a [`LinkError`]; the
/// runtime decides from that alone whether to retry.
pub trait Link: Send + Sync + 'static {
    /// `POST /api/v1/workers`: introduces the worker; the answer fixes its id and lease timing.
    fn register(&self, req: Register) -> BoxFuture<'_, Result<Registered, LinkError>>;

    /// `POST /api/v1/workers/{id}/poll`: the heartbeat, and where assignments and cancellations
    /// come from. May take up to `req.wait_ms` when the scheduler has nothing to say.
    fn poll<'a>(
        &'a self,
        worker_id: &'a str,
        req: PollRequest,
    ) -> BoxFuture<'a, Result<PollResponse, LinkError>>;

    /// `POST /api/v1/workers/{id}/reports`: one ack per report, in order.
    fn report<'a>(
        &'a self,
        worker_id: &'a str,
        reports: Vec<Report>,
    ) -> BoxFuture<'a, Result<Vec<ReportAck>, LinkError>>;

    /// `PUT /api/v1/workers/{id}/attempts/{task_id}/{epoch}/artifacts?name=…&kind=…`: stores
    /// one artifact of an attempt the worker holds, before it reports the attempt's end.
    fn put_artifact<'a>(
        &'a self,
        worker_id: &'a str,
        task_id: &'a str,
        epoch: i64,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<(), LinkError>>;

    /// `POST /api/v1/workers/{id}/attempts/{task_id}/{epoch}/calls`: a model loop's request to
    /// the server (a server-side tool, the budget check, usage accounting), fenced by the epoch.
    fn host_call<'a>(
        &'a self,
        worker_id: &'a str,
        task_id: &'a str,
        epoch: i64,
        call: HostCall,
    ) -> BoxFuture<'a, Result<HostReply, LinkError>>;

    /// `DELETE /api/v1/workers/{id}`: the worker leaves.
    fn deregister<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LinkError>>;
}

/// Why a call to the scheduler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// 401: the token is missing, malformed, revoked or expired. Fatal.
    #[error("the server did not accept the worker's token ({0}) — {TOKEN_HINT}")]
    Unauthorized(String),
    /// 403: the token is valid but its key may not connect workers. Fatal.
    #[error("the worker's key may not connect workers ({0}) — {TOKEN_HINT}")]
    Forbidden(String),
    /// Any other refusal (4xx, or an answer that does not parse): fatal for this request,
    /// retrying the same request cannot help.
    #[error("the server refused the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// The server could not be reached or is overloaded (connection errors, timeouts, 408, 429,
    /// 5xx): retry with backoff.
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
}

impl LinkError {
    /// Whether no request can succeed until the user changes the token.
    pub fn is_auth(&self) -> bool {
        matches!(self, LinkError::Unauthorized(_) | LinkError::Forbidden(_))
    }

    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, LinkError::Unavailable(_))
    }
}
