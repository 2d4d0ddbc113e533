//! Database backups on the relay's side: storing the reports agents send through their outbox
//! (with the log line and counter that go with each). How long `backup.run` and
//! `backup.restore` commands live is the TTL policy's (`model::ttl`).
//!
//! The history itself lives in the store (`Store::record_backup_report`, `agent_backups`,
//! `fleet_backups`); the API serves it from `api/backups.rs`, the CLI from `cli/backup.rs`.
//! An agent's alert level is visible as state in `GET /api/v1/agents/{id}/backups` and
//! `GET /api/v1/backups?status=failed|stale`, and the alerts engine raises it.

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::stream::EventBus;
use flotilla_shared::backup::{BackupReport, BackupStatus};
use flotilla_shared::stream::EventKind;

/// Stores an agent's backup report, then logs one line, counts the databases it added and
/// publishes one `backup.reported` per database it added (a re-sent report adds none, so
/// neither the counter, the info log nor the stream repeats it).
pub async fn record_report(
    store: &Store,
    metrics: &Metrics,
    stream: &EventBus,
    agent_id: &str,
    seq: u64,
    report: BackupReport,
) -> Result<(), StoreError> {
    let run_id = report.run_id.clone();
    let job = report.job.clone().unwrap_or_default();
    let databases = report.databases.len();
    let failed = report.failed();
    let recorded = store
        .record_backup_report(agent_id.to_string(), report)
        .await?;
    metrics.backup_databases(BackupStatus::Success, recorded.succeeded as u64);
    metrics.backup_databases(BackupStatus::Failed, recorded.failed as u64);
    for (key, status) in &recorded.stored {
        let state = status.as_str();
        stream.publish(
            EventKind::BackupReported,
            Some(agent_id),
            Some(&run_id),
            format!("backup of {key} on agent {agent_id}: {state}"),
            Some(serde_json::json!({ "key": key, "state": state, "job": job })),
        );
    }
    if recorded.total() > 0 || databases == 0 {
        tracing::info!(agent_id = %agent_id, seq, run_id = %run_id, job = %job, databases, failed, "backup report");
    } else {
        tracing::debug!(agent_id = %agent_id, seq, run_id = %run_id, "duplicate backup report ignored");
    }
    Ok(())
}

// --- issue 17 part 4: a job the agent stopped expecting ---

/// An agent's `backup.forgotten` event (stored once, `inserted`): the job's database keys
/// (attribute `keys`, comma-separated) are forgotten here too, so its failed state no longer
/// alerts, and the audit log records who forgot what (`agent:<id>` as the actor, the reason
/// — `operator` or `forget_after` — in the detail).
pub async fn record_forgotten(
    store: &Store,
    agent_id: &str,
    event: &flotilla_shared::heartbeat::AgentEvent,
) -> Result<(), StoreError> {
    let job = event.attributes.get("job").cloned().unwrap_or_default();
    let keys: Vec<String> = event
        .attributes
        .get("keys")
        .map(|k| {
            k.split(',')
                .filter(|k| !k.is_empty() && k.starts_with(&format!("{job}/")))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut removed = 0;
    for key in &keys {
        removed += store
            .forget_backup_key(agent_id.to_string(), key.clone())
            .await?;
    }
    let reason = event
        .attributes
        .get("reason")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    store
        .audit(crate::store::AuditEntry {
            ts: crate::store::now(),
            actor: format!("agent:{agent_id}"),
            action: "backup.forgotten".into(),
            target: format!("{agent_id}/{job}"),
            outcome: "ok".into(),
            detail: Some(
                serde_json::json!({
                    "reason": reason,
                    "keys": keys,
                    "rows_removed": removed,
                    "message": event.message,
                })
                .to_string(),
            ),
        })
        .await?;
    tracing::info!(
        agent_id,
        job,
        reason,
        keys = keys.len(),
        "backup job forgotten by the agent"
    );
    Ok(())
}
