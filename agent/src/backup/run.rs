//! One run of one job: every database dumped through the Docker exec API into a compressed
//! (optionally encrypted) file with its checksum and manifest, each isolated from the others'
//! failures; then the off-site copies, pruning (only after a run without failures) and the
//! dead-man ping. Also the record of a scheduled run cut short by the agent's stop.

use super::destination::Destination;
use super::{create_dir, file_part, manifest_path, new_backup_id, Backups, Inner, Job};
use super::{engine, pipeline, retention};
use crate::docker::{DockerError, ResolvedContainer};
use anyhow::Result;
use chrono::{DateTime, Local, Utc};
use flotilla_shared::backup::{
    BackupEngine, BackupManifest, BackupReport, BackupStatus, CopyState, DatabaseOutcome,
    DestinationCopy, RemoteSync, ReportSource, RunTrigger,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Timeout of a dead-man ping.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

// === impl Backups ===

impl Backups {
    /// A scheduled run cut short by the agent's stop still leaves a record: its databases
    /// failed with "interrupted" (their partial files are removed at the next start), so the
    /// status file, the relay and the dead-man ping do not show the previous night as current.
    pub(super) async fn record_interrupted(&self, job: &Job) {
        let run = Run::new(self, job, RunTrigger::Schedule);
        let databases = run
            .fail_all("the agent stopped during this run; it was not finished".into())
            .await;
        let report = BackupReport {
            run_id: run.run_id.clone(),
            source: ReportSource::Agent,
            job: Some(job.name.clone()),
            trigger: Some(RunTrigger::Schedule),
            started_at: run.started_at,
            finished_at: Utc::now(),
            databases,
            remote_sync: None,
            pruned: 0,
        };
        warn!(
            job = job.name,
            "a scheduled backup run was interrupted by the agent's stop"
        );
        if let Err(e) = self.inner.state.backup_finish_run(report).await {
            warn!(
                error = format!("{e:#}"),
                "cannot record the interrupted backup run"
            );
        }
        self.write_status_file().await;
        run.ping("/fail").await;
    }
}

// === impl Run ===

/// One run of one job.
pub(super) struct Run<'a> {
    backups: &'a Backups,
    job: &'a Job,
    trigger: RunTrigger,
    run_id: String,
    started_at: DateTime<Utc>,
}

/// What dumping one database produced.
struct Dumped {
    manifest: BackupManifest,
}

impl<'a> Run<'a> {
    pub(super) fn new(backups: &'a Backups, job: &'a Job, trigger: RunTrigger) -> Self {
        let started_at = Utc::now();
        Run {
            backups,
            job,
            trigger,
            run_id: new_backup_id("run", started_at),
            started_at,
        }
    }

    fn inner(&self) -> &Inner {
        &self.backups.inner
    }

    async fn ping(&self, suffix: &str) {
        let Some(base) = &self.job.ping_url else {
            return;
        };
        let url = format!("{}{suffix}", base.trim_end_matches('/'));
        let client = reqwest::Client::builder().timeout(PING_TIMEOUT).build();
        let outcome = match client {
            Ok(c) => c.get(&url).send().await.map(|r| r.status()),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(s) if s.is_success() => debug!(job = self.job.name, url, "dead-man ping sent"),
            Ok(s) => warn!(
                job = self.job.name,
                url,
                status = s.as_u16(),
                "dead-man ping refused"
            ),
            Err(e) => warn!(job = self.job.name, url, error = %e, "dead-man ping failed"),
        }
    }

    /// Outcomes for every database when the run cannot even start (container gone, engine
    /// unknown, listing failed): the databases the previous run had, or one entry for the job.
    async fn fail_all(&self, error: String) -> Vec<DatabaseOutcome> {
        let previous: Vec<String> = self
            .inner()
            .state
            .backup_latest_reports()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.job.as_deref() == Some(self.job.name.as_str()))
            .flat_map(|r| r.databases.into_iter().map(|d| d.key))
            .collect();
        let keys = if previous.is_empty() {
            if self.job.databases.is_empty() {
                vec![format!("{}/{}", self.job.name, engine::WHOLE_SERVER)]
            } else {
                self.job
                    .databases
                    .iter()
                    .map(|d| format!("{}/{d}", self.job.name))
                    .collect()
            }
        } else {
            previous
        };
        keys.into_iter()
            .map(|key| DatabaseOutcome {
                database: key.split_once('/').map(|(_, d)| d.to_string()),
                key,
                container: Some(self.job.container.clone()),
                engine: self.job.engine,
                status: BackupStatus::Failed,
                error: Some(error.clone()),
                backup_id: None,
                size_bytes: None,
                duration_ms: None,
            })
            .collect()
    }

    pub(super) async fn execute(self) -> BackupReport {
        self.ping("/start").await;
        let (databases, remote_sync, pruned) = match self.dump_all().await {
            Ok(r) => r,
            Err(e) => (self.fail_all(e).await, None, 0),
        };
        let report = BackupReport {
            run_id: self.run_id.clone(),
            source: ReportSource::Agent,
            job: Some(self.job.name.clone()),
            trigger: Some(self.trigger),
            started_at: self.started_at,
            finished_at: Utc::now(),
            databases,
            remote_sync,
            pruned,
        };
        let remote_failed = report
            .remote_sync
            .as_ref()
            .is_some_and(|r| r.status == BackupStatus::Failed);
        self.ping(if report.failed() > 0 || remote_failed {
            "/fail"
        } else {
            ""
        })
        .await;
        report
    }

    /// Dumps every database, copies off-site, prunes when everything worked.
    async fn dump_all(&self) -> Result<(Vec<DatabaseOutcome>, Option<RemoteSync>, u32), String> {
        let docker = &self.inner().docker;
        let container = match docker.resolve(&self.job.container).await {
            Ok(c) => c,
            Err(DockerError::NoSuchContainer(_)) if self.job.expected_missing => {
                return Err(super::expected::gone_message(&self.job.container));
            }
            Err(e) => return Err(format!("container {}: {e}", self.job.container)),
        };
        self.backups.note_seen(self.job).await;
        let inspect = docker
            .inspect(&container)
            .await
            .map_err(|e| format!("container {}: {e}", container.name))?;
        if inspect
            .pointer("/State/Restarting")
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            return Err(format!("container {} is restarting", container.name));
        }
        if inspect.pointer("/State/Running").and_then(|v| v.as_bool()) != Some(true) {
            return Err(format!("container {} is not running", container.name));
        }
        let image = inspect
            .pointer("/Config/Image")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let labels: HashMap<String, String> = inspect
            .pointer("/Config/Labels")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let engine = self
            .job
            .engine
            .or_else(|| engine::detect_engine(image, &labels))
            .ok_or_else(|| {
                engine::label_error(&labels).unwrap_or_else(|| {
                    format!(
                        "cannot tell the database engine of container {} (image {image}); set \
                         engine in the job or the label {}",
                        container.name,
                        flotilla_shared::backup::ENGINE_LABEL
                    )
                })
            })?;
        let creds = self
            .backups
            .credentials(
                engine,
                &container,
                &inspect,
                self.job.user.as_deref(),
                self.job.password_file.as_deref(),
            )
            .await
            .map_err(|e| e.message)?;
        let databases = self.databases(engine, &creds, &container).await?;
        let versions = self.tool_versions(engine, &container).await;
        let job_dir = self.inner().dir.join(file_part(&self.job.name));
        let d = job_dir.clone();
        tokio::task::spawn_blocking(move || create_dir(&d))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot create {}: {e}", job_dir.display()))?;

        let mut dumped = Vec::new();
        for database in &databases {
            let mut d = self
                .dump_one(engine, &creds, &container, database, &versions, &job_dir)
                .await;
            if let Err(e) = self.inner().state.backup_put(d.manifest.clone()).await {
                error!(
                    error = format!("{e:#}"),
                    "cannot record a backup in the catalogue"
                );
                // A backup the catalogue does not know cannot be listed, restored or pruned:
                // it does not count as done (and the run prunes nothing).
                if d.manifest.status == BackupStatus::Success {
                    d.manifest.status = BackupStatus::Failed;
                    d.manifest.error = Some(format!(
                        "the dump was written to {} but cannot be recorded in the catalogue: \
                         {e:#}",
                        d.manifest.file
                    ));
                }
            }
            dumped.push(d);
        }
        let remote_sync = self.copy_off_site(&mut dumped).await;
        let any_failed = dumped
            .iter()
            .any(|d| d.manifest.status == BackupStatus::Failed)
            || remote_sync
                .as_ref()
                .is_some_and(|r| r.status == BackupStatus::Failed);
        let pruned = if any_failed {
            0
        } else {
            self.prune(&databases).await
        };
        let outcomes = dumped
            .into_iter()
            .map(|d| {
                let m = d.manifest;
                DatabaseOutcome {
                    key: format!("{}/{}", m.job, m.database),
                    container: Some(m.container),
                    database: Some(m.database),
                    engine: Some(m.engine),
                    status: m.status,
                    error: m.error,
                    backup_id: Some(m.id),
                    size_bytes: (m.status == BackupStatus::Success).then_some(m.compressed_bytes),
                    duration_ms: Some(m.duration_ms),
                }
            })
            .collect();
        Ok((outcomes, remote_sync, pruned))
    }

    async fn databases(
        &self,
        engine: BackupEngine,
        creds: &engine::Credentials,
        container: &ResolvedContainer,
    ) -> Result<Vec<String>, String> {
        let mut databases = if !self.job.databases.is_empty() {
            self.job.databases.clone()
        } else if let Some(spec) = engine::list_databases(engine, creds) {
            let o = self
                .inner()
                .docker
                .exec_capture(container, &spec)
                .await
                .map_err(|e| format!("listing databases: {e}"))?;
            if !o.succeeded() {
                return Err(format!("listing databases {}", o.describe()));
            }
            engine::parse_database_list(engine, &o.stdout_text())
        } else {
            vec![engine::WHOLE_SERVER.to_string()]
        };
        if engine == BackupEngine::Postgres && !databases.iter().any(|d| d == engine::PG_GLOBALS) {
            databases.push(engine::PG_GLOBALS.to_string());
        }
        Ok(databases)
    }

    async fn tool_versions(
        &self,
        engine: BackupEngine,
        container: &ResolvedContainer,
    ) -> BTreeMap<String, String> {
        let mut versions = BTreeMap::new();
        for (name, spec) in engine::tool_versions(engine) {
            if let Ok(o) = self.inner().docker.exec_capture(container, &spec).await {
                let text = o.stdout_text();
                let line = text.lines().next().unwrap_or_default().trim();
                if o.succeeded() && !line.is_empty() {
                    versions.insert(name.to_string(), line.to_string());
                }
            }
        }
        versions
    }

    async fn dump_one(
        &self,
        engine: BackupEngine,
        creds: &engine::Credentials,
        container: &ResolvedContainer,
        database: &str,
        versions: &BTreeMap<String, String>,
        job_dir: &Path,
    ) -> Dumped {
        let started_at = Utc::now();
        let clock = std::time::Instant::now();
        let id = new_backup_id("bk", started_at);
        let encrypted = self.inner().recipients.is_some();
        let file_name = format!(
            "{}-{}-{}.{}.zst{}",
            file_part(&self.job.name),
            file_part(database),
            id.trim_start_matches("bk_"),
            engine.dump_extension(),
            if encrypted { ".age" } else { "" }
        );
        let rel = format!("{}/{file_name}", file_part(&self.job.name));
        let final_path = job_dir.join(&file_name);
        let partial = job_dir.join(format!("{file_name}.partial"));
        let mut manifest = BackupManifest {
            id,
            run_id: self.run_id.clone(),
            job: self.job.name.clone(),
            engine,
            container: container.name.clone(),
            database: database.to_string(),
            status: BackupStatus::Failed,
            started_at,
            finished_at: started_at,
            duration_ms: 0,
            bytes: 0,
            compressed_bytes: 0,
            sha256: String::new(),
            file: rel,
            compression_level: self.job.compression_level,
            encrypted,
            tool_versions: versions.clone(),
            exit_code: None,
            error: None,
            destinations: Vec::new(),
        };
        let outcome = self
            .stream_dump(
                engine,
                creds,
                container,
                database,
                &partial,
                &final_path,
                &mut manifest,
            )
            .await;
        manifest.finished_at = Utc::now();
        manifest.duration_ms = clock.elapsed().as_millis() as u64;
        match outcome {
            Ok(()) => {
                manifest.status = BackupStatus::Success;
                manifest.destinations.push(DestinationCopy {
                    name: "local".into(),
                    kind: "local".into(),
                    state: CopyState::Stored,
                    location: final_path.display().to_string(),
                    error: None,
                    at: manifest.finished_at,
                });
                self.write_manifest(&final_path, &manifest).await;
                info!(
                    job = self.job.name,
                    database,
                    bytes = manifest.bytes,
                    stored = manifest.compressed_bytes,
                    ms = manifest.duration_ms,
                    "database backed up"
                );
            }
            Err(e) => {
                manifest.file = String::new();
                warn!(
                    job = self.job.name,
                    database,
                    error = e,
                    "database backup failed"
                );
                manifest.error = Some(e);
            }
        }
        Dumped { manifest }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_dump(
        &self,
        engine: BackupEngine,
        creds: &engine::Credentials,
        container: &ResolvedContainer,
        database: &str,
        partial: &Path,
        final_path: &Path,
        manifest: &mut BackupManifest,
    ) -> Result<(), String> {
        let spec = engine::dump(engine, creds, database, &self.job.command)?;
        let (tx, sink) = pipeline::spawn_sink(
            partial.to_path_buf(),
            self.job.compression_level,
            self.inner().recipients.clone(),
            engine == BackupEngine::Redis,
        );
        let limit = Duration::from_secs(self.inner().config.dump_timeout_secs);
        // On timeout the exec stream is dropped: the sink sees the end of its input, and the
        // dump tool in the container gets a broken pipe at its next write.
        let exec = match tokio::time::timeout(
            limit,
            self.inner().docker.exec_stream_out(container, &spec, tx),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(DockerError::Engine(format!(
                "the dump did not finish within dump_timeout_secs ({} s)",
                limit.as_secs()
            ))),
        };
        let written = sink
            .await
            .map_err(|e| format!("the backup writer failed: {e}"))?;
        let discard = || {
            let p = partial.to_path_buf();
            async move {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(p)).await;
            }
        };
        let written = match (exec, written) {
            (_, Err(e)) => {
                discard().await;
                return Err(format!(
                    "cannot write the backup file {}: {e}",
                    partial.display()
                ));
            }
            (Err(e), Ok(_)) => {
                discard().await;
                return Err(format!("dump: {e}"));
            }
            (Ok(outcome), Ok(w)) => {
                manifest.exit_code = outcome.exit_code;
                if !outcome.succeeded() {
                    discard().await;
                    return Err(format!("dump {}", outcome.describe()));
                }
                w
            }
        };
        manifest.bytes = written.raw_bytes;
        manifest.compressed_bytes = written.stored_bytes;
        manifest.sha256 = written.sha256.clone();
        if let Err(e) = engine::check_dump(
            engine,
            database,
            written.raw_bytes,
            &written.head,
            &written.tail,
        ) {
            discard().await;
            return Err(e.into());
        }
        let (p, f) = (partial.to_path_buf(), final_path.to_path_buf());
        tokio::task::spawn_blocking(move || pipeline::commit(&p, &f))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot move the backup into place: {e}"))?;
        Ok(())
    }

    async fn write_manifest(&self, final_path: &Path, manifest: &BackupManifest) {
        let path = manifest_path(final_path);
        let bytes = match serde_json::to_vec_pretty(manifest) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode a manifest");
                return;
            }
        };
        let result =
            tokio::task::spawn_blocking(move || pipeline::write_atomic(&path, &bytes)).await;
        if let Ok(Err(e)) = result {
            warn!(error = %e, "cannot write a manifest file");
        }
    }

    fn destinations(&self) -> Vec<&Destination> {
        self.inner()
            .destinations
            .iter()
            .filter(|d| self.job.destinations.iter().any(|n| n == d.name()))
            .collect()
    }

    /// Copies every successful dump (and its manifest) to the job's destinations.
    async fn copy_off_site(&self, dumped: &mut [Dumped]) -> Option<RemoteSync> {
        let destinations = self.destinations();
        if destinations.is_empty() {
            return None;
        }
        let mut uploaded_bytes = 0u64;
        let mut errors = Vec::new();
        for d in dumped.iter_mut() {
            let m = &mut d.manifest;
            if m.status != BackupStatus::Success {
                continue;
            }
            let local = self.inner().dir.join(&m.file);
            let key = format!("{}/{}", self.inner().agent_name, m.file);
            for dest in &destinations {
                // A destination that hangs (a dead network share, a stalled server) must not
                // hang the run: it fails the copy after a generous, size-scaled limit.
                let limit = upload_timeout(m.compressed_bytes);
                let timed_out = |what: &str| {
                    format!(
                        "destination {} ({}): upload of {what} did not finish within {} s",
                        dest.name(),
                        dest.kind(),
                        limit.as_secs()
                    )
                };
                let copy = match tokio::time::timeout(limit, dest.upload(&local, &key)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(timed_out(&key)),
                };
                let (state, location, error) = match copy {
                    Ok(location) => {
                        uploaded_bytes += m.compressed_bytes;
                        // The manifest travels beside the dump, so a remote copy explains
                        // itself even when the agent and its catalogue are gone.
                        let mpath = manifest_path(&local);
                        let mkey = format!("{key}.manifest.json");
                        match tokio::time::timeout(limit, dest.upload(&mpath, &mkey)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => warn!(error = %e, "cannot copy a manifest off-site"),
                            Err(_) => {
                                warn!(error = timed_out(&mkey), "cannot copy a manifest off-site")
                            }
                        }
                        (CopyState::Stored, location, None)
                    }
                    Err(e) => {
                        errors.push(e.clone());
                        (CopyState::Failed, key.clone(), Some(e))
                    }
                };
                m.destinations.push(DestinationCopy {
                    name: dest.name().to_string(),
                    kind: dest.kind().to_string(),
                    state,
                    location,
                    error,
                    at: Utc::now(),
                });
            }
            if let Err(e) = self.inner().state.backup_put(m.clone()).await {
                error!(error = format!("{e:#}"), "cannot record off-site copies");
            }
            self.write_manifest(&local, m).await;
        }
        Some(RemoteSync {
            status: if errors.is_empty() {
                BackupStatus::Success
            } else {
                BackupStatus::Failed
            },
            uploaded_bytes,
            error: (!errors.is_empty()).then(|| {
                let mut e = errors[0].clone();
                if errors.len() > 1 {
                    e.push_str(&format!(" (and {} more)", errors.len() - 1));
                }
                e
            }),
        })
    }

    /// Applies retention to every database of this job, locally and at every destination
    /// that holds a copy. Returns how many backups were removed.
    async fn prune(&self, databases: &[String]) -> u32 {
        let mut pruned = 0;
        for database in databases {
            let series = match self
                .inner()
                .state
                .backup_series(&self.job.name, database)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = format!("{e:#}"), "cannot read the backup catalogue");
                    continue;
                }
            };
            let items: Vec<retention::RetentionItem> = series
                .iter()
                .map(|m| retention::RetentionItem {
                    id: m.id.clone(),
                    finished_at: m.finished_at,
                })
                .collect();
            let plan = retention::plan(&items, &self.job.retention, &Local);
            for id in plan.delete {
                let Some(m) = series.iter().find(|m| m.id == id) else {
                    continue;
                };
                if self.remove_backup(m).await {
                    pruned += 1;
                }
            }
        }
        pruned
    }

    /// Removes a backup's remote copies, local file and catalogue row; a copy that cannot be
    /// removed keeps the row (retention tries again after the next run).
    async fn remove_backup(&self, m: &BackupManifest) -> bool {
        let mut complete = true;
        for copy in &m.destinations {
            if copy.kind == "local" || copy.state != CopyState::Stored {
                continue;
            }
            let Some(dest) = self
                .inner()
                .destinations
                .iter()
                .find(|d| d.name() == copy.name)
            else {
                // A destination removed from the configuration: its copies are its own now.
                continue;
            };
            for location in [
                copy.location.clone(),
                format!("{}.manifest.json", copy.location),
            ] {
                if let Err(e) = dest.delete(&location).await {
                    warn!(id = m.id, error = %e, "cannot remove an off-site copy");
                    complete = false;
                }
            }
        }
        if !complete {
            return false;
        }
        let local = self.inner().dir.join(&m.file);
        let removed = tokio::task::spawn_blocking(move || {
            for p in [manifest_path(&local), local] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(id = m.id, error = %e, "cannot remove a pruned backup file");
                return false;
            }
            Err(_) => return false,
        }
        if let Err(e) = self.inner().state.backup_delete(&m.id).await {
            warn!(
                id = m.id,
                error = format!("{e:#}"),
                "cannot forget a pruned backup"
            );
            return false;
        }
        debug!(id = m.id, "pruned backup");
        true
    }
}

/// How long one off-site copy may take: 10 minutes plus a second per MiB (a link slower than
/// 1 MiB/s on top of that is treated as stalled).
fn upload_timeout(bytes: u64) -> Duration {
    Duration::from_secs(600 + bytes / (1024 * 1024))
}
