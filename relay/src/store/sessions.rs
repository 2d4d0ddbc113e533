//! The store's facade for dashboard sessions: a session is a hashed cookie secret bound to the
//! API token the operator signed in with, so revoking that token ends its sessions (the lookup
//! joins the token and requires it unrevoked). SQL in `sql/sessions.rs`.

use super::*;
use crate::model::sessions;

/// A new session (stored hashed; the cookie holds the secret).
#[derive(Clone, Debug)]
pub struct NewWebSession {
    pub id_hash: String,
    pub token_id: String,
    /// The session's CSRF token, sent back by the page on every state-changing request.
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    /// Client address at sign-in (for the audit trail and the operator).
    pub address: String,
}

/// A live session as the web adapter uses it.
#[derive(Clone, Debug)]
pub struct WebSession {
    pub caller: ApiCaller,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl Store {
    /// Stores a new session and deletes every expired one.
    pub async fn create_web_session(&self, session: NewWebSession) -> Result<(), StoreError> {
        let (idle, absolute) = sessions::expiry_cutoffs(session.created_at);
        self.write(move |c| Sql::create_web_session(c, &session, idle, absolute))
            .await
    }

    /// The session with this hash if it exists, is within its idle and absolute lifetime at
    /// `now`, and its API token is not revoked.
    pub async fn web_session(
        &self,
        id_hash: String,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>, StoreError> {
        let found = self.read(move |c| Sql::web_session(c, &id_hash)).await?;
        Ok(found.filter(|s| sessions::is_live(s.created_at, s.last_seen_at, now)))
    }

    /// Records a use of the session at `now`.
    pub async fn touch_web_session(
        &self,
        id_hash: String,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |c| Sql::touch_web_session(c, &id_hash, now))
            .await
    }

    /// Ends a session (sign-out). False if there was none.
    pub async fn delete_web_session(&self, id_hash: String) -> Result<bool, StoreError> {
        self.write(move |c| Sql::delete_web_session(c, &id_hash))
            .await
    }
}
