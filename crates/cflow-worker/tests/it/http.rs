//! [`HttpLink`] against a small axum server that speaks the protocol's wire format: paths, bearer
//! token, status codes and problem+json details.

use super::*;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use cflow_agents::proto::{ReportAcks, ReportBatch};
use cflow_worker::HttpLink;
use serde_json::json;

fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        Json(json!({"type": "about:blank", "title": "error", "status": status.as_u16(), "detail": detail})),
    )
        .into_response()
}

/// The refusal for a request without the right token, if any.
fn refused(h: &HeaderMap) -> Option<Response> {
    match h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some("Bearer good") => None,
        Some("Bearer viewer") => Some(problem(StatusCode::FORBIDDEN, "role viewer may not")),
        _ => Some(problem(StatusCode::UNAUTHORIZED, "invalid token")),
    }
}

async fn register(h: HeaderMap, Json(req): Json<Register>) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    let worker_id = req.worker_id.unwrap_or_else(|| "w-new".into());
    (
        StatusCode::CREATED,
        Json(Registered {
            worker_id,
            heartbeat_ms: 2_000,
            lease_ms: 15_000,
        }),
    )
        .into_response()
}

async fn poll(Path(id): Path<String>, h: HeaderMap, Json(req): Json<PollRequest>) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    match id.as_str() {
        "busy" => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "bad" => return problem(StatusCode::BAD_REQUEST, "free_slots: must be at most 1024"),
        "garbled" => return (StatusCode::OK, "not json").into_response(),
        _ => {}
    }
    let assignments = if req.free_slots > 0 {
        vec![shell("t-1", "true")]
    } else {
        vec![]
    };
    Json(PollResponse {
        assignments,
        cancel: req.held,
    })
    .into_response()
}

/// Every report the server received.
type Seen = Arc<Mutex<Vec<Report>>>;

async fn reports(
    State(seen): State<Seen>,
    h: HeaderMap,
    Json(batch): Json<ReportBatch>,
) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    seen.lock().unwrap().extend(batch.reports.iter().cloned());
    let acks = batch
        .reports
        .iter()
        .map(|r| match r {
            Report::Started { task_id, .. } if task_id == "stale" => ReportAck {
                status: 409,
                detail: Some("stale epoch".into()),
            },
            _ => ReportAck::ok(),
        })
        .collect();
    Json(ReportAcks { acks }).into_response()
}

async fn leave(State(seen): State<Seen>, Path(id): Path<String>, h: HeaderMap) -> Response {
    if let Some(r) = refused(&h) {
        return r;
    }
    seen.lock().unwrap().clear();
    if id == "gone" {
        return problem(StatusCode::NOT_FOUND, "no such worker");
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn serve() -> reqwest::Url {
    serve_with(Seen::default()).await
}

/// Serves the fake protocol on 127.0.0.1:0; `seen` collects the reports (a DELETE clears it).
async fn serve_with(seen: Seen) -> reqwest::Url {
    let app = Router::new()
        .route("/api/v1/workers", post(register))
        .route("/api/v1/workers/{id}/poll", post(poll))
        .route("/api/v1/workers/{id}/reports", post(reports))
        .route("/api/v1/workers/{id}", delete(leave))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}").parse().unwrap()
}

fn reg() -> Register {
    Register {
        worker_id: Some("w-1".into()),
        name: "host".into(),
        labels: [("region".to_string(), "eu".to_string())].into(),
        slots: 2,
        drivers: vec!["exec".into()],
    }
}

#[tokio::test]
async fn the_protocol_round_trips_over_http() {
    let link = HttpLink::new(serve().await, "good").unwrap();
    let r = link.register(reg()).await.unwrap();
    assert_eq!((r.worker_id.as_str(), r.heartbeat_ms), ("w-1", 2_000));

    let held = vec![Held {
        task_id: "t-0".into(),
        epoch: 4,
    }];
    let resp = link
        .poll(
            "w-1",
            PollRequest {
                held: held.clone(),
                free_slots: 1,
                wait_ms: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(resp.assignments.len(), 1);
    assert_eq!(resp.assignments[0].spec, json!({"command": "true"}));
    assert_eq!(resp.cancel, held);

    let acks = link
        .report(
            "w-1",
            vec![
                Report::Started {
                    task_id: "ok".into(),
                    epoch: 1,
                    waited_ms: 0,
                    at: None,
                },
                Report::Started {
                    task_id: "stale".into(),
                    epoch: 1,
                    waited_ms: 0,
                    at: None,
                },
            ],
        )
        .await
        .unwrap();
    assert!(acks[0].is_ok());
    assert_eq!(
        (acks[1].status, acks[1].detail.as_deref()),
        (409, Some("stale epoch"))
    );
    link.deregister("w-1").await.unwrap();
    link.deregister("gone").await.unwrap();
}

#[tokio::test]
async fn failures_are_classified_with_the_servers_detail() {
    let base = serve().await;
    let err = HttpLink::new(base.clone(), "wrong")
        .unwrap()
        .register(reg())
        .await
        .unwrap_err();
    assert_eq!(err, LinkError::Unauthorized("invalid token".into()));
    assert!(err.to_string().contains("cflow key create --role worker"));
    let err = HttpLink::new(base.clone(), "viewer")
        .unwrap()
        .register(reg())
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Forbidden(ref d) if d == "role viewer may not"));

    let link = HttpLink::new(base, "good").unwrap();
    let req = || PollRequest {
        held: vec![],
        free_slots: 0,
        wait_ms: 0,
    };
    let err = link.poll("busy", req()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let err = link.poll("bad", req()).await.unwrap_err();
    assert_eq!(
        err,
        LinkError::Rejected {
            status: 400,
            detail: "free_slots: must be at most 1024".into()
        }
    );
    let err = link.poll("garbled", req()).await.unwrap_err();
    assert!(
        matches!(err, LinkError::Rejected { status: 200, ref detail } if detail.contains("unexpected response")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_transient_failure() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let link = HttpLink::new(format!("http://127.0.0.1:{port}").parse().unwrap(), "good").unwrap();
    let err = link.register(reg()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_worker_runs_end_to_end_over_http() {
    let seen = Seen::default();
    let base = serve_with(seen.clone()).await;
    let link: Arc<dyn Link> = Arc::new(HttpLink::new(base, "good").unwrap());
    let drivers = Drivers::builtin(ExecConfig::default());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(cflow_worker::run(
        link,
        drivers,
        options(1),
        shutdown.clone(),
    ));
    // The server hands out a `true` command at every poll with a free slot.
    eventually("a task to finish over HTTP", || {
        seen.lock().unwrap().iter().any(|r| {
            matches!(r, Report::Finished { task_id, outcome, .. }
                if task_id == "t-1" && outcome.status == cflow_agents::proto::FinishedStatus::Succeeded)
        })
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        seen.lock().unwrap().is_empty(),
        "deregistered (DELETE) at the end"
    );
}
