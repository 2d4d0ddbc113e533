//! Backup history: `GET /api/v1/agents/{id}/backups` (one agent's databases, history and alert
//! level) and fleet-wide `GET /api/v1/backups` (the latest backup of every database).

use super::error::QueryParams;
use super::{ApiError, Caller};
use crate::state::AppState;
use crate::store::{now, BackupQuery};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_shared::api::Scope;
use flotilla_shared::backup::{AgentBackups, DatabaseState, FleetBackups};
use serde::Deserialize;

/// Default and largest page of one agent's backup history.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// Default and largest number of databases of the fleet view.
pub const DEFAULT_FLEET_LIMIT: u32 = 1000;
pub const MAX_FLEET_LIMIT: u32 = 100_000;

fn check_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}"
        )));
    }
    Ok(limit)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBackupsQuery {
    /// History rows, newest first.
    limit: Option<u32>,
    /// Only this database (its report key, `<job>/<database>` for the agent's own jobs).
    key: Option<String>,
}

/// `GET /api/v1/agents/{id}/backups` (read): the latest state of each database, the history
/// newest first and the agent's alert level; 404 for an unknown agent.
pub async fn agent_backups(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AgentBackupsQuery>,
) -> Result<Json<AgentBackups>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = check_limit(q.limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?;
    if state.store.agent_auth(id.clone()).await?.is_none() {
        return Err(ApiError::not_found(format!("no agent with id {id}")));
    }
    let query = BackupQuery {
        key: q.key.filter(|k| !k.is_empty()),
        limit,
    };
    Ok(Json(state.store.agent_backups(id, query, now()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetQuery {
    /// The database's key (`<job>/<database>`, `<job>/_offsite`, or a status file's name).
    key: Option<String>,
}

/// `DELETE /api/v1/agents/{id}/backups?key=<key>` (operate): forgets one database of one agent,
/// every stored row of it. For a database that was dropped or a job that was renamed: their
/// key would stay stale, and the agent in alert, for ever. The agent's next report of that key
/// brings it back.
pub async fn forget_backup_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ForgetQuery>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operate)?;
    let Some(key) = q.key.filter(|k| !k.is_empty()) else {
        return Err(ApiError::bad_request(
            "key is required: the database to forget, as `GET .../backups` lists it",
        ));
    };
    let result = match state.store.forget_backup_key(id.clone(), key.clone()).await {
        Ok(0) => Err(ApiError::not_found(format!(
            "agent {id} has no backups under the key {key:?}"
        ))),
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    };
    super::audit(
        &state,
        caller.name(),
        "backup.forget",
        &format!("{id}/{key}"),
        &result,
        None,
    )
    .await;
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetBackupsQuery {
    /// `ok`, `failed` or `stale`: only databases in that state.
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/backups` (read): the latest backup of every database of every agent that is
/// not revoked, by agent name and key; `?status=failed|stale|ok` keeps one state.
pub async fn fleet_backups(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<FleetBackupsQuery>,
) -> Result<Json<FleetBackups>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = check_limit(q.limit, DEFAULT_FLEET_LIMIT, MAX_FLEET_LIMIT)?;
    let filter = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<DatabaseState>().map_err(|_| {
            ApiError::bad_request(format!(
                "unknown status {s:?}; expected one of ok, failed, stale"
            ))
        })?),
    };
    Ok(Json(state.store.fleet_backups(filter, limit, now()).await?))
}
