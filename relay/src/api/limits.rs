//! The API's rate limits (issue 18 part 4): every request is charged to its client address and,
//! when it carries a bearer token or a dashboard session cookie, to that credential too; each
//! has its own token bucket of `api_rate_burst` refilled at `api_rate_per_sec`. A request over
//! either limit is answered 429 `rate_limited` with `Retry-After` (whole seconds until the
//! bucket holds a token again) before any handler, store read or token lookup runs.
//!
//! Credentials are keyed by their SHA-256 hash, never kept as sent; an unknown token still gets
//! a bucket (the address limit bounds how many such buckets one client fills), and both tables
//! are bounded and pruned like every limiter ([`crate::ratelimit`]). Not counted: the agents'
//! websocket (authenticated by its key, never slowed), enrollment (its own per-address limit),
//! the health checks, `/install.sh` and the agent downloads (fetched by installers and by agents
//! during an upgrade, unauthenticated).

use super::auth::{cookie, SESSION_COOKIE};
use super::ApiError;
use crate::ratelimit::{client_address, client_key};
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_shared::ids::token_hash;
use flotilla_shared::protocol::{CONNECT_PATH, ENROLL_PATH};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Paths outside the API's limits (see the module doc).
fn exempt(path: &str) -> bool {
    matches!(
        path,
        CONNECT_PATH | ENROLL_PATH | "/healthz" | "/readyz" | "/install.sh"
    ) || path.starts_with("/download/")
}

/// The credential a request is charged to: its bearer token or its session cookie, hashed.
fn credential(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(AUTHORIZATION) {
        return Some(format!("t:{}", token_hash(value.to_str().unwrap_or("?"))));
    }
    cookie(request.headers(), SESSION_COOKIE).map(|s| format!("s:{}", token_hash(s)))
}

fn refused(what: &str, wait: Duration, state: &AppState) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many requests from this {what}: at most {} per second in bursts of {}; retry in {secs} s",
            state.config.api_rate_per_sec, state.config.api_rate_burst
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The middleware: charges the address, then the credential; 429 when either is empty.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let now = Instant::now();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if let Some(peer) = peer {
        let client = client_address(peer, request.headers(), &state.config.trusted_proxies);
        if let Err(wait) = state
            .api_limits
            .by_address
            .try_take(client_key(client), now)
        {
            state.metrics.rate_limited();
            return refused("address", wait, &state);
        }
    }
    if let Some(key) = credential(&request) {
        if let Err(wait) = state.api_limits.by_credential.try_take(key, now) {
            state.metrics.rate_limited();
            return refused("token", wait, &state);
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_installers_and_health_checks_are_not_counted() {
        for path in [
            CONNECT_PATH,
            ENROLL_PATH,
            "/healthz",
            "/readyz",
            "/install.sh",
            "/download/agent/1.2.3/x86_64",
        ] {
            assert!(exempt(path), "{path}");
        }
        for path in [
            "/api/v1/agents",
            "/metrics",
            "/ui/",
            "/api/v1/events/stream",
            "/nope",
        ] {
            assert!(!exempt(path), "{path}");
        }
    }
}
