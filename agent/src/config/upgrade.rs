//! `[upgrade]` of agent.toml: the agent's side of signed self-update (`agent.upgrade`). Its
//! keys' variables and ranges are in the settings table (`config.rs`).

use serde::{Deserialize, Serialize};

/// `[upgrade]`: the agent's side of signed self-update (`agent.upgrade`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeConfig {
    /// Seconds the root updater (flotilla-agent-updater.path/.service) gets to take an upgrade
    /// request (it answers `accepted`, then has its own 10-minute limit); past that the command
    /// fails and the request is withdrawn.
    pub updater_pickup_secs: u64,
    /// Longest the download of a new agent build from the relay may take, in seconds.
    pub download_timeout_secs: u64,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            updater_pickup_secs: crate::upgrade::DEFAULT_UPDATER_PICKUP_SECS,
            download_timeout_secs: crate::upgrade::DEFAULT_DOWNLOAD_TIMEOUT_SECS,
        }
    }
}

impl UpgradeConfig {
    /// The handler's timing.
    pub fn settings(&self) -> crate::upgrade::UpgradeSettings {
        crate::upgrade::UpgradeSettings {
            updater_pickup: std::time::Duration::from_secs(self.updater_pickup_secs),
            download_timeout: std::time::Duration::from_secs(self.download_timeout_secs),
            ..Default::default()
        }
    }
}
