//! The store's facade for fleet-wide counts (the overview): one read of exact counts, cheap
//! at any fleet size (index lookups and `COUNT`s, no rows loaded into the relay).

use super::*;

/// Counts the store knows (who is online is the hub's business).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Not revoked.
    pub enrolled: u64,
    pub revoked: u64,
    /// Distinct agents with an unfinished update.
    pub updating: u64,
    pub updates_active: u64,
    /// Distinct agents with an update rolled back since the cutoff.
    pub rolled_back: u64,
    /// Firing alerts: hard, medium, soft.
    pub alerts_hard: u64,
    pub alerts_medium: u64,
    pub alerts_soft: u64,
}

impl Store {
    /// Agents with an update in progress (bounded by the active updates).
    pub async fn updating_agents(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.read(Sql::updating_agents).await
    }

    /// Agents with an update that rolled back since `since`.
    pub async fn rolled_back_agents(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.read(move |c| Sql::rolled_back_agents(c, since)).await
    }

    /// The counts of the fleet overview; `rolled_back_since` is the start of the window of
    /// [`FleetCounts::rolled_back`].
    pub async fn fleet_counts(
        &self,
        rolled_back_since: DateTime<Utc>,
    ) -> Result<FleetCounts, StoreError> {
        self.read(move |c| Sql::fleet_counts(c, rolled_back_since))
            .await
    }
}
