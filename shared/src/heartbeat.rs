//! What an agent reports every heartbeat interval, and the events it raises in between.

use crate::command::ContainerInfo;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    pub at: DateTime<Utc>,
    pub agent_version: String,
    pub host: HostMetrics,
    pub docker: DockerSnapshot,
    /// Backup jobs and the state of their latest runs (None when the agent has no backups
    /// configured, discovered or watched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::BackupSummary>,
    // --- compose (issue 17, part 1) ---
    /// Compose containers whose running image differs from what their project's files
    /// declare (or whose files cannot be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compose_drift: Vec<crate::compose::ComposeDrift>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostMetrics {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub uptime_secs: u64,
    pub cpu_count: u32,
    /// Whole-machine CPU use since the previous heartbeat, 0-100.
    pub cpu_percent: f32,
    pub load_1: f64,
    pub load_5: f64,
    pub load_15: f64,
    pub memory_total_bytes: u64,
    /// Used = total - available (what `free` calls used plus unreclaimable cache).
    pub memory_used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub filesystems: Vec<FilesystemUsage>,

    // --- issue 17 §2: certificates seen from the tenant ---
    /// Certificates the agent read on its host (certificate files and local TLS endpoints,
    /// re-read at most every `[certificates] interval_secs`); empty when none are configured
    /// or found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<HostCertificate>,
}

impl HostMetrics {
    pub fn memory_used_percent(&self) -> f32 {
        percent(self.memory_used_bytes, self.memory_total_bytes)
    }

    /// The fullest filesystem's use, 0-100 (0 when none is reported).
    pub fn disk_max_used_percent(&self) -> f32 {
        self.filesystems
            .iter()
            .map(|f| f.used_percent)
            .fold(0.0, f32::max)
    }
}

fn percent(used: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (used as f64 * 100.0 / total as f64) as f32
    }
}

// --- issue 17 §2: certificates seen from the tenant ---

/// Where a host certificate was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CertificateSourceKind {
    /// A PEM (or DER) file on the host; a chain reports its first certificate, the leaf.
    File,
    /// A TLS endpoint on the host (`127.0.0.1:443` with an SNI name): the leaf it presents.
    Endpoint,
}

/// One certificate the agent read on its host, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostCertificate {
    pub kind: CertificateSourceKind,
    /// The file's path, or the endpoint as configured (`shop.example.com@127.0.0.1:443`).
    pub source: String,
    /// The subject's common name (CN), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// DNS names (and IP addresses) of the subjectAltName extension.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    /// The issuer's common name (else its organisation), e.g. `R11` for Let's Encrypt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// Why nothing (or not everything) could be read: unreadable or garbage file, refused
    /// connection, ... None when the certificate was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    pub checked_at: DateTime<Utc>,
}

impl HostCertificate {
    /// Subject and SANs as one short label for people: `shop.example.com (+2 names)`.
    pub fn names(&self) -> String {
        let first = self.subject.clone().or_else(|| self.sans.first().cloned());
        let others = self
            .sans
            .iter()
            .filter(|s| Some(*s) != first.as_ref())
            .count();
        match (first, others) {
            (None, _) => "no name".to_string(),
            (Some(f), 0) => f,
            (Some(f), n) => format!("{f} (+{n} names)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FilesystemUsage {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f32,
}

impl FilesystemUsage {
    pub fn new(
        mount_point: String,
        device: String,
        fs_type: String,
        total: u64,
        available: u64,
    ) -> Self {
        FilesystemUsage {
            mount_point,
            device,
            fs_type,
            total_bytes: total,
            available_bytes: available,
            used_percent: percent(total.saturating_sub(available), total),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DockerSnapshot {
    /// Engine version, e.g. "20.10.24"; None when the engine was unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Why the snapshot is missing or partial (engine down, permission denied, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub containers: Vec<ContainerInfo>,
    /// Containers left out so the heartbeat fits in one frame (0 normally). The full list is
    /// always available through `container.list`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub containers_omitted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Kinds of event an agent raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventKind {
    #[serde(rename = "agent.started")]
    AgentStarted,
    /// The agent's outbox hit its cap while the relay was unreachable and dropped its oldest
    /// events (never results); attributes say how many.
    #[serde(rename = "agent.events_dropped")]
    AgentEventsDropped,
    #[serde(rename = "container.started")]
    ContainerStarted,
    #[serde(rename = "container.died")]
    ContainerDied,
    #[serde(rename = "container.oom")]
    ContainerOom,
    #[serde(rename = "container.health")]
    ContainerHealth,
    #[serde(rename = "container.restart_loop")]
    ContainerRestartLoop,
    /// A command was refused before running (bad signature, wrong audience, expired, replay of an
    /// unknown id, policy). Raised as an event because a forged command has no relay record.
    #[serde(rename = "command.rejected")]
    CommandRejected,
    /// Progress of a `container.update` (attributes: command_id, phase, and for pulls
    /// layers_done / layers_total). Recovery after an agent restart raises one too.
    #[serde(rename = "container.update")]
    ContainerUpdate,
    // --- issue 17 parts 4 and 6: host upkeep ---
    /// The agent stopped expecting a backup job (attributes: job, container, keys
    /// comma-separated, reason `operator` or `forget_after`); the relay forgets its keys and
    /// audits it.
    #[serde(rename = "backup.forgotten")]
    BackupForgotten,
    /// Auto-heal restarted an unhealthy container (attributes: unhealthy_secs,
    /// restarts_in_hour, outcome).
    #[serde(rename = "container.autoheal")]
    ContainerAutoheal,
    /// Forward compatibility: an event kind this build does not know.
    #[serde(other, rename = "unknown")]
    Unknown,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AgentStarted => "agent.started",
            EventKind::AgentEventsDropped => "agent.events_dropped",
            EventKind::ContainerStarted => "container.started",
            EventKind::ContainerDied => "container.died",
            EventKind::ContainerOom => "container.oom",
            EventKind::ContainerHealth => "container.health",
            EventKind::ContainerRestartLoop => "container.restart_loop",
            EventKind::CommandRejected => "command.rejected",
            EventKind::ContainerUpdate => "container.update",
            // --- issue 17 parts 4 and 6: host upkeep ---
            EventKind::BackupForgotten => "backup.forgotten",
            EventKind::ContainerAutoheal => "container.autoheal",
            EventKind::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentEvent {
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// One sentence for people: "container web died with exit code 137".
    pub message: String,
    /// Extra facts: exit_code, health_status, restarts_in_window, command_id, reason, ...
    /// Container events raised while an update acts on the container carry `updating` (the
    /// update's command id), so alerts can be suppressed for them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}
