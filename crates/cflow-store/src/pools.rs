//! A swarm's agent pools: their validation and the writer op that replaces them.
//!
//! Pools are stored as one JSON column of the swarm: they are read and replaced whole (by the
//! autoscaler and the API), never queried by their fields.

use std::collections::HashSet;

use cflow_core::agent_type::{validate_capability, validate_type};
use cflow_core::{ValidationError, validate};
use serde_json::json;

use crate::audit::Draft;
use crate::orch_types::{AgentPool, MAX_AGENTS_PER_SWARM, Swarm, SwarmState};
use crate::swarms::{SwarmOp, check_labels, swarm_in_tx};
use crate::types::AuditContext;
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store};

/// Checks every pool against the swarm's `max_agents`. Fields are named as the API names them
/// (`agents[1].max`), so a client can point at the entry it sent.
pub(crate) fn check_pools(pools: &[AgentPool], max_agents: i64) -> Result<(), ValidationError> {
    let mut types = HashSet::new();
    for (i, p) in pools.iter().enumerate() {
        let field = |f: &str| format!("agents[{i}].{f}");
        validate_type(&field("type"), &p.agent_type)?;
        if !types.insert(p.agent_type.as_str()) {
            let rule = format!("type '{}' has more than one pool", p.agent_type);
            return Err(ValidationError::new(field("type"), rule));
        }
        validate::name(&field("driver"), &p.driver)?;
        if p.capabilities.len() > validate::MAX_TAGS {
            let rule = format!("at most {} entries", validate::MAX_TAGS);
            return Err(ValidationError::new(field("capabilities"), rule));
        }
        for c in &p.capabilities {
            validate_capability(&field("capabilities"), c)?;
        }
        check_labels(&p.labels).map_err(|e| ValidationError::new(field("labels"), e.rule))?;
        if p.min < 0 {
            let rule = format!("must be at least 0 (got {})", p.min);
            return Err(ValidationError::new(field("min"), rule));
        }
        if p.max < p.min || p.max > max_agents {
            let rule = format!(
                "must be from min ({}) to the swarm's max_agents ({max_agents}) (got {})",
                p.min, p.max
            );
            return Err(ValidationError::new(field("max"), rule));
        }
        if p.prewarm < 0 {
            let rule = format!("must be at least 0 (got {})", p.prewarm);
            return Err(ValidationError::new(field("prewarm"), rule));
        }
        if let Some(n) = p.recycle_after_tasks
            && n < 1
        {
            let rule = format!("must be at least 1 when set (got {n})");
            return Err(ValidationError::new(field("recycle_after_tasks"), rule));
        }
    }
    Ok(())
}

/// Writer op: replaces the pools of a swarm that is not stopped.
pub(crate) async fn update(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    swarm_id: &str,
    pools: &[AgentPool],
) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "swarm.pools",
        format!("swarm/{swarm_id}"),
        json!({ "pools": pools }),
    );
    let Some(mut swarm) = swarm_in_tx(cx, tenant_id, swarm_id).await? else {
        let e = Error::NotFound(format!("swarm {swarm_id}"));
        return Ok(Step::failed(e, draft));
    };
    if swarm.state == SwarmState::Stopped {
        let e = Error::State(format!("swarm {swarm_id} is stopped, which is final"));
        return Ok(Step::failed(e, draft));
    }
    // The swarm's own limit is only known here.
    if let Err(e) = check_pools(pools, swarm.max_agents) {
        return Ok(Step::failed(Error::Invalid(e), draft));
    }
    crate::exec::query(
        "UPDATE swarms SET pools = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
    )
    .bind(json!(pools).to_string())
    .bind(cx.now)
    .bind(tenant_id.to_string())
    .bind(swarm_id.to_string())
    .execute(&mut *cx.conn)
    .await?;
    swarm.pools = pools.to_vec();
    swarm.updated_at = cx.now;
    Ok(Step::done(Output::Swarm(swarm), draft))
}

impl Store {
    /// Replaces the agent pools of one of the tenant's swarms (audited as `swarm.pools`);
    /// `State` when the swarm is stopped, `Invalid` when a pool breaks a rule.
    pub async fn update_swarm_pools(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        swarm_id: &str,
        pools: Vec<AgentPool>,
    ) -> Result<Swarm> {
        // The shape is checked before the writer; the limit of this swarm inside it.
        check_pools(&pools, MAX_AGENTS_PER_SWARM)?;
        let op = SwarmOp::UpdatePools {
            tenant_id: tenant_id.to_string(),
            swarm_id: swarm_id.to_string(),
            pools,
        };
        let out = self.write(ctx, Op::Swarm(op)).await?;
        expect_output!(out, Output::Swarm(s) => s)
    }
}
