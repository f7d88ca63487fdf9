//! Token buckets per API key and per tenant (governor), checked once a request is authenticated.
//! The buckets live in this node's memory: in scale-out mode each node enforces its own budget.

use crate::config::RateLimitConfig;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;

/// The limiters of one server; `None` where the configured rate is 0 (unlimited).
pub struct RateLimits {
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    per_tenant: Option<DefaultKeyedRateLimiter<String>>,
}

fn limiter(rps: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    let rate = NonZeroU32::new(rps)?;
    // A burst below the rate would make the configured rate unreachable within one second.
    let burst = NonZeroU32::new(burst.max(rps)).unwrap_or(rate);
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

/// Whole seconds (at least 1) until `limiter` would admit `key` again, or `None` if it does now.
fn check(limiter: &Option<DefaultKeyedRateLimiter<String>>, key: &String) -> Option<u64> {
    let limiter = limiter.as_ref()?;
    let not_until = limiter.check_key(key).err()?;
    let wait = not_until.wait_time_from(limiter.clock().now());
    // Round up: a client that waits the advertised time must then succeed.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Some(secs.max(1))
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            per_key: limiter(cfg.per_key_rps, cfg.per_key_burst),
            per_tenant: limiter(cfg.per_tenant_rps, cfg.per_tenant_burst),
        }
    }

    /// Takes one token from the key's bucket and one from the tenant's; on refusal returns the
    /// `Retry-After` seconds.
    pub fn check(&self, key_id: &String, tenant_id: &String) -> Result<(), u64> {
        if let Some(secs) = check(&self.per_key, key_id) {
            return Err(secs);
        }
        if let Some(secs) = check(&self.per_tenant, tenant_id) {
            return Err(secs);
        }
        Ok(())
    }

    /// Forgets buckets that are full again, so that memory does not grow with every key ever seen.
    pub fn shrink(&self) {
        for l in [&self.per_key, &self.per_tenant].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_is_unlimited_and_a_small_bucket_refuses() {
        let open = RateLimits::new(&RateLimitConfig {
            per_key_rps: 0,
            per_key_burst: 0,
            per_tenant_rps: 0,
            per_tenant_burst: 0,
        });
        for _ in 0..10_000 {
            assert!(open.check(&"k".into(), &"t".into()).is_ok());
        }
        let tight = RateLimits::new(&RateLimitConfig {
            per_key_rps: 1,
            per_key_burst: 2,
            per_tenant_rps: 0,
            per_tenant_burst: 0,
        });
        let (k, t) = ("k".to_string(), "t".to_string());
        assert!(tight.check(&k, &t).is_ok());
        assert!(tight.check(&k, &t).is_ok());
        let secs = tight.check(&k, &t).unwrap_err();
        assert!(secs >= 1);
        assert!(
            tight.check(&"other".into(), &t).is_ok(),
            "keys are independent"
        );
    }
}
