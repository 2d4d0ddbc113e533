//! [`Viewer`], the signed-in operator of a dashboard page, from the session cookie.

use crate::api::{auth, Caller};
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};

/// The signed-in operator of a dashboard page: the API caller behind the session, and the
/// session's CSRF token for the page's actions. A request without a live session is sent to
/// the sign-in page.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match auth::session(state, &parts.headers).await {
            Ok(Some(s)) => Ok(Viewer {
                caller: Caller(s.caller),
                csrf: s.csrf,
            }),
            Ok(None) => Err(Redirect::to("/ui/login").into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}
