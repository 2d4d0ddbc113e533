//! The store's facade for the agents' metrics history (downsampled CPU, memory and disk; see
//! `crate::model::metrics`): written with the heartbeat batches ([`Store::save_heartbeats`]),
//! read per agent, pruned by the retention sweep whatever `retention_days` says.

use super::*;
use crate::model::metrics::Resolution;
use flotilla_shared::api::MetricsPoint;

impl Store {
    /// The agent's points of one resolution within its horizon at `now`, oldest first.
    pub async fn metrics_history(
        &self,
        agent_id: String,
        resolution: Resolution,
        now: DateTime<Utc>,
    ) -> Result<Vec<MetricsPoint>, StoreError> {
        self.read(move |c| {
            Sql::metrics_history(c, &agent_id, resolution, resolution.oldest_kept(now))
        })
        .await
    }

    /// Deletes the points older than their resolution's horizon at `now` (in batches); returns
    /// how many went.
    pub async fn prune_metrics(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .write(move |c| Sql::prune_metrics_batch(c, now, PRUNE_BATCH))
                .await?;
            total += n;
            if n < PRUNE_BATCH as usize {
                return Ok(total);
            }
        }
    }
}
