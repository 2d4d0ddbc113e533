//! Verify and restore of a backup from the catalogue: the checksum, the decompressed size and
//! end marker, and the engine's own listing for verify; for restore the target container and
//! database (created when missing, refused when it holds tables unless forced), then the file
//! streamed into the engine's restore tool. An off-site backup (issue 17 §3, `offsite.rs`) is
//! downloaded and checksum-verified first; an encrypted one is decrypted on the way with the
//! identity file the restore names.

use super::{decrypt, docker_err, err, internal, Backups};
use super::{engine, pipeline};
use crate::docker::{ExecSpec, ResolvedContainer};
use anyhow::Result;
use flotilla_shared::backup::{
    BackupEngine, BackupManifest, BackupRestoreArgs, BackupRestoreOutput, BackupStatus,
    BackupVerifyOutput, OffsiteBackup, VerifyCheck,
};
use flotilla_shared::command::{error_codes, ErrorInfo};
use std::path::Path;
use tracing::info;

/// What a restore reads: a catalogue backup, or (issue 17 §3) one found off-site.
#[derive(Clone, Debug)]
pub struct RestoreSource {
    pub manifest: BackupManifest,
    /// Set when the backup is read from a destination, not this agent's backup directory.
    pub offsite: Option<OffsiteBackup>,
}

// === impl Backups ===

impl Backups {
    /// Checks a backup: the file exists, its checksum matches the manifest, it decompresses
    /// to the recorded size with the engine's end marker, and the engine's own tool can read
    /// it (`pg_restore --list`, in the backup's container when it is running).
    pub async fn verify(&self, id: &str) -> Result<BackupVerifyOutput, ErrorInfo> {
        let m = self.manifest(id).await?;
        let mut checks = Vec::new();
        let check = |checks: &mut Vec<VerifyCheck>, name: &str, ok: bool, detail: String| {
            checks.push(VerifyCheck {
                check: name.into(),
                ok,
                detail,
            })
        };
        if m.status != BackupStatus::Success {
            check(
                &mut checks,
                "status",
                false,
                format!(
                    "this backup failed when it was made: {}",
                    m.error.as_deref().unwrap_or("no file was kept")
                ),
            );
            return Ok(BackupVerifyOutput {
                id: m.id,
                ok: false,
                checks,
            });
        }
        let path = self.file_path(&m);
        let p = path.clone();
        let sum = tokio::task::spawn_blocking(move || pipeline::file_sha256(&p))
            .await
            .map_err(|e| internal(e.into()))?;
        match sum {
            Err(e) => {
                check(
                    &mut checks,
                    "file",
                    false,
                    format!("{}: {e}", path.display()),
                );
                return Ok(BackupVerifyOutput {
                    id: m.id,
                    ok: false,
                    checks,
                });
            }
            Ok((sha, size)) => {
                check(
                    &mut checks,
                    "file",
                    true,
                    format!("{} ({size} bytes)", path.display()),
                );
                let ok = sha == m.sha256 && size == m.compressed_bytes;
                check(
                    &mut checks,
                    "checksum",
                    ok,
                    if ok {
                        format!("sha256 {sha}")
                    } else {
                        format!(
                            "sha256 {sha} ({size} bytes) differs from the manifest's {} ({} bytes)",
                            m.sha256, m.compressed_bytes
                        )
                    },
                );
                if !ok {
                    return Ok(BackupVerifyOutput {
                        id: m.id,
                        ok: false,
                        checks,
                    });
                }
            }
        }
        if m.encrypted {
            check(
                &mut checks,
                "decompress",
                true,
                "skipped: the backup is encrypted to age recipients and the agent holds no \
                 private key (decrypt with `age -d -i key.txt`)"
                    .into(),
            );
        } else {
            let p = path.clone();
            let ends = tokio::task::spawn_blocking(move || pipeline::decompress_each(&p, |_| true))
                .await
                .map_err(|e| internal(e.into()))?;
            match ends {
                Err(e) => check(&mut checks, "decompress", false, e.to_string()),
                Ok(ends) => {
                    let ok = ends.bytes == m.bytes;
                    check(
                        &mut checks,
                        "decompress",
                        ok,
                        format!("{} bytes (manifest: {})", ends.bytes, m.bytes),
                    );
                    match engine::check_dump(
                        m.engine,
                        &m.database,
                        ends.bytes,
                        &ends.head,
                        &ends.tail,
                    ) {
                        Ok(()) => check(&mut checks, "end_marker", true, "complete".into()),
                        Err(e) => check(&mut checks, "end_marker", false, e.into()),
                    }
                }
            }
            if let Some(spec) = engine::listing(m.engine, &m.database) {
                let listing = self.engine_listing(&m, &path, spec).await;
                match listing {
                    Ok(detail) => check(&mut checks, "engine_listing", true, detail),
                    Err(e) => check(&mut checks, "engine_listing", false, e),
                }
            }
        }
        let ok = checks.iter().all(|c| c.ok);
        Ok(BackupVerifyOutput {
            id: m.id,
            ok,
            checks,
        })
    }

    async fn engine_listing(
        &self,
        m: &BackupManifest,
        path: &Path,
        spec: ExecSpec,
    ) -> Result<String, String> {
        let c = self
            .inner
            .docker
            .resolve(&m.container)
            .await
            .map_err(|e| format!("container {} is needed for the listing: {e}", m.container))?;
        let (rx, source) = pipeline::spawn_source(path.to_path_buf());
        let outcome = self
            .inner
            .docker
            .exec_feed(&c, &spec, rx)
            .await
            .map_err(|e| e.to_string())?;
        let _ = source.await;
        // pg_restore --list reads the table of contents and exits without reading the data:
        // exit 0 is what counts here.
        if outcome.exit_code != Some(0) {
            return Err(format!("pg_restore --list {}", outcome.describe()));
        }
        let text = outcome.stdout_text();
        let entries = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
            .count();
        Ok(format!("pg_restore --list read {entries} entries"))
    }

    /// The backup a restore reads (from the catalogue, or with `offsite` from the
    /// destinations' manifests) and the container it goes into (`into`, else the backup's
    /// own container).
    pub async fn restore_target(
        &self,
        args: &BackupRestoreArgs,
    ) -> Result<(RestoreSource, ResolvedContainer), ErrorInfo> {
        let source = if args.offsite {
            let b = self.find_offsite(args).await?;
            RestoreSource {
                manifest: b.manifest.clone(),
                offsite: Some(b),
            }
        } else {
            RestoreSource {
                manifest: self.manifest(&args.id).await?,
                offsite: None,
            }
        };
        let name = args
            .into
            .clone()
            .unwrap_or_else(|| source.manifest.container.clone());
        let c = self.inner.docker.resolve(&name).await.map_err(docker_err)?;
        Ok((source, c))
    }

    /// Streams a backup into a database server: the checksum is verified first, the target
    /// database is created when missing and must hold no tables unless `force`.
    pub async fn restore(
        &self,
        args: &BackupRestoreArgs,
        source: RestoreSource,
        target: ResolvedContainer,
    ) -> Result<BackupRestoreOutput, ErrorInfo> {
        let started = std::time::Instant::now();
        let refused = |msg: String| err(error_codes::RESTORE_REFUSED, msg);
        let failed = |msg: String| err(error_codes::RESTORE_FAILED, msg);
        let RestoreSource {
            manifest: m,
            offsite,
        } = source;
        if m.status != BackupStatus::Success {
            return Err(refused(format!(
                "backup {} failed when it was made; nothing to restore",
                m.id
            )));
        }
        let identities = match (&args.identity_file, m.encrypted) {
            (None, true) => {
                return Err(refused(format!(
                    "backup {} is encrypted to age recipients and the agent holds no private \
                     key: pass the age identity file with the restore (identity_file, \
                     --identity) or decrypt it with `age -d -i key.txt | zstd -d` and load it \
                     by hand",
                    m.id
                )))
            }
            (Some(file), true) => {
                let file = std::path::PathBuf::from(file);
                Some(
                    tokio::task::spawn_blocking(move || decrypt::read_identity_file(&file))
                        .await
                        .map_err(|e| internal(e.into()))?
                        .map_err(|e| refused(e.into()))?,
                )
            }
            (_, false) => None,
        };
        // An off-site backup is downloaded first (streamed to disk); the checksum below is
        // then checked on the downloaded copy, before anything reaches the database.
        let downloaded = match &offsite {
            Some(b) => Some(self.download_offsite(b).await?),
            None => None,
        };
        let path = match &downloaded {
            Some(d) => d.0.clone(),
            None => self.file_path(&m),
        };
        let p = path.clone();
        let (sha, _) = tokio::task::spawn_blocking(move || pipeline::file_sha256(&p))
            .await
            .map_err(|e| internal(e.into()))?
            .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
        if sha != m.sha256 {
            return Err(failed(format!(
                "backup {} is damaged: its sha256 is {sha}, the manifest says {}",
                m.id, m.sha256
            )));
        }
        if let Some(ids) = &identities {
            let (ids, p) = (ids.clone(), path.clone());
            tokio::task::spawn_blocking(move || decrypt::check(&ids, &p))
                .await
                .map_err(|e| internal(e.into()))?
                .map_err(|e| refused(format!("backup {}: {e}", m.id)))?;
        }
        let docker = &self.inner.docker;
        let inspect = docker.inspect(&target).await.map_err(docker_err)?;
        if inspect.pointer("/State/Running").and_then(|v| v.as_bool()) != Some(true) {
            return Err(refused(format!("container {} is not running", target.name)));
        }
        let job = self.inner.config.jobs.iter().find(|j| j.name == m.job);
        let creds = self
            .credentials(
                m.engine,
                &target,
                &inspect,
                job.and_then(|j| j.user.as_deref()),
                job.and_then(|j| j.password_file.as_deref()),
            )
            .await?;
        if args.database.is_some()
            && !matches!(
                m.engine,
                BackupEngine::Postgres | BackupEngine::Mysql | BackupEngine::Mariadb
            )
        {
            return Err(refused(format!(
                "--database is not supported for {} backups (the dump names its own databases)",
                m.engine
            )));
        }
        if args.database.is_some() && m.database == engine::PG_GLOBALS {
            return Err(refused(
                "--database does not apply to PostgreSQL globals (roles, tablespaces)".into(),
            ));
        }
        let database = args.database.clone().unwrap_or_else(|| m.database.clone());
        let restore_command = job.map(|j| j.restore_command.clone()).unwrap_or_default();
        let spec = engine::restore(m.engine, &creds, &database, args.force, &restore_command)
            .map_err(|e| refused(e.into()))?;
        self.prepare_restore_target(m.engine, &creds, &target, &database, args.force)
            .await?;
        let (rx, source) = pipeline::spawn_source_with(path.clone(), identities);
        let outcome = docker
            .exec_feed(&target, &spec, rx)
            .await
            .map_err(docker_err)?;
        let ends = source.await.map_err(|e| internal(e.into()))?;
        let bytes = match ends {
            Ok(e) => e.bytes,
            Err(e) if outcome.consumer_gone => {
                return Err(failed(format!(
                    "the restore command stopped reading ({e}); it {}",
                    outcome.describe()
                )))
            }
            Err(e) => return Err(failed(format!("cannot read the backup: {e}"))),
        };
        if !outcome.succeeded() {
            return Err(failed(format!("the restore {}", outcome.describe())));
        }
        info!(
            id = m.id,
            container = target.name,
            database,
            bytes,
            offsite = offsite
                .as_ref()
                .map(|b| b.destination.as_str())
                .unwrap_or(""),
            "backup restored"
        );
        drop(downloaded);
        Ok(BackupRestoreOutput {
            id: m.id,
            container: target.name,
            database,
            bytes,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Creates a missing target database; refuses a non-empty one without `force`.
    async fn prepare_restore_target(
        &self,
        engine: BackupEngine,
        creds: &engine::Credentials,
        target: &ResolvedContainer,
        database: &str,
        force: bool,
    ) -> Result<(), ErrorInfo> {
        let docker = &self.inner.docker;
        let refused = |msg: String| err(error_codes::RESTORE_REFUSED, msg);
        let failed = |msg: String| err(error_codes::RESTORE_FAILED, msg);
        let run = |spec: ExecSpec| async move {
            let o = docker
                .exec_capture(target, &spec)
                .await
                .map_err(docker_err)?;
            if o.succeeded() {
                Ok(o.stdout_text().trim().to_string())
            } else {
                Err(failed(format!(
                    "checking the target database {}",
                    o.describe()
                )))
            }
        };
        let Some(count_spec) = engine::count_tables(engine, creds, database) else {
            // No way to tell whether the target holds data (MongoDB, Redis, commands).
            if !force {
                return Err(refused(format!(
                    "the {engine} engine cannot check whether the target is empty; pass force \
                     to restore anyway"
                )));
            }
            return Ok(());
        };
        let tables: u64 = match engine {
            BackupEngine::Postgres => {
                let exists = run(count_spec).await? == "1";
                if exists {
                    parse_count(&run(engine::pg_count_tables_in(creds, database)).await?)?
                } else {
                    if let Some(spec) = engine::create_database(engine, creds, database) {
                        run(spec).await?;
                    }
                    0
                }
            }
            _ => {
                let n = parse_count(&run(count_spec).await?)?;
                if let Some(spec) = engine::create_database(engine, creds, database) {
                    run(spec).await?;
                }
                n
            }
        };
        if tables > 0 && !force {
            return Err(refused(format!(
                "database {database} in container {} holds {tables} tables; restore into an \
                 empty or new database (--database), or pass force to overwrite",
                target.name
            )));
        }
        Ok(())
    }
}

/// The table count a check printed; anything else is an error rather than "empty", so a
/// restore never overwrites data because a check's output was not understood.
fn parse_count(text: &str) -> Result<u64, ErrorInfo> {
    text.trim().parse().map_err(|_| {
        err(
            error_codes::RESTORE_FAILED,
            format!("cannot tell whether the target database is empty: the check printed {text:?}"),
        )
    })
}
