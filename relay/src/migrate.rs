//! `flotilla-relay migrate --from <data-dir> --to postgres://…`: a single SQLite relay's state
//! moved into an empty PostgreSQL database (the copy itself is `store::transfer`).
//!
//! The source file is never written: a snapshot of it (`VACUUM INTO`, next to it) is migrated
//! to this binary's schema, given the bytes of the builds published as files only, and copied,
//! then removed. The signing key stays in the data
//! directory: start the PostgreSQL relay with the same `--data-dir` (or copy `relay.key` to
//! each relay), and agents keep their enrollment.

use crate::server::DB_FILE;
use crate::store::transfer::{CopyError, CopyReport};
use crate::store::{read_password_file, redact_database_url, Store, StoreError};
use std::path::{Path, PathBuf};

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{} holds no relay database ({DB_FILE}); --from names a SQLite relay's data directory", .0.display())]
    NoSource(PathBuf),
    #[error("cannot snapshot {path}: {source}")]
    Snapshot { path: PathBuf, source: StoreError },
    #[error("cannot open the snapshot of {path}: {source}")]
    Source { path: PathBuf, source: StoreError },
    #[error("cannot open the PostgreSQL database {url}: {source}")]
    Target { url: String, source: StoreError },
    #[error("--to must be a postgres:// or postgresql:// URL, not {0}")]
    NotPostgres(String),
    #[error("cannot read the database password file {path}: {source}")]
    Password {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nothing was written to {url}: {source}")]
    Copy { url: String, source: CopyError },
}

/// Copies the relay state in `from` (a data directory) into the PostgreSQL database at `url`.
pub async fn migrate(
    from: &Path,
    url: &str,
    password_file: Option<&Path>,
) -> Result<CopyReport, MigrateError> {
    let shown = redact_database_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(MigrateError::NotPostgres(shown));
    }
    let db = from.join(DB_FILE);
    if !db.is_file() {
        return Err(MigrateError::NoSource(from.to_path_buf()));
    }
    let password = match password_file {
        Some(path) => Some(
            read_password_file(path).map_err(|source| MigrateError::Password {
                path: path.to_path_buf(),
                source,
            })?,
        ),
        None => None,
    };
    let mut tag = [0u8; 6];
    flotilla_shared::ids::random_bytes(&mut tag);
    let snapshot = from.join(format!(".{DB_FILE}.migrate-{}", hex::encode(tag)));
    let _cleanup = RemoveOnDrop(snapshot.clone());
    Store::snapshot_sqlite(&db, &snapshot)
        .await
        .map_err(|source| MigrateError::Snapshot {
            path: db.clone(),
            source,
        })?;
    let source = Store::open(&snapshot)
        .await
        .map_err(|source| MigrateError::Source {
            path: db.clone(),
            source,
        })?;
    // A relay older than the database's copy of builds kept them only as files: their bytes
    // go into the snapshot, so the relays on PostgreSQL can serve them whatever their data
    // directory.
    crate::releases::backfill(&source, from)
        .await
        .map_err(|source| MigrateError::Source {
            path: db.clone(),
            source,
        })?;
    let target = Store::open_postgres(url, password)
        .await
        .map_err(|source| MigrateError::Target {
            url: shown.clone(),
            source,
        })?;
    source
        .copy_into(&target)
        .await
        .map_err(|source| MigrateError::Copy { url: shown, source })
}

/// Removes the snapshot (and SQLite's side files) however the migration ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}
