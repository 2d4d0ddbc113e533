//! `backup-status.json`, the format the users' own backup scripts already write and their
//! monitoring already reads. The agent writes one after every run (`from_reports`,
//! `write_atomic`), and can watch one written by a script outside Flotilla and report it to
//! the relay like its own runs (`read`, `to_report`, `is_stale`).
//!
//! Writing produces exactly the users' shape. Reading is lenient where real scripts differ:
//! sizes and durations may be floats (rounded) or numeric strings, `null` stands for an absent
//! optional field, unknown fields are ignored (and so dropped when the agent rewrites a file),
//! and status strings are matched case-insensitively: `success`, `ok` and `succeeded` mean
//! success; `failed`, `error` and `failure` mean failure. `last_run` must carry its offset
//! (`Z` or `+01:00`): a bare local time would be read differently by every host.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use flotilla_shared::backup::{
    BackupReport, BackupStatus, DatabaseOutcome, RemoteSync, ReportSource, STALE_AFTER_HOURS,
};
use ring::digest;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Sizes in the file are in MiB ("MB" in the users' field names).
const BYTES_PER_MB: u64 = 1024 * 1024;
/// A status file is a few hundred bytes; anything this large is not one, and reading it whole
/// would only waste memory.
pub const MAX_STATUS_FILE_BYTES: u64 = 1024 * 1024;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusFile {
    /// When the run finished. Written as RFC 3339 in UTC with whole seconds (`...T02:15:00Z`).
    #[serde(serialize_with = "serialize_whole_seconds")]
    pub last_run: DateTime<Utc>,
    pub duration_seconds: u64,
    /// Per database (the agent's own jobs use `<job>/<database>`).
    pub databases: BTreeMap<String, DatabaseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_sync: Option<RemoteSyncStatus>,
}

/// One database's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DatabaseStatus {
    pub status: BackupStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The off-site copy of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteSyncStatus {
    pub status: BackupStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What was wrong with a file's content, and where (a JSONPath such as
/// `$.databases.nextcloud.status`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {json_path}: {message}")]
pub struct FormatError {
    pub json_path: String,
    pub message: String,
}

/// Reading a status file failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read status file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status file {path} is larger than {MAX_STATUS_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("invalid status file {path}: {source}")]
    Format { path: PathBuf, source: FormatError },
}

// === impl StatusFile ===

impl StatusFile {
    /// Parses the text of a status file.
    pub fn from_json(text: &str) -> Result<StatusFile, FormatError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FormatError {
            json_path: "$".into(),
            message: format!("not JSON: {e}"),
        })?;
        StatusFile::from_value(&value)
    }

    /// Reads a status file from an already parsed JSON value.
    pub fn from_value(value: &Value) -> Result<StatusFile, FormatError> {
        let root = "$";
        let object = expect_object(value, root)?;
        let last_run = parse_time(
            required(object, root, "last_run")?,
            &child(root, "last_run"),
        )?;
        let duration_seconds = match optional(object, "duration_seconds") {
            Some(v) => parse_whole_number(v, &child(root, "duration_seconds"))?,
            None => 0,
        };
        let databases_path = child(root, "databases");
        let mut databases = BTreeMap::new();
        for (name, entry) in expect_object(required(object, root, "databases")?, &databases_path)? {
            let entry_path = child(&databases_path, name);
            databases.insert(name.clone(), parse_database(entry, &entry_path)?);
        }
        let remote_sync = match optional(object, "remote_sync") {
            Some(v) => Some(parse_remote_sync(v, &child(root, "remote_sync"))?),
            None => None,
        };
        Ok(StatusFile {
            last_run,
            duration_seconds,
            databases,
            remote_sync,
        })
    }

    /// The file's text: pretty-printed, with a final newline.
    pub fn to_json(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(self).expect("a status file always serialises to JSON");
        text.push('\n');
        text
    }
}

fn serialize_whole_seconds<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Secs, true))
}

// === reading ===

/// Reads and parses the status file at `path`.
pub fn read(path: &Path) -> Result<StatusFile, StatusError> {
    let read_error = |source| StatusError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    // One byte more than allowed tells "exactly at the limit" from "over it".
    file.take(MAX_STATUS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_STATUS_FILE_BYTES {
        return Err(StatusError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    StatusFile::from_json(&text).map_err(|source| StatusError::Format {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_database(value: &Value, path: &str) -> Result<DatabaseStatus, FormatError> {
    let object = expect_object(value, path)?;
    Ok(DatabaseStatus {
        status: parse_status(required(object, path, "status")?, &child(path, "status"))?,
        size_mb: optional(object, "size_mb")
            .map(|v| parse_whole_number(v, &child(path, "size_mb")))
            .transpose()?,
        error: optional(object, "error")
            .map(|v| parse_text(v, &child(path, "error")))
            .transpose()?,
    })
}

fn parse_remote_sync(value: &Value, path: &str) -> Result<RemoteSyncStatus, FormatError> {
    let object = expect_object(value, path)?;
    Ok(RemoteSyncStatus {
        status: parse_status(required(object, path, "status")?, &child(path, "status"))?,
        uploaded_mb: optional(object, "uploaded_mb")
            .map(|v| parse_whole_number(v, &child(path, "uploaded_mb")))
            .transpose()?,
        error: optional(object, "error")
            .map(|v| parse_text(v, &child(path, "error")))
            .transpose()?,
    })
}

fn format_error(json_path: &str, message: impl Into<String>) -> FormatError {
    FormatError {
        json_path: json_path.to_string(),
        message: message.into(),
    }
}

/// The JSONPath of `key` inside `parent`: dotted when the key is a plain name, bracketed and
/// quoted otherwise (`$.databases["my.db"]`).
fn child(parent: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{parent}.{key}")
    } else {
        let quoted = serde_json::to_string(key).expect("a string always serialises");
        format!("{parent}[{quoted}]")
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expect_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, FormatError> {
    value.as_object().ok_or_else(|| {
        format_error(
            path,
            format!("expected an object, found {}", kind_of(value)),
        )
    })
}

fn required<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Value, FormatError> {
    optional(object, key).ok_or_else(|| format_error(&child(path, key), "missing"))
}

/// `null` counts as absent: scripts that build JSON with jq or printf often write it.
fn optional<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn parse_time(value: &Value, path: &str) -> Result<DateTime<Utc>, FormatError> {
    let text = value.as_str().ok_or_else(|| {
        format_error(
            path,
            format!("expected an RFC 3339 time, found {}", kind_of(value)),
        )
    })?;
    text.trim().parse::<DateTime<Utc>>().map_err(|e| {
        format_error(
            path,
            format!("{text:?} is not an RFC 3339 time with offset like 2026-02-27T02:15:00Z: {e}"),
        )
    })
}

/// Accepted spellings of a status; see the module comment.
fn parse_status(value: &Value, path: &str) -> Result<BackupStatus, FormatError> {
    let text = value.as_str().ok_or_else(|| {
        format_error(path, format!("expected a string, found {}", kind_of(value)))
    })?;
    match text.trim().to_ascii_lowercase().as_str() {
        "success" | "ok" | "succeeded" => Ok(BackupStatus::Success),
        "failed" | "error" | "failure" => Ok(BackupStatus::Failed),
        _ => Err(format_error(
            path,
            format!(
                "unknown status {text:?}; expected success (or ok, succeeded) or failed (or \
                 error, failure)"
            ),
        )),
    }
}

/// A non-negative number, rounded to the nearest whole one; a numeric string counts too,
/// because shell scripts often quote what `du` printed.
fn parse_whole_number(value: &Value, path: &str) -> Result<u64, FormatError> {
    let number = match value {
        Value::Number(n) => {
            if let Some(whole) = n.as_u64() {
                return Ok(whole);
            }
            n.as_f64()
        }
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let not_a_number = || {
        format_error(
            path,
            format!("expected a non-negative number, found {value}"),
        )
    };
    let number = number.ok_or_else(not_a_number)?;
    // 2^64 as f64; anything at or above it does not fit.
    if !number.is_finite() || number < 0.0 || number.round() >= 18_446_744_073_709_551_616.0 {
        return Err(not_a_number());
    }
    Ok(number.round() as u64)
}

fn parse_text(value: &Value, path: &str) -> Result<String, FormatError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format_error(path, format!("expected a string, found {}", kind_of(value))))
}

// === writing ===

/// Replaces the file at `path` with `status` so a reader sees the old file or the new one,
/// never a mix: writes `<path>.tmp` in the same directory, flushes it to disk, renames it over
/// `path` and flushes the directory so the rename survives a crash. The file gets mode 0644
/// whatever the umask, because monitoring that reads it usually runs as another user.
///
/// Blocking: call it from the blocking pool.
pub fn write_atomic(path: &Path, status: &StatusFile) -> std::io::Result<()> {
    let mut temporary_name = path.as_os_str().to_os_string();
    temporary_name.push(".tmp");
    let temporary_path = PathBuf::from(temporary_name);
    let written = write_and_rename(&temporary_path, path, status.to_json().as_bytes());
    if written.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&temporary_path);
    }
    written
}

fn write_and_rename(temporary_path: &Path, path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o644);
    }
    let mut file = options.open(temporary_path)?;
    // The mode above is filtered by the umask, and a `.tmp` left by a crash keeps its old mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temporary_path, path)?;
    // A rename is durable once its directory is; other systems cannot open a directory.
    #[cfg(unix)]
    {
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        fs::File::open(directory)?.sync_all()?;
    }
    Ok(())
}

// === conversions ===

/// The status file the agent writes after a run, from the reports of its runs (any order):
/// each database's entry comes from the latest report that mentions it (by `finished_at`;
/// of two reports finished at the same instant the later in the slice wins); `last_run` and
/// `duration_seconds` are those of the newest report; `remote_sync` is the one of the newest
/// report that has one. `None` when there are no reports.
///
/// Sizes are MiB rounded to nearest, except that a non-empty backup is at least 1: a small
/// database showing `0` would read as an empty, broken dump.
pub fn from_reports(reports: &[BackupReport]) -> Option<StatusFile> {
    let mut oldest_first: Vec<&BackupReport> = reports.iter().collect();
    // A stable sort keeps slice order among equal times, so the later one is applied last.
    oldest_first.sort_by_key(|r| r.finished_at);
    let newest = *oldest_first.last()?;

    let mut databases = BTreeMap::new();
    for report in &oldest_first {
        for outcome in &report.databases {
            databases.insert(
                outcome.key.clone(),
                DatabaseStatus {
                    status: outcome.status,
                    size_mb: outcome.size_bytes.map(bytes_to_mb),
                    error: outcome.error.clone(),
                },
            );
        }
    }
    let remote_sync = oldest_first
        .iter()
        .rev()
        .find_map(|r| r.remote_sync.as_ref())
        .map(|sync| RemoteSyncStatus {
            status: sync.status,
            uploaded_mb: Some(bytes_to_mb(sync.uploaded_bytes)),
            error: sync.error.clone(),
        });
    let duration_ms = (newest.finished_at - newest.started_at)
        .num_milliseconds()
        .max(0) as u64;
    Some(StatusFile {
        last_run: whole_seconds(newest.finished_at),
        duration_seconds: duration_ms / 1000 + u64::from(duration_ms % 1000 >= 500),
        databases,
        remote_sync,
    })
}

/// The report the agent sends the relay for a watched status file at `path`, read at `read_at`.
///
/// `run_id` is `sf_` and 80 bits of SHA-256 over `path` and `last_run`: re-reading an
/// unchanged file yields the same id, so the relay stores the run once. A `last_run` in the
/// future (a script on a host with a skewed clock, a hand-edited file) is reported as finished
/// at `read_at`, so the relay never holds a backup that cannot go stale.
pub fn to_report(file: &StatusFile, path: &str, read_at: DateTime<Utc>) -> BackupReport {
    let finished_at = file.last_run.min(read_at);
    let started_at = i64::try_from(file.duration_seconds)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .and_then(|duration| finished_at.checked_sub_signed(duration))
        .unwrap_or(finished_at);
    let databases = file
        .databases
        .iter()
        .map(|(name, entry)| DatabaseOutcome {
            key: name.clone(),
            container: None,
            database: None,
            engine: None,
            status: entry.status,
            error: entry.error.clone(),
            backup_id: None,
            size_bytes: entry.size_mb.map(|mb| mb.saturating_mul(BYTES_PER_MB)),
            duration_ms: None,
        })
        .collect();
    let remote_sync = file.remote_sync.as_ref().map(|sync| RemoteSync {
        status: sync.status,
        uploaded_bytes: sync.uploaded_mb.unwrap_or(0).saturating_mul(BYTES_PER_MB),
        error: sync.error.clone(),
    });
    BackupReport {
        run_id: status_file_run_id(path, file.last_run),
        source: ReportSource::StatusFile {
            path: path.to_string(),
        },
        job: None,
        trigger: None,
        started_at,
        finished_at,
        databases,
        remote_sync,
        pruned: 0,
    }
}

/// True when the file's last run is more than `STALE_AFTER_HOURS` before `now`.
pub fn is_stale(file: &StatusFile, now: DateTime<Utc>) -> bool {
    now - file.last_run > TimeDelta::hours(STALE_AFTER_HOURS)
}

fn status_file_run_id(path: &str, last_run: DateTime<Utc>) -> String {
    let mut hashed = digest::Context::new(&digest::SHA256);
    // NUL cannot occur in a path, so path and time cannot run into each other.
    hashed.update(path.as_bytes());
    hashed.update(b"\0");
    hashed.update(
        last_run
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
            .as_bytes(),
    );
    format!("sf_{}", hex::encode(&hashed.finish().as_ref()[..10]))
}

fn bytes_to_mb(bytes: u64) -> u64 {
    let rounded = bytes / BYTES_PER_MB + u64::from(bytes % BYTES_PER_MB >= BYTES_PER_MB / 2);
    if bytes > 0 {
        rounded.max(1)
    } else {
        0
    }
}

/// The file holds whole seconds; truncating here keeps what the agent writes equal to what it
/// would read back.
fn whole_seconds(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(time.timestamp(), 0).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The users' file, byte for byte as they sent it.
    const USERS_EXAMPLE: &str = r#"{
  "last_run": "2026-02-27T02:15:00Z",
  "duration_seconds": 342,
  "databases": {
    "chatwoot": { "status": "success", "size_mb": 45 },
    "ghost": { "status": "success", "size_mb": 12 },
    "nextcloud": { "status": "failed", "error": "connection refused" }
  },
  "remote_sync": { "status": "success", "uploaded_mb": 230 }
}"#;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn database(status: BackupStatus, size_mb: Option<u64>, error: Option<&str>) -> DatabaseStatus {
        DatabaseStatus {
            status,
            size_mb,
            error: error.map(str::to_string),
        }
    }

    fn users_example_parsed() -> StatusFile {
        StatusFile {
            last_run: at("2026-02-27T02:15:00Z"),
            duration_seconds: 342,
            databases: BTreeMap::from([
                (
                    "chatwoot".to_string(),
                    database(BackupStatus::Success, Some(45), None),
                ),
                (
                    "ghost".to_string(),
                    database(BackupStatus::Success, Some(12), None),
                ),
                (
                    "nextcloud".to_string(),
                    database(BackupStatus::Failed, None, Some("connection refused")),
                ),
            ]),
            remote_sync: Some(RemoteSyncStatus {
                status: BackupStatus::Success,
                uploaded_mb: Some(230),
                error: None,
            }),
        }
    }

    /// Parses `text` and compares with `expected`.
    fn check(text: &str, expected: &StatusFile) {
        match StatusFile::from_json(text) {
            Ok(parsed) => assert_eq!(&parsed, expected, "{text}"),
            Err(e) => panic!("{e}\n{text}"),
        }
    }

    /// `text` must be refused with an error at `json_path` whose message contains `fragment`.
    fn check_invalid(text: &str, json_path: &str, fragment: &str) {
        let error = StatusFile::from_json(text).unwrap_err();
        assert_eq!(error.json_path, json_path, "{error}");
        assert!(error.message.contains(fragment), "{error}");
    }

    /// The users' example with one database entry replaced.
    fn with_nextcloud(entry: Value) -> String {
        let mut value: Value = serde_json::from_str(USERS_EXAMPLE).unwrap();
        value["databases"]["nextcloud"] = entry;
        value.to_string()
    }

    fn report(
        run_id: &str,
        started_at: &str,
        finished_at: &str,
        databases: Vec<DatabaseOutcome>,
        remote_sync: Option<RemoteSync>,
    ) -> BackupReport {
        BackupReport {
            run_id: run_id.into(),
            source: ReportSource::Agent,
            job: None,
            trigger: None,
            started_at: at(started_at),
            finished_at: at(finished_at),
            databases,
            remote_sync,
            pruned: 0,
        }
    }

    fn outcome(key: &str, status: BackupStatus, size_bytes: Option<u64>) -> DatabaseOutcome {
        DatabaseOutcome {
            key: key.into(),
            container: None,
            database: None,
            engine: None,
            status,
            error: (status == BackupStatus::Failed).then(|| format!("{key} broke")),
            backup_id: None,
            size_bytes,
            duration_ms: None,
        }
    }

    #[test]
    fn the_users_example_round_trips_exactly() {
        check(USERS_EXAMPLE, &users_example_parsed());
        let written = StatusFile::from_json(USERS_EXAMPLE).unwrap().to_json();
        let original: Value = serde_json::from_str(USERS_EXAMPLE).unwrap();
        let rewritten: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(rewritten, original, "{written}");
        assert!(
            written.contains(r#""last_run": "2026-02-27T02:15:00Z""#),
            "{written}"
        );
    }

    #[test]
    fn written_times_have_whole_seconds_and_z() {
        let mut file = users_example_parsed();
        file.last_run = at("2026-02-27T02:15:00.987654Z");
        file.remote_sync = None;
        let value: Value = serde_json::from_str(&file.to_json()).unwrap();
        assert_eq!(value["last_run"], json!("2026-02-27T02:15:00Z"));
        assert!(value.get("remote_sync").is_none());
        assert_eq!(
            value["databases"]["nextcloud"],
            json!({"status": "failed", "error": "connection refused"})
        );
    }

    #[test]
    fn reading_is_lenient_where_scripts_differ() {
        let mut expected = users_example_parsed();
        expected.remote_sync = None;
        expected.duration_seconds = 343;
        expected.databases.insert(
            "chatwoot".into(),
            database(BackupStatus::Success, Some(46), None),
        );
        expected.databases.insert(
            "ghost".into(),
            database(BackupStatus::Success, Some(12), None),
        );
        check(
            r#"{
              "last_run": "2026-02-27T03:15:00+01:00",
              "duration_seconds": 342.5,
              "host": "web-1",
              "databases": {
                "chatwoot": { "status": "OK", "size_mb": 45.6, "path": "/backups/chatwoot.sql.gz" },
                "ghost": { "status": "success", "size_mb": "12", "error": null },
                "nextcloud": { "status": "error", "size_mb": null, "error": "connection refused" }
              }
            }"#,
            &expected,
        );
        // remote_sync: null is the same as none at all, and duration_seconds may be missing.
        expected.duration_seconds = 0;
        check(
            r#"{"last_run": "2026-02-27T02:15:00Z", "remote_sync": null, "databases": {
                "chatwoot": {"status": "Succeeded", "size_mb": 46},
                "ghost": {"status": "ok", "size_mb": 11.5},
                "nextcloud": {"status": "FAILURE", "error": "connection refused"}}}"#,
            &expected,
        );
    }

    #[test]
    fn errors_name_where_and_what() {
        check_invalid("{", "$", "not JSON");
        check_invalid("[]", "$", "expected an object, found an array");
        check_invalid(r#"{"databases": {}}"#, "$.last_run", "missing");
        check_invalid(
            r#"{"last_run": "2026-02-27 02:15:00", "databases": {}}"#,
            "$.last_run",
            "2026-02-27 02:15:00",
        );
        check_invalid(
            r#"{"last_run": "2026-02-27T02:15:00Z"}"#,
            "$.databases",
            "missing",
        );
        check_invalid(
            &with_nextcloud(json!({"status": "maybe"})),
            "$.databases.nextcloud.status",
            "unknown status \"maybe\"",
        );
        check_invalid(
            &with_nextcloud(json!({"error": "x"})),
            "$.databases.nextcloud.status",
            "missing",
        );
        check_invalid(
            &with_nextcloud(json!({"status": "ok", "size_mb": -3})),
            "$.databases.nextcloud.size_mb",
            "non-negative number",
        );
        check_invalid(
            &with_nextcloud(json!({"status": "ok", "size_mb": "big"})),
            "$.databases.nextcloud.size_mb",
            "non-negative number",
        );
        check_invalid(
            &with_nextcloud(json!({"status": "failed", "error": 7})),
            "$.databases.nextcloud.error",
            "expected a string",
        );
        check_invalid(
            r#"{"last_run": "2026-02-27T02:15:00Z", "databases": {"my.db": 1}}"#,
            "$.databases[\"my.db\"]",
            "expected an object, found a number",
        );
        check_invalid(
            r#"{"last_run": "2026-02-27T02:15:00Z", "databases": {},
                "remote_sync": {"status": "ok", "uploaded_mb": true}}"#,
            "$.remote_sync.uploaded_mb",
            "non-negative number",
        );
    }

    #[test]
    fn write_atomic_replaces_the_file_with_mode_0644() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("backup-status.json");
        fs::write(&path, "old").unwrap();
        let file = users_example_parsed();
        write_atomic(&path, &file).unwrap();
        assert_eq!(read(&path).unwrap(), file);
        assert!(!directory.path().join("backup-status.json.tmp").exists());
        let on_disk: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        let original: Value = serde_json::from_str(USERS_EXAMPLE).unwrap();
        assert_eq!(on_disk, original);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn read_errors_name_the_path() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing.json");
        let error = read(&missing).unwrap_err().to_string();
        assert!(error.contains(&missing.display().to_string()), "{error}");

        let broken = directory.path().join("broken.json");
        fs::write(&broken, r#"{"last_run": 5, "databases": {}}"#).unwrap();
        let error = read(&broken).unwrap_err().to_string();
        assert!(error.contains(&broken.display().to_string()), "{error}");
        assert!(error.contains("$.last_run"), "{error}");

        let huge = directory.path().join("huge.json");
        fs::write(&huge, vec![b' '; MAX_STATUS_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(read(&huge), Err(StatusError::TooLarge { .. })));
    }

    #[test]
    fn from_reports_takes_each_database_from_its_latest_report() {
        let mib = BYTES_PER_MB;
        let older = report(
            "run_1",
            "2026-02-26T02:00:00Z",
            "2026-02-26T02:03:00Z",
            vec![
                outcome("pg/app", BackupStatus::Success, Some(40 * mib)),
                outcome("pg/wiki", BackupStatus::Success, Some(3 * mib)),
            ],
            Some(RemoteSync {
                status: BackupStatus::Success,
                uploaded_bytes: 43 * mib,
                error: None,
            }),
        );
        let newer = report(
            "run_2",
            "2026-02-27T02:09:00.000Z",
            "2026-02-27T02:14:41.600Z",
            vec![
                outcome("pg/app", BackupStatus::Failed, None),
                outcome("redis/redis", BackupStatus::Success, Some(1000)),
                outcome("mysql/empty", BackupStatus::Success, Some(0)),
                outcome("mysql/shop", BackupStatus::Success, Some(mib * 5 / 2)),
            ],
            None,
        );
        let file = from_reports(&[newer.clone(), older.clone()]).unwrap();
        assert_eq!(file, from_reports(&[older, newer]).unwrap());
        assert_eq!(file.last_run, at("2026-02-27T02:14:41Z"));
        // 5 min 41.6 s.
        assert_eq!(file.duration_seconds, 342);
        assert_eq!(
            file.databases,
            BTreeMap::from([
                (
                    "pg/app".to_string(),
                    database(BackupStatus::Failed, None, Some("pg/app broke")),
                ),
                (
                    "pg/wiki".to_string(),
                    database(BackupStatus::Success, Some(3), None),
                ),
                (
                    "redis/redis".to_string(),
                    database(BackupStatus::Success, Some(1), None),
                ),
                (
                    "mysql/empty".to_string(),
                    database(BackupStatus::Success, Some(0), None),
                ),
                (
                    "mysql/shop".to_string(),
                    database(BackupStatus::Success, Some(3), None),
                ),
            ])
        );
        assert_eq!(
            file.remote_sync,
            Some(RemoteSyncStatus {
                status: BackupStatus::Success,
                uploaded_mb: Some(43),
                error: None,
            })
        );
        assert_eq!(from_reports(&[]), None);
    }

    #[test]
    fn equal_finish_times_are_resolved_by_slice_order() {
        let first = report(
            "run_1",
            "2026-02-27T02:00:00Z",
            "2026-02-27T02:10:00Z",
            vec![outcome("pg/app", BackupStatus::Success, Some(BYTES_PER_MB))],
            None,
        );
        let second = report(
            "run_2",
            "2026-02-27T02:05:00Z",
            "2026-02-27T02:10:00Z",
            vec![outcome("pg/app", BackupStatus::Failed, None)],
            None,
        );
        let file = from_reports(&[first, second]).unwrap();
        assert_eq!(file.databases["pg/app"].status, BackupStatus::Failed);
        assert_eq!(file.duration_seconds, 300);
    }

    #[test]
    fn a_watched_file_becomes_a_report_with_a_stable_run_id() {
        let file = users_example_parsed();
        let path = "/srv/backups/backup-status.json";
        let read_at = at("2026-02-27T09:00:00Z");
        let sent = to_report(&file, path, read_at);
        assert_eq!(
            sent.source,
            ReportSource::StatusFile {
                path: path.to_string()
            }
        );
        assert_eq!(sent.finished_at, at("2026-02-27T02:15:00Z"));
        assert_eq!(sent.started_at, at("2026-02-27T02:09:18Z"));
        assert_eq!(sent.databases.len(), 3);
        assert_eq!(sent.databases[0].key, "chatwoot");
        assert_eq!(sent.databases[0].size_bytes, Some(45 * BYTES_PER_MB));
        assert_eq!(sent.databases[2].status, BackupStatus::Failed);
        assert_eq!(
            sent.databases[2].error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(
            sent.remote_sync,
            Some(RemoteSync {
                status: BackupStatus::Success,
                uploaded_bytes: 230 * BYTES_PER_MB,
                error: None,
            })
        );
        assert_eq!(sent.failed(), 1);

        // Same file read later: same run. Other path or other run: other id.
        let again = to_report(&file, path, read_at + TimeDelta::hours(1));
        assert_eq!(again.run_id, sent.run_id);
        assert!(
            sent.run_id.starts_with("sf_") && sent.run_id.len() == 23,
            "{}",
            sent.run_id
        );
        assert_ne!(to_report(&file, "/other.json", read_at).run_id, sent.run_id);
        let mut next_run = file.clone();
        next_run.last_run = at("2026-02-28T02:15:00Z");
        assert_ne!(to_report(&next_run, path, read_at).run_id, sent.run_id);

        // A last_run in the future is reported as read now; its id still follows the file.
        let future = to_report(&next_run, path, read_at);
        assert_eq!(future.finished_at, read_at);
        assert_eq!(future.started_at, read_at - TimeDelta::seconds(342));
    }

    #[test]
    fn a_file_is_stale_after_48_hours() {
        let file = users_example_parsed();
        let last_run = file.last_run;
        assert!(!is_stale(&file, last_run));
        assert!(!is_stale(&file, last_run + TimeDelta::hours(48)));
        assert!(is_stale(
            &file,
            last_run + TimeDelta::hours(48) + TimeDelta::seconds(1)
        ));
    }
}
