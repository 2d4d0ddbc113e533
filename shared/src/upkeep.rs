//! Keeping a tenant host coherent over time (issue 17, parts 4 and 6): forgetting a database
//! that is no longer expected to be backed up (`backup.forget`), pruning images no container
//! and no rollback needs (`image.prune`), per-container resource figures read from cgroups
//! (carried in every heartbeat) and the vocabulary of auto-heal.

use serde::{Deserialize, Serialize};

/// Docker label opting one container into auto-heal (`flotilla.autoheal=true`); `false` opts
/// it out when `[autoheal] all = true`.
pub const AUTOHEAL_LABEL: &str = "flotilla.autoheal";

/// A container above this share of its memory limit (percent) counts as near its limit; the
/// agent reports since when (`ContainerResources::memory_near_limit_since`).
pub const MEMORY_NEAR_LIMIT_PERCENT: f64 = 90.0;

/// `backup.forget`: the agent stops expecting a database job it backed up before (its
/// container was removed on purpose). Its run reports are dropped, its backups stay in the
/// catalogue and on disk, and a `backup.forgotten` event tells the relay (which forgets the
/// job's keys and audits it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupForgetArgs {
    /// The job (for a discovered database: its container's name).
    pub job: String,
}

/// Output of `backup.forget`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupForgetOutput {
    pub job: String,
    /// The container the job backed up, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Database keys (`<job>/<database>`) no longer reported.
    pub keys: Vec<String>,
}

/// `image.prune`: removes images no container uses and no rollback needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImagePruneArgs {
    /// Only say what would be removed.
    #[serde(default)]
    pub dry_run: bool,
}

/// One image `image.prune` removed (or, in a dry run, would remove), or kept for a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrunedImage {
    pub id: String,
    /// Its repository tags (empty for an untagged image).
    pub tags: Vec<String>,
    /// Bytes only this image holds (size less layers shared with other images).
    pub unique_bytes: u64,
    /// Why it was kept, for kept images (`rollback of web (updated 2026-12-01)`, `in use`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_because: Option<String>,
    /// Why it could not be removed, for failed removals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Output of `image.prune` (and of the scheduled prune, logged).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImagePruneOutput {
    pub dry_run: bool,
    /// Removed images (or, in a dry run, the ones that would be).
    pub removed: Vec<PrunedImage>,
    /// Unused images kept because a rollback may need them.
    pub kept: Vec<PrunedImage>,
    /// Images whose removal failed.
    pub failed: Vec<PrunedImage>,
    /// Bytes freed: the engine's layer storage before less after; in a dry run, the sum of
    /// the removable images' unique bytes.
    pub bytes_freed: u64,
}

/// What the cgroup of one running container says (heartbeat, `container.list`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerResources {
    /// Memory charged to the container, less its inactive page cache (what `docker stats`
    /// shows).
    pub memory_bytes: u64,
    /// Its memory limit; None when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// CPU used since the previous reading, in percent of one CPU (200 = two CPUs busy); None
    /// on the first reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f32>,
    /// Since when the container has stayed above [`MEMORY_NEAR_LIMIT_PERCENT`] of its limit
    /// (as seen at each heartbeat), if it is above it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_near_limit_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl ContainerResources {
    /// Memory use in percent of the limit, when there is one.
    pub fn memory_percent_of_limit(&self) -> Option<f64> {
        self.memory_limit_bytes
            .filter(|l| *l > 0)
            .map(|l| self.memory_bytes as f64 * 100.0 / l as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_of_limit_needs_a_limit() {
        let mut r = ContainerResources {
            memory_bytes: 95,
            ..Default::default()
        };
        assert_eq!(r.memory_percent_of_limit(), None);
        r.memory_limit_bytes = Some(100);
        assert_eq!(r.memory_percent_of_limit(), Some(95.0));
        r.memory_limit_bytes = Some(0);
        assert_eq!(r.memory_percent_of_limit(), None);
    }

    #[test]
    fn args_round_trip_and_refuse_unknown_fields() {
        let a: ImagePruneArgs = serde_json::from_str(r#"{"dry_run":true}"#).unwrap();
        assert!(a.dry_run);
        assert!(serde_json::from_str::<ImagePruneArgs>(r#"{"force":true}"#).is_err());
        let f: BackupForgetArgs = serde_json::from_str(r#"{"job":"shop-db"}"#).unwrap();
        assert_eq!(f.job, "shop-db");
    }
}
