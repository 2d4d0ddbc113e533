//! Statements for fleet-wide counts: the `impl Db` method behind `store/fleet.rs`.

use super::*;
use crate::store::fleet::FleetCounts;

impl Sql {
    pub(in crate::store) fn updating_agents(
        tx: &mut dyn Conn,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut stmt =
            tx.prepare_cached("SELECT DISTINCT agent_id FROM updates WHERE finished_at IS NULL")?;
        let ids = stmt
            .query_map(params![], |r| r.get(0))?
            .into_iter()
            .collect();
        Ok(ids)
    }

    pub(in crate::store) fn rolled_back_agents(
        tx: &mut dyn Conn,
        since: DateTime<Utc>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut stmt = tx.prepare_cached(
            "SELECT DISTINCT agent_id FROM updates WHERE finished_at >= ?1 AND outcome = ?2",
        )?;
        let ids = stmt
            .query_map(
                params![ts(since), UpdateOutcome::RolledBack.as_str()],
                |r| r.get(0),
            )?
            .into_iter()
            .collect();
        Ok(ids)
    }

    pub(in crate::store) fn fleet_counts(
        tx: &mut dyn Conn,
        rolled_back_since: DateTime<Utc>,
    ) -> Result<FleetCounts, StoreError> {
        // Both counts from indexes (the smallest one for all rows, the partial one of revoked
        // agents), not a scan of the wide agent rows.
        let (all, revoked): (u64, u64) = tx.query_row(
            "SELECT (SELECT COUNT(*) FROM agents), \
             (SELECT COUNT(*) FROM agents WHERE revoked_at IS NOT NULL)",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let enrolled = all - revoked;
        let (updating, updates_active): (u64, u64) = tx.query_row(
            "SELECT COUNT(DISTINCT agent_id), COUNT(*) FROM updates WHERE finished_at IS NULL",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let rolled_back: u64 = tx.query_row(
            "SELECT COUNT(DISTINCT agent_id) FROM updates \
             WHERE finished_at >= ?1 AND outcome = ?2",
            params![ts(rolled_back_since), UpdateOutcome::RolledBack.as_str()],
            |r| r.get(0),
        )?;
        let mut counts = FleetCounts {
            enrolled,
            revoked,
            updating,
            updates_active,
            rolled_back,
            ..FleetCounts::default()
        };
        let mut stmt = tx.prepare_cached(
            "SELECT severity, COUNT(*) FROM alerts WHERE state = 'firing' GROUP BY severity",
        )?;
        let rows = stmt.query_map(params![], |r| Ok((r.get::<String>(0)?, r.get::<u64>(1)?)))?;
        for (severity, n) in rows {
            match severity.as_str() {
                "hard" => counts.alerts_hard = n,
                "medium" => counts.alerts_medium = n,
                "soft" => counts.alerts_soft = n,
                other => return Err(StoreError::Corrupt(format!("bad alert severity {other:?}"))),
            }
        }
        Ok(counts)
    }
}
