//! The dashboard API (`/api/v1/...`), health and metrics endpoints, and the route table that
//! also mounts the agent websocket.
//!
//! Handlers speak the shared API types, authenticate with [`auth::Caller`], return
//! [`error::ApiError`] (always a `{"error": {"code", "message"}}` body), and write an audit row
//! for every mutating call. They reach the database only through [`crate::store::Store`].

pub(crate) mod agents;
pub(crate) mod alerts;
pub(crate) mod auth;
pub(crate) mod backups;
pub(crate) mod commands;
pub(crate) mod error;
pub(crate) mod fleet;
pub(crate) mod limits;
pub(crate) mod openapi;
pub(crate) mod releases;
pub(crate) mod rollouts;
pub(crate) mod stream;
pub(crate) mod system;
pub(crate) mod tokens;
pub(crate) mod updates;

pub use auth::Caller;
pub use error::ApiError;

use crate::state::{AppState, Shared};
use crate::store::AuditEntry;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use flotilla_shared::protocol::{CONNECT_PATH, ENROLL_PATH};

/// Builds the whole HTTP surface of the relay; `agent_socket` is the websocket adapter's
/// handler, mounted at [`CONNECT_PATH`], and `pages` the dashboard's routes (both passed in by
/// the composition root, so the API imports neither adapter).
pub fn router(
    state: AppState,
    agent_socket: MethodRouter<AppState>,
    pages: Router<AppState>,
) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route(openapi::OPENAPI_PATH, get(openapi::serve))
        .route(CONNECT_PATH, agent_socket)
        .route(ENROLL_PATH, post(tokens::enroll))
        .route(
            "/api/v1/enrollment-tokens",
            post(tokens::create_enrollment_token).get(tokens::list_enrollment_tokens),
        )
        .route(
            "/api/v1/enrollment-tokens/{id}",
            axum::routing::delete(tokens::revoke_enrollment_token),
        )
        .route(
            "/api/v1/api-tokens",
            post(tokens::create_api_token).get(tokens::list_api_tokens),
        )
        .route(
            "/api/v1/api-tokens/{id}",
            axum::routing::delete(tokens::revoke_api_token),
        )
        .route("/api/v1/agents", get(agents::list))
        .route(
            "/api/v1/agents/{id}",
            get(agents::show)
                .patch(agents::patch)
                .delete(agents::revoke),
        )
        .route("/api/v1/agents/{id}/events", get(agents::events))
        .route("/api/v1/agents/{id}/metrics", get(agents::metrics))
        .route("/api/v1/fleet/overview", get(fleet::show))
        .route("/api/v1/agents/{id}/commands", post(commands::create))
        .route("/api/v1/agents/{id}/updates", get(updates::agent_updates))
        .route("/api/v1/updates", get(updates::fleet_updates))
        .route(
            "/api/v1/agents/{id}/backups",
            get(backups::agent_backups).delete(backups::forget_backup_key),
        )
        .route("/api/v1/backups", get(backups::fleet_backups))
        .route("/api/v1/commands/{id}", get(commands::show))
        .route("/api/v1/jobs", post(commands::create_job))
        .route("/api/v1/jobs/{id}", get(commands::show_job))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/{id}", get(alerts::show))
        .route("/api/v1/alerts/{id}/ack", post(alerts::ack))
        .route("/api/v1/notifications", get(alerts::notifications))
        .route(
            "/api/v1/silences",
            get(alerts::list_silences).post(alerts::create_silence),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(alerts::delete_silence),
        )
        .route(
            "/api/v1/rollouts",
            post(rollouts::create).get(rollouts::list),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::show))
        .route("/api/v1/rollouts/{id}/{action}", post(rollouts::act))
        .route("/api/v1/releases", get(releases::list))
        .route(
            "/api/v1/releases/{version}/{arch}",
            axum::routing::put(releases::publish),
        )
        .route(
            "/api/v1/releases/{version}/{arch}/broken",
            post(releases::mark_broken).delete(releases::unmark_broken),
        )
        // Unauthenticated: an installer has no token yet, and builds are not secret.
        .route("/install.sh", get(releases::install_sh))
        .route(
            "/download/agent/{version}/{arch}",
            get(releases::download_binary),
        )
        .route(
            "/download/agent/{version}/{arch}/{file}",
            get(releases::download_manifest),
        )
        .route("/download/systemd/{unit}", get(releases::download_unit))
        .route("/api/v1/audit", get(system::audit_trail))
        .route("/api/v1/cluster", get(system::cluster))
        .route(stream::STREAM_PATH, get(stream::events));
    if state.config.test_hooks {
        // Test-only: lets end-to-end tests put forged, expired or replayed commands on an
        // agent's socket. Off unless `test_hooks` is set.
        router = router.route(
            "/api/v1/debug/agents/{id}/frames",
            post(system::inject_frame)
                .layer(DefaultBodyLimit::max(4 * state.config.max_frame_bytes)),
        );
    }
    router
        .merge(pages)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            time_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit_refusals,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_writes_while_stepped_down,
        ))
        .fallback(system::no_route)
        .method_not_allowed_fallback(system::method_not_allowed)
        // Outermost, so a refused request costs no token lookup, handler or audit row; on the
        // fallback too (probing unknown paths is charged as well).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::limit,
        ))
        .with_state(state)
}

/// Times every routed request into `flotilla_http_request_duration_seconds`, labelled by the
/// route's template; the long-lived agent websocket and event stream are left out (their
/// "latency" is their lifetime).
async fn time_requests(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(route) = route.filter(|r| r != CONNECT_PATH && r != stream::STREAM_PATH) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics.observe_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Whether a request only reads (the methods that change no state).
fn is_read(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// While this relay is stepped down (cut off from its database, or retired by a schema it must
/// not write to) every state-changing request is refused with 503 and the reason, before
/// anything runs, so the client or its load balancer goes to another relay; reads still answer
/// from what this relay can read.
async fn refuse_writes_while_stepped_down(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if is_read(request.method()) {
        return next.run(request).await;
    }
    match state.cluster.step_down_reason() {
        Some((code, message)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response()
        }
        None => next.run(request).await,
    }
}

/// Audits every refused (403) state-changing request, whoever made it and whichever route:
/// a token or session without the scope, or a cookie request without its CSRF token. The
/// handlers refuse before they reach their own audit row, so this layer is the one place.
async fn audit_refusals(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{Method, StatusCode};
    if is_read(request.method()) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let headers = request.headers().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if response.status() == StatusCode::FORBIDDEN {
        let code = response
            .extensions()
            .get::<error::ErrorCode>()
            .map_or_else(|| "forbidden".to_string(), |c| c.0.clone());
        // Who it was, without the CSRF check (that may be what failed).
        let actor = match auth::authenticate(&state, &Method::GET, &headers).await {
            Ok(Some(caller)) => caller.name,
            _ => "unauthenticated".to_string(),
        };
        let refused: Result<(), ApiError> =
            Err(ApiError::new(StatusCode::FORBIDDEN, &code, String::new()));
        audit(
            &state,
            &actor,
            "request.refused",
            &format!("{method} {path}"),
            &refused,
            None,
        )
        .await;
    }
    response
}

/// Writes an audit row for a mutating call (`outcome` is "ok" or "error: <code>").
pub(crate) async fn audit<T>(
    state: &Shared,
    actor: &str,
    action: &str,
    target: &str,
    result: &Result<T, ApiError>,
    detail: Option<String>,
) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {}", e.code),
    };
    let entry = AuditEntry {
        ts: crate::store::now(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        outcome,
        detail,
    };
    if let Err(e) = state.store.audit(entry).await {
        tracing::error!(error = %e, action, target, "cannot write audit row");
    }
}
