//! Database backups: scheduled dumps of the databases in local containers, streamed through the
//! Docker exec API into compressed (optionally encrypted) files with a checksum and a manifest,
//! copied off-site, pruned grandfather-father-son, reported to the relay and to a
//! `backup-status.json`; and verify/restore of any backup.
//!
//! `Backups` is the service: the executor calls it for `backup.*` commands, `main` for the
//! local `flotilla-agent backup ...` commands, and its `scheduler` and `watcher` tasks run
//! jobs on their schedules and follow an external status file. Every database of a run is
//! isolated: one failing database never stops the others, and a run with any failure never
//! prunes anything.

pub mod config;
pub mod destination;
pub mod encrypt;
pub mod engine;
pub mod pipeline;
pub mod retention;
pub mod schedule;
pub mod status;

use crate::docker::{DockerClient, DockerError, ExecSpec, ResolvedContainer};
use crate::state::State;
use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Local, Utc};
use config::{BackupConfig, JobConfig, RetentionConfig};
use destination::Destination;
use flotilla_shared::backup::{
    BackupEngine, BackupListArgs, BackupListOutput, BackupManifest, BackupReport,
    BackupRestoreArgs, BackupRestoreOutput, BackupStatus, BackupSummary, BackupVerifyOutput,
    CopyState, DatabaseOutcome, DestinationCopy, RemoteSync, ReportSource, RunTrigger, VerifyCheck,
};
use flotilla_shared::command::{error_codes, ErrorInfo};
use schedule::Schedule;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How often the scheduler looks for new or vanished database containers.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(60);
/// Default number of backups a list returns.
const DEFAULT_LIST_LIMIT: u32 = 100;
/// Failed backups (which have no file) stay in the local catalogue this long.
const FAILED_KEEP_DAYS: i64 = 90;
/// Timeout of a dead-man ping.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A job resolved from configuration or discovery.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// Container name or id.
    pub container: String,
    /// None: from the container's label or image at run time.
    pub engine: Option<BackupEngine>,
    pub databases: Vec<String>,
    pub schedule: Schedule,
    pub compression_level: i32,
    pub retention: RetentionConfig,
    /// Destination names.
    pub destinations: Vec<String>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub command: Vec<String>,
    pub restore_command: Vec<String>,
    pub ping_url: Option<String>,
    pub discovered: bool,
}

/// The backup service; cheap to clone.
#[derive(Clone)]
pub struct Backups {
    inner: Arc<Inner>,
}

struct Inner {
    docker: DockerClient,
    state: State,
    config: BackupConfig,
    dir: PathBuf,
    status_file: PathBuf,
    /// The agent's name (first path component of off-site keys) and id (jitter).
    agent_name: String,
    agent_id: String,
    destinations: Vec<Destination>,
    recipients: Option<encrypt::Recipients>,
    default_schedule: Schedule,
    /// One run per job at a time.
    job_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    summary: watch::Sender<Option<BackupSummary>>,
    next_run_at: Mutex<Option<DateTime<Utc>>>,
    status_file_stale: Mutex<bool>,
}

/// Checks `[backup]` without touching the network or Docker: schedules, destinations,
/// recipients, job names.
pub fn validate_config(config: &BackupConfig) -> Result<(), String> {
    Schedule::parse(&config.schedule).map_err(|e| format!("backup.schedule: {e}"))?;
    check_level(config.compression_level).map_err(|e| format!("backup.compression_level: {e}"))?;
    let mut names = std::collections::HashSet::new();
    for d in &config.destinations {
        // Two parts are in memory during an upload: larger parts would break the agent's
        // memory budget.
        if d.part_size_bytes > MAX_PART_SIZE_BYTES {
            return Err(format!(
                "backup.destinations {}: part_size_bytes {} is above the largest accepted, {} \
                 (64 MiB)",
                d.name, d.part_size_bytes, MAX_PART_SIZE_BYTES
            ));
        }
        if !names.insert(d.name.as_str()) {
            return Err(format!(
                "backup.destinations: the name {:?} is used twice",
                d.name
            ));
        }
    }
    let mut jobs = std::collections::HashSet::new();
    for j in &config.jobs {
        if !valid_name(&j.name) {
            return Err(format!(
                "backup.jobs: job name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                j.name
            ));
        }
        if !jobs.insert(j.name.as_str()) {
            return Err(format!(
                "backup.jobs: the job name {:?} is used twice",
                j.name
            ));
        }
        if let Some(s) = &j.schedule {
            Schedule::parse(s).map_err(|e| format!("backup.jobs {}: {e}", j.name))?;
        }
        if let Some(l) = j.compression_level {
            check_level(l).map_err(|e| format!("backup.jobs {}: compression_level {e}", j.name))?;
        }
        for d in j.destinations.iter().flatten() {
            if !names.contains(d.as_str()) {
                return Err(format!(
                    "backup.jobs {}: destination {d:?} is not configured in [[backup.destinations]]",
                    j.name
                ));
            }
        }
        if j.engine == Some(BackupEngine::Command) && j.command.is_empty() {
            return Err(format!(
                "backup.jobs {}: engine \"command\" needs `command`",
                j.name
            ));
        }
    }
    if let (Some(w), Some(s)) = (&config.watch_status_file, &config.status_file) {
        if w == s {
            return Err(
                "backup.watch_status_file must differ from backup.status_file (the agent \
                 rewrites its own)"
                    .into(),
            );
        }
    }
    if config.watch_interval_secs == 0 {
        return Err("backup.watch_interval_secs must be at least 1".into());
    }
    if config.dump_timeout_secs == 0 {
        return Err("backup.dump_timeout_secs must be at least 1".into());
    }
    Ok(())
}

/// Largest S3 multipart part accepted (two are held in memory at once).
const MAX_PART_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// Highest zstd level accepted: above it the encoder's tables alone outgrow the agent's memory
/// budget for a dump (about 28 MiB at 9, 90 MiB at 19) for a few percent of size.
const MAX_COMPRESSION_LEVEL: i32 = 9;

fn check_level(level: i32) -> Result<(), String> {
    if (1..=MAX_COMPRESSION_LEVEL).contains(&level) {
        Ok(())
    } else {
        Err(format!(
            "{level} is not a zstd level between 1 and {MAX_COMPRESSION_LEVEL}"
        ))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// A name safe in a file name: container names and database names may hold anything.
fn file_part(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

fn err(code: &str, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo {
        code: code.into(),
        message: message.into(),
    }
}

fn docker_err(e: DockerError) -> ErrorInfo {
    err(e.code(), e.to_string())
}

fn internal(e: anyhow::Error) -> ErrorInfo {
    err(error_codes::DOCKER, format!("{e:#}"))
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

/// `bk_20260301T021500Z_1a2b3c`: sortable, unique per agent.
fn new_backup_id(prefix: &str, at: DateTime<Utc>) -> String {
    format!(
        "{prefix}_{}_{:06x}",
        at.format("%Y%m%dT%H%M%SZ"),
        flotilla_shared::ids::random_u64() & 0xff_ffff
    )
}

// === impl Backups ===

impl Backups {
    /// Builds the service. `state_dir` gives the default backup directory.
    pub fn new(
        config: BackupConfig,
        docker: DockerClient,
        state: State,
        state_dir: &Path,
        agent_id: &str,
        agent_name: &str,
    ) -> Result<Backups> {
        validate_config(&config).map_err(|e| anyhow!("invalid agent configuration: {e}"))?;
        let dir = config
            .dir
            .clone()
            .unwrap_or_else(|| state_dir.join("backups"));
        let status_file = config
            .status_file
            .clone()
            .unwrap_or_else(|| dir.join("backup-status.json"));
        let destinations = config
            .destinations
            .iter()
            .map(Destination::from_config)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("invalid agent configuration: {e}"))?;
        let mut recipient_lines = config.age_recipients.clone();
        if let Some(f) = &config.age_recipients_file {
            recipient_lines.extend(encrypt::read_recipients_file(f).map_err(|e| {
                anyhow!("invalid agent configuration: backup.age_recipients_file: {e}")
            })?);
        }
        let recipients = encrypt::parse_recipients(&recipient_lines)
            .map_err(|e| anyhow!("invalid agent configuration: backup.age_recipients: {e}"))?;
        let recipients = (!recipients.is_empty()).then_some(recipients);
        let default_schedule = Schedule::parse(&config.schedule).map_err(|e| anyhow!(e))?;
        let (summary, _) = watch::channel(None);
        Ok(Backups {
            inner: Arc::new(Inner {
                docker,
                state,
                config,
                dir,
                status_file,
                agent_name: file_part(agent_name),
                agent_id: agent_id.to_string(),
                destinations,
                recipients,
                default_schedule,
                job_locks: Mutex::new(HashMap::new()),
                summary,
                next_run_at: Mutex::new(None),
                status_file_stale: Mutex::new(false),
            }),
        })
    }

    /// The backup figures for heartbeats (None while the agent has no backups at all).
    pub fn summary(&self) -> watch::Receiver<Option<BackupSummary>> {
        self.inner.summary.subscribe()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn status_file(&self) -> &Path {
        &self.inner.status_file
    }

    /// Creates the backup directory; with `clean`, also removes partial files a previous
    /// process left behind (a dump cut short by a crash or a stop). Only the agent daemon
    /// cleans, at its start: a local `flotilla-agent backup` command must not delete the files
    /// of a dump the daemon is writing.
    pub async fn prepare(&self, clean: bool) -> Result<()> {
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            create_dir(&dir)?;
            if !clean {
                return Ok(());
            }
            let mut removed = 0;
            for entry in std::fs::read_dir(&dir)?.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    for f in std::fs::read_dir(entry.path())?.flatten() {
                        let name = f.file_name().to_string_lossy().to_string();
                        if name.ends_with(".partial") || name.ends_with(".tmp") {
                            let _ = std::fs::remove_file(f.path());
                            removed += 1;
                        }
                    }
                }
            }
            if removed > 0 {
                warn!(
                    removed,
                    "removed partial backup files left by a previous stop"
                );
            }
            Ok(())
        })
        .await
        .context("backup directory task failed")??;
        self.refresh_summary().await;
        Ok(())
    }

    // --- jobs ---

    fn job_from_config(&self, j: &JobConfig) -> Job {
        let c = &self.inner.config;
        Job {
            name: j.name.clone(),
            container: j.container.clone(),
            engine: j.engine,
            databases: j.databases.clone(),
            schedule: j
                .schedule
                .as_deref()
                .and_then(|s| Schedule::parse(s).ok())
                .unwrap_or_else(|| self.inner.default_schedule.clone()),
            compression_level: j.compression_level.unwrap_or(c.compression_level),
            retention: j.retention.unwrap_or(c.retention),
            destinations: j
                .destinations
                .clone()
                .unwrap_or_else(|| c.destinations.iter().map(|d| d.name.clone()).collect()),
            user: j.user.clone(),
            password_file: j.password_file.clone(),
            command: j.command.clone(),
            restore_command: j.restore_command.clone(),
            ping_url: j.ping_url.clone(),
            discovered: false,
        }
    }

    /// Configured jobs, then one job per running database container that no configured job
    /// names (when discovery is on). A discovered job is named after its container.
    pub async fn jobs(&self) -> Result<Vec<Job>, DockerError> {
        let c = &self.inner.config;
        let mut jobs: Vec<Job> = c.jobs.iter().map(|j| self.job_from_config(j)).collect();
        if !c.discover {
            return Ok(jobs);
        }
        let running = self.inner.docker.running_labelled().await?;
        for r in running {
            if engine::opted_out(&r.labels) {
                continue;
            }
            let Some(engine) = engine::detect_engine(&r.image, &r.labels) else {
                if let Some(e) = engine::label_error(&r.labels) {
                    debug!(container = r.container.name, error = e, "not backed up");
                }
                continue;
            };
            // A configured job names its container by name or by id (a prefix of 12 or more
            // hex digits, as docker prints it; shorter ones would match too easily).
            let configured = jobs.iter().any(|j| {
                !j.discovered
                    && (j.container == r.container.name
                        || (j.container.len() >= 12 && r.container.id.starts_with(&j.container)))
            });
            if configured || jobs.iter().any(|j| j.name == r.container.name) {
                continue;
            }
            let mut job = self.job_from_config(&JobConfig {
                name: r.container.name.clone(),
                container: r.container.name.clone(),
                engine: Some(engine),
                databases: Vec::new(),
                schedule: None,
                compression_level: None,
                retention: None,
                destinations: None,
                user: None,
                password_file: None,
                command: Vec::new(),
                restore_command: Vec::new(),
                ping_url: None,
            });
            job.discovered = true;
            jobs.push(job);
        }
        Ok(jobs)
    }

    fn job_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .inner
            .job_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Runs one job by name, or every job; returns each run's report. Unknown job names are
    /// `no_such_backup`.
    pub async fn run(
        &self,
        job: Option<&str>,
        trigger: RunTrigger,
    ) -> Result<Vec<BackupReport>, ErrorInfo> {
        let jobs = self.jobs().await.map_err(docker_err)?;
        let selected: Vec<Job> =
            match job {
                Some(name) => {
                    let j = jobs.iter().find(|j| j.name == name).cloned().ok_or_else(|| {
                    let known: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
                    err(
                        error_codes::NO_SUCH_BACKUP,
                        format!(
                            "no backup job {name:?}; jobs: {}",
                            if known.is_empty() {
                                "none (configure [[backup.jobs]] or run a database container)"
                                    .to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })?;
                    vec![j]
                }
                None => jobs,
            };
        let mut reports = Vec::new();
        for j in selected {
            reports.push(self.run_job(&j, trigger).await);
        }
        Ok(reports)
    }

    /// One run of one job, waiting for a run of the same job already under way.
    pub async fn run_job(&self, job: &Job, trigger: RunTrigger) -> BackupReport {
        let lock = self.job_lock(&job.name);
        let _guard = lock.lock().await;
        let report = Run::new(self, job, trigger).execute().await;
        if let Err(e) = self.inner.state.backup_finish_run(report.clone()).await {
            error!(
                job = job.name,
                error = format!("{e:#}"),
                "cannot record the backup run"
            );
        }
        self.write_status_file().await;
        self.refresh_summary().await;
        let failed = report.failed();
        let remote_failed = report
            .remote_sync
            .as_ref()
            .is_some_and(|r| r.status == BackupStatus::Failed);
        if failed > 0 || remote_failed {
            warn!(
                job = job.name,
                run_id = report.run_id,
                databases = report.databases.len(),
                failed,
                remote_failed,
                "backup run finished with failures"
            );
        } else {
            info!(
                job = job.name,
                run_id = report.run_id,
                databases = report.databases.len(),
                pruned = report.pruned,
                "backup run succeeded"
            );
        }
        report
    }

    async fn write_status_file(&self) {
        let reports = match self.inner.state.backup_latest_reports().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = format!("{e:#}"), "cannot read backup reports");
                return;
            }
        };
        let own: Vec<BackupReport> = reports
            .into_iter()
            .filter(|r| r.source == ReportSource::Agent)
            .collect();
        let Some(file) = status::from_reports(&own) else {
            return;
        };
        let path = self.inner.status_file.clone();
        let written = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            status::write_atomic(&path, &file)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(
                path = %self.inner.status_file.display(),
                error = %e,
                "cannot write backup-status.json"
            ),
            Err(e) => warn!(error = %e, "status file task failed"),
        }
    }

    /// Recomputes the heartbeat summary from the latest reports.
    pub async fn refresh_summary(&self) {
        let reports = self
            .inner
            .state
            .backup_latest_reports()
            .await
            .unwrap_or_default();
        let jobs = self.inner.config.jobs.len() as u32;
        let next_run_at = *self
            .inner
            .next_run_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stale = *self
            .inner
            .status_file_stale
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut latest: BTreeMap<String, (DateTime<Utc>, BackupStatus)> = BTreeMap::new();
        let mut last_run_at = None;
        let mut last_success_at: Option<DateTime<Utc>> = None;
        let mut job_names = std::collections::BTreeSet::new();
        for r in &reports {
            if let Some(j) = &r.job {
                job_names.insert(j.clone());
            }
            last_run_at = last_run_at.max(Some(r.finished_at));
            for d in &r.databases {
                let entry = latest
                    .entry(d.key.clone())
                    .or_insert((r.finished_at, d.status));
                if r.finished_at >= entry.0 {
                    *entry = (r.finished_at, d.status);
                }
                if d.status == BackupStatus::Success {
                    last_success_at = last_success_at.max(Some(r.finished_at));
                }
            }
        }
        let nothing = reports.is_empty()
            && jobs == 0
            && next_run_at.is_none()
            && self.inner.config.watch_status_file.is_none();
        let summary = (!nothing).then(|| BackupSummary {
            jobs: jobs.max(job_names.len() as u32),
            databases: latest.len() as u32,
            failed: latest
                .values()
                .filter(|(_, s)| *s == BackupStatus::Failed)
                .count() as u32,
            last_run_at,
            last_success_at,
            next_run_at,
            status_file_stale: stale,
        });
        self.inner.summary.send_replace(summary);
    }

    // --- list / verify / restore ---

    pub async fn list(&self, args: &BackupListArgs) -> Result<BackupListOutput, ErrorInfo> {
        let limit = args.limit.unwrap_or(DEFAULT_LIST_LIMIT) as usize;
        let (backups, truncated) = self
            .inner
            .state
            .backup_list(args.job.clone(), args.database.clone(), limit)
            .await
            .map_err(internal)?;
        Ok(BackupListOutput { backups, truncated })
    }

    async fn manifest(&self, id: &str) -> Result<BackupManifest, ErrorInfo> {
        self.inner
            .state
            .backup_get(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                err(
                    error_codes::NO_SUCH_BACKUP,
                    format!("no backup {id:?} on this agent (see backup.list)"),
                )
            })
    }

    fn file_path(&self, m: &BackupManifest) -> PathBuf {
        self.inner.dir.join(&m.file)
    }

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
                        Err(e) => check(&mut checks, "end_marker", false, e),
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

    /// The container a restore goes into (`into`, else the backup's own container).
    pub async fn restore_target(
        &self,
        args: &BackupRestoreArgs,
    ) -> Result<(BackupManifest, ResolvedContainer), ErrorInfo> {
        let m = self.manifest(&args.id).await?;
        let name = args.into.clone().unwrap_or_else(|| m.container.clone());
        let c = self.inner.docker.resolve(&name).await.map_err(docker_err)?;
        Ok((m, c))
    }

    /// Streams a backup into a database server: the checksum is verified first, the target
    /// database is created when missing and must hold no tables unless `force`.
    pub async fn restore(
        &self,
        args: &BackupRestoreArgs,
        m: BackupManifest,
        target: ResolvedContainer,
    ) -> Result<BackupRestoreOutput, ErrorInfo> {
        let started = std::time::Instant::now();
        let refused = |msg: String| err(error_codes::RESTORE_REFUSED, msg);
        let failed = |msg: String| err(error_codes::RESTORE_FAILED, msg);
        if m.status != BackupStatus::Success {
            return Err(refused(format!(
                "backup {} failed when it was made; nothing to restore",
                m.id
            )));
        }
        if m.encrypted {
            return Err(refused(format!(
                "backup {} is encrypted to age recipients and the agent holds no private key: \
                 decrypt it with `age -d -i key.txt {} | zstd -d` and load it by hand",
                m.id,
                self.file_path(&m).display()
            )));
        }
        let path = self.file_path(&m);
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
            .map_err(refused)?;
        self.prepare_restore_target(m.engine, &creds, &target, &database, args.force)
            .await?;
        let (rx, source) = pipeline::spawn_source(path.clone());
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
            "backup restored"
        );
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

    /// Credentials for an engine from the container's environment, the job's user and the
    /// job's password file.
    async fn credentials(
        &self,
        engine: BackupEngine,
        container: &ResolvedContainer,
        inspect: &serde_json::Value,
        user: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<engine::Credentials, ErrorInfo> {
        let mut env: HashMap<String, String> = inspect
            .pointer("/Config/Env")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str())
                    .filter_map(|e| e.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        // Docker secrets: the official images accept `<VAR>_FILE` naming a file inside the
        // container; it is read there, through the exec API, only when the variable is unset.
        for var in engine::SECRET_VARIABLES {
            if env.contains_key(var) {
                continue;
            }
            let Some(path) = env.get(&format!("{var}_FILE")).cloned() else {
                continue;
            };
            let spec = ExecSpec::new(&["cat", "--", path.as_str()]);
            match self.inner.docker.exec_capture(container, &spec).await {
                Ok(o) if o.succeeded() => {
                    let value = o.stdout_text().trim_end_matches(['\n', '\r']).to_string();
                    env.insert(var.to_string(), value);
                }
                Ok(o) => warn!(
                    variable = var,
                    path,
                    error = o.describe(),
                    "cannot read a secret file in the container"
                ),
                Err(e) => {
                    warn!(variable = var, path, error = %e, "cannot read a secret file in the container")
                }
            }
        }
        let password = match password_file {
            Some(f) => {
                let f = f.to_path_buf();
                let text = tokio::task::spawn_blocking(move || {
                    std::fs::read_to_string(&f).map_err(|e| (f, e))
                })
                .await
                .map_err(|e| internal(e.into()))?
                .map_err(|(f, e)| {
                    err(
                        error_codes::INVALID_ARGS,
                        format!("cannot read password_file {}: {e}", f.display()),
                    )
                })?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
            None => None,
        };
        Ok(engine::credentials(engine, &env, user, password.as_deref()))
    }

    // --- scheduler and watcher ---

    /// Runs jobs on their schedules until shutdown. Jobs run one after another (one dump at a
    /// time keeps the host responsive). A run missed while the agent was stopped is not made
    /// up; the 48-hour staleness alert covers a host that misses its runs.
    pub async fn scheduler(self, shutdown: CancellationToken) -> Result<()> {
        if !self.inner.config.enabled {
            info!("scheduled backups are disabled (backup.enabled = false)");
            shutdown.cancelled().await;
            return Ok(());
        }
        let mut next: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut logged_error = false;
        loop {
            let (jobs, complete) = match self.jobs().await {
                Ok(j) => {
                    logged_error = false;
                    (j, true)
                }
                Err(e) => {
                    if !std::mem::replace(&mut logged_error, true) {
                        warn!(error = %e, "cannot list containers for backup discovery; retrying");
                    }
                    // Configured jobs still run (they fail on their own if Docker stays down),
                    // and discovered jobs keep their slots for when discovery works again.
                    let configured = self.inner.config.jobs.iter();
                    (configured.map(|j| self.job_from_config(j)).collect(), false)
                }
            };
            let now = Utc::now();
            if complete {
                next.retain(|name, _| jobs.iter().any(|j| &j.name == name));
            }
            for job in &jobs {
                next.entry(job.name.clone())
                    .or_insert_with(|| self.next_slot(job, now));
            }
            let due: Vec<&Job> = jobs
                .iter()
                .filter(|j| next.get(&j.name).is_some_and(|t| *t <= now))
                .collect();
            for job in due {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.record_interrupted(job).await;
                        return Ok(());
                    }
                    _ = self.run_job(job, RunTrigger::Schedule) => {}
                }
                next.insert(job.name.clone(), self.next_slot(job, Utc::now()));
            }
            let soonest = next.values().min().copied();
            *self
                .inner
                .next_run_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = soonest;
            self.refresh_summary().await;
            let wait = soonest
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(DISCOVERY_INTERVAL)
                .min(DISCOVERY_INTERVAL);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A scheduled run cut short by the agent's stop still leaves a record: its databases
    /// failed with "interrupted" (their partial files are removed at the next start), so the
    /// status file, the relay and the dead-man ping do not show the previous night as current.
    async fn record_interrupted(&self, job: &Job) {
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

    fn next_slot(&self, job: &Job, now: DateTime<Utc>) -> DateTime<Utc> {
        let jitter = schedule::agent_jitter(
            &self.inner.agent_id,
            &job.name,
            self.inner.config.jitter_secs,
        );
        job.schedule
            .next_after(now.with_timezone(&Local), jitter)
            .unwrap_or(now + chrono::Duration::days(1))
    }

    /// Follows an external `backup-status.json`: every change is reported to the relay like
    /// the agent's own runs, and a file older than 48 hours (or unreadable) marks the
    /// heartbeat's summary stale.
    pub async fn watcher(self, shutdown: CancellationToken) -> Result<()> {
        let Some(path) = self.inner.config.watch_status_file.clone() else {
            shutdown.cancelled().await;
            return Ok(());
        };
        let interval = Duration::from_secs(self.inner.config.watch_interval_secs);
        let mut last_sent: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || status::read(&p)).await;
            let now = Utc::now();
            let stale = match read {
                Ok(Ok(file)) => {
                    last_error = None;
                    let report = status::to_report(&file, &path.display().to_string(), now);
                    if last_sent.as_deref() != Some(report.run_id.as_str()) {
                        match self.inner.state.backup_finish_run(report.clone()).await {
                            Ok(_) => {
                                info!(
                                    path = %path.display(),
                                    last_run = %file.last_run,
                                    failed = report.failed(),
                                    "reported the watched backup status file"
                                );
                                last_sent = Some(report.run_id);
                            }
                            Err(e) => warn!(
                                error = format!("{e:#}"),
                                "cannot queue the status file report"
                            ),
                        }
                    }
                    status::is_stale(&file, now)
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        warn!(error = msg, "cannot read the watched backup status file");
                        last_error = Some(msg);
                    }
                    true
                }
                Err(e) => {
                    warn!(error = %e, "status file task failed");
                    true
                }
            };
            let changed = {
                let mut s = self
                    .inner
                    .status_file_stale
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::replace(&mut *s, stale) != stale
            };
            if changed || last_sent.is_some() {
                self.refresh_summary().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Removes failed catalogue rows older than 90 days (they have no file).
    pub async fn prune_catalogue(&self) {
        let before = Utc::now() - chrono::Duration::days(FAILED_KEEP_DAYS);
        if let Err(e) = self.inner.state.backup_prune_failed(before).await {
            warn!(
                error = format!("{e:#}"),
                "cannot prune the backup catalogue"
            );
        }
    }
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

// === impl Run ===

/// One run of one job.
struct Run<'a> {
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
    fn new(backups: &'a Backups, job: &'a Job, trigger: RunTrigger) -> Self {
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

    async fn execute(self) -> BackupReport {
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
        let container = docker
            .resolve(&self.job.container)
            .await
            .map_err(|e| format!("container {}: {e}", self.job.container))?;
        let inspect = docker
            .inspect(&container)
            .await
            .map_err(|e| format!("container {}: {e}", container.name))?;
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
            return Err(e);
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

/// `<dump file>.manifest.json`.
fn manifest_path(dump: &Path) -> PathBuf {
    let mut s = dump.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_made_file_safe() {
        assert!(valid_name("pg-main_1.x"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert_eq!(file_part("app db/ü"), "app_db__");
        assert_eq!(file_part(""), "_");
        let id = new_backup_id("bk", "2026-03-01T02:15:00Z".parse().unwrap());
        assert!(id.starts_with("bk_20260301T021500Z_"), "{id}");
        assert_eq!(
            manifest_path(Path::new("/b/x.sql.zst")),
            PathBuf::from("/b/x.sql.zst.manifest.json")
        );
    }

    #[test]
    fn config_errors_name_the_setting() {
        let mut c = BackupConfig::default();
        assert!(validate_config(&c).is_ok());
        c.schedule = "nonsense".into();
        assert!(validate_config(&c).unwrap_err().contains("backup.schedule"));
        let c = BackupConfig {
            compression_level: 40,
            ..Default::default()
        };
        assert!(validate_config(&c)
            .unwrap_err()
            .contains("compression_level"));
        let mut c = BackupConfig::default();
        c.jobs.push(JobConfig {
            name: "pg".into(),
            container: "pg".into(),
            engine: None,
            databases: vec![],
            schedule: None,
            compression_level: None,
            retention: None,
            destinations: Some(vec!["nowhere".into()]),
            user: None,
            password_file: None,
            command: vec![],
            restore_command: vec![],
            ping_url: None,
        });
        let e = validate_config(&c).unwrap_err();
        assert!(e.contains("nowhere") && e.contains("pg"), "{e}");
        let mut c = BackupConfig::default();
        c.destinations.push(config::DestinationConfig {
            name: "offsite".into(),
            kind: config::DestinationKind::Dir,
            path: Some("/mnt/backups".into()),
            endpoint: None,
            region: None,
            bucket: None,
            prefix: String::new(),
            access_key_id_file: None,
            secret_access_key_file: None,
            path_style: false,
            allow_http: false,
            part_size_bytes: 128 * 1024 * 1024,
        });
        let e = validate_config(&c).unwrap_err();
        assert!(
            e.contains("part_size_bytes") && e.contains("offsite"),
            "{e}"
        );
    }
}
