//! The backup catalogue (`backups`: one row per database backup, its manifest as JSON) and the
//! reports of recent runs (`backup_runs`: backup-status.json and the heartbeat summary are
//! derived from them). Finishing a run records its report and queues it in the outbox in one
//! transaction.

use super::outbox::insert_outbox;
use super::{ts, State};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use flotilla_shared::backup::{BackupManifest, BackupReport};
use flotilla_shared::protocol::OutboxItem;
use rusqlite::{params, OptionalExtension};

/// Reports of runs kept per job (the newest one feeds backup-status.json).
const BACKUP_RUNS_KEPT_PER_JOB: i64 = 30;

// === impl State ===

impl State {
    /// Inserts or replaces a backup's catalogue row.
    pub async fn backup_put(&self, manifest: BackupManifest) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO backups (id, job, database, status, finished_at, manifest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                 finished_at = excluded.finished_at, manifest = excluded.manifest",
                params![
                    manifest.id,
                    manifest.job,
                    manifest.database,
                    manifest.status.as_str(),
                    ts(manifest.finished_at),
                    serde_json::to_string(&manifest)?
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn backup_get(&self, id: &str) -> Result<Option<BackupManifest>> {
        let id = id.to_string();
        self.call(move |c| {
            let text: Option<String> = c
                .query_row("SELECT manifest FROM backups WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            text.map(|t| serde_json::from_str(&t).context("corrupt backup manifest"))
                .transpose()
        })
        .await
    }

    /// Backups newest first, optionally of one job and/or database; the flag says whether more
    /// matched than `limit`.
    pub async fn backup_list(
        &self,
        job: Option<String>,
        database: Option<String>,
        limit: usize,
    ) -> Result<(Vec<BackupManifest>, bool)> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT manifest FROM backups
                 WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR database = ?2)
                 ORDER BY finished_at DESC, id DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![job, database, limit as i64 + 1], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let truncated = rows.len() > limit;
            let list = rows
                .into_iter()
                .take(limit)
                .map(|t| serde_json::from_str(&t).context("corrupt backup manifest"))
                .collect::<Result<Vec<BackupManifest>>>()?;
            Ok((list, truncated))
        })
        .await
    }

    /// Successful backups of one series (job + database), newest first: what retention
    /// chooses from.
    pub async fn backup_series(&self, job: &str, database: &str) -> Result<Vec<BackupManifest>> {
        let (job, database) = (job.to_string(), database.to_string());
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT manifest FROM backups WHERE job = ?1 AND database = ?2
                 AND status = 'success' ORDER BY finished_at DESC",
            )?;
            let rows = stmt
                .query_map(params![job, database], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            rows.into_iter()
                .map(|t| serde_json::from_str(&t).context("corrupt backup manifest"))
                .collect()
        })
        .await
    }

    /// Removes a pruned backup's catalogue row.
    pub async fn backup_delete(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM backups WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    /// Failed backups older than `before` (they have no file; the history is the relay's).
    pub async fn backup_prune_failed(&self, before: DateTime<Utc>) -> Result<usize> {
        self.call(move |c| {
            Ok(c.execute(
                "DELETE FROM backups WHERE status = 'failed' AND finished_at < ?1",
                [ts(before)],
            )?)
        })
        .await
    }

    /// Records a finished run and queues its report for the relay, in one transaction.
    pub async fn backup_finish_run(&self, report: BackupReport) -> Result<u64> {
        let notify = self.outbox_notify.clone();
        let seq = self
            .call(move |c| {
                let tx = c.transaction()?;
                let job = report.job.clone().unwrap_or_default();
                tx.execute(
                    "INSERT OR REPLACE INTO backup_runs (run_id, job, finished_at, report)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        report.run_id,
                        job,
                        ts(report.finished_at),
                        serde_json::to_string(&report)?
                    ],
                )?;
                tx.execute(
                    "DELETE FROM backup_runs WHERE job = ?1 AND run_id NOT IN
                     (SELECT run_id FROM backup_runs WHERE job = ?1
                      ORDER BY finished_at DESC LIMIT ?2)",
                    params![job, BACKUP_RUNS_KEPT_PER_JOB],
                )?;
                let seq = insert_outbox(&tx, &OutboxItem::BackupReport(report))?;
                tx.commit()?;
                Ok(seq)
            })
            .await?;
        notify.notify_one();
        Ok(seq)
    }

    /// The newest report of every job.
    pub async fn backup_latest_reports(&self) -> Result<Vec<BackupReport>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT report FROM backup_runs r WHERE finished_at =
                 (SELECT MAX(finished_at) FROM backup_runs WHERE job = r.job)
                 ORDER BY finished_at",
            )?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            rows.into_iter()
                .map(|t| serde_json::from_str(&t).context("corrupt backup report"))
                .collect()
        })
        .await
    }
}
