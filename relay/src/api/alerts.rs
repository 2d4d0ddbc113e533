//! Alerts and silences: `GET /api/v1/alerts` (filters: state, severity, agent, rule, limit),
//! `GET /api/v1/alerts/{id}`, `POST /api/v1/alerts/{id}/ack`, `GET/POST /api/v1/silences`,
//! `DELETE /api/v1/silences/{id}`, and `GET /api/v1/notifications` (the durable outbox of
//! alert and lifecycle notifications, per channel). Acks and silences are audited and wake the
//! engine, so a silence applies at the next evaluation, at once.

use super::error::{JsonBody, QueryParams};
use super::{ApiError, Caller};
use crate::alerts::rules::Rule;
use crate::alerts::AlertQuery;
use crate::state::AppState;
use crate::store::now;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_shared::alert::{
    AckRequest, AlertInfo, AlertState, CreateSilence, NotificationDelivery, NotificationState,
    Severity, Silence,
};
use flotilla_shared::api::Scope;
use serde::Deserialize;

/// Default and largest page of alerts.
pub const DEFAULT_ALERTS_LIMIT: u32 = 100;
pub const MAX_ALERTS_LIMIT: u32 = 10_000;
/// Longest silence (one year).
pub const MAX_SILENCE_SECS: i64 = 366 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// `firing`, `resolved` or `all` (default).
    state: Option<String>,
    severity: Option<String>,
    /// Agent id.
    agent: Option<String>,
    rule: Option<String>,
    limit: Option<u32>,
}

impl AlertsQuery {
    fn into_query(self) -> Result<AlertQuery, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_ALERTS_LIMIT);
        if !(1..=MAX_ALERTS_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {MAX_ALERTS_LIMIT}"
            )));
        }
        let state = match self.state.as_deref().filter(|s| !s.is_empty()) {
            None | Some("all") => None,
            Some(s) => Some(s.parse::<AlertState>().map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown state {s:?}; expected firing, resolved or all"
                ))
            })?),
        };
        let severity = match self.severity.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<Severity>().map_err(ApiError::bad_request)?),
        };
        let rule = self.rule.filter(|r| !r.is_empty());
        if let Some(r) = &rule {
            check_rule(r)?;
        }
        Ok(AlertQuery {
            state,
            severity,
            agent_id: self.agent.filter(|a| !a.is_empty()),
            rule,
            limit,
        })
    }
}

fn check_rule(r: &str) -> Result<(), ApiError> {
    if Rule::parse(r).is_none() {
        return Err(ApiError::bad_request(format!("unknown rule {r:?}")));
    }
    Ok(())
}

/// `GET /api/v1/alerts` (read): firing first, then newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<AlertsQuery>,
) -> Result<Json<Vec<AlertInfo>>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(state.store.alerts(q.into_query()?).await?))
}

/// `GET /api/v1/alerts/{id}` (read): one alert; 404 when unknown.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AlertInfo>, ApiError> {
    caller.require(Scope::Read)?;
    match state.store.alert(id.clone()).await? {
        Some(a) => Ok(Json(a)),
        None => Err(ApiError::not_found(format!("no alert with id {id}"))),
    }
}

/// `POST /api/v1/alerts/{id}/ack` (operate, audited): records who acknowledged it; it is not
/// notified again (it stays firing until its condition clears). The body is optional.
pub async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<AlertInfo>, ApiError> {
    caller.require(Scope::Operate)?;
    let req: AckRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AckRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid ack body: {e}")))?
    };
    let comment = req.comment;
    let result = match state
        .store
        .ack_alert(id.clone(), caller.name().to_string(), now())
        .await
    {
        Ok(Some(a)) => Ok(Json(a)),
        Ok(None) => Err(ApiError::not_found(format!("no alert with id {id}"))),
        Err(e) => Err(e.into()),
    };
    super::audit(&state, caller.name(), "alert.ack", &id, &result, comment).await;
    if let Ok(Json(a)) = &result {
        let summary = format!("alert {id} acknowledged by {}", caller.name());
        let kind = flotilla_shared::stream::EventKind::AlertAcked;
        (state.stream).publish(kind, a.agent_id.as_deref(), Some(&id), summary, None);
    }
    result
}

/// `GET /api/v1/silences` (read): silences that have not ended.
pub async fn list_silences(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Silence>>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(state.store.silences(now()).await?))
}

/// Checks a silence request and turns it into a silence made by `by` at `at`.
pub fn new_silence(
    req: CreateSilence,
    by: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Silence, ApiError> {
    if let Some(r) = req.rule.as_deref() {
        check_rule(r)?;
    }
    let starts_at = req.starts_at.unwrap_or(at);
    let ends_at = match (req.ends_at, req.duration_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give ends_at or duration_secs, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "ends_at or duration_secs is required: how long the silence lasts",
            ))
        }
        (Some(e), None) => e,
        (None, Some(d)) => {
            if d == 0 || d as i64 > MAX_SILENCE_SECS {
                return Err(ApiError::bad_request(format!(
                    "duration_secs must be between 1 and {MAX_SILENCE_SECS}"
                )));
            }
            starts_at + chrono::Duration::seconds(d as i64)
        }
    };
    if ends_at <= starts_at || ends_at <= at {
        return Err(ApiError::bad_request(
            "ends_at must be after starts_at and in the future",
        ));
    }
    if (ends_at - starts_at).num_seconds() > MAX_SILENCE_SECS {
        return Err(ApiError::bad_request("a silence lasts at most 366 days"));
    }
    if req.comment.len() > 1000 {
        return Err(ApiError::bad_request("comment is longer than 1000 bytes"));
    }
    Ok(Silence {
        id: flotilla_shared::ids::new_id("sil"),
        selector: req.selector,
        rule: req.rule.filter(|r| !r.is_empty()),
        subject: req.subject.filter(|s| !s.is_empty()),
        starts_at: starts_at.trunc_subsecs_micro(),
        ends_at: ends_at.trunc_subsecs_micro(),
        created_by: by.to_string(),
        created_at: at,
        comment: req.comment,
    })
}

trait Micros {
    fn trunc_subsecs_micro(self) -> Self;
}

impl Micros for chrono::DateTime<chrono::Utc> {
    fn trunc_subsecs_micro(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 6)
    }
}

/// `POST /api/v1/silences` (operate, audited): 201 with the silence.
pub async fn create_silence(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateSilence>,
) -> Result<(StatusCode, Json<Silence>), ApiError> {
    caller.require(Scope::Operate)?;
    let detail = serde_json::to_string(&req).ok();
    let result = match new_silence(req, caller.name(), now()) {
        Ok(s) => match state.store.create_silence(s.clone()).await {
            Ok(()) => Ok((StatusCode::CREATED, Json(s))),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    let target = match &result {
        Ok((_, Json(s))) => s.id.clone(),
        Err(_) => "silence".to_string(),
    };
    super::audit(
        &state,
        caller.name(),
        "silence.create",
        &target,
        &result,
        detail,
    )
    .await;
    if result.is_ok() {
        state.alerts.kick.notify_one();
        state.cluster.signal(crate::cluster::Signal::KickAlerts);
    }
    result
}

/// `DELETE /api/v1/silences/{id}` (operate, audited): ends the silence now; 404 when there is
/// no such silence still in force or to come.
pub async fn delete_silence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operate)?;
    let result = match state.store.end_silence(id.clone(), now()).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!(
            "no active or pending silence with id {id}"
        ))),
        Err(e) => Err(e.into()),
    };
    super::audit(&state, caller.name(), "silence.delete", &id, &result, None).await;
    if result.is_ok() {
        state.alerts.kick.notify_one();
        state.cluster.signal(crate::cluster::Signal::KickAlerts);
    }
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    /// `pending`, `delivered`, `failed` or `all` (default).
    state: Option<String>,
    /// Only the notifications of this alert.
    alert: Option<String>,
    /// Only this channel's.
    channel: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/notifications` (read): every notification on every channel, newest first,
/// with its state, attempts, next attempt and last error.
pub async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<NotificationsQuery>,
) -> Result<Json<Vec<NotificationDelivery>>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = q.limit.unwrap_or(DEFAULT_ALERTS_LIMIT);
    if !(1..=MAX_ALERTS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_ALERTS_LIMIT}"
        )));
    }
    let filter = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None | Some("all") => None,
        Some(s) => Some(s.parse::<NotificationState>().map_err(|_| {
            ApiError::bad_request(format!(
                "unknown state {s:?}; expected pending, delivered, failed or all"
            ))
        })?),
    };
    let query = crate::model::alerts::outbox::NotificationQuery {
        state: filter,
        alert_id: q.alert.filter(|a| !a.is_empty()),
        channel: q.channel.filter(|c| !c.is_empty()),
        limit,
    };
    Ok(Json(state.store.notifications(query).await?))
}
