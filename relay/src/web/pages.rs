//! The dashboard's pages. Each handler calls the JSON API's handlers for its data (the same
//! operations, scopes and errors as `/api/v1`) and hands the values to its markup function.

// A page handler answers with a response either way (the page, or the error page); boxing it
// would only add an allocation per request.
#![allow(clippy::result_large_err)]

pub mod agent;
// --- compose (issue 17, part 1) ---
pub mod agents;
pub mod alerts;
// --- host certificates (issue 17, part 2) ---
pub mod certificates;
pub mod compose;
pub mod misc;
pub mod overview;
pub mod rollouts;

use super::layout::{self, Live};
use super::viewer::Viewer;
use crate::api::error::QueryParams;
use crate::api::ApiError;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup};
use serde::de::DeserializeOwned;

/// What a page handler returns: the page, or an error page with the API's status.
pub type PageResult = Result<Html<String>, Response>;

/// The API query parameters of a page, parsed from `pairs` as the API would parse its own
/// query string (so an unknown or bad parameter is the API's 400).
pub fn query<T: DeserializeOwned>(pairs: &[(&str, &str)]) -> Result<QueryParams<T>, Response> {
    api_query(pairs).map_err(IntoResponse::into_response)
}

fn api_query<T: DeserializeOwned>(pairs: &[(&str, &str)]) -> Result<QueryParams<T>, ApiError> {
    let encoded: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let uri: Uri = format!("/?{}", encoded.join("&"))
        .parse()
        .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(q)| QueryParams(q))
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Percent-encodes a query component (everything but the unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The page for an API error (its status, its message as text).
pub fn error_page(viewer: &Viewer, e: ApiError) -> Response {
    let body = html! {
        p.error data-test="page-error" { (e.message) }
        p { a href="/ui/" { "Back to the overview" } }
    };
    let title = match e.status.as_u16() {
        404 => "Not found",
        403 => "Not allowed",
        400 => "Bad request",
        _ => "Error",
    };
    (
        e.status,
        Html(layout::page(title, "", viewer, &Live::default(), body).into_string()),
    )
        .into_response()
}

/// A rendered page.
pub fn render(title: &str, nav: &str, viewer: &Viewer, live: &Live, body: Markup) -> PageResult {
    Ok(Html(
        layout::page(title, nav, viewer, live, body).into_string(),
    ))
}

/// Runs a page's data step, turning an API error into its error page.
pub fn or_error<T>(viewer: &Viewer, r: Result<T, ApiError>) -> Result<T, Response> {
    r.map_err(|e| error_page(viewer, e))
}

/// The state and viewer every page handler starts from.
pub type Ctx = (State<AppState>, Viewer);
