//! The task lifecycle: states, the transitions between them, retry backoff, and the limits on a
//! task's scheduling fields (priority, timeout, attempts, replicas and quorum).

use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a task is in its life. The first four are active; the last four are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted and durable but not runnable yet: waiting on dependencies, or on the backoff
    /// delay before a retry.
    Pending,
    /// Runnable: in the dispatcher's queue.
    Queued,
    /// Leased to an agent on a worker, which has not yet reported that the attempt started.
    Assigned,
    /// The current attempt is running.
    Running,
    Succeeded,
    /// The last attempt failed (or the task ran out of attempts).
    Failed,
    /// Cancelled by a user, or because a dependency did not succeed.
    Cancelled,
    /// The last attempt exceeded the task's timeout.
    TimedOut,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::TimedOut => "timed_out",
        }
    }

    /// Whether the task is finished for good: nothing moves it out of this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::TimedOut
        )
    }

    /// Whether an attempt holds a lease (so heartbeats and reports are expected).
    pub fn holds_lease(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a state name that is not one of [`TaskState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task state '{0}': expected one of pending, queued, assigned, running, succeeded, failed, cancelled, timed_out"
)]
pub struct UnknownTaskState(pub String);

impl FromStr for TaskState {
    type Err = UnknownTaskState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTaskState(s.to_string()))
    }
}

/// Something that happens to a task. Attempt numbers are 1-based: `attempt` is the attempt that
/// just ended, so another attempt is allowed while `attempt < max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// Every dependency succeeded, or a retry's backoff delay elapsed.
    Ready,
    /// The dispatcher leased the task to an agent.
    Assigned,
    /// The worker reported that the attempt started.
    Started,
    /// The worker handed the assignment back before starting it (the agent is draining, the
    /// swarm was paused). It does not use up an attempt.
    Released,
    /// The attempt succeeded.
    Succeeded,
    /// The attempt failed; `retryable` is false for failures that another attempt cannot fix
    /// (an invalid command, a policy refusal).
    Failed {
        retryable: bool,
        attempt: u32,
        max_attempts: u32,
    },
    /// The attempt exceeded the timeout. A hung attempt is presumed transient, so it is retried
    /// while attempts remain; a task that always hangs ends `timed_out` when they run out.
    TimedOut { attempt: u32, max_attempts: u32 },
    /// The attempt's lease expired (its worker stopped heartbeating). Not the task's fault, so it
    /// is re-queued at once without backoff while attempts remain; it still uses up an attempt, so
    /// a task that kills every worker it lands on cannot loop for ever.
    LeaseLost { attempt: u32, max_attempts: u32 },
    /// A user cancelled the task, or a dependency did not succeed.
    Cancelled,
}

impl TaskEvent {
    /// A short name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            TaskEvent::Ready => "ready",
            TaskEvent::Assigned => "assign",
            TaskEvent::Started => "start",
            TaskEvent::Released => "release",
            TaskEvent::Succeeded => "succeed",
            TaskEvent::Failed { .. } => "fail",
            TaskEvent::TimedOut { .. } => "time out",
            TaskEvent::LeaseLost { .. } => "lose lease",
            TaskEvent::Cancelled => "cancel",
        }
    }
}

/// An event that does not apply to the task's current state (for example cancelling a task that
/// already succeeded). The API answers it with 409.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a task that is {from}", event.name())]
pub struct InvalidTransition {
    pub from: TaskState,
    pub event: TaskEvent,
}

/// The task state machine:
///
/// ```text
/// pending --ready--> queued --assign--> assigned --start--> running --succeed--> succeeded
///    ^                 ^                 |   |                 |
///    |                 +----release------+   |                 |
///    |                 +----lose lease (attempts left)---------+-> failed (none left)
///    +-----fail (retryable) / time out, attempts left----------+-> failed / timed_out
/// any active state --cancel--> cancelled
/// ```
///
/// An attempt may end while still `assigned` (a fast task reports its result without a separate
/// start), so every attempt outcome applies to both `assigned` and `running`.
pub fn transition(from: TaskState, event: TaskEvent) -> Result<TaskState, InvalidTransition> {
    use TaskState as S;
    let active_attempt = from.holds_lease();
    let next = match event {
        TaskEvent::Ready if from == S::Pending => S::Queued,
        TaskEvent::Assigned if from == S::Queued => S::Assigned,
        TaskEvent::Started if from == S::Assigned => S::Running,
        TaskEvent::Released if from == S::Assigned => S::Queued,
        TaskEvent::Succeeded if active_attempt => S::Succeeded,
        TaskEvent::Failed {
            retryable,
            attempt,
            max_attempts,
        } if active_attempt => {
            if retryable && attempt < max_attempts {
                S::Pending
            } else {
                S::Failed
            }
        }
        TaskEvent::TimedOut {
            attempt,
            max_attempts,
        } if active_attempt => {
            if attempt < max_attempts {
                S::Pending
            } else {
                S::TimedOut
            }
        }
        TaskEvent::LeaseLost {
            attempt,
            max_attempts,
        } if active_attempt => {
            if attempt < max_attempts {
                S::Queued
            } else {
                S::Failed
            }
        }
        TaskEvent::Cancelled if !from.is_terminal() => S::Cancelled,
        _ => return Err(InvalidTransition { from, event }),
    };
    Ok(next)
}

/// Exponential backoff between attempts with "equal jitter": the delay before retry `n` is drawn
/// from `[c/2, c)` where `c = min(base_ms · factorⁿ⁻¹, max_ms)`. Equal jitter rather than full
/// jitter (`[0, c)`) because a retry usually waits for something outside the task to recover, so a
/// guaranteed minimum wait matters more than the slightly better spreading of full jitter; half
/// of the window is still random, which is enough to break up a herd of simultaneous retries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
    pub factor: f64,
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s, … up to 5 minutes.
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            max_ms: 300_000,
            factor: 2.0,
        }
    }
}

/// Longest `Backoff::max_ms`: one day, the longest timeout.
pub const MAX_BACKOFF_MS: u64 = 86_400_000;

impl Backoff {
    /// The un-jittered delay before retry `attempt` (1 = the retry after the first failure;
    /// 0 is treated as 1).
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let raw = self.base_ms as f64 * self.factor.powi(exponent);
        // `as` saturates for large or infinite floats, and the cap applies before it anyway.
        raw.min(self.max_ms as f64) as u64
    }

    /// The delay before retry `attempt`, given `jitter` drawn uniformly from `[0, 1)` by the
    /// caller (this crate reads no random source). Out-of-range or NaN jitter is clamped.
    pub fn delay_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let ceiling = self.ceiling_ms(attempt);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let half = ceiling / 2;
        half + ((ceiling - half) as f64 * jitter) as u64
    }

    /// `base_ms` 1 ms – `max_ms`, `max_ms` at most a day, `factor` a finite number from 1 to 10.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.base_ms == 0 {
            return Err(ValidationError::new(
                "backoff.base_ms",
                "must be at least 1",
            ));
        }
        if self.max_ms < self.base_ms || self.max_ms > MAX_BACKOFF_MS {
            return Err(ValidationError::new(
                "backoff.max_ms",
                format!(
                    "must be from base_ms ({}) to {MAX_BACKOFF_MS} (one day)",
                    self.base_ms
                ),
            ));
        }
        if !(self.factor.is_finite() && (1.0..=10.0).contains(&self.factor)) {
            return Err(ValidationError::new(
                "backoff.factor",
                "must be from 1 to 10",
            ));
        }
        Ok(())
    }
}

/// Priorities run from 0 (lowest) to 100 (highest); the dispatcher serves higher first. A small
/// fixed range keeps priorities comparable across users and leaves room above and below the
/// default.
pub const MIN_PRIORITY: i64 = 0;
pub const MAX_PRIORITY: i64 = 100;
pub const DEFAULT_PRIORITY: i64 = 50;
/// Timeouts run from 1 second to one day; the default is one hour.
pub const MAX_TIMEOUT_SECONDS: i64 = 86_400;
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3_600;
/// Attempts run from 1 to 20; by default a task gets three (two retries).
pub const MAX_ATTEMPTS: i64 = 20;
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// At most nine replicas of one task (enough to outvote four faulty agents).
pub const MAX_REPLICAS: i64 = 9;

type Result<T = (), E = ValidationError> = std::result::Result<T, E>;

fn in_range(field: &str, value: i64, min: i64, max: i64, unit: &str) -> Result {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!("must be from {min} to {max}{unit} (got {value})"),
    ))
}

/// A priority: 0 to 100.
pub fn priority(value: i64) -> Result {
    in_range("priority", value, MIN_PRIORITY, MAX_PRIORITY, "")
}

/// A timeout: 1 second to one day.
pub fn timeout_seconds(value: i64) -> Result {
    in_range(
        "timeout_seconds",
        value,
        1,
        MAX_TIMEOUT_SECONDS,
        " seconds (one day)",
    )
}

/// The number of attempts: 1 to 20.
pub fn max_attempts(value: i64) -> Result {
    in_range("max_attempts", value, 1, MAX_ATTEMPTS, "")
}

/// Replicas and quorum: `1 <= quorum <= replicas <= 9`.
pub fn replicas_and_quorum(replicas: i64, quorum: i64) -> Result {
    in_range("replicas", replicas, 1, MAX_REPLICAS, "")?;
    if quorum < 1 {
        return Err(ValidationError::new(
            "quorum",
            format!("must be at least 1 (got {quorum})"),
        ));
    }
    if quorum > replicas {
        return Err(ValidationError::new(
            "quorum",
            format!("must not exceed replicas (got quorum {quorum} > replicas {replicas})"),
        ));
    }
    Ok(())
}

/// The quorum used when a task gives replicas but no quorum: a strict majority, so two
/// disagreeing groups can never both be accepted.
pub fn default_quorum(replicas: u32) -> u32 {
    replicas / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskEvent as E;
    use TaskState as S;

    fn fail(retryable: bool, attempt: u32) -> TaskEvent {
        E::Failed {
            retryable,
            attempt,
            max_attempts: 3,
        }
    }

    #[test]
    fn the_happy_path() {
        let mut s = S::Pending;
        for e in [E::Ready, E::Assigned, E::Started, E::Succeeded] {
            s = transition(s, e).unwrap();
        }
        assert_eq!(s, S::Succeeded);
        assert_eq!(transition(S::Assigned, E::Succeeded), Ok(S::Succeeded));
    }

    #[test]
    fn attempts_are_retried_while_they_remain() {
        let lost = |attempt| E::LeaseLost {
            attempt,
            max_attempts: 3,
        };
        let timeout = |attempt| E::TimedOut {
            attempt,
            max_attempts: 3,
        };
        let table = [
            (S::Running, fail(true, 1), S::Pending),
            (S::Running, fail(true, 3), S::Failed),
            (S::Running, fail(false, 1), S::Failed),
            (S::Assigned, fail(true, 2), S::Pending),
            (S::Running, timeout(2), S::Pending),
            (S::Running, timeout(3), S::TimedOut),
            (S::Running, lost(1), S::Queued),
            (S::Assigned, lost(2), S::Queued),
            (S::Running, lost(3), S::Failed),
            (S::Assigned, E::Released, S::Queued),
        ];
        for (from, event, to) in table {
            assert_eq!(transition(from, event), Ok(to), "{from} + {event:?}");
        }
    }

    #[test]
    fn cancel_applies_to_every_active_state_only() {
        for s in S::ALL {
            let r = transition(s, E::Cancelled);
            if s.is_terminal() {
                assert_eq!(
                    r,
                    Err(InvalidTransition {
                        from: s,
                        event: E::Cancelled
                    })
                );
            } else {
                assert_eq!(r, Ok(S::Cancelled));
            }
        }
    }

    #[test]
    fn everything_else_is_refused() {
        let refused = [
            (S::Pending, E::Assigned),
            (S::Queued, E::Started),
            (S::Queued, E::Succeeded),
            (S::Running, E::Started),
            (S::Running, E::Released),
            (S::Pending, fail(true, 1)),
            (S::Succeeded, E::Ready),
            (S::Failed, E::Succeeded),
        ];
        for (from, event) in refused {
            assert!(transition(from, event).is_err(), "{from} + {event:?}");
        }
        let e = transition(S::Succeeded, E::Cancelled).unwrap_err();
        assert_eq!(e.to_string(), "cannot cancel a task that is succeeded");
    }

    #[test]
    fn states_round_trip_and_are_classified() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(S::ALL.iter().filter(|s| s.is_terminal()).count(), 4);
        assert!(S::Assigned.holds_lease() && S::Running.holds_lease() && !S::Queued.holds_lease());
        assert!(
            "done"
                .parse::<S>()
                .unwrap_err()
                .to_string()
                .contains("timed_out")
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_in_the_upper_half() {
        let b = Backoff::default();
        let ceilings: Vec<_> = (1..=10).map(|n| b.ceiling_ms(n)).collect();
        assert_eq!(
            ceilings,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000
            ]
        );
        assert_eq!(b.ceiling_ms(0), 1_000);
        assert_eq!(b.ceiling_ms(u32::MAX), 300_000, "no overflow");
        assert_eq!(b.delay_ms(3, 0.0), 2_000);
        assert_eq!(b.delay_ms(3, 0.5), 3_000);
        assert_eq!(b.delay_ms(3, 0.999_999), 3_999);
        assert_eq!(b.delay_ms(3, f64::NAN), 2_000);
        assert_eq!(b.delay_ms(3, 7.0), 4_000, "clamped");
        for i in 0..100 {
            let d = b.delay_ms(4, f64::from(i) / 100.0);
            assert!((4_000..8_000).contains(&d), "{d}");
        }
    }

    #[test]
    fn backoff_is_validated() {
        assert!(Backoff::default().validate().is_ok());
        let with = |base_ms, max_ms, factor| Backoff {
            base_ms,
            max_ms,
            factor,
        };
        assert_eq!(
            with(0, 10, 2.0).validate().unwrap_err().field,
            "backoff.base_ms"
        );
        assert_eq!(
            with(10, 5, 2.0).validate().unwrap_err().field,
            "backoff.max_ms"
        );
        assert_eq!(
            with(10, MAX_BACKOFF_MS + 1, 2.0)
                .validate()
                .unwrap_err()
                .field,
            "backoff.max_ms"
        );
        for f in [0.5, 11.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                with(10, 50, f).validate().unwrap_err().field,
                "backoff.factor"
            );
        }
    }

    #[test]
    fn scheduling_fields_are_validated() {
        assert!(priority(0).is_ok() && priority(100).is_ok() && priority(DEFAULT_PRIORITY).is_ok());
        let e = priority(101).unwrap_err();
        assert_eq!(e.to_string(), "priority: must be from 0 to 100 (got 101)");
        assert!(priority(-1).is_err());

        assert!(timeout_seconds(1).is_ok() && timeout_seconds(MAX_TIMEOUT_SECONDS).is_ok());
        let e = timeout_seconds(0).unwrap_err();
        assert_eq!(e.field, "timeout_seconds");
        assert!(e.rule.contains("from 1 to 86400 seconds"), "{e}");
        assert!(timeout_seconds(MAX_TIMEOUT_SECONDS + 1).is_err());

        assert!(max_attempts(1).is_ok() && max_attempts(20).is_ok());
        assert_eq!(max_attempts(0).unwrap_err().field, "max_attempts");
        assert!(max_attempts(21).is_err());

        assert!(replicas_and_quorum(1, 1).is_ok() && replicas_and_quorum(9, 5).is_ok());
        let e = replicas_and_quorum(2, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "quorum: must not exceed replicas (got quorum 3 > replicas 2)"
        );
        assert_eq!(replicas_and_quorum(10, 1).unwrap_err().field, "replicas");
        assert_eq!(replicas_and_quorum(0, 0).unwrap_err().field, "replicas");
        assert_eq!(replicas_and_quorum(3, 0).unwrap_err().field, "quorum");
        assert_eq!([1, 2, 3, 4, 9].map(default_quorum), [1, 2, 2, 3, 5]);
    }
}
