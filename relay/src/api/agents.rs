//! Agents: list, show, relabel, revoke, and their events.

use super::error::{JsonBody, QueryParams};
use super::{audit, ApiError, Caller};
use crate::state::{AppState, Shared};
use crate::store::{AgentRecord, EventQuery};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_shared::api::{
    AgentDetail, AgentInfo, AgentStatus, EventRecord, MetricsSummary, PatchAgent, Scope,
};
use flotilla_shared::heartbeat::Heartbeat;
use flotilla_shared::protocol::error_codes;
use flotilla_shared::selector::{validate_labels, Selector};
use serde::Deserialize;

/// Default and largest page of `GET /api/v1/agents/{id}/events`.
const DEFAULT_EVENTS_LIMIT: u32 = 100;
const MAX_EVENTS_LIMIT: u32 = 1000;

/// The agent as the API shows it, with its live status and the newest heartbeat: from the
/// heartbeat cache (which holds every heartbeat received since start plus the stored ones loaded
/// at startup), else the record's own (only [`crate::store::Store::agent`] loads it).
pub(super) fn agent_detail(state: &Shared, agent: AgentRecord) -> AgentDetail {
    let connected_at = state.hub.connected_at(&agent.id);
    let status = if agent.revoked_at.is_some() {
        AgentStatus::Revoked
    } else if connected_at.is_some() {
        AgentStatus::Online
    } else {
        AgentStatus::Offline
    };
    let (heartbeat, last_heartbeat_at): (Option<Heartbeat>, _) =
        match state.heartbeats.latest(&agent.id) {
            Some((hb, at)) => (Some((*hb).clone()), Some(at)),
            None => (agent.last_heartbeat, agent.last_heartbeat_at),
        };
    AgentDetail {
        agent: AgentInfo {
            summary: heartbeat.as_ref().map(MetricsSummary::of),
            agent_version: heartbeat
                .as_ref()
                .map(|h| h.agent_version.clone())
                .unwrap_or(agent.agent_version),
            id: agent.id,
            name: agent.name,
            labels: agent.labels,
            status,
            enrolled_at: agent.enrolled_at,
            last_heartbeat_at,
            connected_at,
            facts: agent.facts,
        },
        heartbeat,
    }
}

async fn find_agent(state: &Shared, id: &str) -> Result<AgentRecord, ApiError> {
    state
        .store
        .agent(id.to_string())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent with id {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    selector: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Vec<AgentInfo>>, ApiError> {
    caller.require(Scope::Read)?;
    let selector: Selector =
        q.selector.as_deref().unwrap_or("").parse().map_err(
            |e: flotilla_shared::selector::LabelError| ApiError::bad_request(e.to_string()),
        )?;
    let agents = state.store.agents().await?;
    Ok(Json(
        agents
            .into_iter()
            .filter(|a| selector.matches(&a.labels))
            .map(|a| agent_detail(&state, a).agent)
            .collect(),
    ))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    caller.require(Scope::Read)?;
    let agent = find_agent(&state, &id).await?;
    Ok(Json(agent_detail(&state, agent)))
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PatchAgent>,
) -> Result<Json<AgentInfo>, ApiError> {
    caller.require(Scope::Operate)?;
    let result = async {
        validate_labels(&req.labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let agent = find_agent(&state, &id).await?;
        if agent.revoked_at.is_some() {
            return Err(ApiError::new(
                StatusCode::GONE,
                "agent_revoked",
                format!("agent {id} has been revoked"),
            ));
        }
        let agent = state
            .store
            .set_agent_labels(id.clone(), req.labels.clone())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no agent with id {id}")))?;
        // A connected agent checks selector audiences against its signed welcome, so it gets a
        // fresh one now.
        state.hub.send(&id, state.welcome_frame(&id, &agent.labels));
        Ok(Json(agent_detail(&state, agent).agent))
    }
    .await;
    let labels = req
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    audit(
        &state,
        caller.name(),
        "agent.set_labels",
        &id,
        &result,
        Some(labels),
    )
    .await;
    result
}

/// `DELETE /api/v1/agents/{id}`: revoke, close its connection, refuse it from then on. Its
/// unfinished deliveries end as undelivered, or failed `agent_revoked` when it had accepted
/// them (they may have run).
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operate)?;
    let result = async {
        let ended = state
            .store
            .revoke_agent(id.clone())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no agent with id {id}")))?;
        state
            .hub
            .disconnect(&id, error_codes::REVOKED, "this agent has been revoked");
        state.heartbeats.forget(&id);
        state.commands.all_finished(&ended);
        tracing::info!(agent_id = %id, "agent revoked");
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    audit(&state, caller.name(), "agent.revoke", &id, &result, None).await;
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    kind: Option<String>,
    after_id: Option<i64>,
    limit: Option<u32>,
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Json<Vec<EventRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    if state.store.agent_auth(id.clone()).await?.is_none() {
        return Err(ApiError::not_found(format!("no agent with id {id}")));
    }
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_EVENTS_LIMIT}"
        )));
    }
    let events = state
        .store
        .events(
            id,
            EventQuery {
                kind: q.kind.filter(|k| !k.is_empty()),
                after_id: q.after_id,
                limit,
            },
        )
        .await?;
    Ok(Json(events))
}
