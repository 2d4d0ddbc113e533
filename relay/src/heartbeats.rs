//! The latest heartbeat of every agent, kept in memory and written to the database in batches.
//!
//! Heartbeats are the relay's hottest write path (every agent, every interval). Writing each in
//! its own SQLite transaction would cost one fsync per heartbeat, so the latest one per agent is
//! kept here, API reads see it at once, and a flusher writes the changed ones in one transaction
//! every few seconds and once more at shutdown.

use crate::store::{HeartbeatWrite, Store, StoreError};
use chrono::{DateTime, Utc};
use flotilla_shared::heartbeat::Heartbeat;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often changed heartbeats are written to the database.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(3);

struct Entry {
    heartbeat: Arc<Heartbeat>,
    received_at: DateTime<Utc>,
    dirty: bool,
}

#[derive(Default)]
pub struct HeartbeatCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl HeartbeatCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are replaced whole, so a poisoned lock still guards consistent data.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `heartbeat` as the agent's latest; returns the one it replaced (if any), so the
    /// caller can tell what changed without keeping anything more per agent.
    pub fn record(
        &self,
        agent_id: &str,
        heartbeat: Heartbeat,
        received_at: DateTime<Utc>,
    ) -> Option<Arc<Heartbeat>> {
        self.lock()
            .insert(
                agent_id.to_string(),
                Entry {
                    heartbeat: Arc::new(heartbeat),
                    received_at,
                    dirty: true,
                },
            )
            .map(|previous| previous.heartbeat)
    }

    /// Fills in heartbeats read from the database (at startup), without overwriting newer ones
    /// and without marking them for writing back.
    pub fn load(&self, stored: Vec<HeartbeatWrite>) {
        let mut map = self.lock();
        for w in stored {
            map.entry(w.agent_id).or_insert(Entry {
                heartbeat: w.heartbeat,
                received_at: w.received_at,
                dirty: false,
            });
        }
    }

    /// Takes heartbeats other relays received (read from the database) where they are newer
    /// than what this relay has; never marked for writing back.
    pub fn merge(&self, stored: Vec<HeartbeatWrite>) {
        let mut map = self.lock();
        for w in stored {
            match map.get(&w.agent_id) {
                Some(e) if e.received_at >= w.received_at => {}
                _ => {
                    map.insert(
                        w.agent_id,
                        Entry {
                            heartbeat: w.heartbeat,
                            received_at: w.received_at,
                            dirty: false,
                        },
                    );
                }
            }
        }
    }

    /// The newest heartbeat of the agent: received since this relay started, loaded from the
    /// database at startup, or received by another relay of the cluster (`merge`).
    pub fn latest(&self, agent_id: &str) -> Option<(Arc<Heartbeat>, DateTime<Utc>)> {
        self.lock()
            .get(agent_id)
            .map(|e| (e.heartbeat.clone(), e.received_at))
    }

    pub fn received_at(&self, agent_id: &str) -> Option<DateTime<Utc>> {
        self.lock().get(agent_id).map(|e| e.received_at)
    }

    /// Drops an agent's entry (it was revoked; an unflushed heartbeat of it is not worth keeping).
    pub fn forget(&self, agent_id: &str) {
        self.lock().remove(agent_id);
    }

    fn take_dirty(&self) -> Vec<HeartbeatWrite> {
        let mut map = self.lock();
        map.iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(agent_id, e)| {
                e.dirty = false;
                HeartbeatWrite {
                    agent_id: agent_id.clone(),
                    heartbeat: e.heartbeat.clone(),
                    received_at: e.received_at,
                }
            })
            .collect()
    }

    fn mark_dirty_again(&self, batch: &[HeartbeatWrite]) {
        let mut map = self.lock();
        for w in batch {
            if let Some(e) = map.get_mut(&w.agent_id) {
                if e.received_at == w.received_at {
                    e.dirty = true;
                }
            }
        }
    }

    /// Writes every changed heartbeat in one transaction; returns how many were written.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let batch = self.take_dirty();
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        match store.save_heartbeats(batch.clone()).await {
            Ok(()) => Ok(n),
            Err(e) => {
                self.mark_dirty_again(&batch);
                Err(e)
            }
        }
    }
}

/// Flushes every [`FLUSH_INTERVAL`] until shutdown, then once more.
pub async fn run_flusher(cache: Arc<HeartbeatCache>, store: Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match cache.flush(&store).await {
            Ok(_) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot write heartbeats; keeping them in memory and retrying");
                }
                failing = true;
            }
        }
    }
    if let Err(e) = cache.flush(&store).await {
        tracing::error!(error = %e, "cannot write the latest heartbeats at shutdown");
    }
}
