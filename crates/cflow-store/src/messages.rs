//! Messages between the agents of a swarm: durable, direct (to one agent) or on a topic, read
//! by agents in id order with `after` as the cursor. Whether the swarm's topology allows a
//! sender to reach a receiver is the scheduler's rule; the store checks ownership and shape.

use crate::exec::GetCol;
use cflow_core::ValidationError;
use serde_json::json;

use crate::audit::Draft;
use crate::orch_types::{Message, NewMessage};
use crate::swarms::json_col;
use crate::types::AuditContext;
use crate::writer::{Op, OpCx, Output, Step};
use crate::{Error, Result, Store, page};

/// Largest message body, as serialised JSON.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 64;

const COLUMNS: &str = "id, tenant_id, swarm_id, from_agent, to_agent, topic, body, created_at";

fn from_row(r: &impl GetCol) -> Result<Message> {
    Ok(Message {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        swarm_id: r.try_get(2)?,
        from_agent: r.try_get(3)?,
        to_agent: r.try_get(4)?,
        topic: r.try_get(5)?,
        body: json_col("messages.body", &r.try_get::<String>(6)?)?,
        created_at: r.try_get(7)?,
    })
}

/// A topic name: 1–64 of `A-Z a-z 0-9 . _ -`.
pub fn check_topic(topic: &str) -> Result<(), ValidationError> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        return Ok(());
    }
    Err(ValidationError::new(
        "topic",
        format!("must be 1 to {MAX_TOPIC_LEN} characters A-Z, a-z, 0-9, '.', '_' or '-'"),
    ))
}

/// Writer op: stores a message after checking that the swarm and both agents are the tenant's
/// and the agents the swarm's.
pub(crate) async fn send(
    cx: &mut OpCx<'_>,
    tenant_id: &str,
    m: &NewMessage,
    body: &str,
) -> Result<Step> {
    let draft = Draft::success(
        Some(tenant_id),
        "message.send",
        format!("swarm/{}/messages", m.swarm_id),
        json!({ "from": m.from_agent, "to": m.to_agent, "topic": m.topic }),
    );
    let swarm = crate::exec::query("SELECT id FROM swarms WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(m.swarm_id.clone())
        .fetch_optional(&mut *cx.conn)
        .await?;
    if swarm.is_none() {
        let e = Error::NotFound(format!("swarm {}", m.swarm_id));
        return Ok(Step::failed(e, draft));
    }
    let agents = [("from", Some(&m.from_agent)), ("to", m.to_agent.as_ref())];
    for (field, agent) in agents {
        let Some(agent) = agent else { continue };
        let in_swarm: Option<String> = crate::exec::query_scalar(
            "SELECT swarm_id FROM agents WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id.to_string())
        .bind(agent.clone())
        .fetch_optional(&mut *cx.conn)
        .await?;
        let e = match in_swarm {
            None => Error::NotFound(format!("agent {agent}")),
            Some(s) if s != m.swarm_id => Error::Invalid(ValidationError::new(
                field,
                format!("agent {agent} is not in swarm {}", m.swarm_id),
            )),
            Some(_) => continue,
        };
        return Ok(Step::failed(e, draft));
    }
    let id: i64 = crate::exec::query_scalar(
        "INSERT INTO messages (tenant_id, swarm_id, from_agent, to_agent, topic, body, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(tenant_id.to_string())
    .bind(m.swarm_id.clone())
    .bind(m.from_agent.clone())
    .bind(m.to_agent.clone())
    .bind(m.topic.clone())
    .bind(body.to_string())
    .bind(cx.now)
    .fetch_one(&mut *cx.conn)
    .await?;
    let msg = Message {
        id,
        tenant_id: tenant_id.to_string(),
        swarm_id: m.swarm_id.clone(),
        from_agent: m.from_agent.clone(),
        to_agent: m.to_agent.clone(),
        topic: m.topic.clone(),
        body: m.body.clone(),
        created_at: cx.now,
    };
    let draft = Draft {
        detail: json!({ "id": id, "from": m.from_agent, "to": m.to_agent, "topic": m.topic }),
        ..draft
    };
    Ok(Step::done(Output::Message(msg), draft))
}

impl Store {
    /// Stores a message from one agent of a swarm to another (`to_agent`) or to a topic
    /// (exactly one of them), audited as `message.send` (without the body). `NotFound` when the
    /// swarm or an agent is not the tenant's; `Invalid` when an agent is in another swarm.
    pub async fn send_message(
        &self,
        ctx: &AuditContext,
        tenant_id: &str,
        new: NewMessage,
    ) -> Result<Message> {
        match (&new.to_agent, &new.topic) {
            (Some(_), None) => {}
            (None, Some(t)) => check_topic(t)?,
            _ => {
                return Err(Error::Invalid(ValidationError::new(
                    "to",
                    "give exactly one of 'to' (an agent) and 'topic'",
                )));
            }
        }
        let body = new.body.to_string();
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(Error::Invalid(ValidationError::new(
                "body",
                format!(
                    "must be at most {MAX_MESSAGE_BYTES} bytes of JSON (got {})",
                    body.len()
                ),
            )));
        }
        let op = Op::SendMessage {
            tenant_id: tenant_id.to_string(),
            new,
            body,
        };
        let out = self.write(ctx, op).await?;
        expect_output!(out, Output::Message(m) => m)
    }

    /// Direct messages to one of the tenant's agents with id greater than `after`, oldest first
    /// (at most `limit`, clamped like every listing).
    pub async fn inbox(
        &self,
        tenant_id: &str,
        agent_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND to_agent = $2 AND id > $3 \
             ORDER BY id LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(agent_id.to_string())
            .bind(after)
            .bind(page::clamp_limit(limit))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Messages on a topic of one of the tenant's swarms with id greater than `after`, oldest
    /// first.
    pub async fn topic_messages(
        &self,
        tenant_id: &str,
        swarm_id: &str,
        topic: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND swarm_id = $2 AND topic = $3 \
             AND id > $4 ORDER BY id LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id.to_string())
            .bind(swarm_id.to_string())
            .bind(topic.to_string())
            .bind(after)
            .bind(page::clamp_limit(limit))
            .fetch_all(self.pool()?)
            .await?;
        rows.iter().map(from_row).collect()
    }
}
