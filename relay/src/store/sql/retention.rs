//! Statements for the retention sweep: batched deletes of what is older than the
//! cutoff (`Store::prune`).

use super::*;

impl Sql {
    /// Deletes at most `batch` rows of each kind older than `cutoff`: events, audit rows,
    /// finished updates, backup rows (but never a database's latest row or newest success), and
    /// commands that expired before it with every delivery final (with their deliveries and
    /// finished job). Called repeatedly until less than a batch goes, so the writer is never
    /// held for long.
    pub(in crate::store) fn prune_batch(
        tx: &mut dyn Conn,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<Pruned, StoreError> {
        let cutoff = ts(cutoff);
        let events = tx.execute(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE received_at < ?1 LIMIT ?2)",
            params![cutoff, batch],
        )?;
        let audit = tx.execute(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE ts < ?1 LIMIT ?2)",
            params![cutoff, batch],
        )?;
        // Finished updates only: an unfinished one is still somebody's business.
        let updates = tx.execute(
            "DELETE FROM updates WHERE rowid IN \
             (SELECT rowid FROM updates WHERE finished_at < ?1 LIMIT ?2)",
            params![cutoff, batch],
        )?;
        // A database's latest row and its newest success stay whatever their age: they are
        // its state ("failed", "stale since ...") and when it last had a good backup.
        let backups = tx.execute(
            "DELETE FROM backup_results WHERE id IN \
             (SELECT b.id FROM backup_results b WHERE b.finished_at < ?1 \
              AND b.id <> (SELECT l.id FROM backup_results l \
                  WHERE l.agent_id = b.agent_id AND l.key = b.key \
                  ORDER BY l.finished_at DESC, l.id DESC LIMIT 1) \
              AND b.id IS DISTINCT FROM (SELECT s.id FROM backup_results s \
                  WHERE s.agent_id = b.agent_id AND s.key = b.key AND s.status = 'success' \
                  ORDER BY s.finished_at DESC, s.id DESC LIMIT 1) \
              LIMIT ?2)",
            params![cutoff, batch],
        )?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT c.id FROM commands c WHERE c.expires_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d \
                     WHERE d.command_id = c.id AND d.state IN {UNFINISHED}) \
                 AND NOT EXISTS (SELECT 1 FROM jobs j \
                     WHERE j.id = c.job_id AND j.state = 'running') \
                 LIMIT ?2"
            ))?;

            stmt.query_map(params![cutoff, batch], |r| r.get(0))?
        };
        let commands = ids.len();
        if !ids.is_empty() {
            let ids = to_json(&ids);
            tx.execute(
                "DELETE FROM deliveries WHERE command_id IN (SELECT value FROM json_each(?1))",
                [&ids],
            )?;
            tx.execute(
                "DELETE FROM commands WHERE id IN (SELECT value FROM json_each(?1))",
                [&ids],
            )?;
            tx.execute(
                "DELETE FROM jobs WHERE state <> 'running' \
                 AND command_id IN (SELECT value FROM json_each(?1))",
                [&ids],
            )?;
        }
        Ok(Pruned {
            events,
            audit,
            commands,
            updates,
            backups,
        })
    }
}
