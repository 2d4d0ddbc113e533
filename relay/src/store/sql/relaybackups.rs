//! Statements for the relay's own backup runs: the `impl Sql` functions behind
//! `store/relaybackups.rs`.

use super::*;
use crate::model::relaybackup::{RelayBackupHealth, RelayBackupRun, RunStatus};

/// Migration 15: one row per run of the relay's backup (`relay/src/selfbackup.rs`).
pub const SCHEMA: &str = r#"
CREATE TABLE relay_backups (
    name TEXT PRIMARY KEY,
    relay_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    error TEXT,
    size_bytes INTEGER,
    locations TEXT NOT NULL
);
CREATE INDEX relay_backups_started_at ON relay_backups(started_at);
"#;

const COLUMNS: &str =
    "name, relay_id, backend, started_at, finished_at, status, error, size_bytes, locations";

impl Sql {
    pub(in crate::store) fn start_relay_backup(
        tx: &mut dyn Conn,
        run: &RelayBackupRun,
    ) -> Result<bool, StoreError> {
        let n = tx.execute(
            "INSERT OR IGNORE INTO relay_backups (name, relay_id, backend, started_at, status, \
             locations) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run.name,
                run.relay_id,
                run.backend,
                ts(run.started_at),
                run.status.as_str(),
                to_json(&run.locations)
            ],
        )?;
        Ok(n == 1)
    }

    pub(in crate::store) fn finish_relay_backup(
        tx: &mut dyn Conn,
        run: &RelayBackupRun,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE relay_backups SET finished_at = ?2, status = ?3, error = ?4, size_bytes = ?5, \
             locations = ?6 WHERE name = ?1",
            params![
                run.name,
                run.finished_at.map(ts),
                run.status.as_str(),
                run.error,
                run.size.map(|s| s as i64),
                to_json(&run.locations)
            ],
        )?;
        Ok(())
    }

    pub(in crate::store) fn relay_backups(
        tx: &mut dyn Conn,
        limit: u32,
    ) -> Result<Vec<RelayBackupRun>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM relay_backups ORDER BY started_at DESC, name DESC LIMIT ?1"
        );
        read_runs(tx, &sql, params![limit as i64])
    }

    pub(in crate::store) fn relay_backup_health(
        tx: &mut dyn Conn,
    ) -> Result<RelayBackupHealth, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM relay_backups WHERE status <> 'running' \
             ORDER BY finished_at DESC, name DESC LIMIT 1"
        );
        let latest_finished = read_runs(tx, &sql, params![])?.into_iter().next();
        let sql = format!(
            "SELECT {COLUMNS} FROM relay_backups WHERE status = 'ok' \
             ORDER BY finished_at DESC, name DESC LIMIT 1"
        );
        let last_success_at = read_runs(tx, &sql, params![])?
            .into_iter()
            .next()
            .and_then(|r| r.finished_at);
        Ok(RelayBackupHealth {
            latest_finished,
            last_success_at,
        })
    }
}

fn read_runs(
    tx: &mut dyn Conn,
    sql: &str,
    params: impl conn::Params,
) -> Result<Vec<RelayBackupRun>, StoreError> {
    let mut stmt = tx.prepare(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<String>(0)?,
            r.get::<String>(1)?,
            r.get::<String>(2)?,
            r.get::<String>(3)?,
            r.get::<Option<String>>(4)?,
            r.get::<String>(5)?,
            r.get::<Option<String>>(6)?,
            r.get::<Option<i64>>(7)?,
            r.get::<String>(8)?,
        ))
    })?;
    rows.into_iter()
        .map(
            |(name, relay_id, backend, started, finished, status, error, size, locations)| {
                Ok(RelayBackupRun {
                    status: RunStatus::parse(&status).ok_or_else(|| {
                        StoreError::Corrupt(format!("relay backup {name}: status {status:?}"))
                    })?,
                    started_at: parse_ts(&started)?,
                    finished_at: finished.as_deref().map(parse_ts).transpose()?,
                    locations: serde_json::from_str(&locations).map_err(|e| {
                        StoreError::Corrupt(format!("relay backup {name}: locations: {e}"))
                    })?,
                    size: size.map(|s| s as u64),
                    name,
                    relay_id,
                    backend,
                    error,
                })
            },
        )
        .collect()
}
