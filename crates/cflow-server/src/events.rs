//! The event bus: every state change the scheduler commits (tasks, agents, swarms, workers,
//! autoscaler decisions, messages) is published here after the commit, and streamed to clients
//! as server-sent events by `GET /api/v1/events`.
//!
//! Events live in a bounded in-memory ring (the newest [`EventBus::capacity`]) with ids
//! `<boot>-<seq>`: `seq` grows by one per event, `boot` changes at every server start. A client
//! resuming with `Last-Event-ID` gets every event after it that is still in the ring. When the id
//! is from an earlier boot or has left the ring, the stream starts with a `reset` event: the
//! client must re-read the state it cares about (the store is the truth; events are
//! notifications). That is the documented contract — events are not a durable log.
//!
//! The live feed is a broadcast channel much smaller than the ring. A reader that falls behind
//! it (the hook dispatcher under a burst) reads what it missed from the ring with
//! [`EventBus::since`], and loses events only once they have left the ring too.

use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One state change (clients get it as `routes::events` and hooks shape it, id included).
#[derive(Debug, Clone)]
pub struct Event {
    /// The server start that published it (see [`Event::id`]), shared by all its events.
    pub boot: Arc<str>,
    pub seq: u64,
    /// `*` for platform-wide events (the local pool's state), which every tenant sees.
    pub tenant_id: String,
    /// `task.queued`, `agent.busy`, `worker.lost`, `autoscaler.scale_up`, ... (`type` on the
    /// wire).
    pub kind: String,
    /// The id of what changed (a task, agent, swarm or worker id).
    pub subject: String,
    pub data: Value,
    /// Unix milliseconds.
    pub at: i64,
    /// Unix microseconds (the same instant as `at`): hooks are matched against their state at
    /// this time (see `cflow_store::Hook::was_on_at`).
    pub at_us: i64,
}

impl Event {
    /// `<boot>-<seq>`: made when asked for (SSE, hooks), not for every event published, most of
    /// which nobody reads before they leave the ring.
    pub fn id(&self) -> String {
        format!("{}-{}", self.boot, self.seq)
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct EventBus(Arc<Inner>);

struct Inner {
    /// Every payload is masked with its tenant's masker before it is kept or sent.
    masks: crate::secrets::Masks,
    boot: Arc<str>,
    capacity: usize,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
}

struct Ring {
    next_seq: u64,
    events: VecDeque<Arc<Event>>,
}

/// What the ring still holds after a `seq`: see [`EventBus::since`].
#[derive(Debug)]
pub struct Since {
    /// The events after the `seq` (all tenants), oldest first.
    pub events: Vec<Arc<Event>>,
    /// How many events after the `seq` have already left the ring: those just before `events`.
    pub lost: u64,
}

/// Where a subscriber starts.
pub enum Resume {
    /// From now on.
    Now,
    /// After this id (a `Last-Event-ID`).
    After(String),
}

/// What a subscriber gets: the events it missed (from the ring), whether it must re-read state
/// because some were lost, and the live feed that continues after the last backlog event.
pub struct Subscription {
    pub reset: bool,
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// Live events with `seq` at or below this were already in the backlog: skip them.
    pub last_seq: u64,
}

impl EventBus {
    /// A bus keeping the newest `capacity` events (at least 16).
    pub fn new(capacity: usize) -> Self {
        Self::with_masks(capacity, crate::secrets::Masks::default())
    }

    /// A bus that masks every payload with `masks` (the server's tenants' secrets).
    pub fn with_masks(capacity: usize, masks: crate::secrets::Masks) -> Self {
        let capacity = capacity.max(16);
        let (live, _) = broadcast::channel(4096);
        let boot: Arc<str> = format!("{:x}", crate::state::now_ms()).into();
        EventBus(Arc::new(Inner {
            masks,
            boot,
            capacity,
            ring: Mutex::new(Ring {
                next_seq: 1,
                events: VecDeque::with_capacity(capacity.min(65_536)),
            }),
            live,
        }))
    }

    /// The maskers every payload goes through (shared with the scheduler and the routes).
    pub fn masks(&self) -> &crate::secrets::Masks {
        &self.0.masks
    }

    pub fn boot(&self) -> &str {
        &self.0.boot
    }

    pub fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// Publishes one event (after its change was committed).
    pub fn publish(&self, tenant_id: &str, kind: &str, subject: &str, mut data: Value) {
        // Outside the ring lock: masking a large log chunk must not hold up other publishers.
        self.0.masks.json(tenant_id, &mut data);
        let mut ring = self.0.ring.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let at_us = crate::state::now_us();
        let event = Arc::new(Event {
            boot: self.0.boot.clone(),
            seq,
            tenant_id: tenant_id.to_string(),
            kind: kind.to_string(),
            subject: subject.to_string(),
            data,
            at: at_us.div_euclid(1000),
            at_us,
        });
        // The oldest event is dropped after the lock is released: its memory is cold by now,
        // and freeing it was most of the time spent publishing.
        let evicted = if ring.events.len() == self.0.capacity {
            ring.events.pop_front()
        } else {
            None
        };
        ring.events.push_back(event.clone());
        // Sent under the ring lock so live order equals ring order; no receiver is fine.
        let _ = self.0.live.send(event);
        drop(ring);
        drop(evicted);
    }

    /// Subscribes for `tenant_id`'s events (the caller filters by tenant; see
    /// [`Event::tenant_id`]), resuming after `resume`.
    pub fn subscribe(&self, tenant_id: &str, resume: Resume) -> Subscription {
        let ring = self.0.ring.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.0.live.subscribe();
        let last_seq = ring.next_seq - 1;
        let (reset, after) = match resume {
            Resume::Now => (false, last_seq),
            Resume::After(id) => match self.parse_id(&id) {
                Some(seq) if seq <= last_seq => {
                    let oldest = ring.events.front().map_or(last_seq + 1, |e| e.seq);
                    // Events after `seq` are all still here when seq + 1 >= oldest.
                    if seq + 1 >= oldest {
                        (false, seq)
                    } else {
                        (true, oldest.saturating_sub(1))
                    }
                }
                _ => (true, ring.events.front().map_or(last_seq, |e| e.seq - 1)),
            },
        };
        let backlog = ring
            .events
            .iter()
            .filter(|e| e.seq > after && (e.tenant_id == tenant_id || e.tenant_id == "*"))
            .cloned()
            .collect();
        Subscription {
            reset,
            backlog,
            live,
            last_seq,
        }
    }

    /// The oldest `max` events with `seq` above `after` that the ring still holds (every
    /// tenant's, in `seq` order), and how many events after `after` it no longer holds.
    pub fn since(&self, after: u64, max: usize) -> Since {
        let ring = self.0.ring.lock().unwrap_or_else(|e| e.into_inner());
        // Seqs in the ring are contiguous, so an event's index is its distance from the oldest.
        let oldest = ring.events.front().map_or(ring.next_seq, |e| e.seq);
        let lost = oldest.saturating_sub(after.saturating_add(1));
        let len = ring.events.len();
        let start = usize::try_from(after.saturating_add(1).saturating_sub(oldest))
            .unwrap_or(usize::MAX)
            .min(len);
        let end = start.saturating_add(max).min(len);
        Since {
            events: ring.events.range(start..end).cloned().collect(),
            lost,
        }
    }

    fn parse_id(&self, id: &str) -> Option<u64> {
        let (boot, seq) = id.rsplit_once('-')?;
        if boot != &*self.0.boot {
            return None;
        }
        seq.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_replays_what_was_missed_and_resets_when_it_cannot() {
        let bus = EventBus::new(16);
        for i in 0..10 {
            bus.publish("t1", "task.queued", &format!("task{i}"), json!({}));
            bus.publish("t2", "task.queued", &format!("other{i}"), json!({}));
        }
        let all = bus.subscribe("t1", Resume::After(format!("{}-0", bus.boot())));
        // 20 events in a ring of 16: the first 4 are gone, so resuming from 0 resets.
        assert!(all.reset);
        let third = format!("{}-17", bus.boot());
        let sub = bus.subscribe("t1", Resume::After(third));
        assert!(!sub.reset);
        let subjects: Vec<_> = sub.backlog.iter().map(|e| e.subject.as_str()).collect();
        assert_eq!(subjects, ["task9"]);
        let stale = bus.subscribe("t1", Resume::After("0-5".into()));
        assert!(stale.reset, "an id from another boot resets");
        let now = bus.subscribe("t1", Resume::Now);
        assert!(!now.reset && now.backlog.is_empty());
    }

    fn seqs(since: &Since) -> Vec<u64> {
        since.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn since_returns_the_ring_after_a_seq_and_counts_what_left_it() {
        let bus = EventBus::new(16);
        let empty = bus.since(0, 100);
        assert!(empty.events.is_empty());
        assert_eq!(empty.lost, 0);
        for i in 0..10 {
            bus.publish("*", "worker.idle", &format!("w{i}"), json!({}));
            bus.publish("t1", "task.queued", &format!("task{i}"), json!({}));
        }
        // Seqs 1..=20 in a ring of 16: it holds 5..=20, every tenant's.
        let mid = bus.since(10, 100);
        assert_eq!(seqs(&mid), (11..=20).collect::<Vec<_>>());
        assert_eq!(mid.lost, 0);
        assert_eq!(mid.events[0].tenant_id, "*");
        assert_eq!(mid.events[1].tenant_id, "t1");
        assert_eq!(seqs(&bus.since(10, 3)), [11, 12, 13]);
        let edge = bus.since(4, 100);
        assert_eq!((seqs(&edge), edge.lost), ((5..=20).collect(), 0));
        let gone = bus.since(0, 100);
        assert_eq!((seqs(&gone), gone.lost), ((5..=20).collect(), 4));
        let one = bus.since(3, 2);
        assert_eq!((seqs(&one), one.lost), (vec![5, 6], 1));
        for after in [20, 25] {
            let none = bus.since(after, 100);
            assert!(none.events.is_empty() && none.lost == 0, "after {after}");
        }
        assert!(bus.since(10, 0).events.is_empty());
    }
}
