//! `[backup]` in relay.toml: the relay's backups of its own database (`crate::selfbackup`).
//! Off by default: an operator turns them on with a destination off the relay's disk (a local
//! copy only protects against a corrupt file, not against losing the machine).

use flotilla_offsite::config::{DestinationConfig, RetentionConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[backup]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayBackupConfig {
    /// Run scheduled backups (one relay of a cluster at a time, under the `relay-backup`
    /// lease). `flotilla-relay backup run` works either way.
    pub enabled: bool,
    /// Directory of the local copies and manifests. Default: `<data_dir>/backups`.
    pub dir: Option<PathBuf>,
    /// Hours between backups: a run starts when the newest success is this old (at once when
    /// there is none).
    pub interval_hours: u32,
    /// zstd level (1-19) of SQLite snapshots (pg_dump's custom format compresses itself).
    pub compression_level: i32,
    /// `pg_dump` to run on PostgreSQL. Default: `pg_dump` on PATH, else the newest
    /// `/usr/lib/postgresql/*/bin/pg_dump`. `pg_restore` is looked up beside it.
    pub pg_dump: Option<PathBuf>,
    /// age recipients (`age1...`) every backup is encrypted to. Empty: no encryption.
    pub age_recipients: Vec<String>,
    /// A file of age recipients, one per line (`#` comments allowed), added to the above.
    pub age_recipients_file: Option<PathBuf>,
    /// How many backups are kept (locally and at every destination).
    pub retention: RelayRetention,
    /// Off-site destinations, the same tables as the agent's `[[backup.destinations]]`.
    pub destinations: Vec<DestinationConfig>,
}

impl Default for RelayBackupConfig {
    fn default() -> Self {
        RelayBackupConfig {
            enabled: false,
            dir: None,
            interval_hours: 24,
            compression_level: 3,
            pg_dump: None,
            age_recipients: Vec::new(),
            age_recipients_file: None,
            retention: RelayRetention::default(),
            destinations: Vec::new(),
        }
    }
}

/// `[backup.retention]`: grandfather-father-son, like the agent's, with the users' plan for
/// the central database as defaults (14 daily, 8 weekly, 3 monthly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayRetention {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for RelayRetention {
    fn default() -> Self {
        RelayRetention {
            daily: 14,
            weekly: 8,
            monthly: 3,
        }
    }
}

impl RelayRetention {
    /// The shared planner's policy.
    pub fn policy(self) -> RetentionConfig {
        RetentionConfig {
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
        }
    }
}
