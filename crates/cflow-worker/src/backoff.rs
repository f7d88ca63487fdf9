//! Capped exponential backoff with jitter, for calls that failed transiently. Jitter keeps a
//! fleet of workers that lost the server at the same moment from coming back in lockstep.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How long to wait between retries of a transiently failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait (before jitter).
    pub initial: Duration,
    /// The longest wait (before jitter).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

/// The waits of one run of failures: each wait is drawn from `[d/2, d]` where `d` doubles from
/// `initial` up to `max` ("equal jitter"), so a wait is never shorter than half its step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            step: policy.initial,
        }
    }

    /// The next wait; the one after it is (up to) twice as long.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let step = self.step.min(self.policy.max);
        self.step = step.saturating_mul(2).min(self.policy.max);
        let half = step / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            random_u64() % (spread + 1)
        };
        half + Duration::from_micros(jitter)
    }

    /// Back to `initial` after a success.
    pub(crate) fn reset(&mut self) {
        self.step = self.policy.initial;
    }
}

/// A random number good enough for jitter: std's `RandomState` is seeded from the OS per thread
/// and advanced on every call, so each hasher it builds has fresh keys.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_stay_within_their_jitter_band() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let mut b = Backoff::new(policy);
        for step_ms in [100u64, 200, 400, 800, 800, 800] {
            let w = b.next_wait();
            let step = Duration::from_millis(step_ms);
            assert!(
                w >= step / 2 && w <= step,
                "{w:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }
}
