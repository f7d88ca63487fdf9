//! A circuit breaker for an agent or a model provider that keeps failing: after K consecutive
//! failures it opens (no work is sent), after a cool-down it lets exactly one probe through, and
//! the probe's outcome closes it or opens it again for a longer cool-down. Time is passed in as
//! Unix milliseconds.
//!
//! Work is admitted with a [`Permit`] that carries the breaker's epoch. The epoch changes on every
//! open and close, so a result from work admitted before the breaker opened (a slow task finishing
//! late) is ignored instead of being mistaken for the probe's outcome.

use crate::ValidationError;
use serde::{Deserialize, Serialize};

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (K).
    pub failure_threshold: u32,
    /// The first cool-down after opening.
    pub cooldown_ms: i64,
    /// Each failed probe doubles the cool-down, up to this.
    pub max_cooldown_ms: i64,
}

impl Default for BreakerConfig {
    /// Three failures in a row; 30 s cool-down, doubling up to 10 minutes.
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cooldown_ms: 30_000,
            max_cooldown_ms: 600_000,
        }
    }
}

impl BreakerConfig {
    /// A threshold of at least 1, a positive cool-down, and a maximum no shorter than it.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.failure_threshold == 0 {
            return Err(ValidationError::new(
                "breaker.failure_threshold",
                "must be at least 1",
            ));
        }
        if self.cooldown_ms < 1 {
            return Err(ValidationError::new(
                "breaker.cooldown_ms",
                "must be at least 1",
            ));
        }
        if self.max_cooldown_ms < self.cooldown_ms {
            return Err(ValidationError::new(
                "breaker.max_cooldown_ms",
                format!("must be at least cooldown_ms ({})", self.cooldown_ms),
            ));
        }
        Ok(())
    }
}

/// The breaker's state as the API and events show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Healthy: work flows.
    Closed,
    /// Failing: no work until the cool-down ends.
    Open,
    /// Cool-down over: one probe at a time decides whether to close again.
    HalfOpen,
}

/// Admission of one piece of work. Hand it back with the outcome.
#[must_use = "report the outcome with record_success, record_failure or release"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    epoch: u64,
    probe: bool,
}

impl Permit {
    /// Whether this is the half-open breaker's single probe.
    pub fn is_probe(self) -> bool {
        self.probe
    }
}

/// A summary for the API and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    /// The cool-down that applies to the current (or next) opening.
    pub cooldown_ms: i64,
    /// When an open breaker will let a probe through.
    pub open_until: Option<i64>,
}

/// One breaker. See the module documentation for the life cycle.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    /// The stored state; `Open` reads as `HalfOpen` once its cool-down has passed, but only
    /// [`CircuitBreaker::allow`] actually moves it, because only a probe can test the agent.
    state: BreakerState,
    consecutive_failures: u32,
    cooldown_ms: i64,
    opened_at: i64,
    probe_in_flight: bool,
    epoch: u64,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            cooldown_ms: config.cooldown_ms,
            opened_at: 0,
            probe_in_flight: false,
            epoch: 0,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: i64) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until() => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// Whether [`CircuitBreaker::allow`] would admit work at `now`, without taking the probe.
    /// The dispatcher filters candidates with this and calls `allow` only for the one it picks.
    pub fn is_available(&self, now: i64) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => !self.probe_in_flight,
            BreakerState::Open => false,
        }
    }

    /// Admits one piece of work: always when closed, never when open, and when half-open only if
    /// no probe is in flight (the permit is then the probe).
    pub fn allow(&mut self, now: i64) -> Option<Permit> {
        match self.state(now) {
            BreakerState::Closed => Some(self.permit(false)),
            BreakerState::Open => None,
            BreakerState::HalfOpen if self.probe_in_flight => None,
            BreakerState::HalfOpen => {
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                Some(self.permit(true))
            }
        }
    }

    /// The work succeeded. Returns the new state if this changed it (a probe closing the breaker).
    pub fn record_success(&mut self, permit: Permit) -> Option<BreakerState> {
        if permit.epoch != self.epoch {
            return None;
        }
        self.consecutive_failures = 0;
        if self.state == BreakerState::HalfOpen && permit.probe {
            self.state = BreakerState::Closed;
            self.cooldown_ms = self.config.cooldown_ms;
            self.probe_in_flight = false;
            self.epoch += 1;
            return Some(BreakerState::Closed);
        }
        None
    }

    /// The work failed. Returns the new state if this changed it: the K-th consecutive failure
    /// opens a closed breaker; a failed probe opens it again with a doubled cool-down.
    pub fn record_failure(&mut self, permit: Permit, now: i64) -> Option<BreakerState> {
        if permit.epoch != self.epoch {
            return None;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            BreakerState::Closed if self.consecutive_failures >= self.config.failure_threshold => {
                self.open(now);
                Some(BreakerState::Open)
            }
            BreakerState::HalfOpen if permit.probe => {
                self.cooldown_ms = self
                    .cooldown_ms
                    .saturating_mul(2)
                    .min(self.config.max_cooldown_ms);
                self.open(now);
                Some(BreakerState::Open)
            }
            _ => None,
        }
    }

    /// The work ended without saying anything about the agent's health (it was cancelled, or
    /// its worker was lost). A probe's slot is freed so another probe can be sent.
    pub fn release(&mut self, permit: Permit) {
        if permit.epoch == self.epoch && permit.probe && self.state == BreakerState::HalfOpen {
            self.probe_in_flight = false;
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn snapshot(&self, now: i64) -> BreakerSnapshot {
        let state = self.state(now);
        BreakerSnapshot {
            state,
            consecutive_failures: self.consecutive_failures,
            cooldown_ms: self.cooldown_ms,
            open_until: (state == BreakerState::Open).then(|| self.open_until()),
        }
    }

    fn open(&mut self, now: i64) {
        self.state = BreakerState::Open;
        self.opened_at = now;
        self.probe_in_flight = false;
        self.epoch += 1;
    }

    fn open_until(&self) -> i64 {
        self.opened_at.saturating_add(self.cooldown_ms)
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            epoch: self.epoch,
            probe,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            cooldown_ms: 1_000,
            max_cooldown_ms: 3_000,
        })
    }

    /// Opens the breaker at `now` with three failures.
    fn trip(b: &mut CircuitBreaker, now: i64) {
        for _ in 0..3 {
            let p = b.allow(now).unwrap();
            b.record_failure(p, now);
        }
        assert_eq!(b.state(now), Open);
    }

    #[test]
    fn closed_opens_after_k_consecutive_failures() {
        let mut b = breaker();
        let p = b.allow(0).unwrap();
        assert!(!p.is_probe());
        assert_eq!(b.record_failure(p, 0), None);
        let p = b.allow(0).unwrap();
        assert_eq!(b.record_failure(p, 0), None);
        // A success in between resets the count.
        let p = b.allow(0).unwrap();
        assert_eq!(b.record_success(p), None);
        assert_eq!(b.consecutive_failures(), 0);
        for expected in [None, None, Some(Open)] {
            let p = b.allow(10).unwrap();
            assert_eq!(b.record_failure(p, 10), expected);
        }
        assert_eq!(b.state(10), Open);
        assert!(b.allow(10).is_none() && !b.is_available(10));
        let s = b.snapshot(10);
        assert_eq!(
            (s.state, s.open_until, s.consecutive_failures),
            (Open, Some(1_010), 3)
        );
    }

    #[test]
    fn open_half_opens_after_the_cooldown_with_one_probe() {
        let mut b = breaker();
        trip(&mut b, 0);
        assert!(b.allow(999).is_none());
        assert_eq!(b.state(1_000), HalfOpen);
        assert!(b.is_available(1_000));
        let probe = b.allow(1_000).unwrap();
        assert!(probe.is_probe());
        assert!(b.allow(1_001).is_none(), "exactly one probe at a time");
        assert!(!b.is_available(1_001));
        assert_eq!(b.record_success(probe), Some(Closed));
        assert_eq!(b.state(1_002), Closed);
        assert!(b.allow(1_002).is_some());
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_capped_cooldown() {
        let mut b = breaker();
        trip(&mut b, 0);
        let mut now = 1_000;
        for expected in [2_000, 3_000, 3_000] {
            let probe = b.allow(now).unwrap();
            assert_eq!(b.record_failure(probe, now), Some(Open));
            assert_eq!(b.snapshot(now).cooldown_ms, expected);
            assert!(b.allow(now + expected - 1).is_none());
            now += expected;
        }
        // Closing resets the cool-down.
        let probe = b.allow(now).unwrap();
        b.record_success(probe);
        trip(&mut b, now);
        assert_eq!(b.snapshot(now).open_until, Some(now + 1_000));
    }

    #[test]
    fn late_results_from_before_the_opening_are_ignored() {
        let mut b = breaker();
        let slow = b.allow(0).unwrap();
        trip(&mut b, 0);
        assert_eq!(b.record_success(slow), None);
        assert_eq!(b.state(500), Open, "a stale success does not close it");
        let probe = b.allow(1_000).unwrap();
        assert_eq!(
            b.record_failure(slow, 1_000),
            None,
            "nor does a stale failure count"
        );
        assert_eq!(b.state(1_000), HalfOpen);
        assert_eq!(b.record_success(probe), Some(Closed));
    }

    #[test]
    fn releasing_a_probe_frees_the_slot() {
        let mut b = breaker();
        trip(&mut b, 0);
        let probe = b.allow(1_000).unwrap();
        b.release(probe);
        let again = b.allow(1_000).unwrap();
        assert!(again.is_probe());
        assert_eq!(b.record_success(again), Some(Closed));
    }

    #[test]
    fn config_is_validated() {
        assert!(BreakerConfig::default().validate().is_ok());
        let bad = |f: fn(&mut BreakerConfig)| {
            let mut c = BreakerConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(
            bad(|c| c.failure_threshold = 0),
            "breaker.failure_threshold"
        );
        assert_eq!(bad(|c| c.cooldown_ms = 0), "breaker.cooldown_ms");
        assert_eq!(bad(|c| c.max_cooldown_ms = 10), "breaker.max_cooldown_ms");
        assert_eq!(serde_json::to_value(HalfOpen).unwrap(), "half_open");
    }
}
