//! `relay_backup` (hard): the relay's own backups failed, or none succeeded for 48 h while
//! `[backup]` is enabled. One alert without an agent; its subject is `failed` or `stale`.

use super::{AlertsConfig, Condition, Rule};
use crate::model::relaybackup::{problem, RelayBackupHealth};
use chrono::{DateTime, Utc};

/// The condition, if any, from the recorded runs (`enabled_since`: when this relay started).
pub fn relay_backup_conditions(
    cfg: &AlertsConfig,
    health: &RelayBackupHealth,
    enabled_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    problem(health, enabled_since, now)
        .map(|p| Condition::new(cfg, None, Rule::RelayBackup, p.subject, p.message, p.since))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::relaybackup::{RelayBackupRun, RunStatus, SQLITE};
    use chrono::{Duration, TimeZone};
    use flotilla_shared::alert::Severity;

    #[test]
    fn a_failed_relay_backup_is_one_hard_alert_and_a_fresh_success_none() {
        let cfg = AlertsConfig::default();
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let run = |status| RelayBackupRun {
            name: "relay-20261207T110000Z".into(),
            relay_id: "r1".into(),
            backend: SQLITE.into(),
            started_at: now - Duration::hours(1),
            finished_at: Some(now - Duration::hours(1)),
            status,
            error: Some("pg_dump not found".into()),
            size: None,
            locations: Vec::new(),
        };
        let failed = RelayBackupHealth {
            latest_finished: Some(run(RunStatus::Failed)),
            last_success_at: None,
        };
        let c = relay_backup_conditions(&cfg, &failed, now - Duration::hours(2), now);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].rule, Rule::RelayBackup);
        assert_eq!(c[0].severity, Severity::Hard);
        assert_eq!(c[0].subject, "failed");
        assert!(c[0].agent_id.is_none());
        assert!(
            c[0].message.contains("pg_dump not found"),
            "{}",
            c[0].message
        );

        let ok = RelayBackupHealth {
            latest_finished: Some(run(RunStatus::Ok)),
            last_success_at: Some(now - Duration::hours(1)),
        };
        assert!(relay_backup_conditions(&cfg, &ok, now - Duration::days(9), now).is_empty());

        let stale = RelayBackupHealth {
            latest_finished: Some(run(RunStatus::Ok)),
            last_success_at: Some(now - Duration::hours(49)),
        };
        let c = relay_backup_conditions(&cfg, &stale, now - Duration::days(9), now);
        assert_eq!(c[0].subject, "stale");
        assert_eq!(c[0].severity, Severity::Hard);
    }
}
