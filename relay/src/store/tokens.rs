//! The store's facade for API tokens: async methods of [`Store`], each one blocking call
//! in `sql/tokens.rs` off the async threads.

use super::*;

impl Store {
    pub async fn has_admin_token(&self) -> Result<bool, StoreError> {
        self.read(Sql::has_admin_token).await
    }

    pub async fn create_api_token(&self, token: NewApiToken) -> Result<(), StoreError> {
        self.write(move |c| Sql::create_api_token(c, &token)).await
    }

    /// Every API token, oldest first (hashes are never returned).
    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenInfo>, StoreError> {
        self.read(Sql::api_tokens).await
    }

    /// Revokes an API token at once (its next request gets 401). False if there is no such id.
    pub async fn revoke_api_token(&self, id: String) -> Result<bool, StoreError> {
        self.write(move |c| Sql::revoke_api_token(c, &id, now()))
            .await
    }

    /// The caller owning this token hash, if the token exists and is not revoked.
    pub async fn api_caller(&self, token_hash: String) -> Result<Option<ApiCaller>, StoreError> {
        self.read(move |c| Sql::api_caller(c, &token_hash)).await
    }
}
