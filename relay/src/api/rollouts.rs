//! Canary rollouts: `POST/GET /api/v1/rollouts`, `GET /api/v1/rollouts/{id}` and the operator
//! actions `POST /api/v1/rollouts/{id}/pause|resume|promote|abort` (see
//! `flotilla_shared::rollout` for the shapes and `crate::rollouts` for the engine).

use super::error::{JsonBody, QueryParams};
use super::{audit, ApiError, Caller};
use crate::model::rollouts::{ActionRefusal, RolloutFilter, RolloutSpec};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_shared::api::Scope;
use flotilla_shared::ids;
use flotilla_shared::limit::Limit;
use flotilla_shared::release::validate_version;
use flotilla_shared::rollout::{
    AbortRollout, CreateAgentRollout, CreateRollout, PauseRollout, RolloutAction, RolloutInfo,
    RolloutState, RolloutTarget, RolloutTransition, StageSpec, DEFAULT_STAGE_TIMEOUT_SECS,
};
use flotilla_shared::update::{HealthSpec, UpdateStrategy};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Longest stage timeout accepted (7 days).
pub const MAX_STAGE_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Default and largest page of `GET /api/v1/rollouts`.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_args", message)
}

fn stage_timeout(secs: Option<u64>) -> Result<u64, ApiError> {
    let stage_timeout_secs = secs.unwrap_or(DEFAULT_STAGE_TIMEOUT_SECS);
    if !(1..=MAX_STAGE_TIMEOUT_SECS).contains(&stage_timeout_secs) {
        return Err(invalid(format!(
            "stage_timeout_secs must be between 1 and {MAX_STAGE_TIMEOUT_SECS} (7 days)"
        )));
    }
    Ok(stage_timeout_secs)
}

fn parallelism_of(limit: Option<Limit>) -> Result<Limit, ApiError> {
    let parallelism = limit.unwrap_or(Limit::Count(1));
    if matches!(parallelism, Limit::Count(0) | Limit::Percent(0)) {
        return Err(invalid("parallelism must allow at least one agent"));
    }
    Ok(parallelism)
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    ids::random_bytes(&mut b);
    u64::from_le_bytes(b)
}

/// Checks an agent rollout's request and resolves its defaults into the stored spec (target
/// [`RolloutTarget::Agent`], the version in `image`). Whether builds exist is checked by
/// [`create`].
pub fn agent_spec_of(req: &CreateAgentRollout) -> Result<RolloutSpec, ApiError> {
    let version = req.agent_version.trim();
    validate_version(version).map_err(|e| {
        invalid(format!(
            "invalid agent_version: {e} (a rollout names one published version, not latest)"
        ))
    })?;
    let stages: Vec<StageSpec> = req.stage_specs().map_err(|e| invalid(e.to_string()))?;
    Ok(RolloutSpec {
        name: req
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("{} → {version}", RolloutTarget::Agent)),
        selector: req.selector.clone(),
        target: RolloutTarget::Agent,
        image: version.to_string(),
        stages,
        order: req.order.unwrap_or_default(),
        seed: random_seed(),
        max_failures: req.max_failures.unwrap_or(Limit::Count(0)),
        on_failure: req.on_failure.unwrap_or_default(),
        parallelism: parallelism_of(req.parallelism)?,
        health: HealthSpec::default(),
        health_timeout_secs: None,
        stable_secs: None,
        strategy: UpdateStrategy::default(),
        stage_timeout_secs: stage_timeout(req.stage_timeout_secs)?,
        allow_drift: false,
    })
}

/// An agent rollout must name a version the relay has a usable build of (members whose
/// architecture lacks one end `no_target` when their turn comes): 409 otherwise.
async fn check_agent_builds(state: &AppState, version: &str) -> Result<(), ApiError> {
    let builds: Vec<_> = state
        .store
        .releases()
        .await?
        .into_iter()
        .filter(|r| r.info.version == version)
        .collect();
    if builds.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_such_release",
            format!(
                "no build of flotilla-agent {version} is published; {}",
                crate::releases::available(&state.store.releases().await?)
            ),
        ));
    }
    if builds.iter().all(|r| r.info.broken.is_some()) {
        let why: Vec<String> = builds
            .iter()
            .map(|r| {
                format!(
                    "{}: {}",
                    r.info.arch,
                    r.info
                        .broken
                        .as_ref()
                        .map(|b| b.reason.as_str())
                        .unwrap_or("")
                )
            })
            .collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "release_broken",
            format!(
                "every build of flotilla-agent {version} is marked broken ({})",
                why.join("; ")
            ),
        ));
    }
    Ok(())
}

/// Checks a request and resolves its defaults into the stored spec.
pub fn spec_of(req: &CreateRollout) -> Result<RolloutSpec, ApiError> {
    let target = req.target().map_err(|e| invalid(e.to_string()))?;
    let stages = req.stage_specs().map_err(|e| invalid(e.to_string()))?;
    let image = req.image.trim();
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(invalid(format!("invalid image reference {:?}", req.image)));
    }
    let stage_timeout_secs = stage_timeout(req.stage_timeout_secs)?;
    let parallelism = parallelism_of(req.parallelism)?;
    let spec = RolloutSpec {
        name: req
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("{target} → {image}")),
        selector: req.selector.clone(),
        target,
        image: image.to_string(),
        stages,
        order: req.order.unwrap_or_default(),
        seed: random_seed(),
        max_failures: req.max_failures.unwrap_or(Limit::Count(0)),
        on_failure: req.on_failure.unwrap_or_default(),
        parallelism,
        health: req.health.clone().unwrap_or_default(),
        health_timeout_secs: req.health_timeout_secs,
        stable_secs: req.stable_secs,
        strategy: req.strategy.unwrap_or_default(),
        stage_timeout_secs,
        allow_drift: req.allow_drift,
    };
    // The update command each member gets must be valid too.
    flotilla_shared::command::Command::ContainerUpdate(spec.update_args("probe", &spec.image))
        .validate()
        .map_err(invalid)?;
    Ok(spec)
}

/// A rollout request: a container target ([`CreateRollout`]) or an agent version
/// ([`CreateAgentRollout`], told apart by its `agent_version` key).
enum CreateRequest {
    Containers(Box<CreateRollout>),
    Agents(CreateAgentRollout),
}

fn parse_create(body: Value) -> Result<CreateRequest, ApiError> {
    let agents = body.get("agent_version").is_some();
    let bad = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    };
    if agents {
        serde_json::from_value(body)
            .map(CreateRequest::Agents)
            .map_err(bad)
    } else {
        serde_json::from_value(body)
            .map(|r| CreateRequest::Containers(Box::new(r)))
            .map_err(bad)
    }
}

/// `POST /api/v1/rollouts` (operate): 201 with the rollout as stored (the engine, kicked, picks
/// its first stage's members right after),
/// 400 for bad arguments, 409 when an active rollout has the same target and an overlapping
/// selector (or, for an agent version, when it has no build that is not broken).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<RolloutInfo>), ApiError> {
    caller.require(Scope::Operate)?;
    let req = parse_create(body)?;
    let id = ids::new_id("ro");
    let result = async {
        let spec = match &req {
            CreateRequest::Containers(r) => spec_of(r)?,
            CreateRequest::Agents(r) => {
                let spec = agent_spec_of(r)?;
                check_agent_builds(&state, &spec.image).await?;
                spec
            }
        };
        if let Err((other, name)) = state
            .store
            .create_rollout(id.clone(), spec, caller.name().to_string())
            .await?
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "rollout {other} ({name}) is active for the same target with an overlapping \
                     selector; abort it or wait for it to finish"
                ),
            ));
        }
        // Only kick the engine: advancing inline would race its tick (two dispatches past the
        // parallelism) and turn an error after the commit into a 500 for a created rollout.
        state.rollouts.kick();
        state.cluster.signal(crate::cluster::Signal::KickRollouts);
        let info = state
            .store
            .rollout(id.clone())
            .await?
            .ok_or_else(ApiError::internal)?;
        crate::rollouts::publish_transition(
            &state.stream,
            &id,
            RolloutTransition::Created.as_str(),
            info.state,
            info.stage,
            info.stage_phase,
        );
        Ok((StatusCode::CREATED, Json(info)))
    }
    .await;
    audit(
        &state,
        caller.name(),
        "rollout.create",
        &id,
        &result,
        Some(match &req {
            CreateRequest::Containers(req) => format!(
                "image={} selector={} target={}",
                req.image,
                req.selector,
                req.container
                    .clone()
                    .or_else(|| req.container_label.as_ref().map(|l| format!("label {l}")))
                    .unwrap_or_default()
            ),
            CreateRequest::Agents(req) => format!(
                "agent_version={} selector={} target=agent",
                req.agent_version, req.selector
            ),
        }),
    )
    .await;
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A rollout state, or `active` for every rollout that is not final.
    state: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/rollouts[?state=]` (read): summaries, newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Vec<RolloutInfo>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let mut filter = RolloutFilter {
        limit,
        ..RolloutFilter::default()
    };
    match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => {}
        Some("active") => filter.active_only = true,
        Some(s) => {
            filter.state = Some(RolloutState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown state {s:?}: expected active, running, paused, completed, aborted, \
                     reverting or reverted"
                ))
            })?)
        }
    }
    Ok(Json(state.store.rollouts(filter).await?))
}

/// `GET /api/v1/rollouts/{id}` (read): the rollout with its members and event log.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutInfo>, ApiError> {
    caller.require(Scope::Read)?;
    state
        .store
        .rollout(id.clone())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no rollout with id {id}")))
}

/// An optional JSON body: empty means the default.
fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// `POST /api/v1/rollouts/{id}/{action}` (operate): pause, resume, promote or abort; 409 when
/// the action does not apply now.
pub async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RolloutInfo>, ApiError> {
    caller.require(Scope::Operate)?;
    let action =
        match action.as_str() {
            "pause" => optional_body::<PauseRollout>(&body)
                .map(|b| RolloutAction::Pause { reason: b.reason }),
            "resume" => optional_body::<Empty>(&body).map(|_| RolloutAction::Resume),
            "promote" => optional_body::<Empty>(&body).map(|_| RolloutAction::Promote),
            "abort" => optional_body::<AbortRollout>(&body)
                .map(|b| RolloutAction::Abort { revert: b.revert }),
            other => {
                return Err(ApiError::not_found(format!(
                    "unknown rollout action {other:?}: expected pause, resume, promote or abort"
                )))
            }
        };
    let verb = action
        .as_ref()
        .map(|a| a.as_str())
        .unwrap_or("action")
        .to_string();
    let result = async {
        let action = action?;
        let detail = format!("{action:?}");
        match state
            .store
            .rollout_action(id.clone(), action, caller.name().to_string())
            .await?
        {
            Ok(()) => {}
            Err(ActionRefusal::NotFound) => {
                return Err(ApiError::not_found(format!("no rollout with id {id}")))
            }
            Err(ActionRefusal::InvalidState(why)) => {
                return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", why))
            }
        }
        state.rollouts.kick();
        state.cluster.signal(crate::cluster::Signal::KickRollouts);
        Ok(detail)
    }
    .await;
    audit(
        &state,
        caller.name(),
        &format!("rollout.{verb}"),
        &id,
        &result,
        result.as_ref().ok().cloned(),
    )
    .await;
    result?;
    let info = state
        .store
        .rollout(id.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rollout with id {id}")))?;
    // The operator's action is stored: announced, in the event log's words, with where the
    // rollout is now.
    let transition = match verb.as_str() {
        "pause" => RolloutTransition::Paused,
        "resume" => RolloutTransition::Resumed,
        "promote" => RolloutTransition::Promoted,
        _ if info.state == RolloutState::Reverting => RolloutTransition::RevertStarted,
        _ => RolloutTransition::Aborted,
    };
    crate::rollouts::publish_transition(
        &state.stream,
        &id,
        transition.as_str(),
        info.state,
        info.stage,
        info.stage_phase,
    );
    Ok(Json(info))
}
