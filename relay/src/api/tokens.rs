//! Enrollment tokens, enrollment itself, and API tokens.

use super::error::JsonBody;
use super::{audit, ApiError, Caller};
use crate::state::AppState;
use crate::store::{now, EnrollRefusal, NewAgent, NewApiToken, NewEnrollmentToken};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flotilla_shared::api::{
    ApiTokenCreated, ApiTokenInfo, CreateApiToken, CreateEnrollmentToken, EnrollRequest,
    EnrollResponse, EnrollmentTokenCreated, EnrollmentTokenInfo, Scope, ANY_LABEL_KEY,
};
use flotilla_shared::ids;
use flotilla_shared::selector::{validate_key, validate_labels};
use flotilla_shared::signing::PublicKey;
use flotilla_shared::stream::EventKind;
use std::net::SocketAddr;

/// Enrollment token lifetime when none is asked for.
const DEFAULT_ENROLLMENT_TTL_SECS: u64 = 3600;
/// Longest enrollment token lifetime (one year).
const MAX_ENROLLMENT_TTL_SECS: u64 = 365 * 24 * 3600;

pub async fn create_enrollment_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    caller.require(Scope::Operate)?;
    let id = ids::new_id("et");
    let result = async {
        validate_labels(&req.labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
        validate_agent_label_keys(&req.agent_label_keys)?;
        let ttl = req.ttl_secs.unwrap_or(DEFAULT_ENROLLMENT_TTL_SECS);
        if !(1..=MAX_ENROLLMENT_TTL_SECS).contains(&ttl) {
            return Err(ApiError::bad_request(format!(
                "ttl_secs must be between 1 and {MAX_ENROLLMENT_TTL_SECS}"
            )));
        }
        let max_uses = req.max_uses.unwrap_or(1);
        if max_uses == 0 {
            return Err(ApiError::bad_request("max_uses must be at least 1"));
        }
        let token = ids::new_secret_token("fle");
        let created_at = now();
        let info = state
            .store
            .create_enrollment_token(NewEnrollmentToken {
                id: id.clone(),
                token_hash: ids::token_hash(&token),
                labels: req.labels.clone(),
                created_at,
                expires_at: created_at + chrono::Duration::seconds(ttl as i64),
                max_uses,
                note: req.note.clone(),
                created_by: caller.name().to_string(),
                agent_label_keys: req.agent_label_keys.clone(),
            })
            .await?;
        Ok((
            StatusCode::CREATED,
            Json(EnrollmentTokenCreated { token, info }),
        ))
    }
    .await;
    audit(
        &state,
        caller.name(),
        "enrollment_token.create",
        &id,
        &result,
        None,
    )
    .await;
    result
}

/// Label keys a token lets agents add: valid label keys, or `*` alone, at most 64.
fn validate_agent_label_keys(keys: &[String]) -> Result<(), ApiError> {
    if keys.len() > 64 {
        return Err(ApiError::bad_request(
            "agent_label_keys may list at most 64 keys",
        ));
    }
    if keys.iter().any(|k| k == ANY_LABEL_KEY) && keys.len() > 1 {
        return Err(ApiError::bad_request(
            "agent_label_keys: \"*\" (any key) cannot be combined with other keys",
        ));
    }
    for key in keys.iter().filter(|k| *k != ANY_LABEL_KEY) {
        validate_key(key).map_err(|e| ApiError::bad_request(format!("agent_label_keys: {e}")))?;
    }
    Ok(())
}

pub async fn list_enrollment_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<EnrollmentTokenInfo>>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(state.store.list_enrollment_tokens().await?))
}

pub async fn revoke_enrollment_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operate)?;
    let result = match state.store.revoke_enrollment_token(id.clone()).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!(
            "no enrollment token with id {id}"
        ))),
        Err(e) => Err(e.into()),
    };
    audit(
        &state,
        caller.name(),
        "enrollment_token.revoke",
        &id,
        &result,
        None,
    )
    .await;
    result
}

/// `GET /api/v1/api-tokens` (admin): every API token, revoked ones included, never the secret.
pub async fn list_api_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ApiTokenInfo>>, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(Json(state.store.api_tokens().await?))
}

/// `DELETE /api/v1/api-tokens/{id}` (admin): the token stops working with its next request.
pub async fn revoke_api_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    let result = match state.store.revoke_api_token(id.clone()).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!("no API token with id {id}"))),
        Err(e) => Err(e.into()),
    };
    audit(
        &state,
        caller.name(),
        "api_token.revoke",
        &id,
        &result,
        None,
    )
    .await;
    result
}

/// `POST /api/v1/enroll`: the enrollment token is the credential; rate-limited per client
/// address (from `X-Forwarded-For` only behind a trusted proxy).
pub async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<JsonBody<EnrollRequest>, ApiError>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let client =
        crate::ratelimit::client_address(peer.ip(), &headers, &state.config.trusted_proxies);
    if !state
        .enroll_limiter
        .check(client, std::time::Instant::now())
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many enrollment attempts from {}; at most {} per minute",
                client, state.config.enroll_rate_per_minute
            ),
        ));
    }
    let JsonBody(req) = body?;
    let public_key = PublicKey::from_base64(&req.public_key)
        .map_err(|e| ApiError::bad_request(format!("invalid public_key: {e}")))?;
    validate_labels(&req.labels).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(name) = &req.name {
        if name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "name must be at most 128 characters without control characters",
            ));
        }
    }
    let agent_id = ids::new_id("ag");
    let outcome = state
        .store
        .enroll(
            ids::token_hash(&req.token),
            NewAgent {
                id: agent_id.clone(),
                name: req.name.clone(),
                public_key: public_key.to_base64(),
                labels: req.labels.clone(),
                facts: req.facts.clone(),
            },
        )
        .await?;
    let result = match outcome {
        Ok((agent, token_id)) => {
            state.metrics.enrollment();
            let ignored =
                crate::model::enrollment::ignored_labels(&agent.claimed_labels, &agent.labels);
            tracing::info!(agent_id = %agent.id, name = %agent.name, token_id = %token_id, "agent enrolled");
            if !ignored.is_empty() {
                tracing::info!(agent_id = %agent.id, token_id = %token_id, ignored = ?ignored, "labels the agent asked for were not applied: the token does not let agents set these keys");
            }
            state.stream.publish(
                EventKind::AgentEnrolled,
                Some(&agent.id),
                Some(&agent.id),
                format!("agent {} enrolled", agent.name),
                Some(serde_json::json!({ "name": agent.name, "labels": agent.labels })),
            );
            Ok((
                token_id,
                Json(EnrollResponse {
                    agent_id: agent.id,
                    name: agent.name,
                    labels: agent.labels,
                    ignored_labels: ignored,
                    relay_public_key: state.key.public_key().to_base64(),
                    relay_key_fingerprint: state.fingerprint.clone(),
                    heartbeat_interval_secs: state.config.heartbeat_interval_secs,
                }),
            ))
        }
        Err(refusal) => Err(match refusal {
            EnrollRefusal::Unknown => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "enrollment token is not valid",
            ),
            EnrollRefusal::Used => ApiError::new(
                StatusCode::GONE,
                "token_used",
                "enrollment token has already been used",
            ),
            EnrollRefusal::Expired => ApiError::new(
                StatusCode::GONE,
                "token_expired",
                "enrollment token has expired",
            ),
            EnrollRefusal::Revoked => ApiError::new(
                StatusCode::GONE,
                "token_revoked",
                "enrollment token has been revoked",
            ),
        }),
    };
    let (actor, target) = match &result {
        Ok((token_id, _)) => (format!("enrollment-token:{token_id}"), agent_id.as_str()),
        Err(_) => (format!("enroll:{client}"), "-"),
    };
    audit(&state, &actor, "agent.enroll", target, &result, None).await;
    result.map(|(_, body)| body)
}

pub async fn create_api_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateApiToken>,
) -> Result<(StatusCode, Json<ApiTokenCreated>), ApiError> {
    caller.require(Scope::Admin)?;
    let id = ids::new_id("tok");
    let result = async {
        let name = req.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "name must be 1-64 characters without control characters",
            ));
        }
        let token = ids::new_secret_token("flt");
        let created_at = now();
        state
            .store
            .create_api_token(NewApiToken {
                id: id.clone(),
                token_hash: ids::token_hash(&token),
                name: name.to_string(),
                scope: req.scope,
                created_at,
                created_by: caller.name().to_string(),
            })
            .await?;
        Ok((
            StatusCode::CREATED,
            Json(ApiTokenCreated {
                id: id.clone(),
                name: name.to_string(),
                scope: req.scope,
                token,
                created_at,
            }),
        ))
    }
    .await;
    audit(
        &state,
        caller.name(),
        "api_token.create",
        &id,
        &result,
        Some(format!("name={} scope={}", req.name, req.scope.as_str())),
    )
    .await;
    result
}
