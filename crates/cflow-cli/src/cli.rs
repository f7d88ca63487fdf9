//! The command line: clap definitions, plus the value parsers for durations and times. The help
//! text of every option that maps to a configuration key is filled in from the environment
//! registry ([`crate::env`]) so that `--help` names the same variables the loader reads.

use crate::config::{FlagValue, OutputFormat};
use crate::env;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "cflow",
    version,
    about = "cflow: orchestrate AI development agents — server, memory, keys and audit from the command line",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts. They are all optional here: defaults and the environment are
/// layered in by the configuration loader, which knows where each value came from.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, global = true, value_enum)]
    pub output: Option<OutputFormat>,
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl GlobalArgs {
    /// The global options given on the command line, as configuration flags.
    pub fn flags(&self) -> Vec<FlagValue> {
        let mut f = Vec::new();
        if let Some(s) = &self.server {
            f.push(FlagValue::new("server", s.as_str()));
        }
        if let Some(t) = &self.token {
            f.push(FlagValue::new("token", t.as_str()));
        }
        if let Some(d) = &self.data_dir {
            f.push(FlagValue::new("data_dir", d.display().to_string()));
        }
        if let Some(o) = self.output {
            let o = match o {
                OutputFormat::Table => "table",
                OutputFormat::Json => "json",
            };
            f.push(FlagValue::new("output", o));
        }
        f
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run cflow embedded: the server with SQLite in the data directory.
    Up(UpArgs),
    /// Run the server for scale-out (PostgreSQL with --database; SQLite otherwise).
    Server(ServerArgs),
    /// Manage tenants (superadmin).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Show who the token belongs to: principal, tenant, role.
    Whoami,
    /// Durable, namespaced key-value memory with full-text search.
    #[command(subcommand)]
    Memory(MemoryCmd),
    /// The tamper-evident audit ledger.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The effective configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Benchmarks against a real server.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run a worker that takes tasks from a server (dials out; first signal drains).
    Worker(crate::commands::worker::WorkerArgs),
    /// Swarms of agents: create, inspect, pause, resume, stop, scale.
    #[command(subcommand)]
    Swarm(crate::commands::swarm::SwarmCmd),
    /// Agents of a swarm: spawn, list, stop.
    #[command(subcommand)]
    Agent(crate::commands::agent::AgentCmd),
    /// Tasks: submit, list, get, logs, cancel.
    #[command(subcommand)]
    Task(crate::commands::task::TaskCmd),
    /// Run a workflow file: a swarm and a task DAG, followed live to the end.
    Run(crate::commands::run::RunArgs),
    /// Check the server, the token, the database and the drivers' isolation.
    Doctor,
    /// What model calls cost: a report grouped by tenant, project, swarm, agent, task or model.
    Cost(crate::commands::cost::CostArgs),
    /// Spend budgets per tenant or project and period (day, week, month).
    #[command(subcommand)]
    Budget(crate::commands::cost::BudgetCmd),
    /// The tenant's secrets (admins): set, list names, delete. Values are never shown.
    #[command(subcommand)]
    Secret(crate::commands::secret::SecretCmd),
    /// Serve cflow's tools over MCP on stdio (for Claude Code and other MCP clients), as a
    /// client of a running server with the usual --server and token.
    Mcp(McpArgs),
    /// Lifecycle hooks: commands and webhooks run on cflow's events (add, list, remove, test,
    /// deliveries), and `cflow hook claude EVENT`, which Claude Code's hooks call.
    #[command(subcommand)]
    Hook(crate::commands::hook::HookCmd),
    /// Claude Code integration: `cflow hooks install` writes the hook entries into
    /// `.claude/settings.json`.
    #[command(subcommand)]
    Hooks(crate::commands::claude_hook::HooksCmd),
    /// The stdio bridge a `claude-code` agent's MCP client runs inside its sandbox to reach the
    /// driver's per-attempt MCP server (started by cflow, not by hand).
    #[command(hide = true)]
    McpBridge(crate::commands::mcp_bridge::McpBridgeArgs),
}

#[derive(Debug, Args)]
pub struct McpArgs {
    /// When no server answers at --server (on this machine), start `cflow up` in the background
    /// (its output goes to <data_dir>/cflow-up.log) and wait until it is ready.
    #[arg(long)]
    pub start: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Once ready, run the quickstart workflow (examples/quickstart.toml) and keep serving.
    #[arg(long, conflicts_with = "tls_cert")]
    pub demo: bool,
}

impl UpArgs {
    pub fn flags(&self) -> Vec<FlagValue> {
        let mut f = Vec::new();
        if let Some(l) = &self.listen {
            f.push(FlagValue::new("listen", l.as_str()));
        }
        if let Some(c) = &self.tls_cert {
            f.push(FlagValue::new("tls_cert", c.display().to_string()));
        }
        if let Some(k) = &self.tls_key {
            f.push(FlagValue::new("tls_key", k.display().to_string()));
        }
        f
    }
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub up: UpArgs,
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create { name: String },
    /// List tenants.
    List,
    /// Show a tenant's sandbox overrides; set them (superadmin) with --set or clear them.
    Sandbox {
        /// Tenant id or name.
        tenant: String,
        /// A JSON object: {"mode": "enforce"|"off", "network": "off"|"loopback"|"full",
        /// "allow_degraded": bool, "limits": {"memory_bytes": N, …}}.
        #[arg(long, value_name = "JSON", conflicts_with = "clear")]
        set: Option<String>,
        /// Remove every override (back to the platform's defaults).
        #[arg(long)]
        clear: bool,
    },
    /// A tenant's model providers (the tenant's admins, or the superadmin for any tenant).
    #[command(subcommand)]
    Llm(TenantLlmCmd),
    /// A tenant's Claude Code hook policy (its admins, or the superadmin): what
    /// `cflow hook claude` blocks, the memory it gives as context, and its fail mode.
    #[command(subcommand)]
    ClaudePolicy(crate::commands::tenant::ClaudePolicyCmd),
}

/// Model providers per tenant. A tenant with its own list uses it for its model tasks (first =
/// primary, the others failovers); otherwise the operator's `[[server.llm.providers]]`.
///
/// Each provider: name (unique), kind ("anthropic" or "openai"; Ollama, vLLM, OpenRouter, Azure
/// are "openai" with their base_url), base_url (default https://api.anthropic.com or
/// https://api.openai.com/v1), model (default for anthropic: a current Claude Sonnet; required
/// for openai), api_key_secret (the NAME of a secret of the tenant: store the key first with
/// `cflow secret set NAME`), extra_headers, azure_api_version. Raw keys are refused.
#[derive(Debug, Subcommand)]
pub enum TenantLlmCmd {
    /// Show the tenant's own providers and the ones its model tasks use now.
    Show {
        /// Tenant id or name (default: the caller's tenant).
        tenant: Option<String>,
    },
    /// Replace the tenant's providers (or --clear them: back to the operator's).
    ///
    /// Examples:
    ///   cflow secret set ANTHROPIC_KEY < key.txt          # or --from-env VAR
    ///   cflow tenant llm set --provider name=main,kind=anthropic,model=claude-sonnet-4-5,key_secret=ANTHROPIC_KEY
    ///   cflow tenant llm set acme --provider name=local,kind=openai,base_url=http://localhost:11434/v1,model=llama3.1
    ///   cflow tenant llm set acme --file providers.json   # {"providers": [{...}, ...]} or [{...}]
    #[command(verbatim_doc_comment)]
    Set {
        /// Tenant id or name (default: the caller's tenant).
        tenant: Option<String>,
        /// A JSON file: {"providers": [...]} or a bare array of provider objects.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["provider", "clear"])]
        file: Option<std::path::PathBuf>,
        /// One provider as key=value pairs separated by commas (name, kind, base_url, model,
        /// key_secret, azure_api_version); repeat it for failovers, in order of preference.
        #[arg(long, value_name = "K=V,...", conflicts_with = "clear")]
        provider: Vec<String>,
        /// Remove the tenant's providers: its model tasks use the operator's again.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create an API key; its token is printed once.
    Create(KeyCreateArgs),
    /// List the keys of the caller's tenant.
    List,
    /// Revoke a key: its token stops working at once.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    /// Tenant id or name.
    #[arg(long)]
    pub tenant: String,
    /// A name for the key (and its service principal).
    #[arg(long)]
    pub name: String,
    /// admin, operator, developer, viewer or auditor (superadmin: only by a superadmin).
    #[arg(long)]
    pub role: String,
    /// Limit the key's role to one project.
    #[arg(long)]
    pub project: Option<String>,
    /// Expire after this long, e.g. 30d, 12h.
    #[arg(long, value_parser = parse_duration, conflicts_with = "expires_at")]
    pub expires_in: Option<Duration>,
    /// Expire at this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub expires_at: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum MemoryCmd {
    /// Write an entry (VALUE is a JSON string unless --json; '-' reads standard input).
    Store(MemoryStoreArgs),
    /// Read an entry.
    Get { namespace: String, key: String },
    /// List a namespace's entries in key order.
    List {
        namespace: String,
        #[arg(long)]
        prefix: Option<String>,
        /// Entries per page (1–1000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Follow the cursor through every page.
        #[arg(long)]
        all: bool,
    },
    /// Full-text search (every word must match).
    Search {
        query: String,
        /// Only this namespace and those below it.
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Delete an entry.
    Delete {
        namespace: String,
        key: String,
        /// Delete only if the entry is at this version.
        #[arg(long, value_name = "N")]
        if_version: Option<i64>,
    },
}

#[derive(Debug, Args)]
pub struct MemoryStoreArgs {
    pub namespace: String,
    pub key: String,
    pub value: String,
    /// VALUE is JSON (an object, array, number, …) rather than text.
    #[arg(long)]
    pub json: bool,
    /// Expire after this long, e.g. 1h.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Write only if the entry is at this version (compare-and-set).
    #[arg(long, value_name = "N")]
    pub if_version: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain by opening the database directly (works with the server stopped).
    Verify {
        /// PostgreSQL database to verify (default: SQLite in the data directory).
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Export entries as JSON lines.
    Export {
        /// Only entries at or after this time: RFC 3339, or a duration ago such as 1h.
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show the latest entries, and with --follow keep printing new ones.
    Tail {
        #[arg(long, short)]
        follow: bool,
        /// How many of the latest entries to show first.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Every setting, its effective value and where it came from (secrets redacted).
    Show,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Drive a real server over HTTP: durable writes, reads and whoami at a fixed rate, search,
    /// and the CLI round trip. Without --server, a fresh `cflow up` is started for the run.
    Api(BenchArgs),
    /// Submit tasks through the HTTP API and measure until they are complete and durable:
    /// bulk throughput, submit→start latency at a fixed rate, and the server's RSS with many
    /// idle agents. Without --server, a fresh server is started for the run.
    Tasks(crate::bench_tasks::BenchTasksArgs),
    /// The sandbox's start overhead on this host: `true` run bare versus through the launcher
    /// (every layer) and through a whole sandboxed run (workspace, cgroup, report, cleanup).
    Sandbox(crate::bench_sandbox::BenchSandboxArgs),
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// How long each timed phase runs.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Concurrent clients in the closed-loop phases.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Offered rate of the fixed-rate phases (requests/s).
    #[arg(long, default_value_t = 2000)]
    pub read_rate: u32,
    /// Entries loaded before the search phase.
    #[arg(long, default_value_t = 100_000)]
    pub search_entries: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses the command line, with option help and the environment section taken from the
/// registry. Exits with clap's usage error (code 2) on bad input.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The clap command with help from the environment registry.
pub fn command() -> clap::Command {
    annotate(Cli::command()).after_help(env::help_section())
}

fn annotate(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|arg| match env::by_flag(arg.get_id().as_str()) {
        Some(var) => {
            let help = format!("{} [env: {}]", capitalise(var.description), var.name);
            arg.help(help)
        }
        None => arg,
    });
    cmd.mut_subcommands(annotate)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Parses durations such as `500ms`, `10s`, `1h30m`, `30d` or `2w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!("'{s}' is not a duration: use a number and a unit, e.g. 500ms, 10s, 5m, 1h, 30d")
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let ms = n.checked_mul(ms_per_unit).ok_or_else(err)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(err)?;
    }
    Ok(total)
}

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    cflow_core::timefmt::parse_rfc3339(s)
        .ok_or_else(|| format!("'{s}' is not an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))
}

/// `--since`: an RFC 3339 time, or a duration meaning "that long ago".
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = parse_time(s) {
        return Ok(t);
    }
    let d = parse_duration(s)
        .map_err(|_| format!("'{s}' is neither an RFC 3339 time nor a duration such as 1h"))?;
    Ok(now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["", "h", "10", "10x", "1.5h", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn since_accepts_times_and_durations() {
        assert_eq!(
            parse_since("2025-11-25T10:00:00.123Z"),
            Ok(1_764_064_800_123)
        );
        let an_hour_ago = parse_since("1h").unwrap();
        assert!((now_ms() - an_hour_ago - 3_600_000).abs() < 5_000);
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }
}
