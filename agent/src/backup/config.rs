//! `[backup]` in agent.toml: where backups go, when they run, how long they are kept, and the
//! jobs (configured, or discovered from running database containers).

pub use flotilla_offsite::config::{DestinationConfig, DestinationKind, RetentionConfig};
use flotilla_shared::backup::BackupEngine;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Default schedule: every day at 02:00 local time (plus the per-agent jitter).
pub const DEFAULT_SCHEDULE: &str = "0 2 * * *";
/// Default zstd level: fast, and about as small as gzip -9.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// `[backup]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Run scheduled backups at all (manual runs, `backup.*` commands and the status-file
    /// watcher work either way).
    pub enabled: bool,
    /// Directory holding the dumps and their manifests. Default: `<state_dir>/backups`.
    pub dir: Option<PathBuf>,
    /// Back up running containers whose image is a well-known PostgreSQL, MySQL, MariaDB,
    /// MongoDB or Redis image, or that carry `flotilla.backup.engine=<engine>`, without
    /// configuring a job. `flotilla.backup=false` on a container opts it out.
    pub discover: bool,
    /// Cron expression (5 fields, local time) for jobs that name none.
    pub schedule: String,
    /// Each agent starts its scheduled runs up to this many seconds late (the same offset every
    /// day, derived from the agent id), so a fleet does not hit its storage all at once.
    pub jitter_secs: u64,
    /// zstd level (1-19) for jobs that name none.
    pub compression_level: i32,
    /// How many backups of each database to keep, for jobs that name none.
    pub retention: RetentionConfig,
    /// `backup-status.json` in the users' format, rewritten after every run. Default:
    /// `<dir>/backup-status.json`.
    pub status_file: Option<PathBuf>,
    /// A `backup-status.json` written by an existing script outside Flotilla: the agent
    /// reads it every `watch_interval_secs`, reports it to the relay like its own runs, and
    /// reports it stale when `last_run` is older than 48 hours.
    pub watch_status_file: Option<PathBuf>,
    /// How often the watched status file is read, in seconds.
    pub watch_interval_secs: u64,
    /// Longest one database's dump may take, in seconds; past it the dump fails (a dump
    /// waiting forever on a lock must not stop every later job).
    pub dump_timeout_secs: u64,
    /// age recipients (`age1...`) every dump is encrypted to. Empty: no encryption.
    pub age_recipients: Vec<String>,
    /// A file of age recipients, one per line (`#` comments allowed), added to the above.
    pub age_recipients_file: Option<PathBuf>,
    /// Off-site destinations. Jobs copy to every destination unless they name their own.
    pub destinations: Vec<DestinationConfig>,
    /// Configured jobs. A configured job for a container replaces its discovered one.
    pub jobs: Vec<JobConfig>,
    // --- issue 17 part 4: expected databases ---
    /// A discovered database that was backed up once stays expected: while its container is
    /// stopped, restarting or gone, its runs fail. A container gone this long (seconds; 7
    /// days) is forgotten (logged, and audited at the relay), as `backup.forget` does at once.
    pub forget_after_secs: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            enabled: true,
            dir: None,
            discover: true,
            schedule: DEFAULT_SCHEDULE.to_string(),
            jitter_secs: 600,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            retention: RetentionConfig::default(),
            status_file: None,
            watch_status_file: None,
            watch_interval_secs: 60,
            dump_timeout_secs: 6 * 3600,
            age_recipients: Vec::new(),
            age_recipients_file: None,
            destinations: Vec::new(),
            jobs: Vec::new(),
            forget_after_secs: 7 * 86_400,
        }
    }
}

/// `[[backup.jobs]]`: one container's databases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Unique name; used in file names, keys and `backup run <job>`.
    pub name: String,
    /// The container (name or id).
    pub container: String,
    /// How to dump; default: guessed from the container's image or `flotilla.backup.engine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<BackupEngine>,
    /// Databases to dump; empty: every database the server has (system ones excluded).
    #[serde(default)]
    pub databases: Vec<String>,
    /// Cron expression (local time); default `[backup] schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionConfig>,
    /// Destination names; default every configured destination. `[]` keeps backups local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Vec<String>>,
    /// Database user; default from the container's environment (POSTGRES_USER, root, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// File holding the password; default from the container's environment
    /// (POSTGRES_PASSWORD, MYSQL_ROOT_PASSWORD, MARIADB_ROOT_PASSWORD, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// `engine = "command"`: the command run in the container; its stdout is the dump.
    #[serde(default)]
    pub command: Vec<String>,
    /// `engine = "command"`: the command a restore pipes the dump into (stdin).
    #[serde(default)]
    pub restore_command: Vec<String>,
    /// healthchecks.io-style dead-man URL: GET `<url>/start` before, `<url>` after success,
    /// `<url>/fail` after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_url: Option<String>,
}
