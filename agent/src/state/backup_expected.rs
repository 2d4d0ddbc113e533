//! The databases a backup run is expected to cover (`backup_expected`): every discovered job
//! that was backed up once, so that a run in which its container is stopped, restarting or
//! gone reports it failed rather than leaving it out. A job stops being expected when an
//! operator forgets it (`backup.forget`) or its container has been gone for `forget_after`;
//! forgetting drops the job's run reports and queues a `backup.forgotten` event in the same
//! transaction.

use super::outbox::insert_outbox;
use super::{parse_ts, ts, State};
use anyhow::Result;
use chrono::{DateTime, Utc};
use flotilla_shared::backup::BackupEngine;
use flotilla_shared::heartbeat::AgentEvent;
use flotilla_shared::protocol::OutboxItem;
use rusqlite::{params, OptionalExtension};

/// One expected job.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedJob {
    pub job: String,
    pub container: String,
    pub engine: BackupEngine,
    pub last_success_at: DateTime<Utc>,
    /// When its container was last seen to exist (at a run).
    pub last_seen_at: DateTime<Utc>,
}

/// What forgetting a job removed.
#[derive(Clone, Debug, PartialEq)]
pub struct Forgotten {
    pub container: Option<String>,
    /// The database keys of the job's newest report.
    pub keys: Vec<String>,
}

// === impl State ===

impl State {
    /// Marks a discovered job expected after a successful backup (its container seen now).
    pub async fn backup_expect(
        &self,
        job: &str,
        container: &str,
        engine: BackupEngine,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let (job, container) = (job.to_string(), container.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO backup_expected (job, container, engine, last_success_at, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (job) DO UPDATE SET container = excluded.container,
                 engine = excluded.engine, last_success_at = excluded.last_success_at,
                 last_seen_at = excluded.last_seen_at",
                params![job, container, engine.as_str(), ts(at)],
            )?;
            Ok(())
        })
        .await
    }

    /// Records that an expected job's container exists at `at`.
    pub async fn backup_seen(&self, job: &str, at: DateTime<Utc>) -> Result<()> {
        let job = job.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE backup_expected SET last_seen_at = ?2 WHERE job = ?1",
                params![job, ts(at)],
            )?;
            Ok(())
        })
        .await
    }

    /// Every expected job (rows with an engine this build does not know are skipped).
    pub async fn backup_expected(&self) -> Result<Vec<ExpectedJob>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT job, container, engine, last_success_at, last_seen_at
                 FROM backup_expected ORDER BY job",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(job, container, engine, success, seen)| {
                    let engine = BackupEngine::ALL
                        .into_iter()
                        .find(|e| e.as_str() == engine)?;
                    Some(ExpectedJob {
                        job,
                        container,
                        engine,
                        last_success_at: parse_ts(&success),
                        last_seen_at: parse_ts(&seen),
                    })
                })
                .collect())
        })
        .await
    }

    /// Forgets a job: its expected row and its run reports go, and `event` (built from what
    /// was removed) is queued, in one transaction. None when the job was neither expected nor
    /// reported.
    pub async fn backup_forget(
        &self,
        job: &str,
        event: impl FnOnce(&Forgotten) -> AgentEvent + Send + 'static,
    ) -> Result<Option<Forgotten>> {
        let job = job.to_string();
        let notify = self.outbox_notify.clone();
        let out = self
            .call(move |c| {
                let tx = c.transaction()?;
                let container: Option<String> = tx
                    .query_row(
                        "SELECT container FROM backup_expected WHERE job = ?1",
                        [&job],
                        |r| r.get(0),
                    )
                    .optional()?;
                let report: Option<String> = tx
                    .query_row(
                        "SELECT report FROM backup_runs WHERE job = ?1
                         ORDER BY finished_at DESC LIMIT 1",
                        [&job],
                        |r| r.get(0),
                    )
                    .optional()?;
                if container.is_none() && report.is_none() {
                    return Ok(None);
                }
                let keys: Vec<String> = report
                    .and_then(|r| {
                        serde_json::from_str::<flotilla_shared::backup::BackupReport>(&r).ok()
                    })
                    .map(|r| r.databases.into_iter().map(|d| d.key).collect())
                    .unwrap_or_default();
                tx.execute("DELETE FROM backup_expected WHERE job = ?1", [&job])?;
                tx.execute("DELETE FROM backup_runs WHERE job = ?1", [&job])?;
                let forgotten = Forgotten { container, keys };
                insert_outbox(&tx, &OutboxItem::Event(event(&forgotten)))?;
                tx.commit()?;
                Ok(Some(forgotten))
            })
            .await?;
        if out.is_some() {
            notify.notify_one();
        }
        Ok(out)
    }
}
