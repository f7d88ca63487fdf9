//! `GET /api/v1/events`: the caller's tenant's state changes as server-sent events, filtered by
//! type prefix, resumable with `Last-Event-ID`. A client that falls behind the live feed (a
//! channel much smaller than the ring) catches up from the ring. When events were really missed
//! (the id left the ring or is from an earlier boot, or the client fell so far behind that what
//! it skipped left the ring too) the stream sends a `reset` event: the client must re-read the
//! state it cares about. See `crate::events`.

use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiError, ApiResult, ProblemResponse};
use crate::events::{Event, EventBus, Resume};
use crate::extract::Query;
use crate::state::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Comma-separated type prefixes (`task.,agent.busy`); absent: every type.
    pub types: Option<String>,
}

/// Parses the `types` filter into prefixes.
fn prefixes(types: Option<&str>) -> ApiResult<Vec<String>> {
    let Some(types) = types else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = types
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let sane = |p: &String| {
        p.len() <= 64
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || matches!(b, b'.' | b'_'))
    };
    if list.is_empty() || !list.iter().all(sane) {
        return Err(ApiError::bad_request(
            "types",
            "types must be comma-separated type prefixes such as 'task.,agent.'",
        ));
    }
    Ok(list)
}

/// What a client reads: the event without its tenant.
fn to_sse(e: &Event) -> SseEvent {
    let data = json!({
        "id": e.id(),
        "type": e.kind,
        "subject": e.subject,
        "data": e.data,
        "at": time(e.at),
    });
    SseEvent::default()
        .id(e.id())
        .event(e.kind.clone())
        .data(data.to_string())
}

/// How many events one catch-up read takes from the ring: what a lagging client holds in memory
/// at a time, whatever the size of the ring.
const REFILL: usize = 1024;

fn reset(why: &str) -> SseEvent {
    SseEvent::default()
        .event("reset")
        .data(json!({ "reason": why }).to_string())
}

/// The stream's state between two events. It hands on every wanted event once, in `seq` order:
/// when the live receiver lags, what it skipped is read from the ring in chunks, and the live
/// events that those reads already covered are dropped as duplicates (as the hooks dispatcher's
/// cursor does).
struct Feed {
    tenant: String,
    prefixes: Vec<String>,
    reset: Option<&'static str>,
    /// Events to hand on (those wanted) before reading more: the `Last-Event-ID` replay, then
    /// each chunk read from the ring while catching up.
    backlog: VecDeque<Arc<Event>>,
    bus: EventBus,
    live: Receiver<Arc<Event>>,
    /// The events after `last_seq` come from the ring until it is drained: the live receiver
    /// skipped some of them.
    behind: bool,
    /// The `seq` of the last event taken, wanted or not (or counted lost), so a catch-up read
    /// starts after everything already looked at.
    last_seq: u64,
    /// Ends the stream when the server shuts down (graceful shutdown waits for open responses).
    sched: crate::sched::Scheduler,
}

impl Feed {
    fn wanted(&self, e: &Event) -> bool {
        (e.tenant_id == self.tenant || e.tenant_id == crate::sched::ALL_TENANTS)
            && (self.prefixes.is_empty() || self.prefixes.iter().any(|p| e.kind.starts_with(p)))
    }

    async fn next(&mut self) -> Option<SseEvent> {
        if let Some(why) = self.reset.take() {
            return Some(reset(why));
        }
        loop {
            while let Some(e) = self.backlog.pop_front() {
                // A replayed event is at or below `last_seq` already; one read from the ring
                // moves it on.
                self.last_seq = self.last_seq.max(e.seq);
                if self.wanted(&e) {
                    return Some(to_sse(&e));
                }
            }
            if self.behind {
                if let Some(why) = self.refill() {
                    return Some(reset(why));
                }
                continue;
            }
            let received = tokio::select! {
                r = self.live.recv() => r,
                () = self.sched.stopped() => return None,
            };
            match received {
                // Already read from the ring (or from the replay).
                Ok(e) if e.seq <= self.last_seq => {}
                // A gap that no lag report announced: fill it from the ring all the same.
                Ok(e) if e.seq != self.last_seq + 1 => self.behind = true,
                Ok(e) => {
                    self.last_seq = e.seq;
                    if self.wanted(&e) {
                        return Some(to_sse(&e));
                    }
                }
                Err(RecvError::Lagged(_)) => self.behind = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Reads the next chunk after `last_seq` from the ring into the backlog. Events that left
    /// the ring before this client read them are lost, wanted or not (they can no longer be
    /// told apart): then the reason for a `reset`, which goes before the chunk.
    fn refill(&mut self) -> Option<&'static str> {
        let since = self.bus.since(self.last_seq, REFILL);
        self.last_seq += since.lost;
        // Fewer than asked for: the ring is drained, and the live receiver is back at or before
        // the next event (or it reports another lag).
        self.behind = since.events.len() == REFILL;
        self.backlog.extend(since.events);
        (since.lost > 0).then_some("this client fell behind and missed events")
    }
}

fn stream(feed: Feed) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(feed, |mut feed| async move {
        let e = feed.next().await?;
        Some((Ok(e), feed))
    })
}

/// The tenant's events as `text/event-stream`; each has `id: <boot>-<seq>`, `event: <type>` and
/// `data: {id, type, subject, data, at}`. Resume with `Last-Event-ID`; a `reset` event means some
/// events were missed (they left the server's ring before this client could read them) and state
/// must be re-read.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "events",
    params(
        EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
         description = "Server-sent events"),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn events(
    State(state): State<AppState>,
    caller: Caller<op::EventRead>,
    headers: HeaderMap,
    Query(q): Query<EventParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let prefixes = prefixes(q.types.as_deref())?;
    let resume = match headers.get("last-event-id") {
        None => Resume::Now,
        Some(v) => {
            let id = v.to_str().map_err(|_| {
                ApiError::bad_request("last-event-id", "Last-Event-ID is not valid text")
            })?;
            match id.trim() {
                "" => Resume::Now,
                id => Resume::After(id.to_string()),
            }
        }
    };
    let tenant = caller.tenant_id().to_string();
    let sub = state.events.subscribe(&tenant, resume);
    let feed = Feed {
        tenant,
        prefixes,
        reset: sub
            .reset
            .then_some("the events after Last-Event-ID are no longer available"),
        backlog: sub.backlog.into(),
        bus: state.events.clone(),
        live: sub.live,
        behind: false,
        last_seq: sub.last_seq,
        sched: state.sched.clone(),
    };
    Ok(Sse::new(stream(feed)).keep_alive(KeepAlive::default()))
}
