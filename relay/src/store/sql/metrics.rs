//! Statements for the agents' metrics history: the `impl Sql` functions behind
//! `store/metrics.rs`, and the fold of a heartbeat batch into it (inside
//! [`Db::save_heartbeats`]' transaction).

use super::*;
use crate::model::metrics::{Resolution, RESOLUTIONS};
use flotilla_shared::api::MetricsPoint;

/// Migration 9: one row per (agent, resolution, bucket), each value the running mean of the
/// heartbeats folded into it. No foreign key: a revoked agent's history ages out like any
/// other.
pub(in crate::store) const SCHEMA: &str = r#"
CREATE TABLE agent_metrics (
    agent_id TEXT NOT NULL,
    resolution INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    cpu REAL NOT NULL,
    memory REAL NOT NULL,
    disk REAL NOT NULL,
    samples INTEGER NOT NULL,
    PRIMARY KEY (agent_id, resolution, bucket)
) WITHOUT ROWID;
CREATE INDEX agent_metrics_age ON agent_metrics(resolution, bucket);
"#;

/// Folds each heartbeat of the batch into its bucket of every resolution.
pub(super) fn fold_heartbeats(
    tx: &mut dyn Conn,
    batch: &[HeartbeatWrite],
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO agent_metrics (agent_id, resolution, bucket, cpu, memory, disk, samples) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1) \
         ON CONFLICT (agent_id, resolution, bucket) DO UPDATE SET \
         cpu = (agent_metrics.cpu * agent_metrics.samples + excluded.cpu) \
             / (agent_metrics.samples + 1), \
         memory = (agent_metrics.memory * agent_metrics.samples + excluded.memory) \
             / (agent_metrics.samples + 1), \
         disk = (agent_metrics.disk * agent_metrics.samples + excluded.disk) \
             / (agent_metrics.samples + 1), \
         samples = agent_metrics.samples + 1",
    )?;
    for hb in batch {
        let host = &hb.heartbeat.host;
        let (cpu, memory, disk) = (
            f64::from(host.cpu_percent),
            f64::from(host.memory_used_percent()),
            f64::from(host.disk_max_used_percent()),
        );
        for r in RESOLUTIONS {
            stmt.execute(params![
                hb.agent_id,
                r.seconds,
                r.bucket(hb.received_at),
                cpu,
                memory,
                disk
            ])?;
        }
    }
    Ok(())
}

impl Sql {
    pub(in crate::store) fn metrics_history(
        tx: &mut dyn Conn,
        agent_id: &str,
        resolution: Resolution,
        oldest_bucket: i64,
    ) -> Result<Vec<MetricsPoint>, StoreError> {
        let mut stmt = tx.prepare_cached(
            "SELECT bucket, cpu, memory, disk, samples FROM agent_metrics \
             WHERE agent_id = ?1 AND resolution = ?2 AND bucket >= ?3 ORDER BY bucket",
        )?;
        let rows = stmt.query_map(params![agent_id, resolution.seconds, oldest_bucket], |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<f64>(1)?,
                r.get::<f64>(2)?,
                r.get::<f64>(3)?,
                r.get::<u32>(4)?,
            ))
        })?;
        rows.into_iter()
            .map(|(bucket, cpu, memory, disk, samples)| {
                Ok(MetricsPoint {
                    at: DateTime::from_timestamp(bucket, 0).ok_or_else(|| {
                        StoreError::Corrupt(format!("bad metrics bucket {bucket}"))
                    })?,
                    cpu_percent: cpu as f32,
                    memory_used_percent: memory as f32,
                    disk_max_used_percent: disk as f32,
                    samples,
                })
            })
            .collect()
    }

    /// Deletes at most `batch` points of each resolution that are older than its horizon.
    pub(in crate::store) fn prune_metrics_batch(
        tx: &mut dyn Conn,
        now: DateTime<Utc>,
        batch: u32,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for r in RESOLUTIONS {
            n += tx.execute(
                "DELETE FROM agent_metrics WHERE (agent_id, resolution, bucket) IN \
                 (SELECT agent_id, resolution, bucket FROM agent_metrics \
                  WHERE resolution = ?1 AND bucket < ?2 LIMIT ?3)",
                params![r.seconds, r.oldest_kept(now), batch],
            )?;
        }
        Ok(n)
    }
}
