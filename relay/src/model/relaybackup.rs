//! The relay's backups of its own database, as data: the manifest written beside every
//! snapshot, the record of one run, and the pure decision behind the `relay_backup` alert.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The manifest format this relay writes; it reads this one and older.
pub const MANIFEST_FORMAT: u32 = 1;
/// No successful backup for this long, while backups are enabled, is a hard alert.
pub const STALE_AFTER_HOURS: i64 = 48;
/// Backend names in manifests and run records.
pub const SQLITE: &str = "sqlite";
pub const POSTGRES: &str = "postgres";

/// `<name>.json` beside the snapshot, locally and at every destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The backup's name (`relay-20261207T031500Z`): the stem of its files.
    pub name: String,
    pub relay_version: String,
    /// The store's schema version (migrations applied) the snapshot holds.
    pub schema_version: i64,
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub created_at: DateTime<Utc>,
    /// The snapshot's file name: `<name>.sqlite.zst` (a zstd-compressed SQLite database) or
    /// `<name>.pgdump` (`pg_dump --format=custom`), with `.age` when encrypted.
    pub file: String,
    /// Size of `file` in bytes.
    pub size: u64,
    /// SHA-256 of `file` as stored (after compression and encryption), lowercase hex.
    pub sha256: String,
    /// The file was encrypted to the configured age recipients.
    pub encrypted: bool,
    /// The copy of `relay.key` (`<name>.relay-key`, encrypted like the snapshot), without which
    /// the agents would not accept a restored relay's commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

impl Manifest {
    /// Parses and checks a manifest; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_str(text).map_err(|e| format!("not a relay backup manifest: {e}"))?;
        if m.format == 0 || m.format > MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not one this relay reads (1 to {MANIFEST_FORMAT})",
                m.format
            ));
        }
        if m.backend != SQLITE && m.backend != POSTGRES {
            return Err(format!(
                "unknown backend {:?} (sqlite or postgres)",
                m.backend
            ));
        }
        for (what, name) in [("name", Some(&m.name)), ("file", Some(&m.file))]
            .into_iter()
            .chain([("key_file", m.key_file.as_ref())])
        {
            if let Some(name) = name {
                check_file_name(what, name)?;
            }
        }
        for (what, sum) in [
            ("sha256", Some(&m.sha256)),
            ("key_sha256", m.key_sha256.as_ref()),
        ] {
            if let Some(sum) = sum {
                if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{what} {sum:?} is not a SHA-256 in hex"));
                }
            }
        }
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// A file name from a manifest: one plain component, so it cannot leave the backup directory.
fn check_file_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not a plain file name (letters, digits, - _ .)"
        ))
    }
}

/// The name of a backup started at `at`: sortable, one per second.
pub fn backup_name(at: DateTime<Utc>) -> String {
    format!("relay-{}", at.format("%Y%m%dT%H%M%SZ"))
}

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        [RunStatus::Running, RunStatus::Ok, RunStatus::Failed]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// One run of the relay's backup, as recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayBackupRun {
    pub name: String,
    /// The relay that ran it (its cluster id), or `cli` for `flotilla-relay backup run`.
    pub relay_id: String,
    pub backend: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub error: Option<String>,
    pub size: Option<u64>,
    /// Where the copies are: the local file, then each destination's location.
    pub locations: Vec<String>,
}

/// What the `relay_backup` alert looks at: the latest finished run and the newest success.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayBackupHealth {
    pub latest_finished: Option<RelayBackupRun>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// A problem with the relay's backups, as the alert states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupProblem {
    /// `failed` or `stale`: the alert's subject.
    pub subject: &'static str,
    pub message: String,
    pub since: Option<DateTime<Utc>>,
}

/// The problem, if any, with backups enabled since `enabled_since` (the relay's start): the
/// latest finished run failed, or no run succeeded for [`STALE_AFTER_HOURS`] (counted from
/// `enabled_since` when none ever did).
pub fn problem(
    health: &RelayBackupHealth,
    enabled_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<BackupProblem> {
    if let Some(run) = health
        .latest_finished
        .as_ref()
        .filter(|r| r.status == RunStatus::Failed)
    {
        return Some(BackupProblem {
            subject: "failed",
            message: format!(
                "relay backup {} failed: {}",
                run.name,
                run.error.as_deref().unwrap_or("no error recorded")
            ),
            since: run.finished_at,
        });
    }
    let stale_after = Duration::hours(STALE_AFTER_HOURS);
    let since = health.last_success_at.unwrap_or(enabled_since);
    if now - since > stale_after {
        let message = match health.last_success_at {
            Some(at) => format!(
                "no successful relay backup for {STALE_AFTER_HOURS} h (last one {})",
                at.to_rfc3339()
            ),
            None => format!("no successful relay backup for {STALE_AFTER_HOURS} h (none yet)"),
        };
        return Some(BackupProblem {
            subject: "stale",
            message,
            since: Some(since + stale_after),
        });
    }
    None
}

#[cfg(test)]
mod tests;
