//! Database backups on the relay's side: storing the reports agents send through their outbox
//! (with the log line and counter that go with each), and how long `backup.run` and
//! `backup.restore` commands live.
//!
//! The history itself lives in the store (`Store::record_backup_report`, `agent_backups`,
//! `fleet_backups`); the API serves it from `api/backups.rs`, the CLI from `cli/backup.rs`.
//! Until an alerts engine exists, an agent's alert level is visible as state in
//! `GET /api/v1/agents/{id}/backups` and `GET /api/v1/backups?status=failed|stale`.

use crate::config::MAX_COMMAND_TTL_SECS;
use crate::state::Shared;
use crate::store::StoreError;
use flotilla_shared::backup::{BackupReport, BackupStatus};
use flotilla_shared::command::LONG_BACKUP_TTL;

/// The TTL of a long backup command when the request names none: the relay's default, or
/// [`LONG_BACKUP_TTL`] times `waves` when that is longer (a job whose max-concurrency makes its
/// targets run in `waves` rounds one after another), at most [`MAX_COMMAND_TTL_SECS`].
pub fn default_ttl_secs(default_ttl_secs: u64, waves: u64) -> u64 {
    let budget = LONG_BACKUP_TTL.as_secs().saturating_mul(waves.max(1));
    default_ttl_secs.max(budget).min(MAX_COMMAND_TTL_SECS)
}

/// Stores an agent's backup report, then logs one line and counts the databases it added
/// (a re-sent report adds none, so neither the counter nor the info log repeats it).
pub async fn record_report(
    state: &Shared,
    agent_id: &str,
    seq: u64,
    report: BackupReport,
) -> Result<(), StoreError> {
    let run_id = report.run_id.clone();
    let job = report.job.clone().unwrap_or_default();
    let databases = report.databases.len();
    let failed = report.failed();
    let recorded = state
        .store
        .record_backup_report(agent_id.to_string(), report)
        .await?;
    state
        .metrics
        .backup_databases(BackupStatus::Success, recorded.succeeded as u64);
    state
        .metrics
        .backup_databases(BackupStatus::Failed, recorded.failed as u64);
    if recorded.total() > 0 || databases == 0 {
        tracing::info!(agent_id = %agent_id, seq, run_id = %run_id, job = %job, databases, failed, "backup report");
    } else {
        tracing::debug!(agent_id = %agent_id, seq, run_id = %run_id, "duplicate backup report ignored");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shared::backup::{BackupListArgs, BackupRestoreArgs, BackupRunArgs};
    use flotilla_shared::command::{is_long, Command};

    #[test]
    fn run_and_restore_get_six_hours_unless_the_default_is_longer() {
        assert!(is_long(&Command::BackupRun(BackupRunArgs::default())));
        assert!(is_long(&Command::BackupRestore(BackupRestoreArgs {
            id: "bk_1".into(),
            into: None,
            database: None,
            force: false,
        })));
        assert!(!is_long(&Command::BackupList(BackupListArgs::default())));
        assert_eq!(default_ttl_secs(600, 1), 6 * 3600);
        assert_eq!(default_ttl_secs(12 * 3600, 1), 12 * 3600);
        // A job running its targets in three rounds; never beyond the 7-day maximum.
        assert_eq!(default_ttl_secs(600, 3), 18 * 3600);
        assert_eq!(default_ttl_secs(600, 1000), MAX_COMMAND_TTL_SECS);
    }
}
