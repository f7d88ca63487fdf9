//! The workflow file of `cflow run`: a swarm (name, topology, strategy, agent pools) and a task
//! DAG, in TOML. Parsing refuses unknown keys with their line; validation checks everything that
//! can be checked without the server (dependencies, cycles, ranges, capabilities), so a broken
//! file is refused before anything is created.
//!
//! ```toml
//! [swarm]
//! name = "build"
//! topology = "hierarchical"
//!
//! [[swarm.agents]]
//! type = "coder"
//! min = 2
//!
//! [[swarm.agents]]
//! type = "reviewer"
//! driver = "llm"          # cflow's own agent loop; only llm pools take a system_prompt
//! system_prompt = "You review Rust changes for correctness first, style last."
//!
//! [[tasks]]
//! id = "plan"
//! command = "echo 'CFLOW_RESULT {\"modules\": 3}'"
//!
//! [[tasks]]
//! id = "build"
//! command = "make"
//! depends_on = ["plan"]
//! requires = ["code"]
//!
//! [[tasks]]
//! id = "review"          # a prompt instead of a command: for a model agent (claude-code, llm)
//! prompt = "Review the build's output and list the three riskiest changes."
//! depends_on = ["build"]
//! max_turns = 10
//! ```

use anyhow::{Result, anyhow, bail};
use cflow_core::dag::{self, DagTask};
use cflow_core::{agent_type, task as task_rules};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use toml::Spanned;

/// The environment variable through which `cflow run` tells each task its workflow id.
pub const WORKFLOW_ID_ENV: &str = "CFLOW_WORKFLOW_TASK";

/// A whole workflow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub swarm: SwarmDef,
    #[serde(default)]
    pub tasks: Vec<TaskDef>,
}

/// `[swarm]`: what `POST /swarms` gets (the name gets a unique suffix per run).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmDef {
    pub name: String,
    /// mesh, hierarchical, ring or star (default hierarchical).
    #[serde(default = "default_topology")]
    pub topology: String,
    /// weighted_round_robin or least_loaded (the server's default when absent).
    pub strategy: Option<String>,
    pub max_agents: Option<i64>,
    pub project: Option<String>,
    /// `[[swarm.agents]]`: the agent pools.
    #[serde(default)]
    pub agents: Vec<PoolDef>,
}

fn default_topology() -> String {
    "hierarchical".into()
}

/// `[[swarm.agents]]`: one pool of agents of a type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    #[serde(rename = "type")]
    pub agent_type: String,
    #[serde(default = "default_driver")]
    pub driver: String,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub prewarm: Option<i64>,
    /// Empty: the type's default capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub recycle_after_tasks: Option<i64>,
    pub recycle_on_failure: Option<bool>,
    /// `llm` pools only: replaces the type's default role prompt (1 to 32 KiB).
    pub system_prompt: Option<String>,
}

fn default_driver() -> String {
    "exec".into()
}

/// `[[tasks]]`: one task of the DAG.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    /// The task's id within the workflow (the `local_id` of the submission).
    pub id: Spanned<String>,
    /// A shell line (`sh -c`), for an `exec` agent. Give this or `prompt`.
    pub command: Option<String>,
    /// A prompt, for a model agent (`claude-code` or `llm`). Give this or `command`.
    pub prompt: Option<String>,
    /// Model tasks: the model (default: the provider's configured model).
    pub model: Option<String>,
    /// Model tasks: model calls (turns) at most.
    pub max_turns: Option<u64>,
    /// `llm` tasks: output tokens at most over the whole loop.
    pub max_tokens: Option<u64>,
    /// Model tasks: the tools the model may use (`llm`: cflow's built-in tool names;
    /// `claude-code`: Claude Code's tool rules, e.g. `"Bash(cargo test:*)"`). Empty: all.
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// `claude-code` tasks: Claude Code's permission mode (`default`, `acceptEdits`, `plan`).
    pub permission_mode: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub requires: Vec<String>,
    pub priority: Option<i64>,
    /// Seconds (`30`) or a duration (`"30s"`, `"5m"`).
    pub timeout: Option<Timeout>,
    pub max_attempts: Option<i64>,
    pub replicas: Option<i64>,
    pub quorum: Option<i64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A directory inside the workspace (relative), or the working directory of an
    /// unsandboxed command (absolute).
    pub cwd: Option<String>,
    /// Where the sandboxed workspace comes from: `{ kind = "copy", path = "/abs" }`,
    /// `{ kind = "git", repo = "…", ref = "main" }` (default: empty). Checked by the server.
    pub workspace: Option<toml::Value>,
    /// Globs of workspace files kept as artifacts.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// `off`, `loopback` or `full` (at most what the policy grants).
    pub network: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Timeout {
    Seconds(i64),
    Text(String),
}

impl Timeout {
    fn seconds(&self) -> std::result::Result<i64, String> {
        match self {
            Timeout::Seconds(s) => Ok(*s),
            Timeout::Text(t) => {
                let d: Duration = crate::cli::parse_duration(t)?;
                if d.subsec_millis() != 0 {
                    return Err(format!("'{t}' is not a whole number of seconds"));
                }
                Ok(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            }
        }
    }
}

/// A parsed and checked workflow, with the file text kept for line numbers.
#[derive(Debug)]
pub struct Checked {
    pub workflow: Workflow,
    /// Task ids in file order.
    pub ids: Vec<String>,
}

/// Parses and validates a workflow. `origin` names the file in messages.
pub fn parse(text: &str, origin: &str) -> Result<Checked> {
    let workflow: Workflow = toml::from_str(text).map_err(|e| {
        // toml's message already carries "at line L, column C" and the offending key.
        anyhow!(
            "{origin} is not a valid workflow: {}",
            e.to_string().trim_end()
        )
    })?;
    let ids = validate(&workflow, text).map_err(|e| anyhow!("{origin}: {e}"))?;
    Ok(Checked { workflow, ids })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks a `[swarm]` table; returns every capability its pools' agents have.
pub fn check_swarm(s: &SwarmDef) -> Result<BTreeSet<String>> {
    if s.name.trim().is_empty() {
        bail!("[swarm] name must not be empty");
    }
    s.topology
        .parse::<cflow_core::topology::Topology>()
        .map_err(|e| anyhow!("[swarm] topology: {e}"))?;
    if let Some(st) = &s.strategy {
        st.parse::<cflow_core::balance::Strategy>()
            .map_err(|e| anyhow!("[swarm] strategy: {e}"))?;
    }
    let mut types = BTreeSet::new();
    let mut capabilities = BTreeSet::new();
    for p in &s.agents {
        let t = &p.agent_type;
        agent_type::validate_type("type", t).map_err(|e| anyhow!("agent pool: {}", e.rule))?;
        if !types.insert(t.clone()) {
            bail!("agent pool type '{t}' appears twice: one pool per type");
        }
        if !cflow_agents::DRIVER_KINDS.contains(&p.driver.as_str()) {
            bail!(
                "agent pool '{t}': unknown driver '{}': expected one of {}",
                p.driver,
                cflow_agents::DRIVER_KINDS.join(", ")
            );
        }
        if let (Some(min), Some(max)) = (p.min, p.max)
            && min > max
        {
            bail!("agent pool '{t}': min {min} is more than max {max}");
        }
        if let Some(prompt) = &p.system_prompt {
            cflow_agents::model::check_system_prompt(&p.driver, prompt)
                .map_err(|rule| anyhow!("agent pool '{t}': system_prompt {rule}"))?;
        }
        if p.capabilities.is_empty() {
            capabilities.extend(agent_type::default_capabilities(t));
        } else {
            capabilities.extend(p.capabilities.iter().cloned());
        }
    }
    Ok(capabilities)
}

/// Parses only the `[swarm]` table of a workflow file (for `cflow swarm init --file`).
pub fn parse_swarm(text: &str, origin: &str) -> Result<SwarmDef> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SwarmOnly {
        swarm: SwarmDef,
        #[serde(default)]
        #[allow(dead_code)]
        tasks: Option<toml::Value>,
    }
    let file: SwarmOnly = toml::from_str(text).map_err(|e| {
        anyhow!(
            "{origin} is not a valid workflow: {}",
            e.to_string().trim_end()
        )
    })?;
    check_swarm(&file.swarm).map_err(|e| anyhow!("{origin}: {e}"))?;
    Ok(file.swarm)
}

fn validate(w: &Workflow, text: &str) -> Result<Vec<String>> {
    let s = &w.swarm;
    let capabilities = check_swarm(s)?;
    if w.tasks.is_empty() {
        bail!("the workflow has no tasks: add at least one [[tasks]] table");
    }

    let mut ids = Vec::with_capacity(w.tasks.len());
    let mut seen = BTreeSet::new();
    for t in &w.tasks {
        let id = t.id.get_ref();
        let line = line_of(text, t.id.span().start);
        let at = |msg: String| anyhow!("line {line}: task '{id}': {msg}");
        if !valid_id(id) {
            return Err(at(
                "a task id is 1-64 characters of letters, digits, '_', '-' or '.'".into(),
            ));
        }
        if !seen.insert(id.clone()) {
            return Err(at("this id is used by an earlier task".into()));
        }
        match (&t.command, &t.prompt) {
            (Some(c), None) if c.trim().is_empty() => {
                return Err(at("command must not be empty".into()));
            }
            (None, Some(p)) if p.trim().is_empty() => {
                return Err(at("prompt must not be empty".into()));
            }
            (Some(_), Some(_)) => {
                return Err(at(
                    "give command (for an exec agent) or prompt (for a model agent), not both"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(at(
                    "needs command (a shell line, for an exec agent) or prompt (for a model \
                     agent: claude-code or llm)"
                        .into(),
                ));
            }
            _ => {}
        }
        let model_only = [
            ("model", t.model.is_some()),
            ("max_turns", t.max_turns.is_some()),
            ("max_tokens", t.max_tokens.is_some()),
            ("allowed_tools", !t.allowed_tools.is_empty()),
            ("permission_mode", t.permission_mode.is_some()),
        ];
        if t.command.is_some()
            && let Some((k, _)) = model_only.iter().find(|(_, set)| *set)
        {
            return Err(at(format!("{k} is for model tasks (prompt), not commands")));
        }
        if t.prompt.is_some() && t.cwd.is_some() {
            return Err(at(
                "cwd is for commands; a model task works at its workspace's root".into(),
            ));
        }
        let rule = |r: std::result::Result<(), cflow_core::ValidationError>| {
            r.map_err(|e| at(format!("{}: {}", e.field, e.rule)))
        };
        if let Some(p) = t.priority {
            rule(task_rules::priority(p))?;
        }
        if let Some(to) = &t.timeout {
            let secs = to.seconds().map_err(|e| at(format!("timeout: {e}")))?;
            rule(task_rules::timeout_seconds(secs))?;
        }
        if let Some(m) = t.max_attempts {
            rule(task_rules::max_attempts(m))?;
        }
        if t.replicas.is_some() || t.quorum.is_some() {
            let r = t.replicas.unwrap_or(1);
            let q = t
                .quorum
                .unwrap_or(task_rules::default_quorum(r.max(0) as u32) as i64);
            rule(task_rules::replicas_and_quorum(r, q))?;
        }
        if !s.agents.is_empty() {
            for cap in &t.requires {
                if !capabilities.contains(cap) {
                    return Err(at(format!(
                        "requires '{cap}', which no agent pool of the swarm has (pools have: {}) — add it to a pool's capabilities or drop it",
                        capabilities.iter().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        if t.env.contains_key(WORKFLOW_ID_ENV) {
            return Err(at(format!("env: {WORKFLOW_ID_ENV} is set by cflow run")));
        }
        ids.push(id.clone());
    }
    // Unknown dependencies, with the line of each reference.
    for t in &w.tasks {
        for d in &t.depends_on {
            if !seen.contains(d.get_ref()) {
                bail!(
                    "line {}: task '{}' depends on unknown task '{}' (the workflow's tasks: {})",
                    line_of(text, d.span().start),
                    t.id.get_ref(),
                    d.get_ref(),
                    ids.join(", ")
                );
            }
        }
    }
    let dag: Vec<DagTask> = w
        .tasks
        .iter()
        .map(|t| {
            DagTask::new(
                t.id.get_ref().clone(),
                t.depends_on.iter().map(|d| d.get_ref().clone()),
            )
        })
        .collect();
    if let Err(e) = dag::plan(&dag, |_| None) {
        let first = match &e {
            dag::DagError::Cycle(c) => c.first().cloned(),
            dag::DagError::SelfDependency(id) | dag::DagError::DuplicateId(id) => Some(id.clone()),
            dag::DagError::UnknownDependencies(u) => u.first().map(|(t, _)| t.clone()),
        };
        let line = first
            .and_then(|id| w.tasks.iter().find(|t| *t.id.get_ref() == id))
            .map(|t| format!("line {}: ", line_of(text, t.id.span().start)))
            .unwrap_or_default();
        bail!("{line}{e}");
    }
    Ok(ids)
}

impl Workflow {
    /// The body of `POST /swarms`, with the run's unique name.
    pub fn swarm_body(&self, name: &str) -> Value {
        let s = &self.swarm;
        let mut body = Map::new();
        body.insert("name".into(), json!(name));
        body.insert("topology".into(), json!(s.topology));
        put(&mut body, "strategy", s.strategy.as_ref().map(|v| json!(v)));
        put(&mut body, "max_agents", s.max_agents.map(|v| json!(v)));
        put(&mut body, "project", s.project.as_ref().map(|v| json!(v)));
        if !s.agents.is_empty() {
            let pools: Vec<Value> = s.agents.iter().map(PoolDef::body).collect();
            body.insert("agents".into(), Value::Array(pools));
        }
        Value::Object(body)
    }

    /// The body of `POST /tasks`: the whole DAG in one request, each task's `local_id` its
    /// workflow id, so `depends_on` can name workflow ids.
    pub fn tasks_body(&self, swarm_id: &str) -> Value {
        let tasks: Vec<Value> = self.tasks.iter().map(|t| t.body(swarm_id)).collect();
        json!({ "tasks": tasks })
    }
}

impl PoolDef {
    pub fn body(&self) -> Value {
        let mut p = Map::new();
        p.insert("type".into(), json!(self.agent_type));
        p.insert("driver".into(), json!(self.driver));
        put(&mut p, "min", self.min.map(|v| json!(v)));
        put(&mut p, "max", self.max.map(|v| json!(v)));
        put(&mut p, "prewarm", self.prewarm.map(|v| json!(v)));
        if !self.capabilities.is_empty() {
            p.insert("capabilities".into(), json!(self.capabilities));
        }
        if !self.labels.is_empty() {
            p.insert("labels".into(), json!(self.labels));
        }
        put(
            &mut p,
            "recycle_after_tasks",
            self.recycle_after_tasks.map(|v| json!(v)),
        );
        put(
            &mut p,
            "recycle_on_failure",
            self.recycle_on_failure.map(|v| json!(v)),
        );
        put(
            &mut p,
            "system_prompt",
            self.system_prompt.as_ref().map(|v| json!(v)),
        );
        Value::Object(p)
    }
}

impl TaskDef {
    fn body(&self, swarm_id: &str) -> Value {
        let id = self.id.get_ref();
        let mut env = self.env.clone();
        env.insert(WORKFLOW_ID_ENV.into(), id.clone());
        let mut spec = Map::new();
        put(
            &mut spec,
            "command",
            self.command.as_ref().map(|v| json!(v)),
        );
        put(&mut spec, "prompt", self.prompt.as_ref().map(|v| json!(v)));
        put(&mut spec, "model", self.model.as_ref().map(|v| json!(v)));
        put(&mut spec, "max_turns", self.max_turns.map(|v| json!(v)));
        put(&mut spec, "max_tokens", self.max_tokens.map(|v| json!(v)));
        if !self.allowed_tools.is_empty() {
            spec.insert("allowed_tools".into(), json!(self.allowed_tools));
        }
        put(
            &mut spec,
            "permission_mode",
            self.permission_mode.as_ref().map(|v| json!(v)),
        );
        spec.insert("env".into(), json!(env));
        put(&mut spec, "cwd", self.cwd.as_ref().map(|v| json!(v)));
        put(
            &mut spec,
            "workspace",
            self.workspace
                .as_ref()
                .and_then(|w| serde_json::to_value(w).ok()),
        );
        if !self.artifacts.is_empty() {
            spec.insert("artifacts".into(), json!(self.artifacts));
        }
        put(
            &mut spec,
            "network",
            self.network.as_ref().map(|v| json!(v)),
        );
        let mut t = Map::new();
        t.insert("local_id".into(), json!(id));
        t.insert("swarm".into(), json!(swarm_id));
        t.insert("spec".into(), Value::Object(spec));
        put(&mut t, "priority", self.priority.map(|v| json!(v)));
        if !self.requires.is_empty() {
            t.insert("requires".into(), json!(self.requires));
        }
        if !self.labels.is_empty() {
            t.insert("labels".into(), json!(self.labels));
        }
        if !self.depends_on.is_empty() {
            let deps: Vec<&String> = self.depends_on.iter().map(|d| d.get_ref()).collect();
            t.insert("depends_on".into(), json!(deps));
        }
        put(
            &mut t,
            "timeout_seconds",
            self.timeout
                .as_ref()
                .and_then(|to| to.seconds().ok())
                .map(|v| json!(v)),
        );
        put(&mut t, "max_attempts", self.max_attempts.map(|v| json!(v)));
        put(&mut t, "replicas", self.replicas.map(|v| json!(v)));
        put(&mut t, "quorum", self.quorum.map(|v| json!(v)));
        Value::Object(t)
    }
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(key.into(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[swarm]
name = "t"

[[swarm.agents]]
type = "coder"
min = 1

[[tasks]]
id = "a"
command = "true"

[[tasks]]
id = "b"
command = "true"
depends_on = ["a"]
requires = ["code"]
timeout = "2m"
"#;

    #[test]
    fn a_valid_file_becomes_one_submission() {
        let c = parse(OK, "wf.toml").unwrap();
        assert_eq!(c.ids, ["a", "b"]);
        let body = c.workflow.tasks_body("swarm1");
        assert_eq!(body["tasks"][1]["depends_on"], json!(["a"]));
        assert_eq!(body["tasks"][1]["timeout_seconds"], 120);
        assert_eq!(body["tasks"][1]["spec"]["env"][WORKFLOW_ID_ENV], "b");
        let swarm = c.workflow.swarm_body("t-1");
        assert_eq!(swarm["agents"][0]["driver"], "exec");
        assert_eq!(swarm["topology"], "hierarchical");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let bad = OK.replace("timeout = \"2m\"", "timout = \"2m\"");
        let e = parse(&bad, "wf.toml").unwrap_err().to_string();
        assert!(e.contains("timout") && e.contains("line 18"), "{e}");
    }

    #[test]
    fn unknown_dependencies_and_cycles_are_refused() {
        let bad = OK.replace("depends_on = [\"a\"]", "depends_on = [\"x\"]");
        let e = parse(&bad, "wf.toml").unwrap_err().to_string();
        assert!(
            e.contains("unknown task 'x'") && e.contains("line 16"),
            "{e}"
        );
        let cyc = OK.replace(
            "id = \"a\"\ncommand = \"true\"",
            "id = \"a\"\ncommand = \"true\"\ndepends_on = [\"b\"]",
        );
        let e = parse(&cyc, "wf.toml").unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn requirements_no_pool_meets_are_refused() {
        let bad = OK.replace("requires = [\"code\"]", "requires = [\"deploy\"]");
        let e = parse(&bad, "wf.toml").unwrap_err().to_string();
        assert!(e.contains("requires 'deploy'"), "{e}");
    }

    #[test]
    fn a_prompt_task_becomes_a_model_spec() {
        let wf = OK.replace(
            "id = \"b\"\ncommand = \"true\"",
            "id = \"b\"\nprompt = \"review a\"\nmodel = \"m\"\nmax_turns = 5\n\
             allowed_tools = [\"read_file\"]",
        );
        let c = parse(&wf, "wf.toml").unwrap();
        let spec = &c.workflow.tasks_body("s")["tasks"][1]["spec"];
        assert_eq!(spec["prompt"], "review a");
        assert_eq!(spec["model"], "m");
        assert_eq!(spec["max_turns"], 5);
        assert_eq!(spec["allowed_tools"], json!(["read_file"]));
        assert!(spec.get("command").is_none(), "{spec}");
        cflow_agents::proto::check_task_spec(spec).expect("the server accepts it");
    }

    #[test]
    fn a_task_needs_exactly_one_of_command_and_prompt() {
        for (from, to, why) in [
            (
                "command = \"true\"\ndepends_on",
                "depends_on",
                "needs command",
            ),
            (
                "command = \"true\"\ndepends_on",
                "command = \"true\"\nprompt = \"x\"\ndepends_on",
                "not both",
            ),
            (
                "command = \"true\"\ndepends_on",
                "command = \"true\"\nmax_turns = 3\ndepends_on",
                "max_turns is for model tasks",
            ),
            (
                "command = \"true\"\ndepends_on",
                "prompt = \"x\"\ncwd = \"sub\"\ndepends_on",
                "cwd is for commands",
            ),
        ] {
            let bad = OK.replace(from, to);
            assert_ne!(bad, OK);
            let e = parse(&bad, "wf.toml").unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_pool_system_prompt_is_for_llm_pools_only() {
        let llm = OK.replace(
            "type = \"coder\"\nmin = 1",
            "type = \"coder\"\nmin = 1\ndriver = \"llm\"\n\
             system_prompt = \"\"\"\nYou write Rust.\nKeep diffs small.\"\"\"",
        );
        assert_ne!(llm, OK);
        let c = parse(&llm, "wf.toml").unwrap();
        let pool = &c.workflow.swarm_body("t-1")["agents"][0];
        assert_eq!(pool["system_prompt"], "You write Rust.\nKeep diffs small.");
        assert_eq!(pool["driver"], "llm");
        // Absent: not sent.
        let plain = parse(OK, "wf.toml").unwrap().workflow.swarm_body("t-1");
        assert!(plain["agents"][0].get("system_prompt").is_none(), "{plain}");

        // On an exec pool (the default driver), blank, or over 32 KiB: refused, naming the pool.
        let long = format!(
            "\"{}\"",
            "x".repeat(cflow_agents::model::MAX_SYSTEM_PROMPT_BYTES + 1)
        );
        for (prompt, driver, why) in [
            ("\"Be brief.\"", "", "only for pools of the llm driver"),
            (
                "\"Be brief.\"",
                "driver = \"claude-code\"\n",
                "driver is 'claude-code'",
            ),
            ("\"  \"", "driver = \"llm\"\n", "must not be empty"),
            (
                long.as_str(),
                "driver = \"llm\"\n",
                "over the limit of 32768",
            ),
        ] {
            let bad = OK.replace(
                "type = \"coder\"\nmin = 1",
                &format!("type = \"coder\"\nmin = 1\n{driver}system_prompt = {prompt}"),
            );
            let e = parse(&bad, "wf.toml").unwrap_err().to_string();
            assert!(
                e.contains("agent pool 'coder': system_prompt") && e.contains(why),
                "{why}: {e}"
            );
        }
    }

    /// Every file in `examples/` is a valid workflow whose task specs the server accepts.
    #[test]
    fn every_example_parses_and_its_specs_are_accepted() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let c = parse(&text, &path.display().to_string())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for t in c.workflow.tasks_body("s")["tasks"].as_array().unwrap() {
                cflow_agents::proto::check_task_spec(&t["spec"])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            checked += 1;
        }
        assert!(checked >= 2, "the quickstart and the coordinator example");
    }
}
