//! The closed set of alert rules: each rule's name (as the API, the store, `[alerts.rules.*]`
//! and notifications spell it) and its default severity. The settings (`config.rs`) and the
//! rules' sources (`rules.rs`) both name rules from here.

use flotilla_shared::alert::Severity;

/// Every rule the engine knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    AgentUnreachable,
    DiskFull,
    MemoryHigh,
    ContainerDied,
    ContainerOom,
    ContainerRestartLoop,
    ContainerUnhealthy,
    BackupFailed,
    BackupStale,
    BackupsAllFailed,
    UpdateRolledBack,
    RollbackFailed,
    RolloutPaused,
    RolloutAborted,
    AgentVersionSkew,
    TlsExpiry,
    AgentUpgradeReverted,
    // --- issue 17 part 6 ---
    ContainerMemoryHigh,
    ContainerAutohealed,
    // --- compose (issue 17, part 1) ---
    ComposeDrift,
    // issue 17 §2: certificates the agents read on their hosts.
    CertificateExpiry,
    // issue 15 item 8: the relay's own backups failed or are stale.
    RelayBackup,
    // issue 18 part 2: a notification channel gave a notification up.
    NotificationFailed,
}

/// All rules, in documentation order.
pub const RULES: [Rule; 23] = [
    Rule::AgentUnreachable,
    Rule::DiskFull,
    Rule::MemoryHigh,
    Rule::ContainerDied,
    Rule::ContainerOom,
    Rule::ContainerRestartLoop,
    Rule::ContainerUnhealthy,
    Rule::BackupFailed,
    Rule::BackupStale,
    Rule::BackupsAllFailed,
    Rule::UpdateRolledBack,
    Rule::RollbackFailed,
    Rule::RolloutPaused,
    Rule::RolloutAborted,
    Rule::AgentVersionSkew,
    Rule::TlsExpiry,
    Rule::AgentUpgradeReverted,
    // --- issue 17 part 6 ---
    Rule::ContainerMemoryHigh,
    Rule::ContainerAutohealed,
    // --- compose (issue 17, part 1) ---
    Rule::ComposeDrift,
    Rule::CertificateExpiry,
    Rule::RelayBackup,
    Rule::NotificationFailed,
];

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::AgentUnreachable => "agent_unreachable",
            Rule::DiskFull => "disk_full",
            Rule::MemoryHigh => "memory_high",
            Rule::ContainerDied => "container_died",
            Rule::ContainerOom => "container_oom",
            Rule::ContainerRestartLoop => "container_restart_loop",
            Rule::ContainerUnhealthy => "container_unhealthy",
            Rule::BackupFailed => "backup_failed",
            Rule::BackupStale => "backup_stale",
            Rule::BackupsAllFailed => "backups_all_failed",
            Rule::UpdateRolledBack => "update_rolled_back",
            Rule::RollbackFailed => "rollback_failed",
            Rule::RolloutPaused => "rollout_paused",
            Rule::RolloutAborted => "rollout_aborted",
            Rule::AgentVersionSkew => "agent_version_skew",
            Rule::TlsExpiry => "tls_expiry",
            Rule::AgentUpgradeReverted => "agent_upgrade_reverted",
            // --- issue 17 part 6 ---
            Rule::ContainerMemoryHigh => "container_memory_high",
            Rule::ContainerAutohealed => "container_autohealed",
            // --- compose (issue 17, part 1) ---
            Rule::ComposeDrift => "compose_drift",
            Rule::CertificateExpiry => "certificate_expiry",
            Rule::RelayBackup => "relay_backup",
            Rule::NotificationFailed => "notification_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        RULES.iter().copied().find(|r| r.as_str() == s)
    }

    /// The users' defaults. `certificate_expiry` is medium, and hard below
    /// `certificate_hard_days` or once expired (unless `[alerts.rules.certificate_expiry]`
    /// sets a severity).
    pub fn default_severity(self) -> Severity {
        match self {
            Rule::AgentUnreachable
            | Rule::BackupStale
            | Rule::BackupsAllFailed
            | Rule::RollbackFailed
            | Rule::RolloutPaused
            | Rule::RolloutAborted
            | Rule::RelayBackup
            | Rule::NotificationFailed => Severity::Hard,
            Rule::AgentVersionSkew | Rule::ComposeDrift => Severity::Soft,
            _ => Severity::Medium,
        }
    }
}
