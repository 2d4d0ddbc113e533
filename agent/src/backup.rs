//! Database backups: scheduled dumps of the databases in local containers, streamed through the
//! Docker exec API into compressed (optionally encrypted) files with a checksum and a manifest,
//! copied off-site, pruned grandfather-father-son, reported to the relay and to a
//! `backup-status.json`; and verify/restore of any backup.
//!
//! `Backups` is the service: the executor calls it for `backup.*` commands, `main` for the
//! local `flotilla-agent backup ...` commands, and its `scheduler` and `watcher` tasks run
//! jobs on their schedules and follow an external status file. Every database of a run is
//! isolated: one failing database never stops the others, and a run with any failure never
//! prunes anything.
//!
//! This file holds the service's types, the checks of `[backup]` and small shared helpers; its
//! methods live by concern in `service` (building it, jobs, status, catalogue), `run` (one run
//! of one job), `restore` (verify and restore) and `scheduler` (the scheduler and the watcher).

pub mod config;
pub mod engine;
// The off-site parts the relay shares (crate flotilla-offsite), under their old paths; `decrypt`
// is issue 17 §3: restore onto a replacement server (off-site listing, age identities).
pub use flotilla_offsite::{decrypt, destination, encrypt, retention};
mod offsite;
pub mod pipeline;
mod restore;
mod run;
pub mod schedule;
mod scheduler;
mod service;
pub mod status;
// issue 17 part 4: expected databases and forgetting them
mod expected;
pub use expected::ForgetReason;

use crate::docker::{DockerClient, DockerError};
use crate::state::State;
use anyhow::Result;
use chrono::{DateTime, Utc};
use config::{BackupConfig, RetentionConfig};
use destination::Destination;
use flotilla_shared::backup::{BackupEngine, BackupSummary};
use flotilla_shared::command::{error_codes, ErrorInfo};
use schedule::Schedule;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub use restore::RestoreSource;

/// A job resolved from configuration or discovery.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// Container name or id.
    pub container: String,
    /// None: from the container's label or image at run time.
    pub engine: Option<BackupEngine>,
    pub databases: Vec<String>,
    pub schedule: Schedule,
    pub compression_level: i32,
    pub retention: RetentionConfig,
    /// Destination names.
    pub destinations: Vec<String>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub command: Vec<String>,
    pub restore_command: Vec<String>,
    pub ping_url: Option<String>,
    pub discovered: bool,
    /// A discovered job backed up before whose container no longer runs (issue 17 part 4):
    /// its run fails with the reason instead of the database silently dropping out.
    pub expected_missing: bool,
}

/// The backup service; cheap to clone.
#[derive(Clone)]
pub struct Backups {
    inner: Arc<Inner>,
}

struct Inner {
    docker: DockerClient,
    state: State,
    config: BackupConfig,
    dir: PathBuf,
    status_file: PathBuf,
    /// The agent's name (first path component of off-site keys) and id (jitter).
    agent_name: String,
    agent_id: String,
    destinations: Vec<Destination>,
    recipients: Option<encrypt::Recipients>,
    default_schedule: Schedule,
    /// One run per job at a time.
    job_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    summary: watch::Sender<Option<BackupSummary>>,
    next_run_at: Mutex<Option<DateTime<Utc>>>,
    status_file_stale: Mutex<bool>,
    /// Containers (as jobs name them) a run is dumping now; auto-heal leaves them alone.
    busy: Mutex<std::collections::HashSet<String>>,
}

flotilla_shared::message_error!(
    /// A `[backup]` setting that fails its check (the message names the key).
    pub InvalidBackupConfig
);

/// Checks `[backup]` without touching the network or Docker: schedules, destinations,
/// recipients, job names.
pub fn validate_config(config: &BackupConfig) -> Result<(), InvalidBackupConfig> {
    validate_config_message(config).map_err(InvalidBackupConfig)
}

fn validate_config_message(config: &BackupConfig) -> Result<(), String> {
    Schedule::parse(&config.schedule).map_err(|e| format!("backup.schedule: {e}"))?;
    check_level(config.compression_level).map_err(|e| format!("backup.compression_level: {e}"))?;
    let mut names = std::collections::HashSet::new();
    for d in &config.destinations {
        // Two parts are in memory during an upload: larger parts would break the agent's
        // memory budget.
        if d.part_size_bytes > MAX_PART_SIZE_BYTES {
            return Err(format!(
                "backup.destinations {}: part_size_bytes {} is above the largest accepted, {} \
                 (64 MiB)",
                d.name, d.part_size_bytes, MAX_PART_SIZE_BYTES
            ));
        }
        if !names.insert(d.name.as_str()) {
            return Err(format!(
                "backup.destinations: the name {:?} is used twice",
                d.name
            ));
        }
    }
    let mut jobs = std::collections::HashSet::new();
    for j in &config.jobs {
        if !valid_name(&j.name) {
            return Err(format!(
                "backup.jobs: job name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                j.name
            ));
        }
        if !jobs.insert(j.name.as_str()) {
            return Err(format!(
                "backup.jobs: the job name {:?} is used twice",
                j.name
            ));
        }
        if let Some(s) = &j.schedule {
            Schedule::parse(s).map_err(|e| format!("backup.jobs {}: {e}", j.name))?;
        }
        if let Some(l) = j.compression_level {
            check_level(l).map_err(|e| format!("backup.jobs {}: compression_level {e}", j.name))?;
        }
        for d in j.destinations.iter().flatten() {
            if !names.contains(d.as_str()) {
                return Err(format!(
                    "backup.jobs {}: destination {d:?} is not configured in [[backup.destinations]]",
                    j.name
                ));
            }
        }
        if j.engine == Some(BackupEngine::Command) && j.command.is_empty() {
            return Err(format!(
                "backup.jobs {}: engine \"command\" needs `command`",
                j.name
            ));
        }
    }
    if let (Some(w), Some(s)) = (&config.watch_status_file, &config.status_file) {
        if w == s {
            return Err(
                "backup.watch_status_file must differ from backup.status_file (the agent \
                 rewrites its own)"
                    .into(),
            );
        }
    }
    if config.watch_interval_secs == 0 {
        return Err("backup.watch_interval_secs must be at least 1".into());
    }
    if config.forget_after_secs == 0 {
        return Err("backup.forget_after_secs must be at least 1".into());
    }
    if config.dump_timeout_secs == 0 {
        return Err("backup.dump_timeout_secs must be at least 1".into());
    }
    Ok(())
}

/// Largest S3 multipart part accepted (two are held in memory at once).
const MAX_PART_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// Highest zstd level accepted: above it the encoder's tables alone outgrow the agent's memory
/// budget for a dump (about 28 MiB at 9, 90 MiB at 19) for a few percent of size.
const MAX_COMPRESSION_LEVEL: i32 = 9;

fn check_level(level: i32) -> Result<(), String> {
    if (1..=MAX_COMPRESSION_LEVEL).contains(&level) {
        Ok(())
    } else {
        Err(format!(
            "{level} is not a zstd level between 1 and {MAX_COMPRESSION_LEVEL}"
        ))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// A name safe in a file name: container names and database names may hold anything.
fn file_part(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

fn err(code: &str, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo {
        code: code.into(),
        message: message.into(),
    }
}

fn docker_err(e: DockerError) -> ErrorInfo {
    err(e.code(), e.to_string())
}

fn internal(e: anyhow::Error) -> ErrorInfo {
    err(error_codes::DOCKER, format!("{e:#}"))
}

/// `bk_20260301T021500Z_1a2b3c`: sortable, unique per agent.
fn new_backup_id(prefix: &str, at: DateTime<Utc>) -> String {
    format!(
        "{prefix}_{}_{:06x}",
        at.format("%Y%m%dT%H%M%SZ"),
        flotilla_shared::ids::random_u64() & 0xff_ffff
    )
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `<dump file>.manifest.json`.
fn manifest_path(dump: &Path) -> PathBuf {
    let mut s = dump.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::JobConfig;

    #[test]
    fn names_are_checked_and_made_file_safe() {
        assert!(valid_name("pg-main_1.x"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert_eq!(file_part("app db/ü"), "app_db__");
        assert_eq!(file_part(""), "_");
        let id = new_backup_id("bk", "2026-03-01T02:15:00Z".parse().unwrap());
        assert!(id.starts_with("bk_20260301T021500Z_"), "{id}");
        assert_eq!(
            manifest_path(Path::new("/b/x.sql.zst")),
            PathBuf::from("/b/x.sql.zst.manifest.json")
        );
    }

    #[test]
    fn config_errors_name_the_setting() {
        let mut c = BackupConfig::default();
        assert!(validate_config(&c).is_ok());
        c.schedule = "nonsense".into();
        assert!(validate_config(&c).unwrap_err().contains("backup.schedule"));
        let c = BackupConfig {
            compression_level: 40,
            ..Default::default()
        };
        assert!(validate_config(&c)
            .unwrap_err()
            .contains("compression_level"));
        let mut c = BackupConfig::default();
        c.jobs.push(JobConfig {
            name: "pg".into(),
            container: "pg".into(),
            engine: None,
            databases: vec![],
            schedule: None,
            compression_level: None,
            retention: None,
            destinations: Some(vec!["nowhere".into()]),
            user: None,
            password_file: None,
            command: vec![],
            restore_command: vec![],
            ping_url: None,
        });
        let e = validate_config(&c).unwrap_err();
        assert!(e.contains("nowhere") && e.contains("pg"), "{e}");
        let mut c = BackupConfig::default();
        c.destinations.push(config::DestinationConfig {
            name: "offsite".into(),
            kind: config::DestinationKind::Dir,
            path: Some("/mnt/backups".into()),
            endpoint: None,
            region: None,
            bucket: None,
            prefix: String::new(),
            access_key_id_file: None,
            secret_access_key_file: None,
            path_style: false,
            allow_http: false,
            part_size_bytes: 128 * 1024 * 1024,
        });
        let e = validate_config(&c).unwrap_err();
        assert!(
            e.contains("part_size_bytes") && e.contains("offsite"),
            "{e}"
        );
    }
}
