//! The store's facade for agent events: async methods of [`Store`], each one blocking call
//! on the SQLite backend (`sqlite/events.rs`) off the async threads.

use super::*;

impl Store {
    /// Stores an agent event unless (agent, seq) is already stored; true when inserted.
    pub async fn insert_event(
        &self,
        agent_id: String,
        seq: u64,
        event: AgentEvent,
    ) -> Result<bool, StoreError> {
        self.call(move |db| db.insert_event(&agent_id, seq, &event, now()))
            .await
    }

    pub async fn events(
        &self,
        agent_id: String,
        query: EventQuery,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(move |c| sqlite::Db::events(c, &agent_id, &query))
            .await
    }
}
