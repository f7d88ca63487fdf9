//! The outbox's two loops. The dispatcher turns bus events into deliveries (one per matching
//! enabled hook in scope, enqueued idempotently); the sender claims due deliveries under a
//! lease, sends them with bounded concurrency, and records each result: delivered, a retry
//! after a backoff with jitter, or dead after the hook's most attempts.

use super::send;
use super::spec::{self, Settings};
use crate::events::{Event, EventBus, Resume};
use crate::state::{AppState, now_ms};
use cflow_store::{Hook, HookDelivery, NewDelivery, SendResult};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

/// Events handled per dispatcher round (those already waiting are taken together, so a burst
/// costs one enqueue per tenant instead of one per event).
const ROUND: usize = 256;

/// How long shutdown waits for the sends in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// How often the dead-letter gauge is refreshed from the store.
const GAUGE_EVERY: Duration = Duration::from_secs(10);

/// Completes when the server stops (or its stop signal is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The envelope every handler receives: the event, and which hook it is for.
pub fn envelope(hook: &Hook, e: &Event) -> Value {
    json!({
        "id": e.id(),
        "type": e.kind,
        "tenant_id": e.tenant_id,
        "subject": e.subject,
        "data": e.data,
        "at": e.at,
        "hook": {"id": hook.id, "name": hook.name},
    })
}

/// Turns events into deliveries until `stopped`.
pub async fn dispatcher(state: AppState, mut stopped: watch::Receiver<bool>) {
    let sub = state.events.subscribe("*", Resume::Now);
    let mut live = sub.live;
    let mut cursor = Cursor::new(sub.last_seq);
    loop {
        // Biased: a cursor catching up from the ring is ready at once, round after round, and
        // the stop signal must still be heard.
        let batch = tokio::select! {
            biased;
            () = until_stopped(&mut stopped) => return,
            b = cursor.next(&state.events, &mut live, ROUND) => b,
        };
        let lost = std::mem::take(&mut cursor.lost);
        if lost > 0 {
            // The bus ran ahead of the dispatcher by more than its ring holds: those events'
            // notifications are lost, and the log says exactly how many.
            tracing::warn!(
                missed = lost,
                "hooks: the dispatcher fell behind the event bus"
            );
        }
        let Some(batch) = batch else {
            return;
        };
        dispatch(&state, &batch).await;
    }
}

/// The dispatcher's place on the bus. It hands on every event once, in `seq` order: when the
/// live receiver lags (its channel is much smaller than the bus's ring), what it skipped is read
/// from the ring, and the live events that read already covered are dropped as duplicates.
struct Cursor {
    /// The `seq` of the last event handed on (or counted lost).
    last: u64,
    /// The events after `last` come from the ring until it is drained: the live receiver
    /// skipped some of them.
    behind: bool,
    /// Events that left the ring before they could be read, not yet reported.
    lost: u64,
}

impl Cursor {
    fn new(last: u64) -> Self {
        Self {
            last,
            behind: false,
            lost: 0,
        }
    }

    /// The next events, at most `max` (those already waiting are taken together); `None` once
    /// the bus is gone. Cancel-safe: it awaits only with nothing taken, so a round dropped at
    /// that point loses nothing.
    async fn next(
        &mut self,
        bus: &EventBus,
        live: &mut broadcast::Receiver<Arc<Event>>,
        max: usize,
    ) -> Option<Vec<Arc<Event>>> {
        let mut batch = Vec::new();
        loop {
            if !self.behind {
                match live.recv().await {
                    Ok(e) => self.offer(e, &mut batch),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.behind = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
            let open = self.fill(bus, live, max, &mut batch);
            if !batch.is_empty() {
                return Some(batch);
            }
            if !open {
                return None;
            }
        }
    }

    /// Adds to `batch`, up to `max`, the events that need no waiting: from the ring while
    /// behind, then those the live receiver holds. `false` when the bus is gone.
    fn fill(
        &mut self,
        bus: &EventBus,
        live: &mut broadcast::Receiver<Arc<Event>>,
        max: usize,
        batch: &mut Vec<Arc<Event>>,
    ) -> bool {
        while batch.len() < max {
            if self.behind {
                let room = max - batch.len();
                let since = bus.since(self.last, room);
                self.lost += since.lost;
                self.last += since.lost;
                // Fewer than asked for: the ring is drained, and the live receiver is back at
                // or before the next event (or it reports another lag).
                self.behind = since.events.len() == room;
                for e in since.events {
                    self.last = e.seq;
                    batch.push(e);
                }
                continue;
            }
            match live.try_recv() {
                Ok(e) => self.offer(e, batch),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.behind = true,
                Err(broadcast::error::TryRecvError::Empty) => return true,
                Err(broadcast::error::TryRecvError::Closed) => return false,
            }
        }
        true
    }

    /// Takes one live event: a duplicate of one read from the ring is dropped, and a gap (which
    /// a lag report should have announced) is filled from the ring.
    fn offer(&mut self, e: Arc<Event>, batch: &mut Vec<Arc<Event>>) {
        if self.behind || e.seq <= self.last {
            return;
        }
        if e.seq != self.last + 1 {
            self.behind = true;
            return;
        }
        self.last = e.seq;
        batch.push(e);
    }
}

/// Enqueues the deliveries of a batch of events, one store write per tenant.
async fn dispatch(state: &AppState, events: &[Arc<Event>]) {
    let mut by_tenant: HashMap<&str, Vec<NewDelivery>> = HashMap::new();
    for e in events {
        if e.tenant_id == crate::sched::ALL_TENANTS {
            continue;
        }
        let hooks = match state.hooks.all(&state.store, &e.tenant_id).await {
            Ok(h) => h,
            Err(err) => {
                tracing::warn!(tenant = %e.tenant_id, error = %err, "hooks: cannot load hooks; event skipped");
                continue;
            }
        };
        if hooks.is_empty() {
            continue;
        }
        let mut swarm: Option<Option<String>> = None;
        for hook in matching(&hooks, e) {
            if !in_scope(state, hook, e, &mut swarm).await {
                continue;
            }
            by_tenant
                .entry(&e.tenant_id)
                .or_default()
                .push(NewDelivery {
                    hook_id: hook.id.clone(),
                    event_id: e.id(),
                    event_type: e.kind.clone(),
                    payload: envelope(hook, e),
                });
        }
    }
    for (tenant, deliveries) in by_tenant {
        match state.store.hook_enqueue(tenant, deliveries).await {
            Ok(n) if n > 0 => state.hooks.wake(),
            Ok(_) => {}
            Err(err) => {
                tracing::error!(tenant, error = %err, "hooks: cannot enqueue deliveries; they are lost")
            }
        }
    }
}

/// The hooks whose event patterns select `e` and which were on when it happened: a hook switched
/// on (or created) after the event does not get it, one switched off after it still does,
/// however long the event waited to be matched. (Scope is checked separately.)
fn matching<'a>(hooks: &'a [Hook], e: &Event) -> impl Iterator<Item = &'a Hook> {
    let names = spec::names_of(&e.kind, &e.data);
    hooks
        .iter()
        .filter(move |h| h.was_on_at(e.at_us) && spec::selects(&h.events, &names))
}

/// Whether the event is inside the hook's scope. `swarm` caches the event's swarm (looked up at
/// most once per event, and only for a scoped hook).
async fn in_scope(
    state: &AppState,
    hook: &Hook,
    e: &Event,
    swarm: &mut Option<Option<String>>,
) -> bool {
    let Some(want) = &hook.scope_id else {
        return true;
    };
    if swarm.is_none() {
        *swarm = Some(swarm_of(state, e).await);
    }
    let Some(Some(s)) = swarm.as_ref() else {
        return false;
    };
    match hook.scope.as_str() {
        "swarm" => s == want,
        "project" => state
            .hooks
            .project_of(&state.store, &e.tenant_id, s)
            .await
            .is_some_and(|p| p == *want),
        _ => false,
    }
}

/// The swarm an event is about: named in its data, its subject for swarm and autoscaler events,
/// else its task's or agent's swarm.
async fn swarm_of(state: &AppState, e: &Event) -> Option<String> {
    if let Some(s) = e.data.get("swarm_id").and_then(Value::as_str) {
        return Some(s.to_string());
    }
    let family = e.kind.split('.').next().unwrap_or_default();
    match family {
        "swarm" | "autoscaler" => Some(e.subject.clone()),
        "task" => {
            let task = state
                .store
                .get_task(&e.tenant_id, &e.subject)
                .await
                .ok()??;
            if task.swarm_id.is_some() {
                return task.swarm_id;
            }
            let agent = task.agent_id?;
            let a = state.store.get_agent(&e.tenant_id, &agent).await.ok()??;
            Some(a.swarm_id)
        }
        "agent" => {
            let a = state
                .store
                .get_agent(&e.tenant_id, &e.subject)
                .await
                .ok()??;
            Some(a.swarm_id)
        }
        _ => None,
    }
}

/// What a send's outcome means for a delivery that has had `attempts` sends before it.
pub fn result_of(
    state: &AppState,
    outcome: &send::Outcome,
    attempts: i64,
    max_attempts: i64,
) -> SendResult {
    if outcome.ok {
        return SendResult::Delivered {
            status: outcome.status,
        };
    }
    let error = outcome
        .error
        .clone()
        .unwrap_or_else(|| "failed".to_string());
    let done = attempts + 1;
    if done >= max_attempts {
        return SendResult::Dead {
            status: outcome.status,
            error: format!("{error} (gave up after {done} attempts)"),
        };
    }
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let delay = state.hooks.config().backoff_ms(done, u64::from_le_bytes(b));
    SendResult::Retry {
        at: now_ms() + delay,
        status: outcome.status,
        error,
    }
}

/// Sends one claimed delivery and records the result.
async fn deliver(state: AppState, d: HookDelivery) {
    let hook = match state.store.hook_get(&d.tenant_id, &d.hook_id).await {
        Ok(Some(h)) => h,
        // Deleted meanwhile: its deliveries went with it.
        Ok(None) => return,
        Err(e) => {
            // Left to its lease: it is claimed again once that lapses.
            tracing::warn!(delivery = %d.id, error = %e, "hooks: cannot read the hook");
            return;
        }
    };
    let (outcome, max) = match Settings::of(&hook.config) {
        Ok(settings) => {
            let body = serde_json::to_vec(&d.payload).unwrap_or_default();
            let o = send::send(&state, &hook, &settings, &d.id, &d.event_type, &body).await;
            (o, settings.max_attempts)
        }
        Err(e) => (
            send::Outcome {
                ok: false,
                status: None,
                error: Some(e),
                reply: Vec::new(),
                duration: Duration::ZERO,
            },
            1,
        ),
    };
    let result = result_of(&state, &outcome, d.attempts, max);
    state.hooks.metrics().outcome(&result);
    let dead = matches!(result, SendResult::Dead { .. });
    match state.store.hook_finish(&d, result).await {
        Ok(Some(_)) if dead => refresh_gauge(&state).await,
        Ok(_) => {}
        Err(e) => tracing::warn!(delivery = %d.id, error = %e, "hooks: cannot record a send"),
    }
}

async fn refresh_gauge(state: &AppState) {
    if let Ok(n) = state.store.hook_dead_count().await {
        state.hooks.metrics().set_dead_letters(n);
    }
}

/// Claims and sends due deliveries until `stopped`; then waits for the sends in flight (each is
/// bounded by its hook's timeout) so that their results are recorded before the store closes.
pub async fn sender(state: AppState, mut stopped: watch::Receiver<bool>) {
    let config = state.hooks.config().clone();
    let lease = i64::try_from(config.lease_ms).unwrap_or(i64::MAX);
    let poll = Duration::from_millis(config.poll_ms.max(10));
    let mut inflight = JoinSet::new();
    let mut gauge = tokio::time::interval(GAUGE_EVERY);
    gauge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let room = config.concurrency.max(1).saturating_sub(inflight.len());
        let mut claimed = 0;
        let stopping = *stopped.borrow();
        // A read first: an idle outbox costs no write transaction.
        let due = state.store.hook_next_due().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "hooks: cannot read the outbox");
            None
        });
        let now = now_ms();
        if room > 0 && !stopping && due.is_some_and(|at| at <= now) {
            match state.store.hook_claim(room as i64, lease).await {
                Ok(batch) => {
                    claimed = batch.len();
                    for d in batch {
                        inflight.spawn(deliver(state.clone(), d));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "hooks: cannot claim deliveries"),
            }
        }
        // A full batch means more may be due at once; otherwise sleep until the next one falls
        // due, something is enqueued, a send ends, or the poll interval passes.
        let wait = match due {
            _ if claimed > 0 && claimed == room => Duration::ZERO,
            Some(at) if at > now => {
                Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(poll)
            }
            _ => poll,
        };
        tokio::select! {
            () = until_stopped(&mut stopped) => break,
            () = state.hooks.woken() => {}
            () = tokio::time::sleep(wait) => {}
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            _ = gauge.tick() => refresh_gauge(&state).await,
        }
    }
    // Sends in flight finish and are recorded, within a grace; past it they are dropped, and
    // their deliveries are sent again once their lease lapses (at least once, never lost).
    let drain = async { while inflight.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            "hooks: sends still running at shutdown were abandoned; they will be retried"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publishes `n` events, alternating between two tenants and the platform.
    fn publish(bus: &EventBus, n: usize) {
        for i in 0..n {
            let tenant = ["t1", "t2", "*"][i % 3];
            bus.publish(tenant, "task.queued", &format!("task{i}"), json!({}));
        }
    }

    /// Drives the cursor as the dispatcher does until it has handed on (or lost) every event up
    /// to `until`, and returns the seqs it handed on.
    async fn drain(
        cursor: &mut Cursor,
        bus: &EventBus,
        live: &mut broadcast::Receiver<Arc<Event>>,
        until: u64,
    ) -> Vec<u64> {
        let mut seen = Vec::new();
        let deadline = Duration::from_secs(30);
        while cursor.last < until {
            let batch = tokio::time::timeout(deadline, cursor.next(bus, live, ROUND))
                .await
                .expect("the cursor stalled before the last event")
                .expect("the bus is open");
            assert!(!batch.is_empty() && batch.len() <= ROUND, "{}", batch.len());
            seen.extend(batch.iter().map(|e| e.seq));
        }
        seen
    }

    /// Nothing is left once the cursor has reached the bus's newest event: the live events the
    /// ring already covered are all dropped, not handed on again.
    fn assert_drained(
        cursor: &mut Cursor,
        bus: &EventBus,
        live: &mut broadcast::Receiver<Arc<Event>>,
    ) {
        let mut rest = Vec::new();
        assert!(cursor.fill(bus, live, ROUND, &mut rest));
        let rest: Vec<_> = rest.iter().map(|e| e.seq).collect();
        assert!(rest.is_empty() && !cursor.behind, "left over: {rest:?}");
    }

    #[tokio::test]
    async fn a_lagged_cursor_reads_every_event_once_in_order_from_the_ring() {
        let bus = EventBus::new(65_536);
        let sub = bus.subscribe("*", Resume::Now);
        let mut live = sub.live;
        let mut cursor = Cursor::new(sub.last_seq);
        // Far more than the live channel's 4,096, while nobody reads: the receiver lags.
        publish(&bus, 10_000);
        let mut seen = drain(&mut cursor, &bus, &mut live, 5_000).await;
        // A second burst while the first is half read: the receiver lags again.
        publish(&bus, 10_000);
        seen.extend(drain(&mut cursor, &bus, &mut live, 20_000).await);
        assert_drained(&mut cursor, &bus, &mut live);
        // A trickle goes through the live receiver alone.
        publish(&bus, 10);
        seen.extend(drain(&mut cursor, &bus, &mut live, 20_010).await);
        assert_drained(&mut cursor, &bus, &mut live);
        assert_eq!(seen, (1..=20_010).collect::<Vec<_>>());
        assert_eq!(cursor.lost, 0);
    }

    #[tokio::test]
    async fn a_cursor_counts_exactly_the_events_that_left_a_small_ring() {
        let bus = EventBus::new(1_000);
        let sub = bus.subscribe("*", Resume::Now);
        let mut live = sub.live;
        let mut cursor = Cursor::new(sub.last_seq);
        // Smaller than the live channel: the receiver still has all of them, none is lost.
        publish(&bus, 3_000);
        let mut seen = drain(&mut cursor, &bus, &mut live, 3_000).await;
        assert_drained(&mut cursor, &bus, &mut live);
        assert_eq!(seen, (1..=3_000).collect::<Vec<_>>());
        assert_eq!(cursor.lost, 0);
        // Past the channel and the ring: only the ring's newest 1,000 can be read.
        publish(&bus, 5_000);
        seen = drain(&mut cursor, &bus, &mut live, 8_000).await;
        assert_drained(&mut cursor, &bus, &mut live);
        assert_eq!(seen, (7_001..=8_000).collect::<Vec<_>>());
        assert_eq!(std::mem::take(&mut cursor.lost), 4_000);
        publish(&bus, 10);
        seen = drain(&mut cursor, &bus, &mut live, 8_010).await;
        assert_drained(&mut cursor, &bus, &mut live);
        assert_eq!(seen, (8_001..=8_010).collect::<Vec<_>>());
        assert_eq!(cursor.lost, 0);
    }

    fn hook(name: &str, on: (bool, Option<i64>, Option<i64>)) -> Hook {
        Hook {
            id: name.into(),
            tenant_id: "t1".into(),
            name: name.into(),
            scope: "tenant".into(),
            scope_id: None,
            events: vec!["swarm.*".into()],
            kind: "webhook".into(),
            config: json!({}),
            enabled: on.0,
            enabled_since: on.1,
            disabled_since: on.2,
            created_at: 0,
            created_by: None,
        }
    }

    fn event(kind: &str, at_us: i64) -> Event {
        Event {
            boot: "b".into(),
            seq: 1,
            tenant_id: "t1".into(),
            kind: kind.into(),
            subject: "s1".into(),
            data: json!({}),
            at: at_us / 1000,
            at_us,
        }
    }

    /// An event is matched against each hook as it was when the event happened, whenever the
    /// dispatcher gets to it (the hooks passed in are as they are now).
    #[test]
    fn an_event_goes_to_the_hooks_that_were_on_when_it_happened() {
        let hooks = [
            // On since 1,000 µs.
            hook("on", (true, Some(1_000), None)),
            // On from 1,000 until 2,000, off since.
            hook("was-on", (false, Some(1_000), Some(2_000))),
            // Created off, never on.
            hook("never", (false, None, None)),
            // Turned on again at 3,000 after a first window.
            hook("again", (true, Some(3_000), None)),
        ];
        let names = |e: &Event| {
            matching(&hooks, e)
                .map(|h| h.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&event("swarm.created", 999)), Vec::<String>::new());
        assert_eq!(names(&event("swarm.created", 1_000)), ["on", "was-on"]);
        assert_eq!(names(&event("swarm.created", 1_999)), ["on", "was-on"]);
        assert_eq!(names(&event("swarm.created", 2_000)), ["on"]);
        assert_eq!(names(&event("swarm.created", 3_000)), ["on", "again"]);
        // The patterns still apply.
        assert_eq!(names(&event("task.queued", 5_000)), Vec::<String>::new());
    }
}
