//! Expected databases (issue 17 part 4): a discovered database job that was backed up once is
//! remembered (`state::backup_expected`), so a run in which its container is stopped,
//! restarting or gone reports it failed with the reason ("container shop-db is not running")
//! instead of leaving it out while backup-status.json keeps saying success. Such a run prunes
//! nothing (every run with a failure does not). The job stops being expected when an operator
//! forgets it (`backup.forget`) or after its container has been gone for `forget_after_secs`;
//! both drop its run reports and tell the relay with a `backup.forgotten` event, which the
//! relay audits.

use super::{err, internal, Backups, Job};
use crate::docker::DockerError;
use crate::state::ExpectedJob;
use chrono::{DateTime, Utc};
use flotilla_shared::backup::{BackupReport, BackupStatus};
use flotilla_shared::command::{error_codes, ErrorInfo};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::upkeep::BackupForgetOutput;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Why a job was forgotten (the event's `reason` attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForgetReason {
    /// `backup.forget` / `flotilla-agent backup forget`.
    Operator,
    /// Its container was gone for `forget_after_secs`.
    ForgetAfter,
}

impl ForgetReason {
    fn as_str(self) -> &'static str {
        match self {
            ForgetReason::Operator => "operator",
            ForgetReason::ForgetAfter => "forget_after",
        }
    }
}

/// What to do with one expected job no running container backs.
#[derive(Debug, PartialEq)]
enum Missing {
    /// Run it (it fails with the reason).
    Run,
    /// Forget it: gone for longer than `forget_after`.
    Forget,
}

/// The decision for an expected job whose container is not running: forgotten once it has not
/// existed for `forget_after`, else run (and failed).
fn decide(
    e: &ExpectedJob,
    exists: bool,
    forget_after: chrono::Duration,
    now: DateTime<Utc>,
) -> Missing {
    if !exists && now - e.last_seen_at >= forget_after {
        Missing::Forget
    } else {
        Missing::Run
    }
}

/// The sentence a run of an expected job reports when its container cannot be found.
pub(super) fn gone_message(container: &str) -> String {
    format!(
        "container {container} is gone (it was backed up before); if it was removed on \
         purpose, forget it: flotilla backup forget --agent <agent> {container}"
    )
}

// === impl Backups ===

impl Backups {
    /// Adds a job for every expected database whose container does not run now (and which no
    /// job covers), forgetting the ones gone for longer than `forget_after_secs`.
    pub(super) async fn add_expected(
        &self,
        jobs: &mut Vec<Job>,
        running: &[String],
    ) -> Result<(), DockerError> {
        let expected = match self.inner.state.backup_expected().await {
            Ok(e) => e,
            Err(e) => {
                warn!(error = format!("{e:#}"), "cannot read the expected backups");
                return Ok(());
            }
        };
        let missing: Vec<ExpectedJob> = expected
            .into_iter()
            .filter(|e| !running.contains(&e.container))
            .filter(|e| {
                !jobs
                    .iter()
                    .any(|j| j.name == e.job || j.container == e.container)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let existing = self.inner.docker.existing_names().await?;
        let forget_after = chrono::Duration::seconds(
            i64::try_from(self.inner.config.forget_after_secs).unwrap_or(i64::MAX / 1000),
        );
        let now = Utc::now();
        for e in missing {
            match decide(&e, existing.contains(&e.container), forget_after, now) {
                Missing::Forget => {
                    warn!(
                        job = e.job,
                        container = e.container,
                        last_seen_at = %e.last_seen_at,
                        "a backed-up database container has been gone for forget_after_secs; \
                         it is no longer expected"
                    );
                    if let Err(f) = self.forget(&e.job, ForgetReason::ForgetAfter).await {
                        warn!(job = e.job, error = f.message, "cannot forget a backup job");
                    }
                }
                Missing::Run => {
                    let mut job = self.job_from_config(&super::config::JobConfig {
                        name: e.job.clone(),
                        container: e.container.clone(),
                        engine: Some(e.engine),
                        databases: Vec::new(),
                        schedule: None,
                        compression_level: None,
                        retention: None,
                        destinations: None,
                        user: None,
                        password_file: None,
                        command: Vec::new(),
                        restore_command: Vec::new(),
                        ping_url: None,
                    });
                    job.discovered = true;
                    job.expected_missing = true;
                    jobs.push(job);
                }
            }
        }
        Ok(())
    }

    /// After a run: a discovered job with at least one database and no failure becomes (or
    /// stays) expected.
    pub(super) async fn note_run(&self, job: &Job, report: &BackupReport) {
        if !job.discovered {
            return;
        }
        let ok = !report.databases.is_empty()
            && report
                .databases
                .iter()
                .all(|d| d.status == BackupStatus::Success);
        let Some(engine) = report.databases.iter().find_map(|d| d.engine) else {
            return;
        };
        if !ok {
            return;
        }
        let container = report
            .databases
            .iter()
            .find_map(|d| d.container.clone())
            .unwrap_or_else(|| job.container.clone());
        if let Err(e) = self
            .inner
            .state
            .backup_expect(&job.name, &container, engine, report.finished_at)
            .await
        {
            warn!(
                job = job.name,
                error = format!("{e:#}"),
                "cannot record an expected backup"
            );
        }
    }

    /// Records that an expected job's container exists (so `forget_after` counts from its
    /// removal, not from its last backup).
    pub(super) async fn note_seen(&self, job: &Job) {
        if !job.discovered {
            return;
        }
        if let Err(e) = self.inner.state.backup_seen(&job.name, Utc::now()).await {
            warn!(
                job = job.name,
                error = format!("{e:#}"),
                "cannot record a seen container"
            );
        }
    }

    /// Stops expecting a job: its reports go, its backups stay; a `backup.forgotten` event
    /// tells the relay. `no_such_backup` when the agent knows no such job.
    pub async fn forget(
        &self,
        job: &str,
        reason: ForgetReason,
    ) -> Result<BackupForgetOutput, ErrorInfo> {
        let name = job.to_string();
        let forgotten = self
            .inner
            .state
            .backup_forget(job, move |f| {
                let mut attributes = BTreeMap::new();
                attributes.insert("job".to_string(), name.clone());
                attributes.insert("keys".to_string(), f.keys.join(","));
                attributes.insert("reason".to_string(), reason.as_str().to_string());
                if let Some(c) = &f.container {
                    attributes.insert("container".to_string(), c.clone());
                }
                AgentEvent {
                    kind: EventKind::BackupForgotten,
                    at: Utc::now(),
                    container_id: None,
                    container_name: f.container.clone(),
                    message: match reason {
                        ForgetReason::Operator => {
                            format!("backup job {name} forgotten by an operator")
                        }
                        ForgetReason::ForgetAfter => format!(
                            "backup job {name} forgotten: its container was gone for \
                             forget_after_secs"
                        ),
                    },
                    attributes,
                }
            })
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                err(
                    error_codes::NO_SUCH_BACKUP,
                    format!("no backup job {job:?} is expected or reported on this agent"),
                )
            })?;
        info!(
            job,
            reason = reason.as_str(),
            keys = forgotten.keys.join(","),
            "backup job forgotten; its backups stay in the catalogue"
        );
        self.write_status_file().await;
        self.refresh_summary().await;
        Ok(BackupForgetOutput {
            job: job.to_string(),
            container: forgotten.container,
            keys: forgotten.keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shared::backup::BackupEngine;

    #[test]
    fn only_a_container_gone_for_forget_after_is_forgotten() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let e = ExpectedJob {
            job: "shop-db".into(),
            container: "shop-db".into(),
            engine: BackupEngine::Postgres,
            last_success_at: now - chrono::Duration::days(10),
            last_seen_at: now - chrono::Duration::days(8),
        };
        let week = chrono::Duration::days(7);
        assert_eq!(decide(&e, false, week, now), Missing::Forget);
        // Stopped, not removed: it stays expected (and failed) however long it is stopped.
        assert_eq!(decide(&e, true, week, now), Missing::Run);
        let recent = ExpectedJob {
            last_seen_at: now - chrono::Duration::days(2),
            ..e
        };
        assert_eq!(decide(&recent, false, week, now), Missing::Run);
        assert!(gone_message("shop-db").contains("container shop-db is gone"));
    }
}
