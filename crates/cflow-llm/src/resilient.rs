//! Retries, a circuit breaker per provider and failover across an ordered list of providers.

use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{LlmError, Result};
use crate::types::{Event, Request, Response};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The backoff ceiling of the first retry; it doubles with each further retry.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `retry-after` longer than this is not waited for: the call fails over instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform wait in `[0, min(max_delay, base·2^(retry-1))]`. A provider's
    /// `retry-after` is a floor, with up to one base delay of jitter added so that clients told
    /// the same time do not return together.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        match retry_after {
            Some(ra) => ra + jitter(self.base_delay),
            None => jitter(ceiling),
        }
    }
}

/// A uniform duration in `[0, max]`. `RandomState` is randomly keyed per instance, which is
/// enough randomness for spreading retries without a random-number crate.
fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let r = RandomState::new().hash_one(DRAWS.fetch_add(1, Ordering::Relaxed));
    Duration::from_nanos(r % (nanos + 1))
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets one probe through.
    pub cool_down: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 3,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// A breaker's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerStatus {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over; one probe call decides whether it closes or opens again.
    HalfOpen {
        probing: bool,
    },
}

struct Breaker {
    state: Mutex<BreakerStatus>,
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerStatus> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a call, or says until when the breaker stays open.
    fn admit(&self, now: Instant, policy: &BreakerPolicy) -> std::result::Result<(), Instant> {
        let mut s = self.lock();
        match *s {
            BreakerStatus::Closed { .. } => Ok(()),
            BreakerStatus::Open { until } if now >= until => {
                *s = BreakerStatus::HalfOpen { probing: true };
                Ok(())
            }
            BreakerStatus::Open { until } => Err(until),
            BreakerStatus::HalfOpen { probing: false } => {
                *s = BreakerStatus::HalfOpen { probing: true };
                Ok(())
            }
            // Another call is probing; refuse until it could have finished a cool-down.
            BreakerStatus::HalfOpen { probing: true } => Err(now + policy.cool_down),
        }
    }

    fn success(&self) {
        *self.lock() = BreakerStatus::Closed { failures: 0 };
    }

    /// Records a failed attempt; returns whether this opened the breaker.
    fn failure(&self, now: Instant, policy: &BreakerPolicy) -> bool {
        let mut s = self.lock();
        let open = BreakerStatus::Open {
            until: now + policy.cool_down,
        };
        match *s {
            BreakerStatus::Closed { failures } if failures + 1 >= policy.failure_threshold => {
                *s = open;
                true
            }
            BreakerStatus::Closed { failures } => {
                *s = BreakerStatus::Closed {
                    failures: failures + 1,
                };
                false
            }
            BreakerStatus::HalfOpen { .. } => {
                *s = open;
                true
            }
            BreakerStatus::Open { .. } => false,
        }
    }

    /// A cancelled probe decides nothing: the next call may probe.
    fn abandon(&self) {
        let mut s = self.lock();
        if let BreakerStatus::HalfOpen { .. } = *s {
            *s = BreakerStatus::HalfOpen { probing: false };
        }
    }
}

/// A resilient call's result: the response, which provider gave it, and every retry, skip and
/// failover on the way (also sent as `Event::Notice`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: Response,
    pub provider: String,
    pub trace: Vec<String>,
}

pub struct Resilient {
    providers: Vec<(Client, Breaker)>,
    retry: RetryPolicy,
    breaker: BreakerPolicy,
}

impl Resilient {
    /// `providers` in order of preference: the primary first, then the failovers.
    pub fn new(providers: Vec<Client>) -> Self {
        let providers = providers
            .into_iter()
            .map(|c| {
                let b = Breaker {
                    state: Mutex::new(BreakerStatus::Closed { failures: 0 }),
                };
                (c, b)
            })
            .collect();
        Resilient {
            providers,
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_breaker(mut self, breaker: BreakerPolicy) -> Self {
        self.breaker = breaker;
        self
    }

    /// The breaker state of the provider with this name.
    pub fn breaker(&self, provider: &str) -> Option<BreakerStatus> {
        self.providers
            .iter()
            .find(|(c, _)| c.config().name == provider)
            .map(|(_, b)| *b.lock())
    }

    /// Tries each provider in order, each with its own model and `max_retries`. A retryable
    /// error is retried with backoff until the attempts run out or the provider's breaker opens,
    /// then the next provider is tried; a final error (auth, bad request, invalid tool input,
    /// cancellation) is returned at once. When every provider failed, the last error is returned.
    pub async fn complete(
        &self,
        req: &Request,
        events: Option<&mpsc::Sender<Event>>,
        cancel: &CancellationToken,
    ) -> Result<Answer> {
        let mut trace = Vec::new();
        let mut last_err = None;
        for (i, (client, breaker)) in self.providers.iter().enumerate() {
            let cfg = client.config();
            let name = &cfg.name;
            let mut req = req.clone();
            if !cfg.model.is_empty() {
                req.model = cfg.model.clone();
            }
            let attempts = cfg.max_retries + 1;
            for attempt in 1..=attempts {
                if cancel.is_cancelled() {
                    return Err(LlmError::Cancelled);
                }
                if let Err(until) = breaker.admit(Instant::now(), &self.breaker) {
                    let e = LlmError::CircuitOpen {
                        provider: name.clone(),
                        until,
                    };
                    notice(&mut trace, events, format!("{name}: skipped, {e}")).await;
                    last_err = Some(e);
                    break;
                }
                match client.complete(&req, events, cancel).await {
                    Ok(response) => {
                        breaker.success();
                        if i > 0 || attempt > 1 {
                            let msg =
                                format!("{name} ({}) answered on attempt {attempt}", req.model);
                            notice(&mut trace, events, msg).await;
                        }
                        return Ok(Answer {
                            response,
                            provider: name.clone(),
                            trace,
                        });
                    }
                    Err(LlmError::Cancelled) => {
                        breaker.abandon();
                        return Err(LlmError::Cancelled);
                    }
                    // The provider is reachable and answered: the request itself is at fault.
                    Err(e) if !e.is_retryable() => {
                        breaker.success();
                        return Err(e);
                    }
                    Err(e) => {
                        let opened = breaker.failure(Instant::now(), &self.breaker);
                        notice(
                            &mut trace,
                            events,
                            format!("{name}: attempt {attempt}/{attempts} failed: {e}"),
                        )
                        .await;
                        let too_long = e
                            .retry_after()
                            .filter(|ra| *ra > self.retry.max_retry_after);
                        last_err = Some(e);
                        if opened {
                            let msg = format!(
                                "{name}: circuit breaker opened for {:.1}s",
                                self.breaker.cool_down.as_secs_f64()
                            );
                            notice(&mut trace, events, msg).await;
                            break;
                        }
                        if attempt == attempts {
                            break;
                        }
                        if let Some(ra) = too_long {
                            let msg = format!(
                                "{name}: retry-after {:.1}s is too long to wait",
                                ra.as_secs_f64()
                            );
                            notice(&mut trace, events, msg).await;
                            break;
                        }
                        let wait = self
                            .retry
                            .delay(attempt, last_err.as_ref().and_then(LlmError::retry_after));
                        notice(
                            &mut trace,
                            events,
                            format!("{name}: retrying in {:.2}s", wait.as_secs_f64()),
                        )
                        .await;
                        tokio::select! {
                            _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            if let Some((next, _)) = self.providers.get(i + 1) {
                let msg = format!("failing over from {name} to {}", next.config().name);
                notice(&mut trace, events, msg).await;
            }
        }
        Err(last_err.unwrap_or_else(|| LlmError::BadRequest("no provider is configured".into())))
    }
}

async fn notice(trace: &mut Vec<String>, events: Option<&mpsc::Sender<Event>>, msg: String) {
    tracing::info!(target: "cflow_llm", "{msg}");
    if let Some(tx) = events {
        let _ = tx.send(Event::Notice(msg.clone())).await;
    }
    trace.push(msg);
}
