//! Messages between the agents of a swarm: send one (direct or on a topic) where the swarm's
//! topology allows it, read an agent's inbox, read a topic. A refusal by the topology is a 403,
//! which the edge records in the audit ledger like every other refusal.

use super::agents::load_agent;
use super::swarms::{invalid, load_swarm};
use super::time;
use crate::auth::{Caller, op};
use crate::error::{ApiResult, ProblemResponse};
use crate::extract::{JsonBody, PathParams, Query, page_limit};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cflow_core::topology::Interaction;
use cflow_store::{MAX_MESSAGE_BYTES, MAX_TOPIC_LEN, Message, NewMessage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_message))
        .routes(routes!(inbox))
        .routes(routes!(topic_messages))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageParams {
    /// The sending agent (a member of the swarm).
    pub from: String,
    /// The receiving agent, for a direct message.
    pub to: Option<String>,
    /// The topic, for a message to every reader of it (give `to` or `topic`, not both).
    pub topic: Option<String>,
    /// Any JSON value (size limit: `MAX_MESSAGE_BYTES` of the store).
    pub body: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    /// Grows with every message: read on with `after=<id>`.
    pub id: i64,
    pub swarm_id: String,
    pub from: String,
    pub to: Option<String>,
    pub topic: Option<String>,
    pub body: serde_json::Value,
    pub created_at: String,
}

impl From<Message> for MessageResponse {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            swarm_id: m.swarm_id,
            from: m.from_agent,
            to: m.to_agent,
            topic: m.topic,
            body: m.body,
            created_at: time(m.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageListResponse {
    pub items: Vec<MessageResponse>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessageListParams {
    /// Only messages with an id above this one (default 0: from the start).
    pub after: Option<i64>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

/// Send a message to an agent or a topic of the swarm; 403 (audited) when the topology forbids
/// `from` → `to`.
#[utoipa::path(
    post, path = "/api/v1/swarms/{id}/messages", tag = "messages",
    params(("id" = String, Path, description = "Swarm id")),
    request_body = SendMessageParams,
    responses(
        (status = 201, body = MessageResponse),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 422, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn send_message(
    State(state): State<AppState>,
    caller: Caller<op::MessageSend>,
    PathParams(swarm_id): PathParams<String>,
    JsonBody(p): JsonBody<SendMessageParams>,
) -> ApiResult<(StatusCode, Json<MessageResponse>)> {
    let tenant = caller.tenant_id();
    load_swarm(&state, tenant, &swarm_id).await?;
    let member = |field: &'static str, id: &str| {
        let state = &state;
        let swarm_id = &swarm_id;
        let id = id.to_string();
        async move {
            match state.store.get_agent(tenant, &id).await? {
                Some(a) if a.swarm_id == *swarm_id => Ok(()),
                _ => Err(invalid(
                    field,
                    format!("no agent '{id}' in swarm '{swarm_id}'"),
                )),
            }
        }
    };
    member("from", &p.from).await?;
    match (&p.to, &p.topic) {
        (Some(to), None) => member("to", to).await?,
        (None, Some(topic)) => check_topic(topic).map_err(|rule| invalid("topic", rule))?,
        _ => {
            return Err(invalid(
                "to",
                "give either 'to' (an agent) or 'topic', not both and not neither",
            ));
        }
    }
    let size = serde_json::to_vec(&p.body).map_or(usize::MAX, |v| v.len());
    if size > MAX_MESSAGE_BYTES {
        return Err(invalid(
            "body",
            format!("must be at most {MAX_MESSAGE_BYTES} bytes of JSON (got {size})"),
        ));
    }
    state.sched.check_interaction(
        tenant,
        &swarm_id,
        Interaction::Message,
        &p.from,
        p.to.as_deref(),
    )?;
    let message = state
        .store
        .send_message(
            &caller.ctx,
            tenant,
            NewMessage {
                swarm_id,
                from_agent: p.from,
                to_agent: p.to,
                topic: p.topic,
                body: p.body,
            },
        )
        .await?;
    state.events.publish(
        tenant,
        "message.sent",
        &message.id.to_string(),
        json!({
            "swarm_id": message.swarm_id,
            "from": message.from_agent,
            "to": message.to_agent,
            "topic": message.topic,
        }),
    );
    Ok((StatusCode::CREATED, Json(message.into())))
}

/// A topic name, by the store's rule (checked here so that a bad name is a 422, not a refusal).
fn check_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        return Ok(());
    }
    Err(format!(
        "must be 1 to {MAX_TOPIC_LEN} characters A-Z, a-z, 0-9, '.', '_' or '-'"
    ))
}

fn check_after(after: Option<i64>) -> ApiResult<i64> {
    match after.unwrap_or(0) {
        a if a >= 0 => Ok(a),
        a => Err(crate::error::ApiError::bad_request(
            "after",
            format!("after must be 0 or a message id (got {a})"),
        )),
    }
}

/// Direct messages to an agent, oldest first.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}/messages", tag = "messages",
    params(("id" = String, Path, description = "Agent id"), MessageListParams),
    responses(
        (status = 200, body = MessageListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn inbox(
    State(state): State<AppState>,
    caller: Caller<op::SwarmRead>,
    PathParams(agent_id): PathParams<String>,
    Query(q): Query<MessageListParams>,
) -> ApiResult<Json<MessageListResponse>> {
    let tenant = caller.tenant_id();
    let after = check_after(q.after)?;
    let limit = page_limit(q.limit)?;
    load_agent(&state, tenant, &agent_id).await?;
    let items = state.store.inbox(tenant, &agent_id, after, limit).await?;
    Ok(Json(MessageListResponse {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Messages on a topic of a swarm, oldest first.
#[utoipa::path(
    get, path = "/api/v1/swarms/{id}/topics/{topic}/messages", tag = "messages",
    params(
        ("id" = String, Path, description = "Swarm id"),
        ("topic" = String, Path, description = "Topic name"),
        MessageListParams,
    ),
    responses(
        (status = 200, body = MessageListResponse),
        (status = 400, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
async fn topic_messages(
    State(state): State<AppState>,
    caller: Caller<op::SwarmRead>,
    PathParams((swarm_id, topic)): PathParams<(String, String)>,
    Query(q): Query<MessageListParams>,
) -> ApiResult<Json<MessageListResponse>> {
    let tenant = caller.tenant_id();
    let after = check_after(q.after)?;
    let limit = page_limit(q.limit)?;
    check_topic(&topic).map_err(|rule| crate::error::ApiError::bad_request("topic", rule))?;
    load_swarm(&state, tenant, &swarm_id).await?;
    let items = state
        .store
        .topic_messages(tenant, &swarm_id, &topic, after, limit)
        .await?;
    Ok(Json(MessageListResponse {
        items: items.into_iter().map(Into::into).collect(),
    }))
}
