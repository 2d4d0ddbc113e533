//! The relay backs up its own database (issue 15 item 8): one run makes a consistent snapshot
//! (SQLite: `VACUUM INTO` on its own connection while the relay serves; PostgreSQL:
//! `pg_dump --format=custom`), compresses it (zstd, SQLite only: the custom format compresses
//! itself), optionally encrypts it and the copy of `relay.key` to age recipients, writes a
//! manifest with its SHA-256, copies the set to every destination of `[backup]` (directory or
//! S3-compatible: `flotilla-offsite`, shared with the agent) and prunes local and remote copies
//! grandfather-father-son. Every run is recorded in the store (`relay_backups`), which the
//! `relay_backup` alert reads.
//!
//! [`run_scheduled`] is the engine a relay runs under the `relay-backup` lease (so at most one
//! relay of a cluster backs up at a time); `flotilla-relay backup run|list|verify` and
//! `restore` call [`run_once`], [`list`], [`verify`] and [`restore`] (`selfbackup/restore.rs`).

mod files;
mod restore;

use crate::config::backup::RelayBackupConfig;
use crate::config::RelayConfig;
use crate::model::relaybackup::{
    backup_name, Manifest, RelayBackupRun, RunStatus, MANIFEST_FORMAT, POSTGRES, SQLITE,
};
use crate::store::{snapshot, Store};
use files::{sha256_file, write_private, BackupFiles};
use flotilla_offsite::destination::Destination;
use flotilla_offsite::encrypt::{self, Recipients};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use restore::{restore, verify, RestoreOptions};

/// Key prefix of the relay's backups at a destination (after the destination's own prefix).
pub const REMOTE_PREFIX: &str = "relay";
/// The SQLite file in the data dir (`server::DB_FILE`; not imported, so the composition root
/// and this engine do not import each other).
pub const DB_FILE: &str = "relay.db";
/// The lease the scheduled engine runs under.
pub const LEASE: &str = "relay-backup";

flotilla_shared::message_error!(
    /// Why a backup, verify or restore failed; the message names what was wrong.
    pub BackupError
);

fn err(message: impl Into<String>) -> BackupError {
    BackupError(message.into())
}

/// What a run needs: the store (to record it), where the database is, and `[backup]`.
#[derive(Clone)]
pub struct SelfBackup {
    pub store: Store,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub database_password_file: Option<PathBuf>,
    pub config: RelayBackupConfig,
    /// Recorded with each run: the relay's cluster id, or `cli`.
    pub relay_id: String,
}

impl SelfBackup {
    pub fn new(store: Store, config: &RelayConfig, relay_id: impl Into<String>) -> SelfBackup {
        SelfBackup {
            store,
            data_dir: config.data_dir.clone(),
            database_url: config.database_url.clone(),
            database_password_file: config.database_password_file.clone(),
            config: config.backup.clone(),
            relay_id: relay_id.into(),
        }
    }

    /// The local directory of copies and manifests.
    pub fn dir(&self) -> PathBuf {
        local_dir(&self.data_dir, &self.config)
    }

    fn backend(&self) -> &'static str {
        if self.database_url.is_some() {
            POSTGRES
        } else {
            SQLITE
        }
    }
}

/// `[backup] dir`, default `<data_dir>/backups`.
pub fn local_dir(data_dir: &Path, config: &RelayBackupConfig) -> PathBuf {
    config
        .dir
        .clone()
        .unwrap_or_else(|| data_dir.join("backups"))
}

/// The configured destinations, each checked.
pub fn destinations(config: &RelayBackupConfig) -> Result<Vec<Destination>, BackupError> {
    config
        .destinations
        .iter()
        .map(|c| Destination::from_config(c).map_err(|e| err(e.to_string())))
        .collect()
}

fn recipients(config: &RelayBackupConfig) -> Result<Recipients, BackupError> {
    let mut lines = config.age_recipients.clone();
    if let Some(path) = &config.age_recipients_file {
        lines.extend(encrypt::read_recipients_file(path).map_err(|e| err(e.to_string()))?);
    }
    encrypt::parse_recipients(&lines).map_err(|e| err(format!("[backup] {e}")))
}

/// Runs one backup now and records it; the manifest of the new backup.
pub async fn run_once(ctx: &SelfBackup) -> Result<Manifest, BackupError> {
    let started_at = crate::store::now();
    let mut run = RelayBackupRun {
        name: backup_name(started_at),
        relay_id: ctx.relay_id.clone(),
        backend: ctx.backend().to_string(),
        started_at,
        finished_at: None,
        status: RunStatus::Running,
        error: None,
        size: None,
        locations: Vec::new(),
    };
    let fresh = ctx
        .store
        .start_relay_backup(run.clone())
        .await
        .map_err(|e| err(format!("cannot record the backup run: {e}")))?;
    if !fresh {
        return Err(err(format!(
            "a backup named {} exists already (one per second)",
            run.name
        )));
    }
    let outcome = produce(ctx, &run.name, &mut run.locations).await;
    run.finished_at = Some(crate::store::now());
    match &outcome {
        Ok(m) => {
            run.status = RunStatus::Ok;
            run.size = Some(m.size);
        }
        Err(e) => {
            run.status = RunStatus::Failed;
            run.error = Some(e.to_string());
        }
    }
    if let Err(e) = ctx.store.finish_relay_backup(run.clone()).await {
        tracing::warn!(backup = %run.name, error = %e, "cannot record the end of the backup run");
    }
    let manifest = outcome?;
    // Pruning after a good run only, so a failing series never loses its last copies.
    if let Err(e) = prune(ctx).await {
        tracing::warn!(error = %e, "relay backup retention failed");
    }
    Ok(manifest)
}

/// Makes the files of backup `name`, then copies them off-site; `locations` gets each copy.
async fn produce(
    ctx: &SelfBackup,
    name: &str,
    locations: &mut Vec<String>,
) -> Result<Manifest, BackupError> {
    let recipients = recipients(&ctx.config)?;
    let destinations = destinations(&ctx.config)?;
    let dir = ctx.dir();
    files::create_private_dir(&dir)?;
    let files = BackupFiles::new(&dir, name, ctx.backend(), !recipients.is_empty());
    let made = match ctx.backend() {
        SQLITE => {
            let (db, files, recipients) = (
                ctx.data_dir.join(DB_FILE),
                files.clone(),
                recipients.clone(),
            );
            let level = ctx.config.compression_level;
            blocking(move || files::sqlite_file(&db, &files, level, &recipients)).await
        }
        _ => {
            let url = ctx.database_url.clone().unwrap_or_default();
            let password = read_password(ctx.database_password_file.as_deref())?;
            let pg_dump = files::pg_tool(ctx.config.pg_dump.as_deref(), "pg_dump")?;
            files::pg_dump_file(&pg_dump, &url, password.as_deref(), &files, &recipients).await
        }
    };
    if let Err(e) = made {
        files.remove_all();
        return Err(e);
    }
    let key_source = ctx.data_dir.join(crate::keys::RELAY_KEY_FILE);
    let key = {
        let (files, recipients) = (files.clone(), recipients.clone());
        blocking(move || files::key_file(&key_source, &files, &recipients)).await
    };
    let key_sha256 = match key {
        Ok(sum) => sum,
        Err(e) => {
            files.remove_all();
            return Err(e);
        }
    };
    let (size, sha256) = {
        let path = files.snapshot.clone();
        blocking(move || sha256_file(&path)).await?
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: name.to_string(),
        relay_version: flotilla_shared::release::version().to_string(),
        schema_version: snapshot::schema_version(),
        backend: ctx.backend().to_string(),
        created_at: crate::store::now(),
        file: files.file_name(&files.snapshot),
        size,
        sha256,
        encrypted: !recipients.is_empty(),
        key_file: Some(files.file_name(&files.key)),
        key_sha256: Some(key_sha256),
    };
    {
        let (path, text) = (files.manifest.clone(), manifest.to_json());
        blocking(move || write_private(&path, text.as_bytes())).await?;
    }
    locations.push(files.snapshot.display().to_string());
    // The manifest last: a destination holding a manifest holds the whole set.
    for d in &destinations {
        for path in [&files.snapshot, &files.key, &files.manifest] {
            let key = format!("{REMOTE_PREFIX}/{}", files.file_name(path));
            let location = d
                .upload(path, &key)
                .await
                .map_err(|e| err(format!("copy to destination {}: {e}", d.name())))?;
            if path == &files.snapshot {
                locations.push(format!("{}:{location}", d.name()));
            }
        }
    }
    Ok(manifest)
}

fn read_password(path: Option<&Path>) -> Result<Option<String>, BackupError> {
    let Some(path) = path else { return Ok(None) };
    crate::store::read_password_file(path)
        .map(Some)
        .map_err(|e| {
            err(format!(
                "cannot read the database password file {}: {e}",
                path.display()
            ))
        })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(format!("backup task failed: {e}")))?
}

/// One backup as listed: where it is, its manifest when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// `local` or the destination's name.
    pub place: String,
    pub size: Option<u64>,
    pub manifest: Option<Manifest>,
}

/// The local backups (with their manifests) and those at every destination, newest first.
pub async fn list(config: &RelayConfig) -> Result<Vec<Listed>, BackupError> {
    let dir = local_dir(&config.data_dir, &config.backup);
    let mut out: Vec<Listed> = blocking(move || files::local_manifests(&dir))
        .await?
        .into_iter()
        .map(|m| Listed {
            name: m.name.clone(),
            place: "local".into(),
            size: Some(m.size),
            manifest: Some(m),
        })
        .collect();
    for d in destinations(&config.backup)? {
        for (name, size) in remote_backups(&d).await? {
            out.push(Listed {
                name,
                place: d.name().to_string(),
                size,
                manifest: None,
            });
        }
    }
    out.sort_by(|a, b| b.name.cmp(&a.name).then_with(|| a.place.cmp(&b.place)));
    Ok(out)
}

/// The backups at one destination that have a manifest: (name, snapshot size).
async fn remote_backups(d: &Destination) -> Result<Vec<(String, Option<u64>)>, BackupError> {
    let objects = d
        .list(REMOTE_PREFIX)
        .await
        .map_err(|e| err(e.to_string()))?;
    let keys: Vec<(String, u64)> = objects
        .iter()
        .filter_map(|o| d.key_of(&o.location).map(|k| (k, o.size)))
        .collect();
    let mut out = Vec::new();
    for (key, _) in &keys {
        let Some(name) = key
            .strip_prefix(&format!("{REMOTE_PREFIX}/"))
            .and_then(|f| f.strip_suffix(".json"))
        else {
            continue;
        };
        let size = keys
            .iter()
            .find(|(k, _)| files::is_snapshot_key(k, name))
            .map(|(_, s)| *s);
        out.push((name.to_string(), size));
    }
    Ok(out)
}

/// Removes the backups that the retention policy no longer keeps, locally and at every
/// destination (each place planned over the backups it holds).
pub async fn prune(ctx: &SelfBackup) -> Result<(), BackupError> {
    let policy = ctx.config.retention.policy();
    let dir = ctx.dir();
    let local = {
        let dir = dir.clone();
        blocking(move || files::local_manifests(&dir)).await?
    };
    let names: Vec<String> = local.iter().map(|m| m.name.clone()).collect();
    for name in files::to_delete(&names, &policy) {
        let dir = dir.clone();
        blocking(move || {
            files::remove_local(&dir, &name);
            Ok(())
        })
        .await?;
    }
    for d in destinations(&ctx.config)? {
        let names: Vec<String> = remote_backups(&d)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let doomed = files::to_delete(&names, &policy);
        if doomed.is_empty() {
            continue;
        }
        let objects = d
            .list(REMOTE_PREFIX)
            .await
            .map_err(|e| err(e.to_string()))?;
        for o in objects {
            let Some(key) = d.key_of(&o.location) else {
                continue;
            };
            let file = key.rsplit('/').next().unwrap_or_default();
            if doomed.iter().any(|n| files::belongs_to(file, n)) {
                d.delete(&o.location)
                    .await
                    .map_err(|e| err(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// The scheduled engine: a run whenever the newest success is `interval_hours` old (at once
/// when there is none), checked every minute, until `stop`. Run under the `relay-backup` lease.
pub async fn run_scheduled(ctx: SelfBackup, stop: CancellationToken) {
    let interval = chrono::Duration::hours(i64::from(ctx.config.interval_hours));
    loop {
        let due = match ctx.store.relay_backup_health().await {
            Ok(h) => {
                h
                .last_success_at
                .is_none_or(|at| crate::store::now() - at >= interval)
                // A failed run is retried after an hour, not every minute.
                && h.latest_finished.as_ref().is_none_or(|r| {
                    r.status == RunStatus::Ok
                        || r.finished_at.is_none_or(|f| {
                            crate::store::now() - f >= chrono::Duration::hours(1)
                        })
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the relay backup runs");
                false
            }
        };
        if due {
            tokio::select! {
                _ = stop.cancelled() => return,
                outcome = run_once(&ctx) => match outcome {
                    Ok(m) => tracing::info!(backup = %m.name, size = m.size, "relay backup done"),
                    Err(e) => tracing::error!(error = %e, "relay backup failed"),
                },
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// `flotilla-relay backup run`: one backup now, beside a running relay or not (the snapshot
/// is online), recorded like the scheduled ones with relay id `cli`.
pub async fn run_cli(config: &RelayConfig) -> Result<Manifest, BackupError> {
    let store = match &config.database_url {
        Some(url) => {
            let password = read_password(config.database_password_file.as_deref())?;
            Store::open_postgres(url, password).await.map_err(|e| {
                err(format!(
                    "cannot open the database {}: {e}",
                    crate::store::redact_database_url(url)
                ))
            })?
        }
        None => {
            let db = config.data_dir.join(DB_FILE);
            if !db.is_file() {
                return Err(err(format!(
                    "no relay database at {}: give the relay's --data-dir",
                    db.display()
                )));
            }
            Store::open(&db)
                .await
                .map_err(|e| err(format!("cannot open {}: {e}", db.display())))?
        }
    };
    run_once(&SelfBackup::new(store, config, "cli")).await
}

/// The newest local backup's name, for `backup verify` without a name.
pub async fn newest_local(config: &RelayConfig) -> Result<String, BackupError> {
    let dir = local_dir(&config.data_dir, &config.backup);
    let shown = dir.display().to_string();
    blocking(move || files::local_manifests(&dir))
        .await?
        .into_iter()
        .next()
        .map(|m| m.name)
        .ok_or_else(|| err(format!("no backup in {shown}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_file_is_the_one_the_relay_opens() {
        assert_eq!(super::DB_FILE, crate::server::DB_FILE);
    }
}
