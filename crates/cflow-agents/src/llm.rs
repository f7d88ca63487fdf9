//! The `llm` driver: cflow's own agent loop. A prompt goes to a model provider (Anthropic
//! Messages or an OpenAI-compatible API, through `cflow-llm`), the model calls tools — the
//! worker-side tools of the job's [`Workbench`](crate::tools::Workbench) (files in the
//! workspace, `run_command` in the sandbox) and the server-side tools of the job's
//! [`Host`](crate::host::Host) (memory, messages, delegation) — and the loop feeds the results
//! back until the model gives a final answer.
//!
//! One attempt:
//! 1. **Setup.** With a host, [`HostCall::Setup`] gives the agent's providers (keys included),
//!    type, system prompt override and peers; without one (tests, benchmarks) the spec's setup is
//!    used and the outcome notes that server-side tools and budgets were not available. When the
//!    setup names no provider, [`LlmConfig::fallback`] (the worker's `ANTHROPIC_API_KEY`) is
//!    used; with none at all the attempt fails saying how to configure one.
//! 2. **Tools.** The workbench's tools, plus [`SERVER_TOOLS`](crate::host::SERVER_TOOLS) when there is a host, each
//!    restricted to `allowed_tools` when the task names some.
//! 3. **Prompt.** [`prompts::system_prompt`](crate::prompts::system_prompt); the first user
//!    message is the task's prompt followed by its dependencies' results (each capped).
//! 4. **Turns.** Before each model call [`HostCall::CheckBudget`]; the call streams (text
//!    deltas are forwarded coalesced as `assistant_text` events, cut only after whitespace so
//!    that no secret the server masks per event is split across two); after it
//!    [`HostCall::Usage`]; then the response's tool calls run one after another, in order
//!    (`tool_use` / `tool_result` events), and the loop goes on. It ends on a final answer
//!    (`end_turn` without tool calls), `max_turns`, `max_tokens` (output tokens over the whole
//!    loop), a spent budget, a provider error that retries and failover could not overcome,
//!    cancellation or the job's timeout.
//! 5. **Outcome.** The answer is stdout and `result.answer`; tokens per (provider, model) are
//!    `model_usage`; the transcript (`transcript.jsonl`, capped) and the workbench's artifacts
//!    are the artifacts.
//!
//! # Layout
//! - this file: [`LlmConfig`], [`LlmDriver`] (setup, workbench, timeout, [`Driver`] impl);
//! - `conversation`: the turns, events, outcome and transcript of one attempt;
//! - `providers`: the per-provider client cache (shared breakers) and failover;
//! - `server_tools`: the server-side tools' definitions.
//!
//! # Invariants
//! - **Breakers are per provider and per worker.** Each provider (name, kind, base URL, model,
//!   headers and a keyed hash of its API key) has one [`Resilient`](cflow_llm::Resilient) in the driver's cache, shared
//!   by every loop of the worker, so a failing provider's circuit breaker opens for all of them;
//!   failover to the next provider of the setup happens here, across those single-provider
//!   clients. The key itself is never logged nor part of any message.
//! - **Cancellation and timeout are prompt.** Both cancel one token that the model call (which
//!   drops its connection), every host call and every tool watch; the loop then ends with
//!   [`JobEnd::Cancelled`] / [`JobEnd::TimedOut`] after the workbench is closed (its commands
//!   killed, see the crate's invariant).
//! - **Small per-loop state.** No task or thread per loop; the conversation is held once (the
//!   request's messages, appended in place) and the transcript is rendered from it at the end.
//! - **A budget refusal is final:** the attempt fails with the server's message and is not
//!   retried (a [`DriverError`] with `retryable: false`); each call's usage was already
//!   recorded through [`HostCall::Usage`].

mod conversation;
mod providers;
pub(crate) mod server_tools;

use crate::driver::{
    BoxFuture, Driver, DriverError, Isolation, Job, JobEnd, JobEvent, JobOutcome, JobSpec,
};
use crate::exec::ExecDriver;
use crate::host::{HostCall, HostError};
use crate::model::{LlmSpec, ModelSetup, ProviderSetup};
use crate::tools::Toolbox;
use cflow_llm::{BreakerPolicy, BreakerStatus, RetryPolicy, Timeouts};
use conversation::{Conversation, Emitter, LoopEnd, guarded};
use providers::ProviderCache;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The operator's settings of the `llm` driver.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Model calls per attempt when the task does not say (`max_turns`).
    pub max_turns: u32,
    /// The most output tokens one model call may produce (lowered to what is left of the
    /// task's `max_tokens`).
    pub max_tokens_per_call: u32,
    /// Each provider's connect, first-token and total timeouts.
    pub timeouts: Timeouts,
    /// Retries of a failed call on one provider before failing over.
    pub max_retries: u32,
    pub retry: RetryPolicy,
    /// The circuit breaker of each provider (shared by all loops of the driver).
    pub breaker: BreakerPolicy,
    /// The most bytes of `transcript.jsonl`.
    pub transcript_cap: usize,
    /// The most bytes of one dependency's result in the first message.
    pub input_cap: usize,
    /// How long streamed text is held to be sent as one `assistant_text` event.
    pub text_flush: Duration,
    /// Providers used when the setup names none: the worker's own (see [`LlmConfig::from_env`]).
    pub fallback: Vec<ProviderSetup>,
    /// The most providers kept in the breaker cache (idle ones are dropped past it).
    pub cache_cap: usize,
}

/// The model of the `ANTHROPIC_API_KEY` fallback when `ANTHROPIC_MODEL` is not set.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            max_turns: 50,
            max_tokens_per_call: 8192,
            timeouts: Timeouts::default(),
            max_retries: 2,
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            transcript_cap: 1 << 20,
            input_cap: 16 * 1024,
            text_flush: Duration::from_millis(100),
            fallback: Vec::new(),
            cache_cap: 1024,
        }
    }
}

impl LlmConfig {
    /// The defaults, with the worker's Anthropic provider as the fallback when
    /// `ANTHROPIC_API_KEY` is set (`ANTHROPIC_BASE_URL` and `ANTHROPIC_MODEL` are honoured).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut config = Self::default();
        if let Some(key) = var("ANTHROPIC_API_KEY") {
            config.fallback.push(ProviderSetup {
                name: "anthropic".into(),
                kind: "anthropic".into(),
                base_url: var("ANTHROPIC_BASE_URL")
                    .unwrap_or_else(|| "https://api.anthropic.com".into()),
                model: var("ANTHROPIC_MODEL").unwrap_or_else(|| DEFAULT_ANTHROPIC_MODEL.into()),
                api_key: Some(key),
                extra_headers: Vec::new(),
                azure_api_version: None,
            });
        }
        config
    }
}

/// Runs [`JobSpec::Llm`] jobs: cflow's own agent loop.
pub struct LlmDriver {
    exec: ExecDriver,
    config: LlmConfig,
    providers: ProviderCache,
}

impl std::fmt::Debug for LlmDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmDriver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LlmDriver {
    /// `exec` runs the workbench's commands (sandboxed when it is).
    pub fn new(exec: ExecDriver, config: LlmConfig) -> Self {
        Self {
            exec,
            config,
            providers: ProviderCache::default(),
        }
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// The circuit breaker of a provider as this driver's loops share it (`None` until a loop
    /// has used the provider).
    pub fn breaker(&self, provider: &ProviderSetup) -> Option<BreakerStatus> {
        let key = self.providers.key(provider);
        let map = self.providers.lock();
        map.get(&key).and_then(|r| r.breaker(&provider.name))
    }

    /// Runs one job with `toolbox` in place of the job's workbench (embedding, tests and
    /// benchmarks); `isolation` is what the outcome states. No workspace artifacts are taken.
    pub async fn run_with_toolbox(
        &self,
        job: Job,
        toolbox: &dyn Toolbox,
        isolation: Isolation,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        self.run_job(job, Tools::Given(toolbox, isolation), events, cancel)
            .await
    }

    async fn run_job(
        &self,
        job: Job,
        tools: Tools<'_>,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> Result<JobOutcome, DriverError> {
        let started = Instant::now();
        let JobSpec::Llm(spec) = &job.spec else {
            return Err(DriverError::Unsupported {
                driver: "llm",
                spec: job.spec.name(),
            });
        };
        let spec: &LlmSpec = spec;
        // Cancellation and the timeout both stop the loop through `stop`; the loop then winds
        // down (closing the workbench) and the outcome says which of them it was.
        let stop = cancel.child_token();
        let mut emit = Emitter {
            tx: events,
            open: true,
        };
        let work = self.attempt(&job, spec, tools, &mut emit, &stop, started);
        tokio::pin!(work);
        let mut timed_out = false;
        let result = tokio::select! {
            r = &mut work => r,
            _ = tokio::time::sleep(job.timeout) => {
                timed_out = true;
                stop.cancel();
                work.await
            }
        };
        let mut outcome = result?;
        if outcome.end == JobEnd::Cancelled && timed_out && !cancel.is_cancelled() {
            outcome.end = JobEnd::TimedOut;
            outcome.result_error = Some(format!(
                "the model loop ran past the task's timeout ({:.1}s) — raise the task's timeout \
                 or narrow its prompt",
                job.timeout.as_secs_f64()
            ));
        }
        outcome.wall_time = started.elapsed();
        Ok(outcome)
    }

    /// Setup, workbench, conversation, outcome: everything but the timeout.
    async fn attempt(
        &self,
        job: &Job,
        spec: &LlmSpec,
        tools: Tools<'_>,
        emit: &mut Emitter,
        stop: &CancellationToken,
        started: Instant,
    ) -> Result<JobOutcome, DriverError> {
        let mut notes = Vec::new();
        let host = job.host.as_ref();
        let setup = match host {
            Some(h) => match guarded(stop, h.call(HostCall::Setup)).await {
                None => return Ok(stopped_outcome(None)),
                Some(Err(HostError::Lost(m))) => return Ok(stopped_outcome(Some(m))),
                Some(Err(HostError::Refused(m))) => {
                    return Err(refusal(format!("the server refused the model setup: {m}")));
                }
                Some(Err(e @ HostError::Unavailable(_))) => {
                    return Err(DriverError::Sandbox {
                        message: format!("cannot get the model setup: {e}"),
                        retryable: true,
                    });
                }
                Some(Ok(v)) => serde_json::from_value::<ModelSetup>(v).map_err(|e| {
                    refusal(format!(
                        "the server's model setup is not understood by this worker ({e}) — \
                         run the same cflow version on the server and the worker"
                    ))
                })?,
            },
            None => {
                notes.push(
                    "no server: server-side tools (memory, messages, delegation) and budgets \
                     were not available, and usage was not recorded"
                        .to_string(),
                );
                spec.setup.clone()
            }
        };
        let providers = if setup.providers.is_empty() {
            if !self.config.fallback.is_empty() {
                notes.push("providers from the worker's environment (ANTHROPIC_API_KEY)".into());
            }
            &self.config.fallback
        } else {
            &setup.providers
        };
        if providers.is_empty() {
            return Err(refusal(
                "no model provider is configured for this agent: add one to the server's \
                 [server.llm] providers or to the tenant with `cflow tenant llm set`, or set \
                 ANTHROPIC_API_KEY in the worker's environment"
                    .to_string(),
            ));
        }
        let chain = self
            .providers
            .chain(providers, spec.model.as_deref(), &self.config)
            .map_err(refusal)?;

        let (toolbox, isolation, workbench) = match tools {
            Tools::Given(t, iso) => (Some(t), iso, None),
            Tools::Workbench => {
                let wb = crate::tools::Workbench::open(&self.exec, job, spec).await?;
                let iso = wb.isolation();
                (None, iso, Some(wb))
            }
        };
        let toolbox: &dyn Toolbox = match (&workbench, toolbox) {
            (Some(wb), _) => wb,
            (None, Some(t)) => t,
            (None, None) => unreachable!("a toolbox is given or opened"),
        };

        let mut conv = Conversation::new(self, job, spec, &setup, toolbox, host, &chain, stop);
        conv.prepend_notes(notes);
        let end = conv.run(emit, toolbox).await;
        let succeeded = matches!(end, LoopEnd::Answer(_));
        let (artifacts, sandbox) = match workbench {
            Some(wb) => {
                let end = wb.close(succeeded).await;
                // The workbench's summary is a run report plus the number of runs.
                let report = end.sandbox.and_then(|v| {
                    serde_json::from_value::<cflow_sandbox::spec::RunReport>(v)
                        .map_err(|e| tracing::warn!(error = %e, "the workbench's sandbox summary is not a run report"))
                        .ok()
                });
                (end.artifacts, report)
            }
            None => (Vec::new(), None),
        };
        conv.finish(end, isolation, artifacts, sandbox, started)
    }
}

/// Where the loop's worker-side tools come from.
enum Tools<'a> {
    /// The job's own workbench (workspace and sandbox), opened by the driver.
    Workbench,
    Given(&'a dyn Toolbox, Isolation),
}

/// A setup failure that retrying will not fix.
fn refusal(message: String) -> DriverError {
    DriverError::Sandbox {
        message,
        retryable: false,
    }
}

/// The outcome of an attempt stopped before it started (cancelled, or no longer ours).
fn stopped_outcome(lost: Option<String>) -> JobOutcome {
    let mut o = JobOutcome::new(
        JobEnd::Cancelled,
        Isolation::None {
            reason: "nothing ran: stopped before the model loop started".into(),
        },
    );
    o.result_error = lost.map(|m| format!("the attempt is no longer this worker's: {m}"));
    o
}
impl Driver for LlmDriver {
    fn kind(&self) -> &'static str {
        "llm"
    }

    fn isolation(&self) -> Isolation {
        self.exec.isolation()
    }

    fn run(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobOutcome, DriverError>> {
        Box::pin(self.run_job(job, Tools::Workbench, events, cancel))
    }
}
