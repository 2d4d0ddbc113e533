//! `[compose]` of agent.toml: where `container.update` / `compose.update` may edit a compose
//! project's files, and which compose tool gives config hashes. Its keys' variables are in the
//! settings table (`config.rs`).

use serde::{Deserialize, Serialize};

/// `[compose]`: compose projects' files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComposeConfig {
    /// Directories under which the compose files and `.env` of a project may be edited by an
    /// update. Empty (the default): none; an update of a compose container is refused unless
    /// it carries `allow_drift`.
    pub allowed_dirs: Vec<String>,
    /// The compose tool asked for config hashes: `docker-compose` (1.x) or `docker compose`.
    pub command: String,
}

impl Default for ComposeConfig {
    fn default() -> Self {
        ComposeConfig {
            allowed_dirs: Vec::new(),
            command: "docker-compose".into(),
        }
    }
}
