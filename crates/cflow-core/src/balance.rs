//! Choosing an agent among the eligible ones: smooth weighted round robin (spreads picks in
//! proportion to weight) and least-loaded (fewest running tasks). Both are deterministic, so the
//! same inputs always give the same choice and tests can state exact sequences.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// An agent that could take the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// Relative capacity; an agent of weight 0 is never picked.
    pub weight: u32,
    /// Tasks the agent is running now.
    pub running: u32,
}

/// How a swarm spreads tasks over its eligible agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin: agents take turns in proportion to their weights.
    #[default]
    WeightedRoundRobin,
    /// The agent running the fewest tasks.
    LeastLoaded,
}

impl Strategy {
    pub const ALL: [Strategy; 2] = [Strategy::WeightedRoundRobin, Strategy::LeastLoaded];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::LeastLoaded => "least_loaded",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a strategy name that is not one of [`Strategy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balancing strategy '{0}': expected weighted_round_robin or least_loaded")]
pub struct UnknownStrategy(pub String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}

/// Smooth weighted round robin, as in nginx: on every pick each candidate's current weight grows
/// by its weight, the largest is picked (ties go to the smaller id, so the order of candidates
/// does not matter), and the pick's current weight drops by the total. Weights 5, 1, 1 give
/// `a a b a c a a`: the heavy agent is interleaved rather than picked five times in a row.
///
/// Agents that are not candidates on a pick (busy, ineligible) keep their current weight. Each
/// pick is O(candidates).
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    current: HashMap<String, i64>,
}

impl SmoothWrr {
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks one of `candidates` (ids are assumed distinct), or `None` when none has a weight.
    pub fn pick<'a>(&mut self, candidates: &[Candidate<'a>]) -> Option<&'a str> {
        let mut total = 0i64;
        let mut best: Option<(i64, &'a str)> = None;
        for c in candidates.iter().filter(|c| c.weight > 0) {
            let w = i64::from(c.weight);
            total += w;
            // Look up before inserting so the hot path (a known agent) does not allocate.
            let cur = match self.current.get_mut(c.id) {
                Some(cur) => {
                    *cur += w;
                    *cur
                }
                None => {
                    self.current.insert(c.id.to_string(), w);
                    w
                }
            };
            let better = match best {
                None => true,
                Some((bw, bid)) => cur > bw || (cur == bw && c.id < bid),
            };
            if better {
                best = Some((cur, c.id));
            }
        }
        let (_, id) = best?;
        *self
            .current
            .get_mut(id)
            .expect("picked agent has a current weight") -= total;
        Some(id)
    }

    /// Forgets an agent that left (so its state does not linger).
    pub fn forget(&mut self, id: &str) {
        self.current.remove(id);
    }
}

/// The candidate running the fewest tasks; ties go to the higher weight, then the smaller id.
/// Agents of weight 0 are never picked.
pub fn least_loaded<'a>(candidates: &[Candidate<'a>]) -> Option<&'a str> {
    candidates
        .iter()
        .filter(|c| c.weight > 0)
        .min_by(|a, b| {
            (a.running, std::cmp::Reverse(a.weight), a.id).cmp(&(
                b.running,
                std::cmp::Reverse(b.weight),
                b.id,
            ))
        })
        .map(|c| c.id)
}

/// Picks agents by either strategy, keeping the round-robin state between picks.
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    wrr: SmoothWrr,
}

impl Balancer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn pick<'a>(
        &mut self,
        strategy: Strategy,
        candidates: &[Candidate<'a>],
    ) -> Option<&'a str> {
        match strategy {
            Strategy::WeightedRoundRobin => self.wrr.pick(candidates),
            Strategy::LeastLoaded => least_loaded(candidates),
        }
    }

    /// Forgets an agent that left.
    pub fn forget(&mut self, id: &str) {
        self.wrr.forget(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, weight: u32, running: u32) -> Candidate<'_> {
        Candidate {
            id,
            weight,
            running,
        }
    }

    #[test]
    fn nginx_sequence_for_weights_5_1_1() {
        let mut wrr = SmoothWrr::new();
        let agents = [c("a", 5, 0), c("b", 1, 0), c("c", 1, 0)];
        let picks: String = (0..7).map(|_| wrr.pick(&agents).unwrap()).collect();
        assert_eq!(picks, "aabacaa");
        // The cycle repeats exactly.
        let again: String = (0..7).map(|_| wrr.pick(&agents).unwrap()).collect();
        assert_eq!(again, "aabacaa");
        // Candidate order does not change the outcome.
        let mut wrr = SmoothWrr::new();
        let reversed = [c("c", 1, 0), c("b", 1, 0), c("a", 5, 0)];
        let picks: String = (0..7).map(|_| wrr.pick(&reversed).unwrap()).collect();
        assert_eq!(picks, "aabacaa");
    }

    #[test]
    fn weights_give_proportional_shares() {
        let mut wrr = SmoothWrr::new();
        let agents = [c("x", 3, 0), c("y", 2, 0), c("z", 0, 0)];
        let mut counts = HashMap::new();
        for _ in 0..500 {
            *counts.entry(wrr.pick(&agents).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(counts["x"], 300);
        assert_eq!(counts["y"], 200);
        assert!(!counts.contains_key("z"), "weight 0 is never picked");
        assert_eq!(wrr.pick(&[]), None);
        assert_eq!(wrr.pick(&[c("z", 0, 0)]), None);
    }

    #[test]
    fn a_changing_candidate_set_still_spreads() {
        let mut wrr = SmoothWrr::new();
        let all = [c("a", 1, 0), c("b", 1, 0)];
        assert_eq!(wrr.pick(&all), Some("a"));
        // a is busy: b is the only candidate, and a keeps its place for later.
        assert_eq!(wrr.pick(&all[1..]), Some("b"));
        let picks: Vec<_> = (0..100).map(|_| wrr.pick(&all).unwrap()).collect();
        let a = picks.iter().filter(|p| **p == "a").count();
        assert!(a.abs_diff(50) <= 1, "{a} of 100");
        wrr.forget("a");
        wrr.forget("nobody");
        assert!(wrr.pick(&all).is_some());
    }

    #[test]
    fn least_loaded_breaks_ties_by_weight_then_id() {
        assert_eq!(
            least_loaded(&[c("a", 1, 2), c("b", 1, 1), c("c", 1, 3)]),
            Some("b")
        );
        assert_eq!(
            least_loaded(&[c("a", 1, 1), c("b", 4, 1), c("c", 2, 1)]),
            Some("b"),
            "equal load: higher weight"
        );
        assert_eq!(
            least_loaded(&[c("b", 2, 0), c("a", 2, 0), c("c", 2, 0)]),
            Some("a"),
            "equal load and weight: smaller id"
        );
        assert_eq!(least_loaded(&[c("a", 0, 0)]), None);
        assert_eq!(least_loaded(&[]), None);
    }

    #[test]
    fn balancer_dispatches_on_strategy() {
        let mut b = Balancer::new();
        let agents = [c("a", 1, 5), c("b", 1, 0)];
        assert_eq!(b.pick(Strategy::LeastLoaded, &agents), Some("b"));
        assert_eq!(b.pick(Strategy::WeightedRoundRobin, &agents), Some("a"));
        assert_eq!(b.pick(Strategy::WeightedRoundRobin, &agents), Some("b"));
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("random".parse::<Strategy>().is_err());
        assert_eq!(Strategy::default(), Strategy::WeightedRoundRobin);
    }
}
