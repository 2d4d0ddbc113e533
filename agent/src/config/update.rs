//! `[update]` of agent.toml: the image policy and registry credentials of `container.update`.
//! Its keys' variables are named in the settings table (`config.rs`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[update]`: image policy and registry credentials for `container.update`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Images a container may be updated to: registry hosts (`ghcr.io`, `127.0.0.1:5000`) or
    /// repository prefixes (`registry.example.com/team/`). Empty: only the registry the
    /// container's current image comes from.
    pub allowed_images: Vec<String>,
    /// Docker config file whose `auths` are used for pulls the `registries` below do not
    /// cover. Default: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Credentials per registry.
    pub registries: Vec<RegistryAuth>,
}

/// `[[update.registries]]`: a username and a file holding the password (or token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// Registry host as in image references: `ghcr.io`, `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    pub username: String,
    pub password_file: PathBuf,
}

impl UpdateConfig {
    /// The docker config file to read credentials from, if any.
    pub fn docker_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.docker_config {
            return Some(p.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".docker/config.json"))
    }
}
