//! The event stream (`GET /api/v1/events`, server-sent events): a task's life from
//! `task.queued` to `task.succeeded`, resuming with `Last-Event-ID` replays only what came after
//! it, a lost position gets a `reset`, another tenant's events never appear, and a client that
//! falls behind a burst catches up from the ring (a `reset` only when the ring lost events too).

use crate::common::{expect_problem, now_ms};
use crate::orchestration::{Api, RUN_TIMEOUT, coders};
use cflow_test_support::server::TestServer;
use serde_json::{Value, json};
use std::time::Instant;

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// Reads events from an open `text/event-stream` response.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub async fn open(api: &Api<'_>, query: &str, last_event_id: Option<&str>) -> SseReader {
        let mut req = api
            .server
            .client()
            .get(api.server.at(&format!("/api/v1/events{query}")))
            .bearer_auth(&api.token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), failing the test past the deadline.
    pub async fn next(&mut self) -> Sse {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Sse { id, event, data };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("timed out waiting for an event")
                .expect("stream read")
                .expect("stream still open");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// Reads until an event matches; returns every event read, the match last.
    pub async fn until(&mut self, mut done: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let stop = done(&e);
            seen.push(e);
            if stop {
                return seen;
            }
        }
    }
}

fn seq(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

async fn stream_resume_and_isolation(server: TestServer) {
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let (_, other_admin) = server.tenant_with_key("rival", "admin").await;
    let api = Api::new(&server, &admin);
    let rival = Api::new(&server, &other_admin);
    let mut rival_stream = SseReader::open(&rival, "", None).await;
    let mut stream = SseReader::open(&api, "?types=task.", None).await;

    let swarm = api
        .create_swarm(json!({"name": "ev", "topology": "mesh", "agents": coders(1)}))
        .await;
    let t = api
        .submit(json!([{"swarm": swarm["id"], "spec": {"command": "echo evented"}}]))
        .await;
    let task = t[0]["id"].as_str().unwrap().to_string();
    let seen = stream
        .until(|e| e.event == "task.succeeded" && e.data["subject"] == task.as_str())
        .await;
    let mine: Vec<&Sse> = seen
        .iter()
        .filter(|e| e.data["subject"] == task.as_str())
        .collect();
    assert_eq!(mine[0].event, "task.queued", "{seen:?}");
    assert!(
        seen.iter().all(|e| e.event.starts_with("task.")),
        "{seen:?}"
    );
    let queued = mine[0];
    let queued_id = queued.id.clone().expect("events carry ids");
    assert_eq!(queued.data["id"], queued_id.as_str());
    assert_eq!(queued.data["type"], "task.queued");
    let at = queued.data["at"].as_str().expect("RFC 3339 time");
    let at = cflow_core::timefmt::parse_rfc3339(at).expect("RFC 3339");
    assert!((at - now_ms()).abs() < 120_000);
    assert!(queued.data.get("tenant_id").is_none(), "{:?}", queued.data);
    // Ids grow.
    let seqs: Vec<u64> = seen.iter().map(|e| seq(e.id.as_deref().unwrap())).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Resuming after task.queued replays the later events of that task, not the queued one.
    let mut resumed = SseReader::open(&api, "?types=task.", Some(&queued_id)).await;
    let replay = resumed
        .until(|e| e.event == "task.succeeded" && e.data["subject"] == task.as_str())
        .await;
    assert!(
        replay
            .iter()
            .all(|e| seq(e.id.as_deref().unwrap()) > seq(&queued_id)),
        "{replay:?}"
    );
    assert!(replay.iter().all(|e| e.event != "reset"), "{replay:?}");
    drop(resumed);

    // An id from another boot (or long gone) starts with a reset.
    let mut lost = SseReader::open(&api, "", Some("0-1")).await;
    assert_eq!(lost.next().await.event, "reset");
    drop(lost);

    // The rival tenant's stream shows its own task and nothing of acme's.
    let rs = rival
        .create_swarm(json!({"name": "ev", "topology": "mesh", "agents": coders(1)}))
        .await;
    let rt = rival
        .submit(json!([{"swarm": rs["id"], "spec": {"command": "echo rival"}}]))
        .await;
    let rival_task = rt[0]["id"].as_str().unwrap().to_string();
    let rival_seen = rival_stream
        .until(|e| e.event == "task.succeeded" && e.data["subject"] == rival_task.as_str())
        .await;
    let acme_ids = [task.as_str(), swarm["id"].as_str().unwrap()];
    for e in &rival_seen {
        let text = e.data.to_string();
        assert!(
            acme_ids.iter().all(|id| !text.contains(id)),
            "the rival saw acme's event {e:?}"
        );
    }
    assert!(
        rival_seen.iter().any(|e| e.event == "swarm.created"),
        "{rival_seen:?}"
    );
    drop(stream);
    drop(rival_stream);
    server.shutdown().await;
}

#[tokio::test]
async fn event_stream_resume_and_tenant_isolation_on_sqlite() {
    stream_resume_and_isolation(TestServer::start_sqlite().await).await;
}

#[tokio::test]
async fn event_stream_resume_and_tenant_isolation_on_postgres() {
    let Some(server) = TestServer::start_postgres().await else {
        eprintln!("skipped: no PostgreSQL configured (set CFLOW_TEST_DATABASE_URL)");
        return;
    };
    stream_resume_and_isolation(server).await;
}

#[tokio::test]
async fn event_stream_refuses_bad_filters() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let p = expect_problem(
        api.get("/api/v1/events?types=TASK!").await,
        400,
        "bad-request",
    )
    .await;
    assert_eq!(p["field"], "types");
    let p = expect_problem(
        api.get("/api/v1/events?kinds=task.").await,
        400,
        "bad-request",
    )
    .await;
    assert_eq!(p["field"], "kinds");
    server.shutdown().await;
}

/// A graceful stop must not wait for clients that keep an event stream open.
#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let server = TestServer::start_sqlite().await;
    let (_, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let stream = SseReader::open(&api, "", None).await;
    let done = tokio::time::timeout(RUN_TIMEOUT, server.shutdown()).await;
    drop(stream);
    assert!(done.is_ok(), "shutdown waited for the open event stream");
}

/// Reads `n` events that must be the burst events `first..first + n` in order, with ids one apart.
async fn expect_burst(stream: &mut SseReader, first: u64, n: u64) {
    let mut last: Option<u64> = None;
    for i in first..first + n {
        let e = stream.next().await;
        assert_eq!(e.event, "test.burst", "expected burst event {i}, got {e:?}");
        assert_eq!(e.data["data"]["i"], i, "{e:?}");
        let s = seq(e.id.as_deref().unwrap());
        assert!(last.is_none_or(|l| s > l), "{s} after {last:?}");
        last = Some(s);
    }
}

/// Publishes `n` burst events for `tenant`, each between events the stream filters out (another
/// tenant's, and a type it did not ask for), without yielding: on this single-threaded runtime
/// the server cannot read the live channel meanwhile, so its stream falls behind by all of them.
fn burst(server: &TestServer, tenant: &str, range: std::ops::Range<u64>) {
    let bus = &server.state().events;
    for i in range {
        bus.publish("rival", "test.burst", &format!("r{i}"), json!({"i": i}));
        bus.publish(tenant, "test.burst", &format!("e{i}"), json!({"i": i}));
        bus.publish(tenant, "noise.burst", &format!("n{i}"), json!({"i": i}));
    }
}

/// A burst far deeper than the live channel (4,096) but within the ring reaches a client that
/// was not reading, every event in order, with no `reset`.
#[tokio::test]
async fn a_client_behind_a_burst_catches_up_from_the_ring_without_reset() {
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let mut stream = SseReader::open(&api, "?types=test.", None).await;
    burst(&server, &tenant, 0..10_000);
    expect_burst(&mut stream, 0, 10_000).await;
    // Live again: the next event comes straight through.
    burst(&server, &tenant, 10_000..10_001);
    expect_burst(&mut stream, 10_000, 1).await;
    drop(stream);
    server.shutdown().await;
}

/// A client that falls behind by more than the ring holds gets a `reset`, then the events the
/// ring still has, then the live feed.
#[tokio::test]
async fn a_client_behind_more_than_the_ring_gets_a_reset() {
    let server = TestServer::start_with(|c| c.event_buffer = 1_500).await;
    let (tenant, admin) = server.tenant_with_key("acme", "admin").await;
    let api = Api::new(&server, &admin);
    let mut stream = SseReader::open(&api, "?types=test.", None).await;
    // 6,000 events; the ring keeps the newest 1,500: the three of each `i` in 1,500..2,000.
    burst(&server, &tenant, 0..2_000);
    let reset = stream.next().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(
        reset.data["reason"],
        "this client fell behind and missed events"
    );
    expect_burst(&mut stream, 1_500, 500).await;
    burst(&server, &tenant, 2_000..2_001);
    expect_burst(&mut stream, 2_000, 1).await;
    drop(stream);
    server.shutdown().await;
}
