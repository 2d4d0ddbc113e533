//! A build's file on this relay and its bytes in the database.
//!
//! The database holds every published build's bytes (`release_chunks`); the file under
//! `<data_dir>/releases/` is what downloads stream from, a cache of those bytes. A relay that
//! lacks the file (the build was published through another relay on the same database, the
//! relay was restored from a backup or migrated, or the file went missing) writes it from the
//! database before serving it ([`materialise`]), checking its size and SHA-256 against the
//! signed manifest; builds published before the database kept their bytes get them from this
//! relay's file at start-up ([`backfill`]).

use super::{binary_path, install, TempFile, BINARY_NAME};
use crate::store::releases::StoredRelease;
use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Writing a file from the database serialises on this lock, so a burst of downloads of a
/// build this relay lacks writes it once.
static MATERIALISE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the file at `path` has the build's size. Its bytes are not hashed here: agents and
/// install.sh check the SHA-256 of what they download against the signed manifest (a file
/// damaged in place is refused by them, as `e2e::install` shows); a file written from the
/// database is checked before it is put in place.
async fn holds(path: &Path, release: &StoredRelease) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|m| m.is_file() && m.len() == release.info.size)
}

/// Why a build's file could not be written from the database.
#[derive(Debug, thiserror::Error)]
pub enum MaterialiseError {
    #[error(
        "the bytes of flotilla-agent {version} for {arch} in the database are {size} bytes with \
         sha256 {sha256}, not what its manifest says ({expected_size} bytes, sha256 {expected})"
    )]
    Mismatch {
        version: String,
        arch: String,
        size: u64,
        sha256: String,
        expected_size: u64,
        expected: String,
    },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaterialiseError + '_ {
    move |source| MaterialiseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes sure the file of `release` is in place under `data_dir`: kept when it has the
/// manifest's size, otherwise written from the bytes in the database and checked against the manifest.
/// `Ok(false)` when the file is not the build and the database has no bytes for it.
pub async fn materialise(
    store: &Store,
    data_dir: &Path,
    release: &StoredRelease,
) -> Result<bool, MaterialiseError> {
    let info = &release.info;
    let path = binary_path(data_dir, &info.version, &info.arch);
    if holds(&path, release).await {
        return Ok(true);
    }
    let _guard = MATERIALISE_LOCK.lock().await;
    // Written by a download that held the lock before this one.
    if holds(&path, release).await {
        return Ok(true);
    }
    let dir = path.parent().expect("a build path has a directory");
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    let mut tag = [0u8; 8];
    flotilla_shared::ids::random_bytes(&mut tag);
    let mut temp = TempFile {
        path: dir.join(format!(".{BINARY_NAME}.{}.fill", hex::encode(tag))),
        done: false,
    };
    let result = fill(store, release, &temp.path, &path, dir).await;
    if matches!(result, Ok(true)) {
        temp.kept();
    }
    temp.discard().await;
    result
}

/// The body of [`materialise`] once the temporary file's name is chosen.
async fn fill(
    store: &Store,
    release: &StoredRelease,
    temp: &Path,
    target: &Path,
    dir: &Path,
) -> Result<bool, MaterialiseError> {
    let info = &release.info;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(temp)
        .await
        .map_err(io(temp))?;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    let mut seq = 0u32;
    while let Some(chunk) = store
        .release_chunk(info.version.clone(), info.arch.clone(), seq)
        .await?
    {
        size += chunk.len() as u64;
        seq += 1;
        if size > info.size {
            break;
        }
        sha.update(&chunk);
        file.write_all(&chunk).await.map_err(io(temp))?;
    }
    if seq == 0 {
        return Ok(false);
    }
    let sha256 = hex::encode(sha.finish().as_ref());
    if size != info.size || sha256 != info.sha256 {
        return Err(MaterialiseError::Mismatch {
            version: info.version.clone(),
            arch: info.arch.clone(),
            size,
            sha256,
            expected_size: info.size,
            expected: info.sha256.clone(),
        });
    }
    file.sync_all().await.map_err(io(temp))?;
    drop(file);
    install(temp, target, dir).await.map_err(|e| match e {
        super::PublishError::Io { path, source } => MaterialiseError::Io { path, source },
        super::PublishError::Store(e) => MaterialiseError::Store(e),
        other => MaterialiseError::Store(StoreError::Task(other.to_string())),
    })?;
    tracing::info!(
        version = info.version,
        arch = info.arch,
        size,
        "wrote a build's file from the database"
    );
    Ok(true)
}

/// Stores the bytes of a build from its file (replacing what the database held: publishing the
/// same bytes again is the repair of damaged stored bytes); refused, with nothing changed,
/// unless the file holds the build.
pub(super) async fn store_bytes(
    store: &Store,
    version: &str,
    arch: &str,
    file: &Path,
) -> Result<(), StoreError> {
    store
        .store_release_bytes(version.to_string(), arch.to_string(), file.to_path_buf())
        .await?;
    Ok(())
}

/// The SHA-256 and size of the file at `path`, read off the async threads.
async fn hash_file(path: PathBuf) -> std::io::Result<(String, u64)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            sha.update(&buf[..n]);
        }
        Ok((hex::encode(sha.finish().as_ref()), size))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What [`backfill`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// Builds whose bytes were stored from this relay's file.
    pub stored: usize,
    /// Builds with no bytes in the database and no good file here: publish them again.
    pub missing: Vec<String>,
}

/// Stores the bytes of recorded builds that have none in the database from this relay's
/// files, when a file matches its manifest (builds published before the database kept their
/// bytes). Run at start-up; safe on every relay of a cluster.
pub async fn backfill(store: &Store, data_dir: &Path) -> Result<Backfilled, StoreError> {
    let mut done = Backfilled::default();
    for (version, arch) in store.releases_without_bytes().await? {
        let Some(release) = store.release(version.clone(), arch.clone()).await? else {
            continue;
        };
        let path = binary_path(data_dir, &version, &arch);
        let good = matches!(
            hash_file(path.clone()).await,
            Ok((sha, size)) if sha == release.info.sha256 && size == release.info.size
        );
        if !good {
            done.missing.push(format!("{version} ({arch})"));
            continue;
        }
        store.store_release_bytes(version, arch, path).await?;
        done.stored += 1;
    }
    if done.stored > 0 {
        tracing::info!(
            builds = done.stored,
            "stored the bytes of builds published before the database kept them"
        );
    }
    if !done.missing.is_empty() {
        tracing::warn!(
            builds = %done.missing.join(", "),
            "these builds have no bytes in the database and no matching file on this relay: \
             relays without the file cannot serve them; publish them again (the same bytes) to \
             repair"
        );
    }
    Ok(done)
}
