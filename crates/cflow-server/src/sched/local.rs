//! The local worker pool inside the server: the same worker loop as a remote `cflow worker`
//! (`cflow_worker::WorkerRuntime`), linked to the scheduler in-process instead of over HTTP, so
//! one protocol and one code path serve both.

use std::sync::Arc;

use cflow_agents::host::HostCall;
use cflow_agents::proto::{
    HostReply, PollRequest, PollResponse, Register, Registered, Report, ReportAck,
};
use cflow_agents::{BoxFuture, Drivers};
use cflow_worker::link::Artifact;
use cflow_worker::{Link, LinkError, WorkerOptions};

use super::{SchedError, Scheduler};

/// The local pool's worker id: stable, so that after a restart its old attempts are recognised
/// as its own (they died with the old process and are re-queued when their leases expire).
pub const LOCAL_WORKER_ID: &str = "local";

struct LocalLink(Scheduler);

fn link_error(e: SchedError) -> LinkError {
    match e {
        SchedError::ShuttingDown => LinkError::Unavailable(e.to_string()),
        SchedError::Store(ref s) if !matches!(s, cflow_store::Error::Invalid(_)) => {
            LinkError::Unavailable(e.to_string())
        }
        other => LinkError::Rejected {
            status: 400,
            detail: other.to_string(),
        },
    }
}

impl Link for LocalLink {
    fn register(&self, req: Register) -> BoxFuture<'_, Result<Registered, LinkError>> {
        Box::pin(async move { self.0.register_worker(None, req).map_err(link_error) })
    }

    fn poll<'a>(
        &'a self,
        worker_id: &'a str,
        req: PollRequest,
    ) -> BoxFuture<'a, Result<PollResponse, LinkError>> {
        Box::pin(async move { self.0.poll(None, worker_id, req).await.map_err(link_error) })
    }

    fn report<'a>(
        &'a self,
        worker_id: &'a str,
        reports: Vec<Report>,
    ) -> BoxFuture<'a, Result<Vec<ReportAck>, LinkError>> {
        Box::pin(async move {
            self.0
                .apply_reports(None, worker_id, reports)
                .await
                .map_err(link_error)
        })
    }

    fn put_artifact<'a>(
        &'a self,
        worker_id: &'a str,
        task_id: &'a str,
        epoch: i64,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            let kind = cflow_worker::http::artifact_kind(artifact);
            let ctx = cflow_store::AuditContext::default();
            let stored = self
                .0
                .put_artifact(
                    &ctx,
                    None,
                    worker_id,
                    task_id,
                    epoch,
                    &artifact.name,
                    &kind,
                    artifact.bytes.clone(),
                )
                .await;
            match stored {
                Ok(_) => Ok(()),
                // Refused for good (another worker's or an older attempt): like an HTTP 409.
                Err(SchedError::Store(
                    e @ (cflow_store::Error::StaleEpoch { .. } | cflow_store::Error::State(_)),
                )) => Err(LinkError::Rejected {
                    status: 409,
                    detail: e.to_string(),
                }),
                Err(SchedError::Store(e @ cflow_store::Error::NotFound(_))) => {
                    Err(LinkError::Rejected {
                        status: 404,
                        detail: e.to_string(),
                    })
                }
                Err(e) => Err(link_error(e)),
            }
        })
    }

    fn host_call<'a>(
        &'a self,
        worker_id: &'a str,
        task_id: &'a str,
        epoch: i64,
        call: HostCall,
    ) -> BoxFuture<'a, Result<HostReply, LinkError>> {
        Box::pin(async move {
            self.0
                .host_call(None, worker_id, task_id, epoch, call)
                .await
                .map_err(|e| match e {
                    SchedError::Store(
                        e @ (cflow_store::Error::StaleEpoch { .. } | cflow_store::Error::State(_)),
                    ) => LinkError::Rejected {
                        status: 409,
                        detail: e.to_string(),
                    },
                    SchedError::Store(e @ cflow_store::Error::NotFound(_)) => LinkError::Rejected {
                        status: 404,
                        detail: e.to_string(),
                    },
                    // As over HTTP: an unknown worker is a 404, which stops the loop.
                    SchedError::NotFound(what) => LinkError::Rejected {
                        status: 404,
                        detail: format!("{what} not found"),
                    },
                    e => link_error(e),
                })
        })
    }

    fn deregister<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            self.0
                .deregister_worker(None, worker_id)
                .await
                .map_err(link_error)
        })
    }
}

/// Starts the local pool with `config.local_slots` slots; it stops with the scheduler.
pub(crate) fn start_pool(sched: &Scheduler, drivers: Drivers) {
    let mut options = WorkerOptions::new("local pool", sched.config.local_slots);
    options.worker_id = Some(LOCAL_WORKER_ID.to_string());
    let link: Arc<dyn Link> = Arc::new(LocalLink(sched.clone()));
    let stop = sched.stop.clone();
    tokio::spawn(async move {
        if let Err(e) = cflow_worker::run(link, drivers, options, stop).await {
            tracing::error!(error = %e, "the local worker pool stopped");
        }
    });
}
