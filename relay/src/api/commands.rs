//! Commands to one agent and fan-out jobs.

use super::error::{JsonBody, QueryParams};
use super::{audit, ApiError, Caller};
use crate::commands::IssueError;
use crate::releases::UpgradeRefusal;
use crate::state::{AppState, Shared};
use crate::store::{now, CommandLookup, NewCommand, NewJob};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use flotilla_shared::api::{CommandInfo, CreateCommand, CreateJob, DeliveryState, JobInfo, Scope};
use flotilla_shared::command::{Audience, Command, CommandKind, SignedCommand};
use flotilla_shared::ids;
use flotilla_shared::release::UpgradeRequest;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often a `?wait=` re-reads the command while no completion arrives.
const WAIT_RECHECK: Duration = Duration::from_secs(2);

/// Longest `?wait=` honoured; larger values are clamped to it.
pub const MAX_WAIT_SECS: u64 = 300;

/// When a command expires (see [`crate::commands::Commands::expiry`]); a TTL out of range is a
/// 400.
fn expiry(
    state: &Shared,
    ttl_secs: Option<u64>,
    command: &Command,
    waves: u64,
    issued_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    state
        .commands
        .expiry(ttl_secs, command, waves, issued_at)
        .map_err(|e| ApiError::bad_request(e.to_string()))
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
    state
        .commands
        .sign(id, audience, command, issued_at, expires_at)
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

/// The body of `POST /api/v1/agents/{id}/commands`: a command with its typed arguments, except
/// that `agent.upgrade` takes [`UpgradeRequest`] (`{"version", "rollback"}`) and the relay builds
/// the signed manifest for the agent's architecture itself.
enum CommandRequest {
    Plain(CreateCommand),
    Upgrade {
        req: UpgradeRequest,
        ttl_secs: Option<u64>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeBody {
    #[allow(dead_code)]
    kind: String,
    args: UpgradeRequest,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// The `kind` of a request body, when it names one.
fn kind_of(body: &Value) -> Option<&str> {
    body.get("kind").and_then(Value::as_str)
}

fn body_error(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!(
        "Failed to deserialize the JSON body into the target type: {e}"
    ))
}

fn parse_command_request(body: Value) -> Result<CommandRequest, ApiError> {
    if kind_of(&body) == Some(CommandKind::AgentUpgrade.as_str()) {
        let b: UpgradeBody = serde_json::from_value(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_args",
                format!(
                    "invalid arguments for agent.upgrade: {e} (expected {{\"version\": \"1.2.3\" \
                     or \"latest\", \"rollback\": false}})"
                ),
            )
        })?;
        return Ok(CommandRequest::Upgrade {
            req: b.args,
            ttl_secs: b.ttl_secs,
        });
    }
    serde_json::from_value(body)
        .map(CommandRequest::Plain)
        .map_err(body_error)
}

/// An `agent.upgrade` the relay will not send: 400 for a malformed version, else 409 naming why.
fn upgrade_refused(r: UpgradeRefusal) -> ApiError {
    let code = match &r {
        UpgradeRefusal::InvalidVersion(_) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_args", r.to_string())
        }
        UpgradeRefusal::UnknownArch { .. } | UpgradeRefusal::NoBuild(_) => "no_such_release",
        UpgradeRefusal::Broken(_) => "release_broken",
        UpgradeRefusal::NotNewer { .. } => "not_newer",
        UpgradeRefusal::AlreadyRuns { .. } => "already_runs",
    };
    ApiError::new(StatusCode::CONFLICT, code, r.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for a final state (at most 300).
    wait: Option<u64>,
}

/// `POST /api/v1/agents/{id}/commands`: 201 with the command as queued/sent; with `?wait=N`,
/// 200 once it is final within N seconds, else 201 with where it stands. `agent.upgrade` takes
/// `{"version", "rollback"}`: the relay resolves the agent's architecture from its facts and
/// sends the signed manifest of that build, or refuses (409) a broken or missing build, the
/// version the agent already runs (rollback or not: the agent would refuse it) and, without
/// rollback, an older one.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    QueryParams(q): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<CommandInfo>), ApiError> {
    caller.require(Scope::Operate)?;
    let request = parse_command_request(body)?;
    let command_id = ids::new_id("cmd");
    // Subscribe before the command exists, so a result arriving at once is not missed.
    let mut completions = state.commands.subscribe();
    let mut detail = match &request {
        CommandRequest::Plain(c) => format!("{command_id} {}", c.command.kind()),
        CommandRequest::Upgrade { req, .. } => format!(
            "{command_id} agent.upgrade version={}{}",
            req.version,
            if req.rollback { " rollback" } else { "" }
        ),
    };
    let result = async {
        if let CommandRequest::Plain(c) = &request {
            validate(&c.command)?;
        }
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
        let (command, ttl_secs) = match &request {
            CommandRequest::Plain(c) => (c.command.clone(), c.ttl_secs),
            CommandRequest::Upgrade { req, ttl_secs } => {
                let record =
                    state.store.agent(agent_id.clone()).await?.ok_or_else(|| {
                        ApiError::not_found(format!("no agent with id {agent_id}"))
                    })?;
                let running =
                    crate::releases::running_version(&state.hub, &agent_id, &record.agent_version);
                let (command, release) = crate::releases::upgrade_command(
                    &state.store,
                    &agent_id,
                    &record.facts.arch,
                    &running,
                    req,
                )
                .await?
                .map_err(upgrade_refused)?;
                detail.push_str(&format!(
                    " build={}/{} from={running}",
                    release.info.version, release.info.arch
                ));
                validate(&command)?;
                // Persisted before it is sent, in a transaction that checks the build's broken
                // mark once more (it may have been marked since it was resolved).
                let c = state
                    .commands
                    .new_agent_command(&command_id, &agent_id, command, *ttl_secs, caller.name())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                let signed = c.signed.clone();
                if let Err(why) = state.store.create_upgrade_command(c).await? {
                    return Err(ApiError::new(StatusCode::CONFLICT, "release_broken", why));
                }
                state
                    .commands
                    .dispatch(&command_id, &signed, std::slice::from_ref(&agent_id))
                    .await?;
                return Ok(());
            }
        };
        // Persisted before it is sent: a relay crash after sending cannot lose it.
        state
            .commands
            .issue(&command_id, &agent_id, command, ttl_secs, caller.name())
            .await
            .map_err(|e| match e {
                IssueError::InvalidTtl(m) => ApiError::bad_request(m.to_string()),
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
        Some(detail),
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
                // A completion another relay announced may be lost: look at the store again.
                _ = tokio::time::sleep(WAIT_RECHECK) => break true,
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
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<JobInfo>), ApiError> {
    caller.require(Scope::Operate)?;
    if kind_of(&body) == Some(CommandKind::AgentUpgrade.as_str()) {
        // One signature for every agent cannot carry each agent's build.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_args",
            "agent.upgrade cannot be a fan-out job: each agent needs the build for its \
             architecture. Send it to one agent (POST /api/v1/agents/{id}/commands) or roll a \
             version out (POST /api/v1/rollouts with agent_version; `flotilla rollout start \
             --agent-version`)",
        ));
    }
    let req: CreateJob = serde_json::from_value(body).map_err(body_error)?;
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
        state.jobs.advance(&job_id).await?;
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
