//! `[autoheal]` and `[images]` of agent.toml (issue 17 part 6): restarting containers that
//! stay unhealthy, and pruning images no container and no rollback needs. Their keys'
//! variables and ranges are in the settings table (`config.rs`).

use serde::{Deserialize, Serialize};

/// `[autoheal]`: restart a running container that stays unhealthy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutohealConfig {
    /// Every container with a health check is auto-healed, not only those labelled
    /// `flotilla.autoheal=true` (`flotilla.autoheal=false` still opts one out).
    pub all: bool,
    /// Seconds a container must stay unhealthy (as seen at each heartbeat) before it is
    /// restarted.
    pub unhealthy_for_secs: u64,
    /// Restarts of one container within any hour; past it the container is left alone (and
    /// its unhealthy alert stands).
    pub max_restarts_per_hour: u32,
    /// Seconds after a restart before the same container may be restarted again; doubles
    /// with each further restart within the hour.
    pub backoff_secs: u64,
}

impl Default for AutohealConfig {
    fn default() -> Self {
        AutohealConfig {
            all: false,
            unhealthy_for_secs: 300,
            max_restarts_per_hour: 3,
            backoff_secs: 60,
        }
    }
}

/// `[images]`: pruning images no container uses and no rollback needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Seconds between two scheduled prunes (0: only by the `image.prune` command).
    pub prune_interval_secs: u64,
    /// The image a container ran before an update in the last this many days is kept (a
    /// rollback needs it).
    pub keep_rollback_days: u32,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            prune_interval_secs: 86_400,
            keep_rollback_days: 7,
        }
    }
}
