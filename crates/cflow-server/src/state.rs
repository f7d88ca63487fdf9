//! The state shared by every handler: the store, configuration, limiters and metrics.

use crate::authcache::AuthCache;
use crate::config::ServerConfig;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::sched::Scheduler;
use axum::body::Bytes;
use cflow_store::Store;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    /// The scheduler: swarms, agents, tasks and workers go through it, not straight to the store.
    pub sched: Scheduler,
    pub events: EventBus,
    pub metrics: Metrics,
    pub limits: RateLimits,
    pub auth_cache: AuthCache,
    pub request_timeout: Duration,
    pub metrics_public: bool,
    /// Model prices: the built-in table with the configuration's overrides.
    pub prices: cflow_core::pricing::PriceTable,
    /// The operator's model providers in effect (`[server.llm]`, else derived from the
    /// environment at start); a tenant's own list replaces them for its tasks.
    pub llm_providers: Vec<crate::llmconfig::ProviderConfig>,
    /// Tenants' secrets (sealed under the master key) and their maskers.
    pub secrets: crate::secrets::Secrets,
    /// Lifecycle hooks: the cache of tenants' hooks, the handlers' runner and metrics.
    pub hooks: crate::hooks::Hooks,
    /// The OpenAPI document, serialised once at start: it cannot change while the server runs.
    pub openapi_json: Bytes,
}

/// An [`AppState`] that does not keep the server alive: for what the state itself holds (the
/// scheduler's model host), where a strong handle would be a reference cycle.
#[derive(Clone)]
pub struct WeakState(Weak<Inner>);

impl WeakState {
    /// The state, unless the server has been dropped.
    pub fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(AppState)
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        store: Store,
        sched: Scheduler,
        events: EventBus,
        secrets: crate::secrets::Secrets,
        config: &ServerConfig,
    ) -> Self {
        let doc = crate::openapi();
        let openapi_json = serde_json::to_vec(&doc).expect("the OpenAPI document serialises");
        let state = AppState(Arc::new(Inner {
            store,
            sched,
            events,
            metrics: Metrics::new(),
            limits: RateLimits::new(&config.rate_limit),
            auth_cache: AuthCache::default(),
            // Zero would answer every request with a timeout; treat it as "no limit".
            request_timeout: match config.request_timeout_secs {
                0 => Duration::from_secs(365 * 24 * 3600),
                s => Duration::from_secs(s),
            },
            metrics_public: config.metrics_public,
            prices: config.pricing.table(),
            llm_providers: config.llm.effective(|k| std::env::var(k).ok()),
            secrets,
            hooks: crate::hooks::Hooks::new(config),
            openapi_json: Bytes::from(openapi_json),
        }));
        crate::llmconfig::install_usage_recorder(&state);
        state
    }

    pub fn downgrade(&self) -> WeakState {
        WeakState(Arc::downgrade(&self.0))
    }

    /// A tenant's secret in the clear, for the server's own use (the model drivers); no route
    /// returns a value. `None` when the tenant has no such secret or it does not open (logged,
    /// by name only).
    pub async fn secret_value(&self, tenant_id: &str, name: &str) -> Option<String> {
        match self.secrets.value(tenant_id, name).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(tenant = tenant_id, error = %e, "cannot read a secret");
                None
            }
        }
    }
}

/// The current time in Unix milliseconds, the unit of every stored time.
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
