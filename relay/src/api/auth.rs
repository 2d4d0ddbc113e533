//! Bearer-token authentication of API calls. Tokens are looked up by their SHA-256 hash; scopes
//! are ordered read < operate < admin.

use super::ApiError;
use crate::state::AppState;
use crate::store::ApiCaller;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use flotilla_shared::api::Scope;
use flotilla_shared::ids::token_hash;

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
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing bearer token (Authorization: Bearer <token>)"))?;
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
        Ok(Caller(caller))
    }
}
