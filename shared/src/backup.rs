//! Database backups: the `backup.*` command arguments and outputs, the manifest every backup
//! carries, the report an agent sends after every run, the summary in heartbeats, and the
//! relay's API views of backup history.
//!
//! A *run* dumps the databases of one job (one container). Each database of a run is its own
//! backup with its own manifest and status: one failing database never hides the others.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A status older than this (no successful backup since) is stale: a hard alert.
pub const STALE_AFTER_HOURS: i64 = 48;
/// Docker label naming a container's database engine (`flotilla.backup.engine=postgres`).
pub const ENGINE_LABEL: &str = "flotilla.backup.engine";
/// Docker label `flotilla.backup=false` opts a container out of discovery.
pub const OPT_OUT_LABEL: &str = "flotilla.backup";
/// Largest number of backups a `backup.list` returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// How a database is dumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackupEngine {
    /// `pg_dump --format=custom` per database, plus `pg_dumpall --globals-only`.
    Postgres,
    /// `mysqldump --single-transaction` per database.
    Mysql,
    /// `mariadb-dump --single-transaction` per database (mysqldump where the image has no
    /// mariadb-dump).
    Mariadb,
    /// `mongodump --archive` (all databases, or one with `--db`).
    Mongo,
    /// A consistent RDB snapshot (`redis-cli --rdb -`).
    Redis,
    /// Any configured command run in the container; its stdout is the dump.
    Command,
}

impl BackupEngine {
    pub const ALL: [BackupEngine; 6] = [
        BackupEngine::Postgres,
        BackupEngine::Mysql,
        BackupEngine::Mariadb,
        BackupEngine::Mongo,
        BackupEngine::Redis,
        BackupEngine::Command,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackupEngine::Postgres => "postgres",
            BackupEngine::Mysql => "mysql",
            BackupEngine::Mariadb => "mariadb",
            BackupEngine::Mongo => "mongo",
            BackupEngine::Redis => "redis",
            BackupEngine::Command => "command",
        }
    }

    /// File name extension of a dump before compression.
    pub fn dump_extension(self) -> &'static str {
        match self {
            BackupEngine::Postgres => "pgdump",
            BackupEngine::Mysql | BackupEngine::Mariadb => "sql",
            BackupEngine::Mongo => "archive",
            BackupEngine::Redis => "rdb",
            BackupEngine::Command => "dump",
        }
    }
}

impl fmt::Display for BackupEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let s = match s.as_str() {
            "postgresql" | "pg" => "postgres",
            "mongodb" => "mongo",
            other => other,
        };
        BackupEngine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown backup engine {s:?}; known engines: postgres, mysql, mariadb, mongo, \
                     redis, command"
                )
            })
    }
}

/// Whether a backup (or a database in a run) worked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    Success,
    Failed,
}

impl BackupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Success => "success",
            BackupStatus::Failed => "failed",
        }
    }
}

/// What a destination holds of one backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Stored and checked (size and checksum of what was written).
    Stored,
    /// The copy failed; `error` says why. The backup is kept locally.
    Failed,
    /// Removed by retention.
    Pruned,
}

/// One copy of a backup (the local file, or one off-site destination).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DestinationCopy {
    /// The destination's configured name (`local` for the agent's own directory).
    pub name: String,
    /// `local`, `dir` or `s3`.
    pub kind: String,
    pub state: CopyState,
    /// Path or object key of the copy.
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// Everything known about one backup of one database: written beside the dump as
/// `<file>.manifest.json` and kept in the agent's catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupManifest {
    /// `bk_<time>_<random>`: unique per agent.
    pub id: String,
    /// The run this backup belongs to (all databases of one job run share it).
    pub run_id: String,
    pub job: String,
    pub engine: BackupEngine,
    /// Container name at the time of the backup.
    pub container: String,
    /// The database (`globals` for PostgreSQL's roles and tablespaces, the engine name for
    /// whole-server dumps such as Redis).
    pub database: String,
    pub status: BackupStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Bytes the dump command wrote (before compression).
    pub bytes: u64,
    /// Bytes of the stored file (compressed, and encrypted if `encrypted`).
    pub compressed_bytes: u64,
    /// Hex SHA-256 of the stored file.
    pub sha256: String,
    /// File name of the dump in the agent's backup directory (relative to it).
    pub file: String,
    /// zstd level used.
    pub compression_level: i32,
    /// Encrypted to age recipients (decrypt with `age -d -i key.txt`).
    #[serde(default)]
    pub encrypted: bool,
    /// `pg_dump` → `pg_dump (PostgreSQL) 15.13`, ... as the tools reported themselves.
    #[serde(default)]
    pub tool_versions: BTreeMap<String, String>,
    /// Exit code of the dump command in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub destinations: Vec<DestinationCopy>,
}

/// How a run was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    Schedule,
    /// `backup.run` from the relay.
    Command,
    /// `flotilla-agent backup run` on the host.
    Local,
}

/// Where a report's figures come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportSource {
    /// The agent's own backup jobs.
    Agent,
    /// A `backup-status.json` written by a script outside Flotilla, which the agent watches.
    StatusFile { path: String },
}

/// One database's outcome in a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseOutcome {
    /// The key in `backup-status.json` (`<job>/<database>` for the agent's own jobs).
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<BackupEngine>,
    pub status: BackupStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup's id (agent jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Size of the stored backup, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Off-site copies of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemoteSync {
    pub status: BackupStatus,
    pub uploaded_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an agent tells the relay after every backup run (and whenever a watched status file
/// changes). Sent through the durable outbox, so none is lost while the relay is unreachable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupReport {
    pub run_id: String,
    pub source: ReportSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RunTrigger>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub databases: Vec<DatabaseOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_sync: Option<RemoteSync>,
    /// Backups removed by retention after this run (0 when the run had a failure: a run with
    /// any failure never prunes).
    #[serde(default)]
    pub pruned: u32,
}

/// Key (after `<job>/`) of the pseudo-database that carries a run's off-site copy state.
pub const OFFSITE_KEY: &str = "_offsite";

impl BackupReport {
    /// The databases, plus one `<job>/_offsite` entry when the run copied off-site: the relay
    /// keeps it like a database, so a copy that keeps failing (dumps fine, nothing leaves the
    /// host, nothing is pruned) shows as failed and then stale in the history, the fleet view
    /// and the alert level.
    pub fn stored_outcomes(&self) -> Vec<DatabaseOutcome> {
        let mut all = self.databases.clone();
        if let Some(sync) = &self.remote_sync {
            all.push(DatabaseOutcome {
                key: match &self.job {
                    Some(job) => format!("{job}/{OFFSITE_KEY}"),
                    None => OFFSITE_KEY.to_string(),
                },
                container: None,
                database: None,
                engine: None,
                status: sync.status,
                error: sync.error.clone(),
                backup_id: None,
                size_bytes: Some(sync.uploaded_bytes),
                duration_ms: None,
            });
        }
        all
    }

    pub fn failed(&self) -> usize {
        self.databases
            .iter()
            .filter(|d| d.status == BackupStatus::Failed)
            .count()
    }
}

/// The backup figures carried in every heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupSummary {
    /// Backup jobs configured or discovered.
    pub jobs: u32,
    /// Databases whose latest backup is known.
    pub databases: u32,
    /// Of those, how many failed their latest backup.
    pub failed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<DateTime<Utc>>,
    /// When the newest successful backup of any database finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
    /// When the next scheduled run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<DateTime<Utc>>,
    /// A watched external status file is older than 48 hours (or unreadable).
    #[serde(default)]
    pub status_file_stale: bool,
}

// === commands ===

/// `backup.list`: the agent's catalogue, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupListArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,

    // --- issue 17 §3: restore onto a replacement server ---
    /// Read the manifests at the off-site destinations instead of this agent's catalogue:
    /// every agent's backups there (a replacement server sees the lost one's), in `offsite`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offsite: bool,
    /// With `offsite`: only this destination (default: every configured one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// With `offsite`: only the backups made by this agent (its name, the first segment of
    /// its off-site keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_agent: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupListOutput {
    pub backups: Vec<BackupManifest>,
    /// True when more backups matched than `limit`.
    pub truncated: bool,

    // --- issue 17 §3: restore onto a replacement server ---
    /// `offsite` lists: the backups found at the destinations, newest first (`backups` is
    /// then empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsite: Vec<OffsiteBackup>,
    /// `offsite` lists: destinations that could not be listed and manifests that could not
    /// be read (the others are still listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsite_errors: Vec<String>,
}

/// A backup found at an off-site destination (issue 17 §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OffsiteBackup {
    /// The destination's name in `[[backup.destinations]]`.
    pub destination: String,
    /// The agent that made it: its name, the first segment of the key.
    pub source_agent: String,
    /// Where the dump is at the destination (key with prefix, or path).
    pub location: String,
    /// The manifest stored beside it.
    pub manifest: BackupManifest,
}

/// `backup.run`: run one job now, or every job when `job` is not given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupRunArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupRunOutput {
    pub reports: Vec<BackupReport>,
}

/// `backup.verify`: checksum, decompression (and decryption) and the engine's own listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupVerifyArgs {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyCheck {
    /// `file`, `checksum`, `decompress`, `end_marker`, `engine_listing`.
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupVerifyOutput {
    pub id: String,
    pub ok: bool,
    pub checks: Vec<VerifyCheck>,
}

/// `backup.restore`: stream a backup into a database server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupRestoreArgs {
    pub id: String,
    /// Restore into this container instead of the one the backup came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<String>,
    /// Restore into this database instead of the one the backup came from (created if
    /// missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Restore even when the target database already holds tables (PostgreSQL: objects in
    /// the dump are dropped and re-created; MySQL/MariaDB: the dump's own DROP TABLE
    /// statements apply).
    #[serde(default)]
    pub force: bool,

    // --- issue 17 §3: restore onto a replacement server ---
    /// Restore from the off-site copy (found by id in the destinations' manifests) instead
    /// of this agent's catalogue: downloaded, checksum-verified, then restored.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offsite: bool,
    /// With `offsite`: only look at this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// With `offsite`: the agent that made the backup (needed only when two agents' backups
    /// share the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_agent: Option<String>,
    /// An age identity file (`AGE-SECRET-KEY-1...` lines) on the agent's host, to decrypt an
    /// encrypted backup. Read for this restore only, never stored or sent anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupRestoreOutput {
    pub id: String,
    pub container: String,
    pub database: String,
    /// Bytes streamed into the database client (after decompression).
    pub bytes: u64,
    pub duration_ms: u64,
}

// === relay API ===

/// One database's backup as the relay stored it (`GET /api/v1/agents/{id}/backups`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupRecord {
    pub agent_id: String,
    pub run_id: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    pub status: BackupStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// The state of one database on one agent, as the fleet view shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DatabaseState {
    /// The latest backup succeeded, less than 48 h ago.
    Ok,
    /// The latest backup failed.
    Failed,
    /// No successful backup for 48 h.
    Stale,
}

impl DatabaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseState::Ok => "ok",
            DatabaseState::Failed => "failed",
            DatabaseState::Stale => "stale",
        }
    }
}

impl FromStr for DatabaseState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(DatabaseState::Ok),
            "failed" => Ok(DatabaseState::Failed),
            "stale" => Ok(DatabaseState::Stale),
            other => Err(format!(
                "unknown backup state {other:?}; expected ok, failed or stale"
            )),
        }
    }
}

/// Alert level derived from backup state (wired into the alerts engine when it exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackupAlertLevel {
    None,
    /// Any database's latest backup failed.
    Medium,
    /// Every database failed, or none succeeded for 48 h.
    Hard,
}

/// `GET /api/v1/backups` row: one database of one agent, with its latest backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseBackupState {
    pub agent_id: String,
    pub agent_name: String,
    pub key: String,
    pub state: DatabaseState,
    /// The latest backup of this database.
    pub latest: BackupRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Per-agent backup alert state (`GET /api/v1/agents/{id}/backups` carries it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentBackupAlert {
    pub level: BackupAlertLevel,
    /// One sentence: "2 of 21 databases failed their latest backup".
    pub reason: String,
}

/// `GET /api/v1/agents/{id}/backups`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentBackups {
    pub agent_id: String,
    pub alert: AgentBackupAlert,
    /// The latest state of every database.
    pub databases: Vec<DatabaseBackupState>,
    /// History, newest first.
    pub history: Vec<BackupRecord>,
}

/// Computes the state of one database from its latest record, its newest success and its
/// oldest known record: stale when no backup succeeded for 48 h (a database that never
/// succeeded: 48 h after its first record), else failed when the latest backup failed.
pub fn database_state(
    latest: &BackupRecord,
    last_success_at: Option<DateTime<Utc>>,
    first_seen_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DatabaseState {
    let stale_before = now - chrono::Duration::hours(STALE_AFTER_HOURS);
    match last_success_at {
        None if first_seen_at.min(latest.finished_at) < stale_before => DatabaseState::Stale,
        Some(t) if t < stale_before => DatabaseState::Stale,
        _ if latest.status == BackupStatus::Failed => DatabaseState::Failed,
        _ => DatabaseState::Ok,
    }
}

/// The alert level of an agent from the states of its databases: all failed or stale → hard,
/// any failed → medium.
pub fn agent_alert(states: &[DatabaseState]) -> AgentBackupAlert {
    let total = states.len();
    let failed = states
        .iter()
        .filter(|s| **s == DatabaseState::Failed)
        .count();
    let stale = states
        .iter()
        .filter(|s| **s == DatabaseState::Stale)
        .count();
    if total == 0 {
        return AgentBackupAlert {
            level: BackupAlertLevel::None,
            reason: "no backups reported".into(),
        };
    }
    if failed + stale == total {
        let reason = if stale > 0 {
            format!(
                "no database has a successful backup in the last {STALE_AFTER_HOURS} h \
                 ({failed} failed, {stale} stale of {total})"
            )
        } else {
            format!("all {total} databases failed their latest backup")
        };
        return AgentBackupAlert {
            level: BackupAlertLevel::Hard,
            reason,
        };
    }
    if failed + stale > 0 {
        return AgentBackupAlert {
            level: BackupAlertLevel::Medium,
            reason: format!(
                "{} of {total} databases failed their latest backup or are stale",
                failed + stale
            ),
        };
    }
    AgentBackupAlert {
        level: BackupAlertLevel::None,
        reason: format!("all {total} databases backed up"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: BackupStatus, finished: DateTime<Utc>) -> BackupRecord {
        BackupRecord {
            agent_id: "ag_1".into(),
            run_id: "run_1".into(),
            source: "agent".into(),
            job: Some("pg".into()),
            key: "pg/app".into(),
            container: Some("pg".into()),
            database: Some("app".into()),
            engine: Some("postgres".into()),
            status,
            error: None,
            backup_id: None,
            size_bytes: Some(10),
            started_at: finished,
            finished_at: finished,
        }
    }

    #[test]
    fn offsite_copies_are_stored_as_their_own_entry() {
        let t: DateTime<Utc> = "2026-03-01T02:00:00Z".parse().unwrap();
        let mut report = BackupReport {
            run_id: "run_1".into(),
            source: ReportSource::Agent,
            job: Some("pg".into()),
            trigger: Some(RunTrigger::Schedule),
            started_at: t,
            finished_at: t,
            databases: vec![],
            remote_sync: None,
            pruned: 0,
        };
        assert!(report.stored_outcomes().is_empty());
        report.remote_sync = Some(RemoteSync {
            status: BackupStatus::Failed,
            uploaded_bytes: 0,
            error: Some("destination offsite (s3): connection refused".into()),
        });
        let all = report.stored_outcomes();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].key, "pg/_offsite");
        assert_eq!(all[0].status, BackupStatus::Failed);
        assert!(all[0].error.as_deref().unwrap().contains("offsite"));
    }

    #[test]
    fn engines_parse_with_aliases_and_name_the_known_ones() {
        for e in BackupEngine::ALL {
            assert_eq!(e.as_str().parse::<BackupEngine>().unwrap(), e);
        }
        assert_eq!(
            "PostgreSQL".parse::<BackupEngine>().unwrap(),
            BackupEngine::Postgres
        );
        assert_eq!(
            "mongodb".parse::<BackupEngine>().unwrap(),
            BackupEngine::Mongo
        );
        let e = "oracle".parse::<BackupEngine>().unwrap_err();
        assert!(e.contains("oracle") && e.contains("postgres"), "{e}");
    }

    #[test]
    fn database_states_and_alert_levels() {
        let now: DateTime<Utc> = "2026-03-01T06:00:00Z".parse().unwrap();
        let recent = now - chrono::Duration::hours(4);
        let old = now - chrono::Duration::hours(49);
        let ok = record(BackupStatus::Success, recent);
        assert_eq!(
            database_state(&ok, Some(recent), recent, now),
            DatabaseState::Ok
        );
        let failed = record(BackupStatus::Failed, recent);
        assert_eq!(
            database_state(&failed, Some(old + chrono::Duration::hours(2)), old, now),
            DatabaseState::Failed
        );
        assert_eq!(
            database_state(&failed, Some(old), old, now),
            DatabaseState::Stale
        );
        assert_eq!(
            database_state(&record(BackupStatus::Success, old), Some(old), old, now),
            DatabaseState::Stale
        );
        // A database that never succeeded is failed until its first failure is 48 h old,
        // however recent its latest failure.
        assert_eq!(
            database_state(&failed, None, recent, now),
            DatabaseState::Failed
        );
        assert_eq!(
            database_state(&failed, None, old, now),
            DatabaseState::Stale
        );

        use DatabaseState::*;
        assert_eq!(agent_alert(&[Ok, Ok]).level, BackupAlertLevel::None);
        assert_eq!(agent_alert(&[Ok, Failed]).level, BackupAlertLevel::Medium);
        assert_eq!(agent_alert(&[Ok, Stale]).level, BackupAlertLevel::Medium);
        assert_eq!(agent_alert(&[Failed, Failed]).level, BackupAlertLevel::Hard);
        assert_eq!(agent_alert(&[Failed, Stale]).level, BackupAlertLevel::Hard);
        assert_eq!(agent_alert(&[]).level, BackupAlertLevel::None);
    }
}

/// `GET /api/v1/backups`: the latest backup of every database in the fleet (revoked agents
/// left out), optionally only those in one state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetBackups {
    pub databases: Vec<DatabaseBackupState>,
    /// True when more databases matched than the request's `limit`.
    #[serde(default)]
    pub truncated: bool,
}
