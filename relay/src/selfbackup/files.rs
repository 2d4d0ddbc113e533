//! The files of one relay backup and how they are made: `<name>.sqlite.zst` or `<name>.pgdump`
//! (`.age` when encrypted), `<name>.relay-key` (`.age` likewise) and `<name>.json`, all
//! owner-only; plus the retention plan over backup names.

use super::{err, BackupError};
use crate::model::relaybackup::{Manifest, SQLITE};
use flotilla_offsite::config::RetentionConfig;
use flotilla_offsite::encrypt::{self, Recipients};
use flotilla_offsite::retention::{plan, RetentionItem};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The paths of one backup's files.
#[derive(Clone, Debug)]
pub struct BackupFiles {
    pub snapshot: PathBuf,
    pub key: PathBuf,
    pub manifest: PathBuf,
}

impl BackupFiles {
    pub fn new(dir: &Path, name: &str, backend: &str, encrypted: bool) -> BackupFiles {
        let age = if encrypted { ".age" } else { "" };
        let ext = if backend == SQLITE {
            "sqlite.zst"
        } else {
            "pgdump"
        };
        BackupFiles {
            snapshot: dir.join(format!("{name}.{ext}{age}")),
            key: dir.join(format!("{name}.relay-key{age}")),
            manifest: dir.join(format!("{name}.json")),
        }
    }

    pub fn file_name(&self, path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Removes what a failed run left.
    pub fn remove_all(&self) {
        for p in [&self.snapshot, &self.key, &self.manifest] {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))
}

pub fn create_private(path: &Path) -> Result<File, BackupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut f = create_private(path)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

/// Size and SHA-256 (hex) of a file.
pub fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut f =
        File::open(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((size, hex::encode(ctx.finish().as_ref())))
}

/// Copies `input` to `out`, encrypted to `recipients` unless there are none.
fn write_maybe_encrypted(
    mut input: impl Read,
    out: &Path,
    recipients: &Recipients,
) -> Result<(), BackupError> {
    let file = BufWriter::new(create_private(out)?);
    let fail = |e: io::Error| err(format!("cannot write {}: {e}", out.display()));
    let file = if recipients.is_empty() {
        let mut file = file;
        io::copy(&mut input, &mut file).map_err(fail)?;
        file
    } else {
        let mut w = encrypt::encrypt_to(recipients, file).map_err(|e| err(e.to_string()))?;
        io::copy(&mut input, &mut w).map_err(fail)?;
        w.finish().map_err(fail)?
    };
    file.into_inner()
        .map_err(|e| fail(e.into_error()))?
        .sync_all()
        .map_err(fail)
}

/// SQLite: snapshot `db` (online), compress with zstd, encrypt if asked, into `files.snapshot`.
pub fn sqlite_file(
    db: &Path,
    files: &BackupFiles,
    level: i32,
    recipients: &Recipients,
) -> Result<(), BackupError> {
    let tmp = files.snapshot.with_extension("snapshot-tmp");
    let _ = std::fs::remove_file(&tmp);
    let made = (|| {
        crate::store::snapshot::sqlite_snapshot(db, &tmp)
            .map_err(|e| err(format!("snapshot of {}: {e}", db.display())))?;
        let raw =
            File::open(&tmp).map_err(|e| err(format!("cannot read {}: {e}", tmp.display())))?;
        let compressed =
            zstd::stream::read::Encoder::new(raw, level).map_err(|e| err(format!("zstd: {e}")))?;
        write_maybe_encrypted(compressed, &files.snapshot, recipients)
    })();
    let _ = std::fs::remove_file(&tmp);
    made
}

/// The copy of `relay.key`, encrypted like the snapshot; its SHA-256.
pub fn key_file(
    source: &Path,
    files: &BackupFiles,
    recipients: &Recipients,
) -> Result<String, BackupError> {
    let key =
        File::open(source).map_err(|e| err(format!("cannot read {}: {e}", source.display())))?;
    write_maybe_encrypted(key, &files.key, recipients)?;
    Ok(sha256_file(&files.key)?.1)
}

/// `configured`, else `name` on PATH, else the newest `/usr/lib/postgresql/*/bin/<name>`.
pub fn pg_tool(configured: Option<&Path>, name: &str) -> Result<PathBuf, BackupError> {
    if let Some(p) = configured {
        // pg_restore lives beside the configured pg_dump.
        let p = if name == "pg_dump" {
            p.to_path_buf()
        } else {
            p.with_file_name(name)
        };
        return if p.is_file() {
            Ok(p)
        } else {
            Err(err(format!(
                "[backup] pg_dump: {} does not exist",
                p.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        err(format!(
            "{name} not found on PATH nor under /usr/lib/postgresql/*/bin: install the \
             PostgreSQL client or set [backup] pg_dump"
        ))
    })
}

/// A PostgreSQL tool's command with the database's password in its environment only.
pub fn pg_command(tool: &Path, password: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(tool);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    cmd
}

/// PostgreSQL: `pg_dump --format=custom` into `files.snapshot` (encrypted if asked).
pub async fn pg_dump_file(
    pg_dump: &Path,
    url: &str,
    password: Option<&str>,
    files: &BackupFiles,
    recipients: &Recipients,
) -> Result<(), BackupError> {
    let tmp = files.snapshot.with_extension("dump-tmp");
    let out = pg_command(pg_dump, password)
        .arg("--format=custom")
        .arg("--no-owner")
        .arg("--file")
        .arg(&tmp)
        .arg("--dbname")
        .arg(crate::store::libpq_url(url))
        .output()
        .await
        .map_err(|e| err(format!("cannot run {}: {e}", pg_dump.display())))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(format!(
            "{} failed ({}): {}",
            pg_dump.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let (tmp2, snapshot, recipients) = (tmp.clone(), files.snapshot.clone(), recipients.clone());
    let made = tokio::task::spawn_blocking(move || {
        let f =
            File::open(&tmp2).map_err(|e| err(format!("cannot read {}: {e}", tmp2.display())))?;
        write_maybe_encrypted(f, &snapshot, &recipients)
    })
    .await
    .map_err(|e| err(format!("backup task failed: {e}")))?;
    let _ = std::fs::remove_file(&tmp);
    made
}

/// The manifests in `dir` (unreadable ones are skipped with a warning), newest first.
pub fn local_manifests(dir: &Path) -> Result<Vec<Manifest>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(format!("cannot list {}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("relay-") && name.ends_with(".json")) {
            continue;
        }
        match std::fs::read_to_string(e.path())
            .map_err(|e| e.to_string())
            .and_then(|t| Manifest::parse(&t))
        {
            Ok(m) => out.push(m),
            Err(reason) => tracing::warn!(file = %e.path().display(), %reason, "skipping"),
        }
    }
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// Whether a file belongs to backup `name` (`<name>.<anything>`).
pub fn belongs_to(file: &str, name: &str) -> bool {
    file.strip_prefix(name).is_some_and(|r| r.starts_with('.'))
}

/// Whether `key` (`relay/<file>`) is the snapshot of backup `name`.
pub fn is_snapshot_key(key: &str, name: &str) -> bool {
    let file = key.rsplit('/').next().unwrap_or_default();
    belongs_to(file, name) && (file.contains(".sqlite.zst") || file.contains(".pgdump"))
}

pub fn remove_local(dir: &Path, name: &str) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if belongs_to(&e.file_name().to_string_lossy(), name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The backups of `names` that `policy` does not keep (names are `relay-<UTC time>`; days are
/// taken in the relay's local time zone, like the agent's).
pub fn to_delete(names: &[String], policy: &RetentionConfig) -> Vec<String> {
    let items: Vec<RetentionItem> = names
        .iter()
        .filter_map(|n| {
            let at =
                chrono::NaiveDateTime::parse_from_str(n.strip_prefix("relay-")?, "%Y%m%dT%H%M%SZ")
                    .ok()?
                    .and_utc();
            Some(RetentionItem {
                id: n.clone(),
                finished_at: at,
            })
        })
        .collect();
    plan(&items, policy, &chrono::Local).delete
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn retention_over_names_keeps_14_daily_8_weekly_3_monthly() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap();
        // Two backups a day for a year.
        let names: Vec<String> = (0..730)
            .map(|i| crate::model::relaybackup::backup_name(start + Duration::hours(12 * i)))
            .collect();
        let policy = crate::config::backup::RelayRetention::default().policy();
        let doomed = to_delete(&names, &policy);
        let kept = names.len() - doomed.len();
        // 14 days + up to 8 weeks + up to 3 months, some backups kept for several reasons.
        assert!((14..=25).contains(&kept), "kept {kept}");
        let newest = names.last().unwrap();
        assert!(!doomed.contains(newest), "the newest backup is always kept");
        // Names that are not backup names are never planned, so never deleted.
        assert!(to_delete(&["notes.txt".to_string()], &policy).is_empty());
    }

    #[test]
    fn files_belong_to_their_backup_only() {
        assert!(belongs_to(
            "relay-20260101T000000Z.json",
            "relay-20260101T000000Z"
        ));
        assert!(!belongs_to(
            "relay-20260101T000000Z1.json",
            "relay-20260101T000000Z"
        ));
        assert!(is_snapshot_key(
            "relay/relay-20260101T000000Z.sqlite.zst.age",
            "relay-20260101T000000Z"
        ));
        assert!(!is_snapshot_key(
            "relay/relay-20260101T000000Z.relay-key",
            "relay-20260101T000000Z"
        ));
    }
}
