//! The attempts a worker holds, shared by the poll loop (which adds them and lists them as
//! `held`), the attempt tasks (which mark them finished) and the reporter (which removes them
//! when their `Finished` is acknowledged, or drops them on a refusal).

use crate::link::LinkError;
use cflow_agents::proto::Held;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One attempt the worker holds. Keyed by task id: the scheduler runs at most one live attempt
/// per task, so a second epoch of the same task on this worker supersedes the first.
struct Entry {
    epoch: i64,
    cancel: CancellationToken,
    /// The driver returned and the `Finished` report is queued, not yet acknowledged.
    finished: bool,
}

#[derive(Default)]
pub(crate) struct Table {
    attempts: Mutex<HashMap<String, Entry>>,
    /// Attempts whose driver has not returned yet (dropped ones included: their processes may
    /// still be dying). This, not the table's size, is what occupies slots.
    running: AtomicU32,
    /// Signalled whenever an attempt's driver returns or a `Finished` is settled, so the poll
    /// loop asks for work at once.
    slot_freed: Notify,
    /// Set when the worker itself cancels its attempts (drain timeout, abort, fatal error), so a
    /// `Cancelled` end is reported as a retryable failure rather than as the task's cancellation.
    stopping: AtomicBool,
    /// The first fatal link error any part of the worker hit; `fatal` is cancelled with it.
    fatal_error: Mutex<Option<LinkError>>,
    pub(crate) fatal: CancellationToken,
}

impl Table {
    /// Records a new attempt as running. `false` (and nothing changes) when the very same attempt
    /// is already held, so a duplicated assignment does not run twice.
    pub(crate) fn insert(&self, task_id: &str, epoch: i64, cancel: CancellationToken) -> bool {
        let mut map = self.lock();
        if let Some(old) = map.get_mut(task_id) {
            if old.epoch == epoch {
                return false;
            }
            // The older attempt's lease lapsed and the task came back to us: it is no longer
            // ours to run or report.
            tracing::warn!(task_id, old_epoch = old.epoch, epoch, "attempt superseded");
            old.cancel.cancel();
            *old = Entry {
                epoch,
                cancel,
                finished: false,
            };
        } else {
            map.insert(
                task_id.to_string(),
                Entry {
                    epoch,
                    cancel,
                    finished: false,
                },
            );
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Every attempt held, for a poll.
    pub(crate) fn held(&self) -> Vec<Held> {
        self.lock()
            .iter()
            .map(|(task_id, e)| Held {
                task_id: task_id.clone(),
                epoch: e.epoch,
            })
            .collect()
    }

    /// Stops and forgets an attempt the scheduler no longer gives to this worker. Returns whether
    /// it was held.
    pub(crate) fn drop_attempt(&self, task_id: &str, epoch: i64) -> bool {
        self.drop_held(task_id, epoch).is_some()
    }

    /// [`Table::drop_attempt`], saying what was dropped: `Some(true)` for an attempt whose driver
    /// had returned (its `Finished` report queued or in flight, which goes out all the same),
    /// `Some(false)` for one still running, `None` when it was not held.
    pub(crate) fn drop_held(&self, task_id: &str, epoch: i64) -> Option<bool> {
        let mut map = self.lock();
        match map.get(task_id) {
            Some(e) if e.epoch == epoch => {
                e.cancel.cancel();
                let finished = e.finished;
                map.remove(task_id);
                Some(finished)
            }
            _ => None,
        }
    }

    /// The driver returned: marks the attempt finished if it is still held. `false` means it was
    /// dropped meanwhile and must not be reported.
    pub(crate) fn mark_finished(&self, task_id: &str, epoch: i64) -> bool {
        match self.lock().get_mut(task_id) {
            Some(e) if e.epoch == epoch => {
                e.finished = true;
                true
            }
            _ => false,
        }
    }

    /// The scheduler answered the attempt's `Finished` report (with any status): forget it.
    pub(crate) fn settled(&self, task_id: &str, epoch: i64) {
        let mut map = self.lock();
        if map.get(task_id).is_some_and(|e| e.epoch == epoch) {
            map.remove(task_id);
        }
        drop(map);
        self.slot_freed.notify_one();
    }

    /// Releases the slot of an attempt whose driver returned.
    pub(crate) fn job_ended(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.slot_freed.notify_one();
    }

    pub(crate) fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst)
    }

    /// Resolves after the next slot is released (or at once if one was released since the last
    /// wait; `Notify` keeps that permit).
    pub(crate) async fn slot_freed(&self) {
        self.slot_freed.notified().await;
    }

    /// Waits until no driver is running.
    pub(crate) async fn all_ended(&self) {
        while self.running() > 0 {
            self.slot_freed().await;
        }
    }

    /// Cancels every running attempt on the worker's own behalf (drain timeout, abort).
    pub(crate) fn cancel_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for e in self.lock().values() {
            if !e.finished {
                e.cancel.cancel();
            }
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Records a fatal error (the first one wins) and wakes everything that watches for it.
    pub(crate) fn set_fatal(&self, err: LinkError) {
        let mut slot = self
            .fatal_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        slot.get_or_insert(err);
        self.fatal.cancel();
    }

    pub(crate) fn fatal_error(&self) -> Option<LinkError> {
        self.fatal_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// How many attempts are held (running or waiting for their `Finished` ack).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Nothing panics while holding the lock, and the map stays consistent if something did.
        self.attempts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_says_whether_the_attempt_was_still_running() {
        let table = Table::default();
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        assert!(table.insert("a", 1, a.clone()));
        assert!(table.insert("b", 1, b.clone()));
        assert!(table.mark_finished("b", 1));
        // Another epoch, or a task not held: nothing happens.
        assert_eq!(table.drop_held("a", 2), None);
        assert_eq!(table.drop_held("c", 1), None);
        assert!(!a.is_cancelled());
        assert_eq!(table.drop_held("a", 1), Some(false));
        assert!(a.is_cancelled());
        assert_eq!(table.drop_held("b", 1), Some(true));
        assert!(table.held().is_empty());
        assert_eq!(table.drop_held("b", 1), None);
    }
}
