//! The backup service's own methods: building it from `[backup]`, preparing its directory, the
//! jobs (configured, then discovered), running a job under its lock and recording the report,
//! `backup-status.json` and the heartbeat summary, the catalogue (list, lookups, pruning) and a
//! job's credentials, which runs and restores share.

use super::config::{BackupConfig, JobConfig};
use super::destination::Destination;
use super::run::Run;
use super::schedule::Schedule;
use super::{
    create_dir, docker_err, err, file_part, internal, validate_config, Backups, Inner, Job,
};
use super::{encrypt, engine, status};
use crate::docker::{DockerClient, DockerError, ExecSpec, ResolvedContainer};
use crate::state::State;
use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use flotilla_shared::backup::{
    BackupEngine, BackupListArgs, BackupListOutput, BackupManifest, BackupReport, BackupStatus,
    BackupSummary, ReportSource, RunTrigger,
};
use flotilla_shared::command::{error_codes, ErrorInfo};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// Default number of backups a list returns.
pub(super) const DEFAULT_LIST_LIMIT: u32 = 100;
/// Failed backups (which have no file) stay in the local catalogue this long.
const FAILED_KEEP_DAYS: i64 = 90;

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
                busy: Mutex::new(Default::default()),
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

    pub(super) fn job_from_config(&self, j: &JobConfig) -> Job {
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
            expected_missing: false,
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
        for r in &running {
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
        let running_names: Vec<String> = running.iter().map(|r| r.container.name.clone()).collect();
        self.add_expected(&mut jobs, &running_names).await?;
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
        self.set_busy(&job.container, true);
        let report = Run::new(self, job, trigger).execute().await;
        self.set_busy(&job.container, false);
        self.note_run(job, &report).await;
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

    fn set_busy(&self, container: &str, busy: bool) {
        let mut set = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy {
            set.insert(container.to_string());
        } else {
            set.remove(container);
        }
    }

    /// Whether a run is dumping the container with this name or id now (a job names its
    /// container by name or by an id prefix of at least 12 digits).
    pub fn is_busy(&self, name: &str, id: &str) -> bool {
        let set = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        set.iter()
            .any(|c| c == name || (c.len() >= 12 && id.starts_with(c.as_str())))
    }

    pub(super) async fn write_status_file(&self) {
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

    // --- catalogue ---

    pub async fn list(&self, args: &BackupListArgs) -> Result<BackupListOutput, ErrorInfo> {
        let limit = args.limit.unwrap_or(DEFAULT_LIST_LIMIT) as usize;
        let (backups, truncated) = self
            .inner
            .state
            .backup_list(args.job.clone(), args.database.clone(), limit)
            .await
            .map_err(internal)?;
        Ok(BackupListOutput {
            backups,
            truncated,
            offsite: Vec::new(),
            offsite_errors: Vec::new(),
        })
    }

    pub(super) async fn manifest(&self, id: &str) -> Result<BackupManifest, ErrorInfo> {
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

    pub(super) fn file_path(&self, m: &BackupManifest) -> PathBuf {
        self.inner.dir.join(&m.file)
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

    /// Credentials for an engine from the container's environment, the job's user and the
    /// job's password file.
    pub(super) async fn credentials(
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
}
