//! Commands to one agent and fan-out jobs.

use super::error::{JsonBody, QueryParams};
use super::{audit, ApiError, Caller};
use crate::state::{AppState, IssueError, Shared};
use crate::store::{now, CommandLookup, NewCommand, NewJob};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use flotilla_shared::api::{CommandInfo, CreateCommand, CreateJob, DeliveryState, JobInfo, Scope};
use flotilla_shared::command::{Audience, Command, CommandEnvelope, SignedCommand};
use flotilla_shared::ids;
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Longest `?wait=` honoured; larger values are clamped to it.
pub const MAX_WAIT_SECS: u64 = 300;

/// When a command expires (see [`Shared::command_expiry`]); a TTL out of range is a 400.
fn expiry(
    state: &Shared,
    ttl_secs: Option<u64>,
    command: &Command,
    waves: u64,
    issued_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    state
        .command_expiry(ttl_secs, command, waves, issued_at)
        .map_err(ApiError::bad_request)
}

fn validate(command: &Command) -> Result<(), ApiError> {
    command
        .validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_args", e))
}

fn sign(
    state: &Shared,
    id: &str,
    audience: Audience,
    command: &Command,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> SignedCommand {
    SignedCommand::sign(
        &CommandEnvelope {
            id: id.to_string(),
            audience,
            command: command.clone(),
            issued_at,
            expires_at,
        },
        &state.key,
    )
}

async fn lookup(
    state: &Shared,
    command_id: &str,
    agent_id: Option<&str>,
) -> Result<CommandInfo, ApiError> {
    match state
        .store
        .command_info(command_id.to_string(), agent_id.map(str::to_string))
        .await?
    {
        CommandLookup::Found(info) => Ok(*info),
        CommandLookup::NotFound => Err(ApiError::not_found(match agent_id {
            Some(a) => format!("no command {command_id} for agent {a}"),
            None => format!("no command with id {command_id}"),
        })),
        CommandLookup::NeedsAgent { job_id } => Err(ApiError::bad_request(format!(
            "command {command_id} belongs to job {}: name the agent with ?agent=ID",
            job_id.unwrap_or_default()
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for a final state (at most 300).
    wait: Option<u64>,
}

/// `POST /api/v1/agents/{id}/commands`: 201 with the command as queued/sent; with `?wait=N`,
/// 200 once it is final within N seconds, else 201 with where it stands.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    QueryParams(q): QueryParams<WaitQuery>,
    JsonBody(req): JsonBody<CreateCommand>,
) -> Result<(StatusCode, Json<CommandInfo>), ApiError> {
    caller.require(Scope::Operate)?;
    let command_id = ids::new_id("cmd");
    // Subscribe before the command exists, so a result arriving at once is not missed.
    let mut completions = state.completions.subscribe();
    let result = async {
        validate(&req.command)?;
        let agent = state
            .store
            .agent_auth(agent_id.clone())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no agent with id {agent_id}")))?;
        if agent.revoked {
            return Err(ApiError::new(
                StatusCode::GONE,
                "agent_revoked",
                format!("agent {agent_id} has been revoked"),
            ));
        }
        // Persisted before it is sent: a relay crash after sending cannot lose it.
        state
            .issue_command(
                &command_id,
                &agent_id,
                req.command.clone(),
                req.ttl_secs,
                caller.name(),
            )
            .await
            .map_err(|e| match e {
                IssueError::InvalidTtl(m) => ApiError::bad_request(m),
                IssueError::Store(e) => ApiError::from(e),
            })?;
        Ok(())
    }
    .await;
    audit(
        &state,
        caller.name(),
        "command.create",
        &agent_id,
        &result,
        Some(format!("{command_id} {}", req.command.kind())),
    )
    .await;
    result?;

    let Some(wait_secs) = q.wait.filter(|w| *w > 0) else {
        let info = lookup(&state, &command_id, Some(&agent_id)).await?;
        return Ok((StatusCode::CREATED, Json(info)));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs.min(MAX_WAIT_SECS));
    loop {
        let info = lookup(&state, &command_id, Some(&agent_id)).await?;
        if info.state.is_final() {
            return Ok((StatusCode::OK, Json(info)));
        }
        // Wait for this command's completion (or the deadline); on lag, re-read the store.
        let finished = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break false,
                _ = state.shutdown.cancelled() => break false,
                msg = completions.recv() => match msg {
                    Ok(c) if c.command_id == command_id => break true,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break true,
                    Err(RecvError::Closed) => break false,
                },
            }
        };
        if !finished {
            let info = lookup(&state, &command_id, Some(&agent_id)).await?;
            let status = if info.state.is_final() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            return Ok((status, Json(info)));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    agent: Option<String>,
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(command_id): Path<String>,
    QueryParams(q): QueryParams<ShowQuery>,
) -> Result<Json<CommandInfo>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(lookup(&state, &command_id, q.agent.as_deref()).await?))
}

/// `POST /api/v1/jobs`: targets are the non-revoked agents matching the selector now; the
/// command is signed once with the selector as audience.
pub async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateJob>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    caller.require(Scope::Operate)?;
    let job_id = ids::new_id("job");
    let result = async {
        validate(&req.command)?;
        let issued_at = now();
        let targets: Vec<String> = state
            .store
            .agent_targets()
            .await?
            .into_iter()
            .filter(|(_, labels)| req.selector.matches(labels))
            .map(|(id, _)| id)
            .collect();
        let n = targets.len();
        let max_concurrency = match req.max_concurrency {
            None => n,
            Some(l) => {
                let c = l.resolve(n);
                if c == 0 && n > 0 {
                    return Err(ApiError::bad_request(format!(
                        "max_concurrency {l} allows no agent at all; use at least 1"
                    )));
                }
                c
            }
        };
        let waves = n.div_ceil(max_concurrency.max(1)).max(1) as u64;
        let expires_at = expiry(&state, req.ttl_secs, &req.command, waves, issued_at)?;
        let max_errors = req.max_errors.map(|l| l.resolve(n) as u32);
        let command_id = ids::new_id("cmd");
        let audience = Audience::Selector {
            selector: req.selector.clone(),
        };
        let signed = sign(
            &state,
            &command_id,
            audience.clone(),
            &req.command,
            issued_at,
            expires_at,
        );
        state
            .store
            .create_job(
                NewJob {
                    id: job_id.clone(),
                    selector: req.selector.clone(),
                    max_concurrency: max_concurrency as u32,
                    max_errors,
                    created_at: issued_at,
                    expires_at,
                    created_by: caller.name().to_string(),
                },
                NewCommand {
                    id: command_id,
                    command: req.command.clone(),
                    signed,
                    audience,
                    created_at: issued_at,
                    expires_at,
                    created_by: caller.name().to_string(),
                    job_id: Some(job_id.clone()),
                    targets: targets
                        .into_iter()
                        .map(|a| (a, DeliveryState::Pending))
                        .collect(),
                },
            )
            .await?;
        crate::jobs::advance(&state, &job_id).await?;
        let info = state
            .store
            .job_info(job_id.clone())
            .await?
            .ok_or_else(ApiError::internal)?;
        Ok((StatusCode::CREATED, Json(info)))
    }
    .await;
    audit(
        &state,
        caller.name(),
        "job.create",
        &job_id,
        &result,
        Some(format!("{} selector={}", req.command.kind(), req.selector)),
    )
    .await;
    result
}

pub async fn show_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, ApiError> {
    caller.require(Scope::Read)?;
    state
        .store
        .job_info(id.clone())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job with id {id}")))
}
