//! Swarms and their agents: writer ops, reads and the [`Store`] methods that front them.
//!
//! Agents are counted against their swarm's `max_agents` inside the writer's transaction, so
//! concurrent creations cannot overshoot it. Stopped and failed agents still count: their
//! records and statistics stay until something removes them explicitly.

use std::collections::BTreeMap;

use crate::exec::GetCol;
use cflow_core::topology::Topology;
use cflow_core::{ValidationError, validate};
use serde_json::json;

use crate::audit::Draft;
use crate::orch_types::SwarmState;
use crate::orch_types::{
    Agent, AgentPool, AgentState, MAX_AGENTS_PER_SWARM, NewAgent, NewSwarm, Swarm,
};
use crate::types::{AuditContext, Page, PageRequest};
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store, page};

const SWARM_CURSOR: &str = "s";
const AGENT_CURSOR: &str = "a";
pub(crate) const SWARM_COLUMNS: &str = "id, tenant_id, name, topology, project, max_agents, state, \
     created_at, updated_at, strategy, pools";
pub(crate) const AGENT_COLUMNS: &str = "id, tenant_id, swarm_id, agent_type, driver, capabilities, labels, \
     state, tasks_done, failures, busy_ms, created_at, updated_at, sandbox";

/// The writer ops of this module.
#[derive(Debug)]
pub(crate) enum SwarmOp {
    Create {
        tenant_id: String,
        new: NewSwarm,
    },
    SetState {
        tenant_id: String,
        swarm_id: String,
        state: SwarmState,
    },
    CreateAgent {
        tenant_id: String,
        swarm_id: String,
        new: NewAgent,
    },
    /// Several agents of one type at once (a pool filled, a swarm created), ready in `state`.
    CreateAgents {
        tenant_id: String,
        swarm_id: String,
        new: NewAgent,
        count: usize,
        state: AgentState,
    },
    SetAgentState {
        tenant_id: String,
        agent_id: String,
        state: AgentState,
    },
    UpdatePools {
        tenant_id: String,
        swarm_id: String,
        pools: Vec<AgentPool>,
    },
}

pub(crate) async fn apply(cx: &mut OpCx<'_>, op: &SwarmOp) -> Result<Step> {
    match op {
        SwarmOp::Create { tenant_id, new } => create_swarm(cx, tenant_id, new).await,
        SwarmOp::SetState {
            tenant_id,
            swarm_id,
            state,
        } => set_swarm_state(cx, tenant_id, swarm_id, *state).await,
        SwarmOp::CreateAgent {
            tenant_id,
            swarm_id,
            new,
        } => create_agent(cx, tenant_id, swarm_id, new).await,
        SwarmOp::CreateAgents {
            tenant_id,
            swarm_id,
            new,
            count,
            state,
        } => create_agents(cx, tenant_id, swarm_id, new, *count, *state).await,
        SwarmOp::SetAgentState {
            tenant_id,
            agent_id,
            state,
        } => set_agent_state(cx, tenant_id, agent_id, *state).await,
        SwarmOp::UpdatePools {
            tenant_id,
            swarm_id,
            pools,
        } => crate::pools::update(cx, tenant_id, swarm_id, pools).await,
    }
}

pub(crate) fn corrupt(what: &str, detail: impl ToString) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

pub(crate) fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T>
where
    T::Err: ToString,
{
    s.parse().map_err(|e: T::Err| corrupt(what, e))
}

pub(crate) fn json_col<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

pub(crate) fn swarm_from_row(r: &impl GetCol) -> Result<Swarm> {
    Ok(Swarm {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        name: r.try_get(2)?,
        topology: parse::<Topology>("swarms.topology", &r.try_get::<String>(3)?)?,
        project: r.try_get(4)?,
        max_agents: r.try_get(5)?,
        state: parse("swarms.state", &r.try_get::<String>(6)?)?,
        created_at: r.try_get(7)?,
        updated_at: r.try_get(8)?,
        strategy: parse("swarms.strategy", &r.try_get::<String>(9)?)?,
        pools: json_col("swarms.pools", &r.try_get::<String>(10)?)?,
    })
}

pub(crate) fn agent_from_row(r: &impl GetCol) -> Result<Agent> {
    Ok(Agent {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        swarm_id: r.try_get(2)?,
        agent_type: r.try_get(3)?,
        driver: r.try_get(4)?,
        capabilities: json_col("agents.capabilities", &r.try_get::<String>(5)?)?,
        labels: json_col("agents.labels", &r.try_get::<String>(6)?)?,
        state: parse("agents.state", &r.try_get::<String>(7)?)?,
        tasks_done: r.try_get(8)?,
        failures: r.try_get(9)?,
        busy_ms: r.try_get(10)?,
        created_at: r.try_get(11)?,
        updated_at: r.try_get(12)?,
        sandbox: r
            .try_get::<Option<String>>(13)?
            .map(|s| json_col("agents.sandbox", &s))
            .transpose()?,
    })
}

/// Capabilities (or required capabilities) are names, at most [`validate::MAX_TAGS`].
pub(crate) fn check_names(field: &str, values: &[String]) -> Result<(), ValidationError> {
    if values.len() > validate::MAX_TAGS {
        return Err(ValidationError::new(
            field,
            format!("at most {} entries", validate::MAX_TAGS),
        ));
    }
    values.iter().try_for_each(|v| validate::name(field, v))
}

/// Label keys and values are names, at most [`validate::MAX_TAGS`] pairs.
pub(crate) fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if labels.len() > validate::MAX_TAGS {
        return Err(ValidationError::new(
            "labels",
            format!("at most {} labels", validate::MAX_TAGS),
        ));
    }
    labels
        .iter()
        .try_for_each(|(k, v)| validate::name("labels", k).and(validate::name("labels", v)))
}

pub(crate) async fn swarm_in_tx(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    id: &str,
) -> Result<Option<Swarm>> {
    let sql = format!("SELECT {SWARM_COLUMNS} FROM swarms WHERE tenant_id = $1 AND id = $2");
    let row = crate::exec::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    row.as_ref().map(swarm_from_row).transpose()
}

/// Writer op: a new swarm, unless the tenant already has one of that name.
async fn create_swarm(cx: &mut OpCx<'_>, tenant_id: &str, new: &NewSwarm) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "swarm.create",
        format!("swarm/{}", new.name),
        json!({ "topology": new.topology.as_str(), "max_agents": new.max_agents,
                "strategy": new.strategy.as_str(), "pools": new.pools }),
    );
    let taken = crate::exec::query("SELECT id FROM swarms WHERE tenant_id = $1 AND name = $2")
        .bind(tenant_id.to_string())
        .bind(new.name.clone())
        .fetch_optional(&mut *cx.conn)
        .await?
        .is_some();
    if taken {
        return Ok(Step::failed(
            Error::Conflict(format!("swarm '{}'", new.name)),
            draft,
        ));
    }
    let swarm = Swarm {
        id: crate::tenants::new_id(),
        tenant_id: tenant_id.to_string(),
        name: new.name.clone(),
        topology: new.topology,
        project: new.project.clone(),
        max_agents: new.max_agents,
        state: SwarmState::Active,
        strategy: new.strategy,
        pools: new.pools.clone(),
        created_at: cx.now,
        updated_at: cx.now,
    };
    crate::exec::query(
        "INSERT INTO swarms (id, tenant_id, name, topology, project, max_agents, state, \
         created_at, updated_at, strategy, pools) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(swarm.id.clone())
    .bind(swarm.tenant_id.clone())
    .bind(swarm.name.clone())
    .bind(swarm.topology.as_str())
    .bind(swarm.project.clone())
    .bind(swarm.max_agents)
    .bind(swarm.state.as_str())
    .bind(swarm.created_at)
    .bind(swarm.updated_at)
    .bind(swarm.strategy.as_str())
    .bind(json!(swarm.pools).to_string())
    .execute(&mut *cx.conn)
    .await?;
    let draft = Draft {
        resource: format!("swarm/{}", swarm.id),
        ..draft
    };
    Ok(Step::done(Output::Swarm(swarm), draft))
}

/// Writer op: moves a swarm to `state`. A stopped swarm stays stopped.
async fn set_swarm_state(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    id: &str,
    state: SwarmState,
) -> Result<Step> {
    let action = match state {
        SwarmState::Active => "swarm.resume",
        SwarmState::Paused => "swarm.pause",
        SwarmState::Stopped => "swarm.stop",
    };
    let draft = Draft::success(Some(tenant_id), action, format!("swarm/{id}"), json!({}));
    let Some(mut swarm) = swarm_in_tx(cx, tenant_id, id).await? else {
        return Ok(Step::failed(Error::NotFound(format!("swarm {id}")), draft));
    };
    if swarm.state == SwarmState::Stopped && state != SwarmState::Stopped {
        let err = Error::State(format!("swarm {id} is stopped, which is final"));
        return Ok(Step::failed(err, draft));
    }
    crate::exec::query(
        "UPDATE swarms SET state = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
    )
    .bind(state.as_str())
    .bind(cx.now)
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .execute(&mut *cx.conn)
    .await?;
    let draft = Draft {
        detail: json!({ "from": swarm.state.as_str(), "to": state.as_str() }),
        ..draft
    };
    swarm.state = state;
    swarm.updated_at = cx.now;
    Ok(Step::done(Output::Swarm(swarm), draft))
}

/// Writer op: a new agent in a live swarm that has room for it.
/// Inserts `count` agents of one kind in `state`, all or none, with one audit entry.
async fn create_agents(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    swarm_id: &str,
    new: &NewAgent,
    count: usize,
    state: AgentState,
) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "agent.create",
        format!("swarm/{swarm_id}/agent"),
        json!({ "agent_type": new.agent_type, "driver": new.driver, "count": count }),
    );
    let Some(swarm) = swarm_in_tx(cx, tenant_id, swarm_id).await? else {
        return Ok(Step::failed(
            Error::NotFound(format!("swarm {swarm_id}")),
            draft,
        ));
    };
    if swarm.state == SwarmState::Stopped {
        let err = Error::State(format!(
            "swarm {swarm_id} is stopped and takes no new agents"
        ));
        return Ok(Step::failed(err, draft));
    }
    let existing: i64 = crate::exec::query_scalar(
        "SELECT COUNT(*) FROM agents WHERE swarm_id = $1 AND state NOT IN ('stopped', 'failed')",
    )
    .bind(swarm_id.to_string())
    .fetch_one(&mut *cx.conn)
    .await?;
    let wanted = i64::try_from(count).unwrap_or(i64::MAX);
    if existing.saturating_add(wanted) > swarm.max_agents {
        let err = Error::State(format!(
            "swarm {swarm_id} is full: it has {existing} live agents of at most {}, {count} more do not fit",
            swarm.max_agents
        ));
        return Ok(Step::failed(err, draft));
    }
    let capabilities = json!(new.capabilities).to_string();
    let labels = json!(new.labels).to_string();
    let sandbox = new.sandbox.as_ref().map(|v| v.to_string());
    let mut agents = Vec::with_capacity(count);
    for _ in 0..count {
        let agent = Agent {
            id: crate::tenants::new_id(),
            tenant_id: tenant_id.to_string(),
            swarm_id: swarm_id.to_string(),
            agent_type: new.agent_type.clone(),
            driver: new.driver.clone(),
            capabilities: new.capabilities.clone(),
            labels: new.labels.clone(),
            state,
            tasks_done: 0,
            failures: 0,
            busy_ms: 0,
            created_at: cx.now,
            updated_at: cx.now,
            sandbox: new.sandbox.clone(),
        };
        crate::exec::query(
            "INSERT INTO agents (id, tenant_id, swarm_id, agent_type, driver, capabilities, \
             labels, state, tasks_done, failures, busy_ms, created_at, updated_at, sandbox) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 0, $9, $9, $10)",
        )
        .bind(agent.id.clone())
        .bind(agent.tenant_id.clone())
        .bind(agent.swarm_id.clone())
        .bind(agent.agent_type.clone())
        .bind(agent.driver.clone())
        .bind(capabilities.clone())
        .bind(labels.clone())
        .bind(agent.state.as_str())
        .bind(cx.now)
        .bind(sandbox.clone())
        .execute(&mut *cx.conn)
        .await?;
        agents.push(agent);
    }
    Ok(Step::done(Output::Agents(agents), draft))
}

async fn create_agent(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    swarm_id: &str,
    new: &NewAgent,
) -> Result<Step> {
    let mut step = create_agents(cx, tenant_id, swarm_id, new, 1, AgentState::Starting).await?;
    if let Ok(Output::Agents(agents)) = &mut step.result
        && let Some(agent) = agents.pop()
    {
        for d in &mut step.audit {
            d.resource = format!("agent/{}", agent.id);
        }
        step.result = Ok(Output::Agent(agent));
    }
    Ok(step)
}

/// Writer op: moves an agent to `state`.
async fn set_agent_state(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    id: &str,
    state: AgentState,
) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "agent.state",
        format!("agent/{id}"),
        json!({}),
    );
    let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2");
    let row = crate::exec::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *cx.conn)
        .await?;
    let Some(mut agent) = row.as_ref().map(agent_from_row).transpose()? else {
        return Ok(Step::failed(Error::NotFound(format!("agent {id}")), draft));
    };
    crate::exec::query(
        "UPDATE agents SET state = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
    )
    .bind(state.as_str())
    .bind(cx.now)
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .execute(&mut *cx.conn)
    .await?;
    let draft = Draft {
        detail: json!({ "from": agent.state.as_str(), "to": state.as_str() }),
        ..draft
    };
    agent.state = state;
    agent.updated_at = cx.now;
    Ok(Step::done(Output::Agent(agent), draft))
}

/// Splits a `<time>:<id>` cursor.
pub(crate) fn time_id_cursor(tag: &str, req: &PageRequest) -> Result<(i64, String)> {
    match page::decode_opt(tag, &req.cursor)? {
        Some(c) => {
            let (t, id) = c.split_once(':').ok_or(Error::InvalidCursor)?;
            Ok((t.parse().map_err(|_| Error::InvalidCursor)?, id.to_string()))
        }
        None => Ok((i64::MIN, String::new())),
    }
}

impl Store {
    /// Creates a swarm in `active`; `Conflict` when the tenant has a swarm of that name.
    pub async fn create_swarm(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        new: NewSwarm,
    ) -> Result<Swarm> {
        validate::name("name", &new.name)?;
        if let Some(p) = &new.project {
            validate::name("project", p)?;
        }
        if !(1..=MAX_AGENTS_PER_SWARM).contains(&new.max_agents) {
            return Err(Error::Invalid(ValidationError::new(
                "max_agents",
                format!(
                    "must be from 1 to {MAX_AGENTS_PER_SWARM} (got {})",
                    new.max_agents
                ),
            )));
        }
        crate::pools::check_pools(&new.pools, new.max_agents)?;
        let op = SwarmOp::Create {
            tenant_id: tenant_id.to_string(),
            new,
        };
        let out = self.write(ctx, Op::Swarm(op)).await?;
        expect_output!(out, Output::Swarm(s) => s)
    }

    /// A swarm of the tenant (another tenant's is `None`).
    pub async fn get_swarm(&self, tenant_id: &str, id: &str) -> Result<Option<Swarm>> {
        let sql = format!("SELECT {SWARM_COLUMNS} FROM swarms WHERE tenant_id = $1 AND id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        row.as_ref().map(swarm_from_row).transpose()
    }

    /// The tenant's swarms, oldest first.
    pub async fn list_swarms(&self, tenant_id: &str, req: &PageRequest) -> Result<Page<Swarm>> {
        let limit = page::clamp_limit(req.limit);
        let (t, id) = time_id_cursor(SWARM_CURSOR, req)?;
        let sql = format!(
            "SELECT {SWARM_COLUMNS} FROM swarms WHERE tenant_id = $1 \
             AND (created_at > $2 OR (created_at = $2 AND id > $3)) ORDER BY created_at, id LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(t)
            .bind(id)
            .bind(limit + 1)
            .fetch_all(self.pool()?)
            .await?;
        let items = rows
            .iter()
            .map(swarm_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page::finish(items, limit, SWARM_CURSOR, |s| {
            format!("{}:{}", s.created_at, s.id)
        }))
    }

    /// Pauses, resumes (`Active`) or stops a swarm; `State` when it is already stopped.
    pub async fn set_swarm_state(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        swarm_id: &str,
        state: SwarmState,
    ) -> Result<Swarm> {
        let op = SwarmOp::SetState {
            tenant_id: tenant_id.to_string(),
            swarm_id: swarm_id.to_string(),
            state,
        };
        let out = self.write(ctx, Op::Swarm(op)).await?;
        expect_output!(out, Output::Swarm(s) => s)
    }

    /// Creates an agent in `starting`; `State` when the swarm is stopped or full.
    pub async fn create_agent(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        swarm_id: &str,
        new: NewAgent,
    ) -> Result<Agent> {
        validate::name("agent_type", &new.agent_type)?;
        validate::name("driver", &new.driver)?;
        check_names("capabilities", &new.capabilities)?;
        check_labels(&new.labels)?;
        let op = SwarmOp::CreateAgent {
            tenant_id: tenant_id.to_string(),
            swarm_id: swarm_id.to_string(),
            new,
        };
        let out = self.write(ctx, Op::Swarm(op)).await?;
        expect_output!(out, Output::Agent(a) => a)
    }

    /// `count` (1–10,000) agents of one kind in one of the tenant's swarms, created directly in
    /// `state` (`starting` or `idle`) in one transaction with one audit entry: filling a pool of
    /// thousands of agents is one commit, not thousands. All or none: `State` when they do not
    /// fit in the swarm's `max_agents` (counting its live agents).
    pub async fn create_agents(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        swarm_id: &str,
        new: NewAgent,
        count: usize,
        state: AgentState,
    ) -> Result<Vec<Agent>> {
        validate::name("agent_type", &new.agent_type)?;
        validate::name("driver", &new.driver)?;
        if !(1..=10_000).contains(&count) {
            let rule = format!("must be from 1 to 10000 (got {count})");
            return Err(Error::Invalid(cflow_core::ValidationError::new(
                "count", rule,
            )));
        }
        if !matches!(state, AgentState::Starting | AgentState::Idle) {
            let rule = format!("new agents start as starting or idle, not {state}");
            return Err(Error::Invalid(cflow_core::ValidationError::new(
                "state", rule,
            )));
        }
        let op = SwarmOp::CreateAgents {
            tenant_id: tenant_id.to_string(),
            swarm_id: swarm_id.to_string(),
            new,
            count,
            state,
        };
        let out = self.write(ctx, Op::Swarm(op)).await?;
        expect_output!(out, Output::Agents(a) => a)
    }

    /// An agent of the tenant.
    pub async fn get_agent(&self, tenant_id: &str, id: &str) -> Result<Option<Agent>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(id.to_string())
            .fetch_optional(self.pool()?)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// The agents of one of the tenant's swarms, ordered by id (UUIDv7, so roughly by creation).
    pub async fn list_agents(
        &self,
        tenant_id: &str,
        swarm_id: &str,
        req: &PageRequest,
    ) -> Result<Page<Agent>> {
        let limit = page::clamp_limit(req.limit);
        let after = page::decode_opt(AGENT_CURSOR, &req.cursor)?.unwrap_or_default();
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND swarm_id = $2 \
             AND id > $3 ORDER BY id LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(swarm_id.to_string())
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.pool()?)
            .await?;
        let items = rows
            .iter()
            .map(agent_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page::finish(items, limit, AGENT_CURSOR, |a| a.id.clone()))
    }

    /// Moves an agent to `state`.
    pub async fn set_agent_state(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        agent_id: &str,
        state: AgentState,
    ) -> Result<Agent> {
        let op = SwarmOp::SetAgentState {
            tenant_id: tenant_id.to_string(),
            agent_id: agent_id.to_string(),
            state,
        };
        let out = self.write(ctx, Op::Swarm(op)).await?;
        expect_output!(out, Output::Agent(a) => a)
    }
}
