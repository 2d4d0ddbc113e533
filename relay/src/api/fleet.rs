//! `GET /api/v1/fleet/overview`: the fleet at a glance in one answer (the dashboard's first
//! page): exact counts from the store (`COUNT`s on indexes) and the hub, and the newest few of
//! what is in flight. Its cost does not grow with the number of agents, except the backup
//! counts, which walk every database's latest row.

use super::error::QueryParams;
use super::{ApiError, Caller};
use crate::model::alerts::AlertQuery;
use crate::model::rollouts::RolloutFilter;
use crate::state::{AppState, Shared};
use crate::store::UpdateQuery;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use flotilla_shared::alert::AlertState;
use flotilla_shared::api::{
    AgentCounts, AlertCounts, BackupCounts, FleetOverview, JobProgress, Scope,
};
use serde::Deserialize;

/// How many of each in-flight list the overview carries.
const SHOWN: u32 = 10;
/// The window of "rolled back recently".
const ROLLED_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(24);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {}

/// The overview at `now`.
pub(crate) async fn overview(
    state: &Shared,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<FleetOverview, ApiError> {
    caller.require(Scope::Read)?;
    let store = &state.store;
    let counts = store.fleet_counts(now - ROLLED_BACK_WINDOW).await?;
    // Connected agents the store still counts as enrolled (a revoked one is disconnected at
    // once, but the hub may not have seen it go yet).
    let online = (state.hub.connected_count() as u64).min(counts.enrolled);
    let [ok, failed, stale] = store.backup_state_counts(now).await?;
    let rollouts = store
        .rollouts(RolloutFilter {
            active_only: true,
            limit: SHOWN,
            ..RolloutFilter::default()
        })
        .await?;
    let running = store.running_jobs().await?;
    let mut jobs = Vec::new();
    // Newest first: running_jobs is oldest first.
    for id in running.iter().rev().take(SHOWN as usize) {
        if let Some(j) = store.job_info(id.clone()).await? {
            jobs.push(JobProgress {
                id: j.id,
                kind: j.kind,
                selector: j.selector,
                created_at: j.created_at,
                created_by: j.created_by,
                counts: j.counts,
            });
        }
    }
    let updates = store
        .updates(UpdateQuery {
            agent_id: None,
            container: None,
            active: Some(true),
            command_id: None,
            limit: SHOWN,
        })
        .await?;
    let newest_alerts = store
        .alerts(AlertQuery {
            state: Some(AlertState::Firing),
            severity: None,
            agent_id: None,
            rule: None,
            limit: SHOWN,
        })
        .await?;
    Ok(FleetOverview {
        at: now,
        agents: AgentCounts {
            enrolled: counts.enrolled,
            online,
            offline: counts.enrolled - online,
            revoked: counts.revoked,
            updating: counts.updating,
            rolled_back_24h: counts.rolled_back,
        },
        alerts_firing: AlertCounts {
            hard: counts.alerts_hard,
            medium: counts.alerts_medium,
            soft: counts.alerts_soft,
        },
        backups: BackupCounts { ok, failed, stale },
        rollouts,
        jobs,
        jobs_total: running.len() as u64,
        updates,
        updates_total: counts.updates_active,
        newest_alerts,
    })
}

/// `GET /api/v1/fleet/overview` (read).
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(_): QueryParams<OverviewQuery>,
) -> Result<Json<FleetOverview>, ApiError> {
    Ok(Json(overview(&state, &caller, crate::store::now()).await?))
}
