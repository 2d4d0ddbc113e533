//! Statements for backup reports and history: the `impl Sql` functions behind `store/backups.rs`.

use super::*;

impl Sql {
    /// Stores one row per database of the report; a database already stored for this (agent,
    /// run) is left as it is. Returns what was new.
    pub(in crate::store) fn record_backup_report(
        tx: &mut dyn Conn,
        agent_id: &str,
        report: &BackupReport,
        now: DateTime<Utc>,
    ) -> Result<RecordedBackups, StoreError> {
        let source = match report.source {
            ReportSource::Agent => "agent",
            ReportSource::StatusFile { .. } => "status_file",
        };
        let mut recorded = RecordedBackups::default();
        {
            let mut stmt = tx.prepare(
                "INSERT OR IGNORE INTO backup_results (agent_id, run_id, source, job, key, \
                 container, database, engine, status, error, backup_id, size_bytes, started_at, \
                 finished_at, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            // An agent's clock may run ahead: a report "from the future" would stay the latest
            // (and ok) until that time whatever came after it, so times are capped at now.
            let finished_at = report.finished_at.min(now);
            let started_at = report.started_at.min(finished_at);
            for d in &report.stored_outcomes() {
                let n = stmt.execute(params![
                    agent_id,
                    report.run_id,
                    source,
                    report.job,
                    d.key,
                    d.container,
                    d.database,
                    d.engine.map(|e| e.as_str()),
                    d.status.as_str(),
                    d.error,
                    d.backup_id,
                    d.size_bytes.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                    ts(started_at),
                    ts(finished_at),
                    ts(now)
                ])?;
                if n > 0 {
                    match d.status {
                        BackupStatus::Success => recorded.succeeded += 1,
                        BackupStatus::Failed => recorded.failed += 1,
                    }
                    recorded.stored.push((d.key.clone(), d.status));
                }
            }
        }
        Ok(recorded)
    }

    pub(in crate::store) fn forget_backup_key(
        tx: &mut dyn Conn,
        agent_id: &str,
        key: &str,
    ) -> Result<u64, StoreError> {
        Ok(tx.execute(
            "DELETE FROM backup_results WHERE agent_id = ?1 AND key = ?2",
            params![agent_id, key],
        )? as u64)
    }

    /// One agent's backup rows, newest first, optionally of one database key.
    pub(in crate::store) fn backup_history(
        tx: &mut dyn Conn,
        agent_id: &str,
        key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BackupRecord>, StoreError> {
        let mut stmt = tx.prepare(&format!(
            "SELECT {BACKUP_COLUMNS} FROM backup_results b \
             WHERE b.agent_id = ?1 AND (?2 IS NULL OR b.key = ?2) \
             ORDER BY b.finished_at DESC, b.id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![agent_id, key, limit], BackupRow::read)?;
        rows.into_iter().map(BackupRow::into_record).collect()
    }

    /// The latest row of every database (agent, key) with the agent's name and the database's
    /// newest success, ordered by agent name, agent id and key. With `agent_id` one agent's
    /// (revoked or not); without, every agent's that is not revoked.
    pub(in crate::store) fn latest_backups(
        tx: &mut dyn Conn,
        agent_id: Option<&str>,
    ) -> Result<Vec<LatestBackup>, StoreError> {
        // Walks the distinct (agent, key) pairs of the index and looks up each one's latest
        // row and newest success through the indexes, rather than ranking the whole history.
        // The agent condition is left out rather than made optional in SQL, so that one
        // agent's view seeks its part of the index instead of scanning all of it.
        let (pairs, agents) = match agent_id {
            Some(_) => ("WHERE agent_id = ?1", ""),
            None => ("", "WHERE a.revoked_at IS NULL"),
        };
        let mut stmt = tx.prepare(&format!(
            "WITH k AS (SELECT DISTINCT agent_id, key FROM backup_results {pairs}) \
             SELECT {BACKUP_COLUMNS}, a.name, \
                 (SELECT MAX(s.finished_at) FROM backup_results s \
                  WHERE s.agent_id = k.agent_id AND s.key = k.key AND s.status = 'success'), \
                 (SELECT MIN(f.finished_at) FROM backup_results f \
                  WHERE f.agent_id = k.agent_id AND f.key = k.key) \
             FROM k JOIN agents a ON a.id = k.agent_id \
             JOIN backup_results b ON b.id = (SELECT l.id FROM backup_results l \
                 WHERE l.agent_id = k.agent_id AND l.key = k.key \
                 ORDER BY l.finished_at DESC, l.id DESC LIMIT 1) \
             {agents} ORDER BY a.name, k.agent_id, k.key"
        ))?;
        let args = match agent_id {
            Some(id) => vec![id],
            None => Vec::new(),
        };
        let rows = stmt.query_map(params_from_iter(args), |r| {
            Ok((
                BackupRow::read(r)?,
                r.get::<String>(14)?,
                r.get::<Option<String>>(15)?,
                r.get::<Option<String>>(16)?,
            ))
        })?;
        rows.into_iter()
            .map(|(row, agent_name, last_success_at, first_seen_at)| {
                let latest = row.into_record()?;
                Ok(LatestBackup {
                    agent_name,
                    first_seen_at: parse_opt_ts(first_seen_at)?.unwrap_or(latest.finished_at),
                    latest,
                    last_success_at: parse_opt_ts(last_success_at)?,
                })
            })
            .collect()
    }
}
