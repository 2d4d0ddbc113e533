//! Agents: list (paginated), show, relabel, revoke, their events and metrics history.

use super::error::{JsonBody, QueryParams};
use super::{audit, ApiError, Caller};
use crate::model::metrics;
use crate::state::{AppState, Shared};
use crate::store::{AgentKey, AgentOrder, AgentPosition, AgentRecord, EventQuery};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use flotilla_shared::api::{
    AgentDetail, AgentInfo, AgentStatus, EventRecord, MetricsHistory, MetricsSummary, PatchAgent,
    Scope, NEXT_CURSOR_HEADER,
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
        claimed_labels: agent.claimed_labels,
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

/// Default and largest page of `GET /api/v1/agents`.
const DEFAULT_AGENTS_LIMIT: u32 = 500;
const MAX_AGENTS_LIMIT: u32 = 1000;
/// Agents read per store call while a page is filled: a selective filter walks the order in
/// chunks of this many light rows (no facts, no heartbeat), never the whole table at once.
const SCAN_CHUNK: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    selector: Option<String>,
    /// Free text: a case-insensitive substring of the name, the id or a `key=value` label.
    q: Option<String>,
    /// online, offline, revoked, updating (an update in progress) or rolled_back (an update
    /// rolled back in the last 24 hours).
    status: Option<String>,
    /// name (default), -name, enrolled_at, -enrolled_at.
    sort: Option<String>,
    limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    cursor: Option<String>,
}

/// One page of the agents list and the cursor of the next one (None on the last page).
pub(crate) struct AgentsPage {
    pub agents: Vec<AgentInfo>,
    pub next_cursor: Option<String>,
}

/// The opaque cursor: the order it belongs to and the position of the page's last agent,
/// as base64url of `order \n key \n id`.
fn encode_cursor(order: AgentOrder, p: &AgentPosition) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\n{}\n{}", order.as_str(), p.key, p.id))
}

fn decode_cursor(order: AgentOrder, cursor: &str) -> Result<AgentPosition, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "cursor is not one this list handed out (take it from X-Next-Cursor, unchanged)",
        )
    };
    let text = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.splitn(3, '\n');
    let (Some(o), Some(key), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if o != order.as_str() {
        return Err(ApiError::bad_request(format!(
            "cursor belongs to sort={o}, not sort={}; start again without a cursor",
            order.as_str()
        )));
    }
    Ok(AgentPosition {
        key: key.to_string(),
        id: id.to_string(),
    })
}

/// Whether the free text (already lower-cased) matches the agent.
fn text_matches(text: &str, a: &AgentKey) -> bool {
    text.is_empty()
        || a.name.to_lowercase().contains(text)
        || a.id.to_lowercase().contains(text)
        || a.labels
            .iter()
            .any(|(k, v)| format!("{k}={v}").to_lowercase().contains(text))
}

/// One page of agents in the asked order, filtered by selector, text and status. Keyset
/// paging: the page costs the rows it walks, however deep it is, and memory is one chunk
/// plus one page.
pub(crate) async fn page(
    state: &Shared,
    caller: &Caller,
    q: ListQuery,
) -> Result<AgentsPage, ApiError> {
    caller.require(Scope::Read)?;
    let selector: Selector =
        q.selector.as_deref().unwrap_or("").parse().map_err(
            |e: flotilla_shared::selector::LabelError| ApiError::bad_request(e.to_string()),
        )?;
    let order = match q.sort.as_deref().filter(|s| !s.is_empty()) {
        None => AgentOrder::Name,
        Some(s) => AgentOrder::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown sort {s:?}: expected one of {}",
                AgentOrder::ALL.map(AgentOrder::as_str).join(", ")
            ))
        })?,
    };
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some("online") => Some(StatusFilter::Is(AgentStatus::Online)),
        Some("offline") => Some(StatusFilter::Is(AgentStatus::Offline)),
        Some("revoked") => Some(StatusFilter::Is(AgentStatus::Revoked)),
        Some("updating") => Some(StatusFilter::Among(state.store.updating_agents().await?)),
        Some("rolled_back") => Some(StatusFilter::Among(
            state
                .store
                .rolled_back_agents(crate::store::now() - chrono::Duration::hours(24))
                .await?,
        )),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "unknown status {s:?}: expected online, offline, revoked, updating or rolled_back"
            )))
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_AGENTS_LIMIT);
    if !(1..=MAX_AGENTS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_AGENTS_LIMIT}"
        )));
    }
    let mut after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(decode_cursor(order, c)?),
    };
    let revoked = match &status {
        Some(StatusFilter::Is(s)) => Some(*s == AgentStatus::Revoked),
        _ => None,
    };
    let text = q.q.unwrap_or_default().trim().to_lowercase();
    let mut ids = Vec::new();
    let mut last = None;
    let mut more = false;
    'scan: loop {
        let chunk = state
            .store
            .agent_keys(order, after.clone(), revoked, SCAN_CHUNK)
            .await?;
        let exhausted = chunk.len() < SCAN_CHUNK as usize;
        for a in chunk {
            after = Some(a.position.clone());
            if !(selector.matches(&a.labels)
                && text_matches(&text, &a)
                && status_ok(state, status.as_ref(), &a))
            {
                continue;
            }
            if ids.len() == limit as usize {
                // One more match exists: the page is full and not the last.
                more = true;
                break 'scan;
            }
            ids.push(a.id.clone());
            last = Some(a.position);
        }
        if exhausted {
            break;
        }
    }
    let agents = state.store.agents_by_ids(ids).await?;
    Ok(AgentsPage {
        agents: agents
            .into_iter()
            .map(|a| agent_detail(state, a).agent)
            .collect(),
        next_cursor: last.filter(|_| more).map(|p| encode_cursor(order, &p)),
    })
}

/// The `status` filter: a state, or membership of a set read once per page (agents with an
/// update in progress, or rolled back recently: bounded by the update history, not the fleet).
enum StatusFilter {
    Is(AgentStatus),
    Among(std::collections::HashSet<String>),
}

/// Online and offline are the hub's knowledge, not the store's.
fn status_ok(state: &Shared, status: Option<&StatusFilter>, a: &AgentKey) -> bool {
    match status {
        None | Some(StatusFilter::Is(AgentStatus::Revoked)) => true,
        Some(StatusFilter::Is(AgentStatus::Online)) => !a.revoked && state.hub.is_connected(&a.id),
        Some(StatusFilter::Is(AgentStatus::Offline)) => {
            !a.revoked && !state.hub.is_connected(&a.id)
        }
        Some(StatusFilter::Among(ids)) => ids.contains(&a.id),
    }
}

/// `GET /api/v1/agents` (read): one page, in `sort` order; the next page's cursor is in
/// `X-Next-Cursor` and `Link: <...>; rel="next"` (absent on the last page).
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<(HeaderMap, Json<Vec<AgentInfo>>), ApiError> {
    let page = page(&state, &caller, q).await?;
    let mut headers = HeaderMap::new();
    if let Some(cursor) = &page.next_cursor {
        // The same query with the cursor replaced.
        let current = reqwest::Url::parse(&format!("http://relay/?{}", uri.query().unwrap_or("")))
            .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
        let mut next = reqwest::Url::parse("http://relay/api/v1/agents").expect("a valid URL");
        next.query_pairs_mut()
            .extend_pairs(current.query_pairs().filter(|(k, _)| k != "cursor"))
            .append_pair("cursor", cursor);
        let link = format!(
            "<{}?{}>; rel=\"next\"",
            next.path(),
            next.query().unwrap_or("")
        );
        for (name, value) in [
            (NEXT_CURSOR_HEADER, cursor.as_str()),
            ("link", link.as_str()),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
    }
    Ok((headers, Json(page.agents)))
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
        // A repeated revoke is idempotent (204) but is not a new revocation on the stream.
        let already = state
            .store
            .agent_auth(id.clone())
            .await?
            .is_some_and(|a| a.revoked);
        let ended = state
            .store
            .revoke_agent(id.clone())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no agent with id {id}")))?;
        state
            .hub
            .disconnect(&id, error_codes::REVOKED, "this agent has been revoked");
        state.cluster.signal(crate::cluster::Signal::Disconnect {
            agent_id: id.clone(),
            code: error_codes::REVOKED.to_string(),
            message: "this agent has been revoked".to_string(),
        });
        state.heartbeats.forget(&id);
        state.commands.all_finished(&ended);
        tracing::info!(agent_id = %id, "agent revoked");
        if already {
            return Ok(StatusCode::NO_CONTENT);
        }
        state.stream.publish(
            flotilla_shared::stream::EventKind::AgentRevoked,
            Some(&id),
            Some(&id),
            format!("agent {id} revoked by {}", caller.name()),
            Some(serde_json::json!({ "by": caller.name() })),
        );
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// `24h` (5-minute points, the default) or `30d` (hourly points).
    range: Option<String>,
}

/// `GET /api/v1/agents/{id}/metrics` (read): the agent's downsampled CPU, memory and disk.
pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<MetricsQuery>,
) -> Result<Json<MetricsHistory>, ApiError> {
    caller.require(Scope::Read)?;
    let range = q.range.filter(|r| !r.is_empty());
    let resolution = match range.as_deref() {
        None => metrics::FINE,
        Some(r) => metrics::Resolution::of_range(r).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown range {r:?}: expected one of {}",
                metrics::RESOLUTIONS.map(|r| r.range).join(", ")
            ))
        })?,
    };
    if state.store.agent_auth(id.clone()).await?.is_none() {
        return Err(ApiError::not_found(format!("no agent with id {id}")));
    }
    let points = state
        .store
        .metrics_history(id.clone(), resolution, crate::store::now())
        .await?;
    Ok(Json(MetricsHistory {
        agent_id: id,
        range: resolution.range.to_string(),
        resolution_seconds: resolution.seconds as u32,
        points,
    }))
}
