//! The backup service's long-running tasks: the scheduler, which runs every job at its next
//! slot (with this agent's jitter) and re-discovers database containers, and the watcher of an
//! external `backup-status.json`, whose changes are reported like the agent's own runs.

use super::schedule::{self};
use super::status;
use super::{Backups, Job};
use anyhow::Result;
use chrono::{DateTime, Local, Utc};
use flotilla_shared::backup::RunTrigger;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the scheduler looks for new or vanished database containers.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

// === impl Backups ===

impl Backups {
    /// Runs jobs on their schedules until shutdown. Jobs run one after another (one dump at a
    /// time keeps the host responsive). A run missed while the agent was stopped is not made
    /// up; the 48-hour staleness alert covers a host that misses its runs.
    pub async fn scheduler(self, shutdown: CancellationToken) -> Result<()> {
        if !self.inner.config.enabled {
            info!("scheduled backups are disabled (backup.enabled = false)");
            shutdown.cancelled().await;
            return Ok(());
        }
        let mut next: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut logged_error = false;
        loop {
            let (jobs, complete) = match self.jobs().await {
                Ok(j) => {
                    logged_error = false;
                    (j, true)
                }
                Err(e) => {
                    if !std::mem::replace(&mut logged_error, true) {
                        warn!(error = %e, "cannot list containers for backup discovery; retrying");
                    }
                    // Configured jobs still run (they fail on their own if Docker stays down),
                    // and discovered jobs keep their slots for when discovery works again.
                    let configured = self.inner.config.jobs.iter();
                    (configured.map(|j| self.job_from_config(j)).collect(), false)
                }
            };
            let now = Utc::now();
            if complete {
                next.retain(|name, _| jobs.iter().any(|j| &j.name == name));
            }
            for job in &jobs {
                next.entry(job.name.clone())
                    .or_insert_with(|| self.next_slot(job, now));
            }
            let due: Vec<&Job> = jobs
                .iter()
                .filter(|j| next.get(&j.name).is_some_and(|t| *t <= now))
                .collect();
            for job in due {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.record_interrupted(job).await;
                        return Ok(());
                    }
                    _ = self.run_job(job, RunTrigger::Schedule) => {}
                }
                next.insert(job.name.clone(), self.next_slot(job, Utc::now()));
            }
            let soonest = next.values().min().copied();
            *self
                .inner
                .next_run_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = soonest;
            self.refresh_summary().await;
            let wait = soonest
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(DISCOVERY_INTERVAL)
                .min(DISCOVERY_INTERVAL);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn next_slot(&self, job: &Job, now: DateTime<Utc>) -> DateTime<Utc> {
        let jitter = schedule::agent_jitter(
            &self.inner.agent_id,
            &job.name,
            self.inner.config.jitter_secs,
        );
        job.schedule
            .next_after(now.with_timezone(&Local), jitter)
            .unwrap_or(now + chrono::Duration::days(1))
    }

    /// Follows an external `backup-status.json`: every change is reported to the relay like
    /// the agent's own runs, and a file older than 48 hours (or unreadable) marks the
    /// heartbeat's summary stale.
    pub async fn watcher(self, shutdown: CancellationToken) -> Result<()> {
        let Some(path) = self.inner.config.watch_status_file.clone() else {
            shutdown.cancelled().await;
            return Ok(());
        };
        let interval = Duration::from_secs(self.inner.config.watch_interval_secs);
        let mut last_sent: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || status::read(&p)).await;
            let now = Utc::now();
            let stale = match read {
                Ok(Ok(file)) => {
                    last_error = None;
                    let report = status::to_report(&file, &path.display().to_string(), now);
                    if last_sent.as_deref() != Some(report.run_id.as_str()) {
                        match self.inner.state.backup_finish_run(report.clone()).await {
                            Ok(_) => {
                                info!(
                                    path = %path.display(),
                                    last_run = %file.last_run,
                                    failed = report.failed(),
                                    "reported the watched backup status file"
                                );
                                last_sent = Some(report.run_id);
                            }
                            Err(e) => warn!(
                                error = format!("{e:#}"),
                                "cannot queue the status file report"
                            ),
                        }
                    }
                    status::is_stale(&file, now)
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        warn!(error = msg, "cannot read the watched backup status file");
                        last_error = Some(msg);
                    }
                    true
                }
                Err(e) => {
                    warn!(error = %e, "status file task failed");
                    true
                }
            };
            let changed = {
                let mut s = self
                    .inner
                    .status_file_stale
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::replace(&mut *s, stale) != stale
            };
            if changed || last_sent.is_some() {
                self.refresh_summary().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
