//! The retention sweep: every few hours, deletes events, audit rows, finished commands,
//! finished update-history rows, backup-history rows, resolved alerts and ended silences older than `retention_days`, so the
//! database does not grow for ever. Of the backup history, each database's latest row and its
//! newest success are kept whatever their age: they are its state and its last good backup.
//! The agents' metrics history has horizons of its own (`crate::model::metrics`) and is pruned
//! by every sweep, also when `retention_days` is 0 (keep the rest for ever).

use crate::store::{Pruned, Store, StoreError};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the sweep runs (the first run is shortly after start).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// Delay before the first sweep, so it does not compete with startup.
const FIRST_SWEEP_DELAY: Duration = Duration::from_secs(60);

/// The retention engine: what it deletes is older than `retention_days` at the time of a step.
#[derive(Clone)]
pub struct Retention {
    store: Store,
    retention_days: u32,
}

impl Retention {
    pub fn new(store: Store, retention_days: u32) -> Retention {
        Retention {
            store,
            retention_days,
        }
    }

    /// One sweep: deletes what is older than `retention_days` before `now` (only the metrics
    /// history past its horizons when `retention_days` is 0).
    pub async fn step(&self, now: DateTime<Utc>) -> Result<Pruned, StoreError> {
        match self.store.prune_metrics(now).await {
            Ok(n) => tracing::debug!(points = n, "metrics history pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the metrics history"),
        }
        let days = self.retention_days;
        if days == 0 {
            return Ok(Pruned::default());
        }
        let cutoff = now - chrono::Duration::days(i64::from(days));
        // Not cancel-safe mid-sweep, but every batch is its own transaction: stopping between
        // batches loses nothing, the next sweep continues.
        let pruned = self.store.prune(cutoff).await;
        match &pruned {
            Ok(p) => tracing::info!(
                events = p.events,
                audit = p.audit,
                commands = p.commands,
                updates = p.updates,
                backups = p.backups,
                retention_days = days,
                "retention sweep done"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed; retrying at the next one")
            }
        }
        match self.store.prune_alerts(cutoff).await {
            Ok(n) => tracing::debug!(alerts = n, "resolved alerts pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune resolved alerts"),
        }
        pruned
    }

    /// Runs the sweep every [`SWEEP_INTERVAL`] until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let start = tokio::time::Instant::now() + FIRST_SWEEP_DELAY;
        let mut tick = tokio::time::interval_at(start, SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Errors are logged by the step; the next sweep retries.
            let _ = self.step(crate::store::now()).await;
        }
    }
}
