//! Health, readiness, metrics, route fallbacks and the test-only frame injection hook.

use super::error::QueryParams;
use super::{audit, ApiError, Caller};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_shared::api::{
    AuditRecord, ClusterLease, ClusterRelay, ClusterStatus, RelayStatus, Scope,
};
use serde::Deserialize;
use std::sync::atomic::Ordering;

fn status(state: &AppState, status: &str) -> RelayStatus {
    RelayStatus {
        status: status.to_string(),
        version: flotilla_shared::release::version().to_string(),
        relay_key_fingerprint: state.fingerprint.clone(),
        connected_agents: state.hub.connected_count() as u64,
    }
}

pub async fn healthz(State(state): State<AppState>) -> Json<RelayStatus> {
    Json(status(&state, "ok"))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if let Some((code, message)) = state.cluster.step_down_reason() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response();
    }
    if state.ready.load(Ordering::Acquire) {
        Json(status(&state, "ready")).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the relay is starting",
        )
        .into_response()
    }
}

/// `GET /metrics` (read): fleet size, command outcomes and error counts are not public
/// (Prometheus sends the token with `authorization: credentials_file: ...`).
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let text = state.metrics.render(&state.gauges());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

const DEFAULT_AUDIT_LIMIT: u32 = 100;
const MAX_AUDIT_LIMIT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
}

/// `GET /api/v1/audit?limit=N`: the newest audit rows first.
pub async fn audit_trail(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if !(1..=MAX_AUDIT_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_AUDIT_LIMIT}"
        )));
    }
    Ok(Json(state.store.recent_audit(limit).await?))
}

/// `GET /api/v1/cluster`: the live relays and the leases, as this relay reads them.
pub async fn cluster(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ClusterStatus>, ApiError> {
    caller.require(Scope::Read)?;
    let relay_id = state.cluster.relay_id().to_string();
    let backend = state.store.backend_name().to_string();
    if !state.cluster.is_shared() {
        let now = crate::store::now();
        return Ok(Json(ClusterStatus {
            relays: vec![ClusterRelay {
                relay_id: relay_id.clone(),
                started_at: state.alerts.started_at,
                seen_at: now,
                version: flotilla_shared::release::version().to_string(),
                address: state.config.listen.to_string(),
            }],
            relay_id,
            backend,
            leases: Vec::new(),
        }));
    }
    let since = crate::store::now()
        - chrono::Duration::from_std(crate::cluster::DEAD_AFTER).unwrap_or_default();
    let relays = state.store.live_relays(since).await?;
    let leases = state.store.leases().await?;
    Ok(Json(ClusterStatus {
        relay_id,
        backend,
        relays: relays
            .into_iter()
            .map(|r| ClusterRelay {
                relay_id: r.relay_id,
                started_at: r.started_at,
                seen_at: r.seen_at,
                version: r.version,
                address: r.address,
            })
            .collect(),
        leases: leases
            .into_iter()
            .map(|l| ClusterLease {
                name: l.name,
                holder: l.holder,
                epoch: l.epoch,
                expires_at: l.expires_at,
            })
            .collect(),
    }))
}

pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// `POST /api/v1/debug/agents/{id}/frames` (admin, only with `test_hooks`): the body is sent
/// verbatim as one text frame to the agent's websocket.
pub async fn inject_frame(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    let result = match String::from_utf8(body.to_vec()) {
        Err(_) => Err(ApiError::bad_request("frame must be UTF-8 text")),
        Ok(text) => {
            if state.hub.send(&agent_id, text.into()) {
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(ApiError::not_found(format!(
                    "agent {agent_id} is not connected"
                )))
            }
        }
    };
    audit(
        &state,
        caller.name(),
        "debug.inject_frame",
        &agent_id,
        &result,
        None,
    )
    .await;
    result
}
