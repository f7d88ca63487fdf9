//! Lifecycle hooks (SPEC C12): a tenant's commands and webhooks run on its events.
//!
//! - [`spec`]: a hook's settings as the API takes them, checked (event patterns, scope, URL,
//!   signing secret, timeout), and the rules for matching an event.
//! - `outbox`: the dispatcher, which turns every tenant event on the [`EventBus`] into one
//!   delivery per matching hook that was on when the event happened (not when the dispatcher
//!   gets to it: see `cflow_store::Hook::was_on_at`) in the store's outbox, and the sender,
//!   which claims due deliveries under a lease, sends them, and records delivered / retry
//!   (exponential backoff with jitter) / dead (after the hook's most attempts). Switch times
//!   and event times come from the system clock of the node that made them; across nodes they
//!   are as good as the nodes' clock sync, and another node sees a switch when its hook cache
//!   expires (`cache_ttl_ms`).
//! - `send`: the two handlers — a webhook (a signed POST) and a command (in the sandbox, the
//!   event JSON on stdin, killed with its whole process tree at its timeout).
//! - `pretask`: `pre-task` hooks, asked synchronously at submission; they may veto or amend.
//!
//! # Durability
//! Events are in-memory notifications published after their change committed. The window
//! between that commit and the dispatcher's enqueue is not durable: a crash inside it loses
//! that event's notifications (the change itself is committed and visible in the store and the
//! ledger). Everything enqueued is delivered at least once, across restarts; a receiver dedupes
//! on `X-Cflow-Delivery`, which stays the same across retries. A dispatcher that falls behind a
//! burst reads what it missed from the bus's ring (the newest 65,536 events); only a backlog
//! larger than the ring loses the oldest events' notifications, logged with their exact count
//! (`missed`).
//!
//! [`EventBus`]: crate::events::EventBus

pub mod dest;
pub mod outbox;
pub mod pretask;
pub mod send;
pub mod spec;

use cflow_store::Hook;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The operator's settings of the hook sender (`[server.hooks]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// The first retry's delay; each further one doubles, up to `retry_max_ms`, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How often the sender looks for due deliveries when nothing wakes it.
    pub poll_ms: u64,
    /// How long a claimed delivery stays with its sender. Longer than the longest hook timeout
    /// (300 s), so a slow send is never taken over while it is still running.
    pub lease_ms: u64,
    /// How long a node trusts its cached list of a tenant's hooks. Creations and deletions
    /// through this node take effect at once; through another node, within this time.
    pub cache_ttl_ms: u64,
    /// Deliveries sent at once.
    pub concurrency: usize,
    /// Whether webhooks may reach loopback, private, link-local and other non-public addresses
    /// (see `dest.rs`). Off by default: a tenant admin must not reach the server's own network.
    pub allow_private_destinations: bool,
    /// Exceptions to that: host names, IP addresses and CIDR blocks webhooks may reach.
    pub allowed_destinations: Vec<String>,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            poll_ms: 1_000,
            lease_ms: 330_000,
            cache_ttl_ms: 5_000,
            concurrency: 16,
            allow_private_destinations: false,
            allowed_destinations: Vec::new(),
        }
    }
}

impl HookConfig {
    /// The webhook destination rule these settings describe; an error names the bad entry.
    pub fn destinations(&self) -> Result<dest::Destinations, String> {
        dest::Destinations::new(self.allow_private_destinations, &self.allowed_destinations)
    }

    /// The delay before attempt `attempts + 1` (after `attempts` failures): exponential from
    /// `retry_base_ms`, capped at `retry_max_ms`, with "equal jitter" (between half and all of
    /// it), so that a receiver coming back is not hit by every retry at once.
    pub fn backoff_ms(&self, attempts: i64, random: u64) -> i64 {
        let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let full = self
            .retry_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.retry_max_ms)
            .max(1);
        let half = full / 2;
        let jitter = if full - half == 0 {
            0
        } else {
            random % (full - half + 1)
        };
        i64::try_from(half + jitter).unwrap_or(i64::MAX)
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct HookMetrics {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    /// The dead-letter list's length (all tenants), refreshed by the sender.
    dead_letters: AtomicI64,
    pretask_denied: AtomicU64,
}

impl HookMetrics {
    pub fn outcome(&self, r: &cflow_store::SendResult) {
        let c = match r {
            cflow_store::SendResult::Delivered { .. } => &self.delivered,
            cflow_store::SendResult::Retry { .. } => &self.retried,
            cflow_store::SendResult::Dead { .. } => &self.dead,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_dead_letters(&self, n: i64) {
        self.dead_letters.store(n, Ordering::Relaxed);
    }

    pub fn denied(&self) {
        self.pretask_denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP cflow_hook_deliveries_total Hook sends, by outcome (a retry is a failed send \
             that will be tried again).\n\
             # TYPE cflow_hook_deliveries_total counter\n\
             cflow_hook_deliveries_total{{outcome=\"delivered\"}} {}\n\
             cflow_hook_deliveries_total{{outcome=\"retry\"}} {}\n\
             cflow_hook_deliveries_total{{outcome=\"dead\"}} {}\n\
             # HELP cflow_hook_dead_letters Deliveries in the dead-letter list (all tenants).\n\
             # TYPE cflow_hook_dead_letters gauge\n\
             cflow_hook_dead_letters {}\n\
             # HELP cflow_hook_pretask_denied_total Submissions refused by a pre-task hook.\n\
             # TYPE cflow_hook_pretask_denied_total counter\n\
             cflow_hook_pretask_denied_total {}",
            self.delivered.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.dead.load(Ordering::Relaxed),
            self.dead_letters.load(Ordering::Relaxed),
            self.pretask_denied.load(Ordering::Relaxed),
        );
    }
}

/// When a tenant's hook list was loaded, and the list.
type Cached = (Instant, Arc<Vec<Hook>>);

/// The server's hook machinery: settings, the per-tenant cache of enabled hooks, the command
/// runner and the HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct Hooks(Arc<Inner>);

struct Inner {
    config: HookConfig,
    /// Tenant → (when loaded, its hooks, on and off). An empty list is cached too, so a tenant
    /// without hooks costs one map lookup per event and per submission.
    cache: Mutex<HashMap<String, Cached>>,
    /// Swarm id → its project (a swarm's project never changes), for project-scoped hooks.
    projects: Mutex<HashMap<String, Option<String>>>,
    runner: send::Runner,
    /// Where webhooks may go; applied by `http`'s resolver and to IP-address URLs.
    destinations: Arc<dest::Destinations>,
    /// The webhook client, or why it could not be built (every webhook send then fails so).
    http: Result<reqwest::Client, String>,
    metrics: HookMetrics,
    /// Wakes the sender when something was enqueued.
    wake: tokio::sync::Notify,
}

impl Hooks {
    pub fn new(config: &crate::config::ServerConfig) -> Self {
        // `serve::start` refuses bad settings before this runs; should they get here anyway,
        // the strictest rule applies.
        let destinations = Arc::new(config.hooks.destinations().unwrap_or_else(|e| {
            tracing::error!(error = %e, "webhooks may reach public addresses only");
            dest::Destinations::default()
        }));
        // No redirects and no proxy: the destination rule sees every connection's address.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(destinations.resolver())
            .user_agent(concat!("cflow-hooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks fail");
                format!("the server could not build its webhook client: {e}")
            });
        Hooks(Arc::new(Inner {
            config: config.hooks.clone(),
            cache: Mutex::default(),
            projects: Mutex::default(),
            runner: send::Runner::new(config),
            destinations,
            http,
            metrics: HookMetrics::default(),
            wake: tokio::sync::Notify::new(),
        }))
    }

    pub fn config(&self) -> &HookConfig {
        &self.0.config
    }

    pub fn metrics(&self) -> &HookMetrics {
        &self.0.metrics
    }

    pub(crate) fn destinations(&self) -> &dest::Destinations {
        &self.0.destinations
    }

    pub(crate) fn http(&self) -> Result<&reqwest::Client, &str> {
        self.0.http.as_ref().map_err(String::as_str)
    }

    pub(crate) fn runner(&self) -> &send::Runner {
        &self.0.runner
    }

    pub(crate) fn wake(&self) {
        self.0.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.0.wake.notified().await;
    }

    /// Forgets a tenant's cached hooks (after a hook of it was created, switched or deleted).
    pub fn invalidate(&self, tenant: &str) {
        self.0
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    /// A tenant's hooks, on and off (the dispatcher matches an event against a hook as it was
    /// when the event happened), from the cache when it is fresh.
    pub async fn all(
        &self,
        store: &cflow_store::Store,
        tenant: &str,
    ) -> cflow_store::Result<Arc<Vec<Hook>>> {
        let ttl = Duration::from_millis(self.0.config.cache_ttl_ms);
        if let Some((at, hooks)) = self
            .0
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            && at.elapsed() < ttl
        {
            return Ok(hooks.clone());
        }
        let hooks = Arc::new(store.hook_list(tenant).await?);
        self.0
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string(), (Instant::now(), hooks.clone()));
        Ok(hooks)
    }

    /// The project of a swarm (`None`: it has none or does not exist).
    pub(crate) async fn project_of(
        &self,
        store: &cflow_store::Store,
        tenant: &str,
        swarm: &str,
    ) -> Option<String> {
        if let Some(p) = self
            .0
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(swarm)
        {
            return p.clone();
        }
        let project = match store.get_swarm(tenant, swarm).await {
            Ok(Some(s)) => s.project,
            Ok(None) => None,
            Err(_) => return None,
        };
        let mut map = self.0.projects.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(swarm.to_string(), project.clone());
        project
    }
}
