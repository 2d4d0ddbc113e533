//! Update history: `GET /api/v1/agents/{id}/updates` and fleet-wide `GET /api/v1/updates`.

use super::error::QueryParams;
use super::{ApiError, Caller};
use crate::state::AppState;
use crate::store::UpdateQuery;
use axum::extract::{Path, State};
use axum::Json;
use flotilla_shared::api::{Scope, UpdateRecord};
use serde::Deserialize;

/// Default and largest page of the update history.
pub const DEFAULT_UPDATES_LIMIT: u32 = 50;
pub const MAX_UPDATES_LIMIT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatesQuery {
    /// Only updates of this container (name or id as asked, or the name the agent reported).
    container: Option<String>,
    /// `true`: only unfinished updates; `false`: only finished ones.
    active: Option<bool>,
    /// Only the update made by this command.
    command_id: Option<String>,
    limit: Option<u32>,
}

impl UpdatesQuery {
    fn into_query(self, agent_id: Option<String>) -> Result<UpdateQuery, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_UPDATES_LIMIT);
        if !(1..=MAX_UPDATES_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {MAX_UPDATES_LIMIT}"
            )));
        }
        Ok(UpdateQuery {
            agent_id,
            container: self.container.filter(|c| !c.is_empty()),
            active: self.active,
            command_id: self.command_id.filter(|c| !c.is_empty()),
            limit,
        })
    }
}

/// `GET /api/v1/agents/{id}/updates` (read): the agent's `container.update` history, newest
/// first; 404 for an unknown agent.
pub async fn agent_updates(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<UpdatesQuery>,
) -> Result<Json<Vec<UpdateRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let query = q.into_query(Some(id.clone()))?;
    if state.store.agent_auth(id.clone()).await?.is_none() {
        return Err(ApiError::not_found(format!("no agent with id {id}")));
    }
    Ok(Json(state.store.updates(query).await?))
}

/// `GET /api/v1/updates` (read): the fleet's update history, newest first; `?active=true` is
/// every update in progress.
pub async fn fleet_updates(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<UpdatesQuery>,
) -> Result<Json<Vec<UpdateRecord>>, ApiError> {
    caller.require(Scope::Read)?;
    let query = q.into_query(None)?;
    Ok(Json(state.store.updates(query).await?))
}
