//! The dashboard: server-rendered HTML pages under `/ui/`, compiled into the relay (templates
//! are `maud` macros, assets are `include_str!`), with a small script of our own for the live
//! parts and the confirmed actions.
//!
//! Invariants:
//! - **The dashboard is a client of the API's operations.** A page handler gathers its data by
//!   calling the JSON API's own handlers (`crate::api::*`) with the signed-in [`Caller`], so
//!   scopes, validation and audit are the API's; the page's actions are `fetch` calls to the
//!   JSON API itself (cookie + `X-CSRF-Token`), never a second implementation.
//! - **No handler logic in templates.** `pages/*` turn API values into markup; formatting
//!   helpers live in `layout`. Everything interpolated is escaped by maud; no page builds HTML
//!   from strings, and the script inserts text with `textContent` only.
//! - **A strict policy.** Every response under `/ui/` carries a Content-Security-Policy with no
//!   inline script, no inline style and no eval (`security_headers`), `X-Frame-Options: DENY`,
//!   `Referrer-Policy: no-referrer` and `nosniff`; pages are `no-store`.
//! - **Reading works without JavaScript.** Pages are complete HTML with plain links and GET
//!   forms for filters; the script only adds live refresh and the action buttons.

mod assets;
mod layout;
mod login;
mod pages;
mod viewer;

pub use login::SIGN_IN_PER_MINUTE;

use crate::state::AppState;
use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

/// Where the dashboard starts.
pub const HOME: &str = "/ui/";

/// The policy every dashboard response carries: our own script and stylesheet only; the live
/// stream and the API on the same origin.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, for the composition root to hand to [`crate::api::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(HOME) }))
        .route("/ui", get(|| async { Redirect::to(HOME) }))
        .route("/ui/login", get(login::form).post(login::sign_in))
        .route("/ui/logout", post(login::sign_out))
        .route("/ui/", get(pages::overview::page))
        .route("/ui/agents", get(pages::agents::list))
        .route("/ui/agents/{id}", get(pages::agent::page))
        .route("/ui/rollouts", get(pages::rollouts::list))
        .route("/ui/rollouts/{id}", get(pages::rollouts::page))
        .route("/ui/alerts", get(pages::alerts::page))
        .route("/ui/backups", get(pages::misc::backups))
        .route("/ui/releases", get(pages::misc::releases))
        .route("/ui/audit", get(pages::misc::audit))
        .route("/ui/tokens", get(pages::misc::tokens))
        .route("/ui/assets/{file}", get(assets::serve))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Adds the dashboard's security headers to every response of its routes.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !is_asset {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
