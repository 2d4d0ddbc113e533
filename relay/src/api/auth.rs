//! Authentication of API calls: a bearer token, or the dashboard's session cookie. Tokens and
//! session secrets are looked up by their SHA-256 hash; scopes are ordered read < operate <
//! admin. A session is bound to the API token the operator signed in with (its scope, its
//! name in the audit trail, and its revocation), so the dashboard is a client of the same
//! operations with the same rights. A request authenticated by the cookie that is not a safe
//! method (GET, HEAD, OPTIONS) must carry the session's CSRF token in `X-CSRF-Token`; the
//! cookie is also `SameSite=Strict`.

use super::ApiError;
use crate::state::{AppState, Shared};
use crate::store::{now, ApiCaller, WebSession};
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use flotilla_shared::api::Scope;
use flotilla_shared::ids::token_hash;

/// The dashboard's session cookie (`HttpOnly; SameSite=Strict; Path=/`).
pub const SESSION_COOKIE: &str = "flotilla_session";
/// The header a cookie-authenticated state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The authenticated caller of an API request.
#[derive(Clone, Debug)]
pub struct Caller(pub ApiCaller);

impl Caller {
    /// 403 unless the caller's scope includes `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.0.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this call needs scope {}; the token has scope {}",
                    needed.as_str(),
                    self.0.scope.as_str()
                ),
            ))
        }
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn scope(&self) -> Scope {
        self.0.scope
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The value of cookie `name` in the request's `Cookie` headers, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The live session behind the request's session cookie, if there is one; records its use.
pub async fn session(state: &Shared, headers: &HeaderMap) -> Result<Option<WebSession>, ApiError> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let hash = token_hash(secret);
    let at = now();
    let Some(session) = state.store.web_session(hash.clone(), at).await? else {
        return Ok(None);
    };
    if crate::model::sessions::needs_touch(session.last_seen_at, at) {
        state.store.touch_web_session(hash, at).await?;
    }
    Ok(Some(session))
}

/// Who a request comes from: its bearer token, else its session cookie (with the CSRF check
/// for a state-changing method). `Ok(None)` when it carries neither.
pub async fn authenticate(
    state: &Shared,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<ApiCaller>, ApiError> {
    if let Some(header) = headers.get(AUTHORIZATION) {
        let value = header
            .to_str()
            .map_err(|_| unauthorized("authorization header is not valid text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("authorization header must be `Bearer <token>`"))?;
        let caller = state
            .store
            .api_caller(token_hash(token))
            .await?
            .ok_or_else(|| unauthorized("unknown or revoked api token"))?;
        return Ok(Some(caller));
    }
    if cookie(headers, SESSION_COOKIE).is_none() {
        return Ok(None);
    }
    let session = session(state, headers)
        .await?
        .ok_or_else(|| unauthorized("the dashboard session has ended; sign in again"))?;
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|sent| same_secret(sent, &session.csrf)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "a request with the session cookie must carry the session's X-CSRF-Token",
            ));
        }
    }
    Ok(Some(session.caller))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, &parts.method, &parts.headers)
            .await?
            .map(Caller)
            .ok_or_else(|| unauthorized("missing bearer token (Authorization: Bearer <token>)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn finds_a_cookie_among_several_headers_and_pairs() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; flotilla_session=s3cret"),
        );
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("s3cret"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "flotilla"), None);
        let mut empty = HeaderMap::new();
        empty.append(COOKIE, HeaderValue::from_static("flotilla_session="));
        assert_eq!(cookie(&empty, SESSION_COOKIE), None);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
