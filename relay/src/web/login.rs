//! Signing in and out of the dashboard, and [`Viewer`], the signed-in operator of a page.
//!
//! Sign-in takes an API token (the admin token, or one from `flotilla api-token create`) in a
//! POST form, never in a URL, and answers with a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` when the request came over TLS through a trusted proxy). The session is bound to
//! the token: its scope and name, and its revocation ends the session. The sign-in form is
//! protected against login CSRF by a double-submit cookie; attempts are rate-limited per
//! client address. [`super::viewer::Viewer`] is the signed-in operator of a page.

use super::layout;
use crate::api::auth::{self, cookie, same_secret, SESSION_COOKIE};
use crate::api::{audit, ApiError};
use crate::ratelimit::client_address;
use crate::state::{AppState, Shared};
use crate::store::{now, NewWebSession};
use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use flotilla_shared::ids;
use serde::Deserialize;
use std::net::SocketAddr;

/// The double-submit cookie of the sign-in form.
pub const LOGIN_CSRF_COOKIE: &str = "flotilla_login";

/// Sign-in attempts per client address and minute.
pub const SIGN_IN_PER_MINUTE: u32 = 10;

/// Whether the request reached us over TLS: only a trusted proxy's `X-Forwarded-Proto` says so
/// (the relay itself serves plain HTTP on loopback behind it).
fn over_tls(state: &Shared, peer: SocketAddr, headers: &HeaderMap) -> bool {
    state.config.trusted_proxies.contains(&peer.ip())
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn cookie_header(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

/// `GET /ui/login`: the sign-in form (a fresh double-submit token each time).
pub async fn form(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    render_form(&state, peer, &headers, StatusCode::OK, None)
}

fn render_form(
    state: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let csrf = ids::new_secret_token("flc");
    let set = cookie_header(
        LOGIN_CSRF_COOKIE,
        &csrf,
        3600,
        over_tls(state, peer, headers),
    );
    (
        status,
        [(SET_COOKIE, set)],
        Html(layout::login_page(&csrf, error).into_string()),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/login`: checks the token, starts a session and goes to the overview.
pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let address = client_address(peer.ip(), &headers, &state.config.trusted_proxies);
    if !state
        .login_limiter
        .check(address, std::time::Instant::now())
    {
        return render_form(
            &state,
            peer,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some("too many sign-in attempts from this address; wait a minute"),
        );
    }
    let double_submit = cookie(&headers, LOGIN_CSRF_COOKIE);
    if !double_submit.is_some_and(|c| !form.csrf.is_empty() && same_secret(c, &form.csrf)) {
        return render_form(
            &state,
            peer,
            &headers,
            StatusCode::FORBIDDEN,
            Some("the sign-in form expired or came from another site; try again"),
        );
    }
    let token = form.token.trim();
    let caller = if token.is_empty() {
        None
    } else {
        match state.store.api_caller(ids::token_hash(token)).await {
            Ok(c) => c,
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    let Some(caller) = caller else {
        let refused: Result<(), ApiError> = Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            String::new(),
        ));
        audit(
            &state,
            "unauthenticated",
            "session.create",
            "dashboard",
            &refused,
            Some(format!("from {address}")),
        )
        .await;
        return render_form(
            &state,
            peer,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("unknown or revoked API token"),
        );
    };
    let secret = ids::new_secret_token("fls");
    let session = NewWebSession {
        id_hash: ids::token_hash(&secret),
        token_id: caller.token_id.clone(),
        csrf: ids::new_secret_token("fcs"),
        created_at: now(),
        address: address.to_string(),
    };
    let result = state
        .store
        .create_web_session(session)
        .await
        .map_err(ApiError::from);
    audit(
        &state,
        &caller.name,
        "session.create",
        "dashboard",
        &result,
        Some(format!("from {address}")),
    )
    .await;
    if let Err(e) = result {
        return e.into_response();
    }
    let secure = over_tls(&state, peer, &headers);
    let max_age = crate::model::sessions::ABSOLUTE_TIMEOUT.num_seconds();
    let mut response = Redirect::to(super::HOME).into_response();
    let h = response.headers_mut();
    for value in [
        cookie_header(SESSION_COOKIE, &secret, max_age, secure),
        cookie_header(LOGIN_CSRF_COOKIE, "", 0, secure),
    ] {
        if let Ok(v) = value.parse() {
            h.append(SET_COOKIE, v);
        }
    }
    response
}

#[derive(Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`: ends the session (server-side: the old cookie stops working).
pub async fn sign_out(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignOut>,
) -> Response {
    let session = match auth::session(&state, &headers).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let (Some(session), Some(secret)) = (session, cookie(&headers, SESSION_COOKIE)) {
        if !same_secret(&form.csrf, &session.csrf) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "sign-out must come from the dashboard's own form",
            )
            .into_response();
        }
        let result = state
            .store
            .delete_web_session(ids::token_hash(secret))
            .await
            .map(|_| ())
            .map_err(ApiError::from);
        audit(
            &state,
            &session.caller.name,
            "session.end",
            "dashboard",
            &result,
            None,
        )
        .await;
    }
    let mut response = Redirect::to("/ui/login").into_response();
    let clear = cookie_header(SESSION_COOKIE, "", 0, over_tls(&state, peer, &headers));
    if let Ok(v) = clear.parse() {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
}
