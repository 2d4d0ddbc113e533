//! The store's facade for container update history: async methods of [`Store`], each one blocking call
//! in `sql/updates.rs` off the async threads.

use super::*;

impl Store {
    /// Update history, newest first.
    pub async fn updates(&self, query: UpdateQuery) -> Result<Vec<UpdateRecord>, StoreError> {
        self.read(move |c| Sql::updates(c, &query)).await
    }

    /// Every unfinished update in the fleet, newest first (the alert suppression hook, see the
    /// module doc).
    pub async fn active_updates(&self) -> Result<Vec<UpdateRecord>, StoreError> {
        self.updates(UpdateQuery {
            active: Some(true),
            limit: MAX_ACTIVE_UPDATES,
            ..UpdateQuery::default()
        })
        .await
    }

    /// Whether an update is acting on this agent's container now (the container named by its
    /// name or id as the update asked for it, or by the name the agent reported): the
    /// unfinished update's command id. The alert suppression hook, see the module doc.
    pub async fn is_updating(
        &self,
        agent_id: String,
        container: String,
    ) -> Result<Option<String>, StoreError> {
        self.read(move |c| Sql::updating(c, &agent_id, &container))
            .await
    }
}
