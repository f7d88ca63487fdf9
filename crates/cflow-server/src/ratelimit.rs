//! Token buckets per API key and per tenant (governor), checked once a request is authenticated,
//! and per source address for failed authentications. The buckets live in this node's memory: in
//! scale-out mode each node enforces its own budget.

use crate::config::RateLimitConfig;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};

/// The limiters of one server; `None` where the configured rate is 0 (unlimited).
pub struct RateLimits {
    per_key: Option<DefaultKeyedRateLimiter<String>>,
    per_tenant: Option<DefaultKeyedRateLimiter<String>>,
    per_ip_auth_failures: Option<DefaultKeyedRateLimiter<String>>,
    /// Failed authentications refused (and so not audited one by one) per source address since
    /// the last [`RateLimits::take_suppressed`]. Only addresses whose bucket ran out are here.
    suppressed: Mutex<HashMap<String, u64>>,
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
            per_ip_auth_failures: limiter(
                cfg.per_ip_auth_failures_rps,
                cfg.per_ip_auth_failures_burst,
            ),
            suppressed: Mutex::default(),
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

    /// Takes one token from `source`'s bucket of failed authentications. When it is empty, counts
    /// the failure as suppressed (see [`RateLimits::take_suppressed`]) and returns the
    /// `Retry-After` seconds: the caller then answers 429 without auditing the request.
    pub fn auth_failure(&self, source: &str) -> Result<(), u64> {
        let Some(secs) = check(&self.per_ip_auth_failures, &source.to_owned()) else {
            return Ok(());
        };
        let mut suppressed = self
            .suppressed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *suppressed.entry(source.to_owned()).or_default() += 1;
        Err(secs)
    }

    /// The failed authentications suppressed per source address since the last call, for one
    /// aggregated ledger entry per address.
    pub fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut suppressed = self
            .suppressed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut taken: Vec<_> = std::mem::take(&mut *suppressed).into_iter().collect();
        taken.sort();
        taken
    }

    /// Forgets buckets that are full again, so that memory does not grow with every key or
    /// address ever seen.
    pub fn shrink(&self) {
        let limiters = [&self.per_key, &self.per_tenant, &self.per_ip_auth_failures];
        for l in limiters.into_iter().flatten() {
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
            per_ip_auth_failures_rps: 0,
            per_ip_auth_failures_burst: 0,
        });
        for _ in 0..10_000 {
            assert!(open.check(&"k".into(), &"t".into()).is_ok());
            assert!(open.auth_failure("127.0.0.1").is_ok());
        }
        assert!(open.take_suppressed().is_empty());
        let tight = RateLimits::new(&RateLimitConfig {
            per_key_rps: 1,
            per_key_burst: 2,
            ..RateLimitConfig::default()
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

    #[test]
    fn failed_authentications_are_limited_per_address_and_counted() {
        let limits = RateLimits::new(&RateLimitConfig {
            per_ip_auth_failures_rps: 1,
            per_ip_auth_failures_burst: 3,
            ..RateLimitConfig::default()
        });
        for _ in 0..3 {
            assert!(limits.auth_failure("10.0.0.1").is_ok());
        }
        for _ in 0..4 {
            assert!(limits.auth_failure("10.0.0.1").unwrap_err() >= 1);
        }
        assert!(
            limits.auth_failure("10.0.0.2").is_ok(),
            "addresses are independent"
        );
        assert_eq!(limits.take_suppressed(), vec![("10.0.0.1".to_string(), 4)]);
        assert!(
            limits.take_suppressed().is_empty(),
            "taking resets the count"
        );
    }
}
