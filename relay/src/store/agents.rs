//! The store's facade for agents, their labels, facts and latest heartbeats: async methods of [`Store`], each one blocking call
//! in `sql/agents.rs` off the async threads.

use super::*;

impl Store {
    pub async fn agent(&self, id: String) -> Result<Option<AgentRecord>, StoreError> {
        self.read(move |c| Sql::agent(c, &id)).await
    }

    /// Authentication data of one agent (light: no facts, no heartbeat).
    pub async fn agent_auth(&self, id: String) -> Result<Option<AgentAuth>, StoreError> {
        self.read(move |c| Sql::agent_auth(c, &id)).await
    }

    /// Ids and labels of every agent that is not revoked, in listing order.
    pub async fn agent_targets(&self) -> Result<Vec<(String, Labels)>, StoreError> {
        self.read(Sql::agent_targets).await
    }

    /// The last flushed heartbeat of every agent that is not revoked.
    pub async fn latest_heartbeats(&self) -> Result<Vec<HeartbeatWrite>, StoreError> {
        self.read(|c| Sql::latest_heartbeats(c, None)).await
    }

    /// Every agent, without its last heartbeat (`last_heartbeat` is `None`).
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(Sql::agents).await
    }

    /// At most `limit` agents in `order`, strictly after `after` (a position in that order),
    /// light (no facts, no heartbeat): what the paginated list filters on. `revoked` keeps only
    /// revoked (`Some(true)`) or only not revoked (`Some(false)`) agents.
    pub async fn agent_keys(
        &self,
        order: AgentOrder,
        after: Option<AgentPosition>,
        revoked: Option<bool>,
        limit: u32,
    ) -> Result<Vec<AgentKey>, StoreError> {
        self.read(move |c| Sql::agent_keys(c, order, after.as_ref(), revoked, limit))
            .await
    }

    /// The agents with these ids, in the order given (unknown ids are left out), without their
    /// last heartbeat.
    pub async fn agents_by_ids(&self, ids: Vec<String>) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(move |c| Sql::agents_by_ids(c, &ids)).await
    }

    /// Replaces an agent's labels; returns the updated agent (None when unknown).
    pub async fn set_agent_labels(
        &self,
        id: String,
        labels: Labels,
    ) -> Result<Option<AgentRecord>, StoreError> {
        self.write(move |c| Sql::set_agent_labels(c, &id, &labels))
            .await
    }

    pub async fn set_agent_version(&self, id: String, version: String) -> Result<(), StoreError> {
        self.write(move |c| Sql::set_agent_version(c, &id, &version))
            .await
    }

    /// Revokes an agent and ends its unfinished deliveries: undelivered if the agent had not
    /// accepted them, else failed with `agent_revoked`. Returns None when the agent is unknown,
    /// else the deliveries that were ended.
    pub async fn revoke_agent(&self, id: String) -> Result<Option<Vec<Finalised>>, StoreError> {
        self.write(move |c| Sql::revoke_agent(c, &id, now())).await
    }

    /// Writes a batch of latest heartbeats in one transaction.
    pub async fn save_heartbeats(&self, batch: Vec<HeartbeatWrite>) -> Result<(), StoreError> {
        self.write(move |c| Sql::save_heartbeats(c, &batch)).await
    }
}
