//! The store's facade for agent events: async methods of [`Store`], each one blocking call
//! in `sql/events.rs` off the async threads.

use super::*;

impl Store {
    /// Stores an agent event unless (agent, seq) is already stored; true when inserted.
    pub async fn insert_event(
        &self,
        agent_id: String,
        seq: u64,
        event: AgentEvent,
    ) -> Result<bool, StoreError> {
        self.write(move |c| Sql::insert_event(c, &agent_id, seq, &event, now()))
            .await
    }

    pub async fn events(
        &self,
        agent_id: String,
        query: EventQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(move |c| Sql::events(c, &agent_id, &query)).await
    }
}
