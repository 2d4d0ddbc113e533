//! `flotilla-relay backup verify` and `flotilla-relay restore`: find a backup (a manifest's
//! path, a name in the local directory, or a name fetched from the first destination holding
//! it), check its checksums, decode it, and check that it opens (SQLite `PRAGMA
//! integrity_check`; PostgreSQL `pg_restore --list`); a restore then writes `relay.db` into a
//! fresh data directory, or runs `pg_restore` into an empty database, and puts `relay.key`
//! back. A target that already holds a relay is refused unless `force` is given.

use super::files::{self, pg_command, pg_tool, sha256_file};
use super::{blocking, destinations, err, local_dir, read_password, BackupError, REMOTE_PREFIX};
use crate::config::RelayConfig;
use crate::model::relaybackup::{Manifest, SQLITE};
use crate::store::snapshot;
use flotilla_offsite::decrypt::{self, Identities};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// How to restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Replace a relay that is already there.
    pub force: bool,
    /// age identity file, for an encrypted backup.
    pub identity: Option<PathBuf>,
}

/// A found backup: its directory and manifest.
struct Found {
    dir: PathBuf,
    manifest: Manifest,
}

async fn locate(config: &RelayConfig, which: &str) -> Result<Found, BackupError> {
    let as_path = Path::new(which);
    if which.ends_with(".json") && as_path.is_file() {
        let dir = as_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        return Ok(Found {
            manifest: read_manifest(as_path)?,
            dir,
        });
    }
    let name = which.trim_end_matches(".json");
    let dir = local_dir(&config.data_dir, &config.backup);
    let local = dir.join(format!("{name}.json"));
    if local.is_file() {
        return Ok(Found {
            manifest: read_manifest(&local)?,
            dir,
        });
    }
    if !name.starts_with("relay-") || name.contains('/') {
        return Err(err(format!(
            "no backup {which:?}: give a backup name (relay-YYYYMMDDTHHMMSSZ, see `backup list`) \
             or the path of its .json manifest"
        )));
    }
    for d in destinations(&config.backup)? {
        let key = format!("{REMOTE_PREFIX}/{name}.json");
        files::create_private_dir(&dir)?;
        match d.download(&key, &local).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(err(e.to_string())),
        }
        let manifest = read_manifest(&local)?;
        for file in [Some(&manifest.file), manifest.key_file.as_ref()]
            .into_iter()
            .flatten()
        {
            d.download(&format!("{REMOTE_PREFIX}/{file}"), &dir.join(file))
                .await
                .map_err(|e| err(e.to_string()))?;
        }
        return Ok(Found { dir, manifest });
    }
    Err(err(format!(
        "no backup {name} in {} nor at any destination",
        dir.display()
    )))
}

fn read_manifest(path: &Path) -> Result<Manifest, BackupError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    Manifest::parse(&text).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Checks size and SHA-256 of the backup's files against its manifest.
fn check_sums(found: &Found) -> Result<(), BackupError> {
    let m = &found.manifest;
    let (size, sum) = sha256_file(&found.dir.join(&m.file))?;
    if size != m.size || sum != m.sha256 {
        return Err(err(format!(
            "{}: checksum mismatch (size {size}, sha256 {sum}; the manifest says size {}, \
             sha256 {}): the copy is damaged",
            m.file, m.size, m.sha256
        )));
    }
    if let (Some(file), Some(want)) = (&m.key_file, &m.key_sha256) {
        let (_, sum) = sha256_file(&found.dir.join(file))?;
        if &sum != want {
            return Err(err(format!(
                "{file}: checksum mismatch: the copy is damaged"
            )));
        }
    }
    Ok(())
}

fn identities(m: &Manifest, identity: Option<&Path>) -> Result<Option<Identities>, BackupError> {
    match (m.encrypted, identity) {
        (false, _) => Ok(None),
        (true, Some(p)) => Ok(Some(
            decrypt::read_identity_file(p).map_err(|e| err(e.to_string()))?,
        )),
        (true, None) => Err(err(format!(
            "backup {} is encrypted: give the age identity file with --identity",
            m.name
        ))),
    }
}

fn open_plain(path: &Path, ids: Option<&Identities>) -> Result<Box<dyn Read>, BackupError> {
    let f = File::open(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    Ok(match ids {
        Some(ids) => Box::new(
            decrypt::decrypting(ids, f)
                .map_err(|e| err(format!("cannot decrypt {}: {e}", path.display())))?,
        ),
        None => Box::new(f),
    })
}

/// Decodes the snapshot into `out`: the SQLite database itself, or the pg_dump archive.
fn decode(found: &Found, ids: Option<&Identities>, out: &Path) -> Result<(), BackupError> {
    let m = &found.manifest;
    let input = open_plain(&found.dir.join(&m.file), ids)?;
    let mut input: Box<dyn Read> = if m.backend == SQLITE {
        Box::new(zstd::stream::read::Decoder::new(input).map_err(|e| err(format!("zstd: {e}")))?)
    } else {
        input
    };
    let mut f = files::create_private(out)?;
    io::copy(&mut input, &mut f)
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("cannot decode {}: {e}", m.file)))
}

async fn check_opens(
    config: &RelayConfig,
    m: &Manifest,
    decoded: &Path,
) -> Result<(), BackupError> {
    if m.backend == SQLITE {
        let path = decoded.to_path_buf();
        let version = blocking(move || snapshot::sqlite_check(&path).map_err(err)).await?;
        if version != m.schema_version {
            return Err(err(format!(
                "the snapshot holds schema version {version}, the manifest says {}",
                m.schema_version
            )));
        }
        return Ok(());
    }
    let pg_restore = pg_tool(config.backup.pg_dump.as_deref(), "pg_restore")?;
    let out = pg_command(&pg_restore, None)
        .arg("--list")
        .arg(decoded)
        .output()
        .await
        .map_err(|e| err(format!("cannot run {}: {e}", pg_restore.display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "pg_restore --list failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Checks a backup: checksums, and (unless it is encrypted and no identity is given) that the
/// snapshot opens. What was checked, in one line.
pub async fn verify(
    config: &RelayConfig,
    which: &str,
    identity: Option<&Path>,
) -> Result<String, BackupError> {
    let found = locate(config, which).await?;
    let m = found.manifest.clone();
    check_sums(&found)?;
    if m.encrypted && identity.is_none() {
        return Ok(format!(
            "{}: checksums ok; encrypted, so give --identity to check that it opens",
            m.name
        ));
    }
    let ids = identities(&m, identity)?;
    let tmp = found.dir.join(format!(".{}.verify", m.name));
    let decoded = {
        let tmp = tmp.clone();
        blocking(move || decode(&found, ids.as_ref(), &tmp)).await
    };
    let checked = match decoded {
        Ok(()) => check_opens(config, &m, &tmp).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&tmp);
    checked?;
    let how = if m.backend == SQLITE {
        "integrity_check ok"
    } else {
        "pg_restore --list ok"
    };
    Ok(format!(
        "{}: checksums ok, {how} ({} bytes, schema version {})",
        m.name, m.size, m.schema_version
    ))
}

/// Restores backup `which` onto `config`'s data directory (SQLite) or database (PostgreSQL).
pub async fn restore(
    config: &RelayConfig,
    which: &str,
    options: &RestoreOptions,
) -> Result<String, BackupError> {
    let found = locate(config, which).await?;
    let m = found.manifest.clone();
    if m.schema_version > snapshot::schema_version() {
        return Err(err(format!(
            "backup {} holds schema version {}, newer than this relay knows ({}): restore it \
             with a newer flotilla-relay",
            m.name,
            m.schema_version,
            snapshot::schema_version()
        )));
    }
    match (m.backend == SQLITE, config.database_url.is_some()) {
        (true, true) => {
            return Err(err(format!(
                "backup {} is of a SQLite relay: restore it without --database (then \
                 `flotilla-relay migrate` moves it to PostgreSQL)",
                m.name
            )))
        }
        (false, false) => {
            return Err(err(format!(
                "backup {} is of a PostgreSQL relay: give the empty target database with \
                 --database",
                m.name
            )))
        }
        _ => {}
    }
    check_sums(&found)?;
    let ids = identities(&m, options.identity.as_deref())?;
    let data_dir = config.data_dir.clone();
    let db = data_dir.join(super::DB_FILE);
    let key = data_dir.join(crate::keys::RELAY_KEY_FILE);
    if !options.force {
        if m.backend == SQLITE && db.exists() {
            return Err(err(format!(
                "{} already holds a relay database: restore refuses a non-empty target (stop \
                 that relay and give --force to replace it, or restore onto a fresh data dir)",
                db.display()
            )));
        }
        if key.exists() {
            return Err(err(format!(
                "{} already holds a relay key: restore refuses a non-empty target (give \
                 --force to replace it, or restore onto a fresh data dir)",
                key.display()
            )));
        }
    }
    files::create_private_dir(&data_dir)?;
    let tmp = data_dir.join(format!(".{}.restore", m.name));
    let decoded = {
        let (tmp, ids) = (tmp.clone(), ids.clone());
        let found = Found {
            dir: found.dir.clone(),
            manifest: m.clone(),
        };
        blocking(move || decode(&found, ids.as_ref(), &tmp)).await
    };
    let done = match decoded {
        Ok(()) => match check_opens(config, &m, &tmp).await {
            Ok(()) if m.backend == SQLITE => {
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(data_dir.join(format!("relay.db{suffix}")));
                }
                std::fs::rename(&tmp, &db)
                    .map_err(|e| err(format!("cannot write {}: {e}", db.display())))
            }
            Ok(()) => pg_restore_into(config, &tmp, options.force).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&tmp);
    done?;
    if let Some(file) = &m.key_file {
        let source = found.dir.join(file);
        let (key, ids) = (key.clone(), ids.clone());
        blocking(move || {
            let mut bytes = Vec::new();
            open_plain(&source, ids.as_ref())?
                .read_to_end(&mut bytes)
                .map_err(|e| err(format!("cannot read {}: {e}", source.display())))?;
            files::write_private(&key, &bytes)
        })
        .await?;
    }
    let target = match &config.database_url {
        Some(url) => crate::store::redact_database_url(url),
        None => db.display().to_string(),
    };
    Ok(format!("restored {} into {target}", m.name))
}

async fn pg_restore_into(
    config: &RelayConfig,
    dump: &Path,
    force: bool,
) -> Result<(), BackupError> {
    let url = config.database_url.clone().unwrap_or_default();
    let password = read_password(config.database_password_file.as_deref())?;
    let tables = {
        let (url, password) = (url.clone(), password.clone());
        blocking(move || snapshot::postgres_table_count(&url, password.as_deref()).map_err(err))
            .await?
    };
    if tables > 0 && !force {
        return Err(err(format!(
            "database {} is not empty ({tables} tables): restore refuses a non-empty target \
             (give --force to replace what is there)",
            crate::store::redact_database_url(&url)
        )));
    }
    let pg_restore = pg_tool(config.backup.pg_dump.as_deref(), "pg_restore")?;
    let mut cmd = pg_command(&pg_restore, password.as_deref());
    cmd.arg("--no-owner").arg("--exit-on-error");
    if force {
        cmd.arg("--clean").arg("--if-exists");
    }
    let out = cmd
        .arg("--dbname")
        .arg(crate::store::libpq_url(&url))
        .arg(dump)
        .output()
        .await
        .map_err(|e| err(format!("cannot run {}: {e}", pg_restore.display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "pg_restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
