//! The store's facade for enrollment tokens and enrolling: async methods of [`Store`], each one blocking call
//! in `sql/enrollment.rs` off the async threads.

use super::*;

impl Store {
    pub async fn create_enrollment_token(
        &self,
        token: NewEnrollmentToken,
    ) -> Result<EnrollmentTokenInfo, StoreError> {
        self.write(move |c| Sql::create_enrollment_token(c, &token))
            .await
    }

    pub async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenInfo>, StoreError> {
        self.read(Sql::list_enrollment_tokens).await
    }

    /// Revokes an enrollment token; false when no such token exists.
    pub async fn revoke_enrollment_token(&self, id: String) -> Result<bool, StoreError> {
        self.write(move |c| Sql::revoke_enrollment_token(c, &id, now()))
            .await
    }

    /// Uses one enrollment of the token and creates the agent, in one transaction. The agent's
    /// labels are its own merged with the token's (the token's win).
    pub async fn enroll(
        &self,
        token_hash: String,
        agent: NewAgent,
    ) -> Result<Result<(AgentRecord, String), EnrollRefusal>, StoreError> {
        self.write(move |c| Sql::enroll(c, &token_hash, agent.clone(), now()))
            .await
    }
}
