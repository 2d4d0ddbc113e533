//! `container.update`: replace a container's image without ever leaving the service broken.
//!
//! stop-first (default): validate → pull → rename the old container to its backup name, clear
//! its restart policy, stop it → create the new container under the original name with the old
//! configuration (see `recreate`) → start → health gate and stability window (see `health`) →
//! remove the old container (its image stays for a later rollback).
//! start-first: the new container runs under a temporary name and passes the gate before the old
//! one is stopped; then the names are swapped.
//!
//! Any failure after the old container was touched rolls back: the new container's logs are
//! kept for the report, it is removed, the old container gets its name and restart policy back,
//! starts, and must pass the same gate; if it does not, the outcome is `rollback_failed` and the
//! old container stays (never deleted).
//!
//! Crash safety: before every step the journal record (old inspect, image, restart policy, new
//! container id, phase) is written to `agent.db`. A restarted agent finds unfinished records and
//! converges (`recover`): before the old container was touched → nothing to undo
//! (`failed_unchanged`); between stopping the old and proving the new → roll back; during the
//! health gate → gate the running new container again, then commit or roll back; while
//! committing → finish the commit. The command's result is then reported with `recovered`.

mod compose;
pub mod group;
pub mod health;
pub mod policy;
pub mod recreate;

use crate::docker::{DockerClient, DockerError};
use crate::frame::{keep_newest_lines, FrameLimit};
use crate::state::State;
use chrono::{DateTime, Utc};
use flotilla_shared::command::{error_codes, CommandResult, ErrorInfo, ResultStatus};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use flotilla_shared::update::{
    ContainerUpdateArgs, HealthEvidence, HealthSpec, PhaseTiming, UpdateOutcome, UpdatePhase,
    UpdateReport, UpdateStrategy, BACKUP_NAME_MARKER, FAILED_LOG_LINES, NEW_NAME_MARKER,
    UPDATE_LABEL,
};
use health::ms;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often pull progress may be reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Longest log line kept in a report.
const MAX_LOG_LINE_CHARS: usize = 2000;

/// Containers an update is acting on (name → command id), so container events about them can
/// carry `updating` and alerts can be suppressed.
#[derive(Clone, Debug, Default)]
pub struct Updating(Arc<Mutex<HashMap<String, String>>>);

impl Updating {
    pub(crate) fn insert(&self, name: &str, command_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), command_id.to_string());
    }

    pub(crate) fn remove(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// The update acting on the container with this name (its own, backup or temporary name).
    pub fn command_for(&self, container_name: &str) -> Option<String> {
        let base = base_name(container_name);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(base)
            .cloned()
    }
}

/// The name a container has outside updates: `web` for `web`, `web.flotilla-old-…` and
/// `web.flotilla-new-…`.
pub fn base_name(container_name: &str) -> &str {
    [BACKUP_NAME_MARKER, NEW_NAME_MARKER]
        .iter()
        .find_map(|m| container_name.find(m).map(|i| &container_name[..i]))
        .unwrap_or(container_name)
}

/// What every update shares.
#[derive(Clone)]
pub struct Updater {
    pub docker: DockerClient,
    pub state: State,
    pub config: crate::config::UpdateConfig,
    /// Test hook (see `AgentConfig::test_update_pause_at`).
    pub pause_at: Option<UpdatePhase>,
    pub state_dir: PathBuf,
    pub updating: Updating,
    /// The largest frame the session may send now (the report is sized by it).
    pub frame_limit: FrameLimit,
    /// Cancelled when the agent is asked to stop: pulls and health gates are cut short so a
    /// running update rolls back (or is left to the journal) within the shutdown grace.
    pub stopping: tokio_util::sync::CancellationToken,
    // --- compose (issue 17, part 1) ---
    /// `[compose]`: where project files may be edited, the compose tool.
    pub compose: crate::config::ComposeConfig,
    /// The Docker endpoint the compose tool must use (`docker_host`), when not the default.
    pub docker_host: Option<String>,
}

/// The journal record of one update (JSON in `agent.db`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Journal {
    command_id: String,
    args: ContainerUpdateArgs,
    name: String,
    backup_name: String,
    temp_name: String,
    old_id: String,
    old_inspect: Value,
    old_restart_policy: Value,
    old_stop_timeout: Option<i64>,
    new_id: Option<String>,
    report: UpdateReport,
    started_at: DateTime<Utc>,
    // --- compose (issue 17, part 1) ---
    /// The container's compose project files and their planned edit.
    #[serde(default)]
    compose: Option<compose::ComposeJournal>,
    /// The `compose.update` this run is part of (its result is the group's, not this run's).
    #[serde(default)]
    group: Option<String>,
}

/// Why an update step failed.
type StepError = String;

impl Updater {
    /// Runs one update to its end and files its result (journal, outbox). Never panics on bad
    /// input; every failure becomes an outcome.
    pub async fn run(&self, command_id: &str, args: ContainerUpdateArgs) {
        let started_at = Utc::now();
        let clock = Instant::now();
        let mut report = empty_report(&args);
        let prepared = self.prepare(command_id, &args, &mut report, false).await;
        let mut run = match prepared {
            Ok(run) => run,
            Err(refusal) => {
                report.outcome = UpdateOutcome::FailedUnchanged;
                report.reason = Some(refusal.message.clone());
                report.total_ms = ms(clock.elapsed());
                self.file_result(command_id, report, Some(refusal), started_at, None)
                    .await;
                return;
            }
        };
        self.updating.insert(&run.j.name, command_id);
        info!(
            command_id,
            container = run.j.name,
            image = args.image,
            strategy = %args.strategy,
            "updating container"
        );
        let outcome = self.drive(&mut run).await;
        self.updating.remove(&run.j.name);
        run.j.report.total_ms = ms(clock.elapsed());
        self.finish(run, outcome, started_at).await;
    }

    /// Files the refusal of an update that could not even start (invalid arguments, unknown
    /// container, busy): outcome `failed_unchanged`, nothing touched.
    pub async fn refuse(&self, command_id: &str, args: &ContainerUpdateArgs, error: ErrorInfo) {
        let mut report = empty_report(args);
        report.reason = Some(error.message.clone());
        self.file_result(command_id, report, Some(error), Utc::now(), None)
            .await;
    }

    /// Re-runs the unfinished update in `record` from where its journal stands.
    pub async fn recover(&self, record: &str) {
        let j: Journal = match serde_json::from_str(record) {
            Ok(j) => j,
            Err(e) => {
                error!(error = %e, "unreadable update journal record; leaving containers as they are");
                return;
            }
        };
        let started_at = j.started_at;
        let phase = j.report.phase;
        warn!(
            command_id = j.command_id,
            container = j.name,
            phase = %phase,
            "the agent stopped during an update; converging from the journal"
        );
        let command_id = j.command_id.clone();
        self.updating.insert(&j.name, &command_id);
        let mut run = Run {
            j,
            recovering: true,
        };
        run.j.report.recovered = true;
        let strategy = run.j.args.strategy;
        let outcome = match phase {
            UpdatePhase::Validated | UpdatePhase::Pulling | UpdatePhase::Pulled => {
                Outcome::Unchanged(format!(
                    "the agent stopped during phase {phase}, before the old container was touched; nothing was changed"
                ))
            }
            UpdatePhase::Creating | UpdatePhase::Starting | UpdatePhase::HealthGate
                if strategy == UpdateStrategy::StartFirst =>
            {
                // The old container was never stopped: drop the new one.
                self.rollback(
                    &mut run,
                    format!("the agent stopped during phase {phase}; the new container was not proven"),
                )
                .await
            }
            UpdatePhase::HealthGate => self.resume_gate(&mut run).await,
            UpdatePhase::Committing => match self.commit(&mut run).await {
                Ok(()) => Outcome::Updated,
                Err(e) => Outcome::CommitFailed(e),
            },
            // Everything between touching the old container and proving the new one, and a
            // rollback in progress. (`done` is never journaled without finishing the record.)
            _ => {
                self.rollback(
                    &mut run,
                    format!("the agent stopped during phase {phase}; the new container was not proven"),
                )
                .await
            }
        };
        self.updating.remove(&run.j.name);
        self.finish(run, outcome, started_at).await;
    }

    /// Validation: resolve, inspect, policy, journal. Errors are refusals (nothing changed).
    async fn prepare(
        &self,
        command_id: &str,
        args: &ContainerUpdateArgs,
        report: &mut UpdateReport,
        grouped: bool,
    ) -> Result<Run, ErrorInfo> {
        let clock = Instant::now();
        let docker_err = |e: DockerError| ErrorInfo {
            code: e.code().into(),
            message: e.to_string(),
        };
        let c = self
            .docker
            .resolve(&args.container)
            .await
            .map_err(docker_err)?;
        report.container = c.name.clone();
        if c.name.contains(BACKUP_NAME_MARKER) || c.name.contains(NEW_NAME_MARKER) {
            return Err(refuse(
                error_codes::INVALID_ARGS,
                format!(
                    "{} is a container an update left behind, not one to update",
                    c.name
                ),
            ));
        }
        let old = self
            .docker
            .inspect_json(&c.id)
            .await
            .map_err(docker_err)?
            .ok_or_else(|| docker_err(DockerError::NoSuchContainer(c.name.clone())))?;
        let status = old
            .pointer("/State/Status")
            .and_then(Value::as_str)
            .unwrap_or("");
        if matches!(status, "created" | "exited" | "dead" | "removing") {
            // A rollback restores the old container RUNNING, which would change a stopped one.
            return Err(refuse(
                error_codes::NOT_RUNNING,
                format!(
                    "container {} is {status}: container.update replaces running containers; \
                     start it first",
                    c.name
                ),
            ));
        }
        if old
            .pointer("/HostConfig/AutoRemove")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Err(refuse(
                error_codes::INVALID_ARGS,
                format!(
                    "container {} was started with --rm (AutoRemove): stopping it deletes it, so \
                     it could not be rolled back; recreate it without --rm to update it",
                    c.name
                ),
            ));
        }
        let current_image = old
            .pointer("/Config/Image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        report.old_container_id = Some(c.id.clone());
        report.old_image = Some(current_image.clone());
        report.old_image_id = old.get("Image").and_then(Value::as_str).map(str::to_string);
        if let Some(id) = &report.old_image_id {
            if let Ok(Some(img)) = self.docker.image_inspect_json(id).await {
                report.old_image_digest = digest_for(&img, &current_image);
            }
        }
        policy::check_image(&self.config, &current_image, &args.image)
            .map_err(|m| refuse(error_codes::POLICY, m.into()))?;
        let compose = if grouped {
            None
        } else {
            self.plan_compose(&old, args, report)?
        };
        if args.strategy == UpdateStrategy::StartFirst {
            self.check_start_first(&old, &c.id, &c.name)
                .await
                .map_err(|m| refuse(error_codes::INVALID_ARGS, m))?;
        }
        let suffix: String = {
            let chars: Vec<char> = command_id.chars().collect();
            chars[chars.len().saturating_sub(8)..].iter().collect()
        };
        let j = Journal {
            command_id: command_id.to_string(),
            args: args.clone(),
            name: c.name.clone(),
            backup_name: format!("{}{BACKUP_NAME_MARKER}{suffix}", c.name),
            temp_name: format!("{}{NEW_NAME_MARKER}{suffix}", c.name),
            old_id: c.id.clone(),
            old_restart_policy: old
                .pointer("/HostConfig/RestartPolicy")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"Name": "no"})),
            old_stop_timeout: old.pointer("/Config/StopTimeout").and_then(Value::as_i64),
            old_inspect: old,
            new_id: None,
            report: report.clone(),
            started_at: Utc::now(),
            compose,
            group: None,
        };
        let mut run = Run {
            j,
            recovering: false,
        };
        run.timing("validate", clock);
        self.phase(&mut run, UpdatePhase::Validated)
            .await
            .map_err(|e| refuse(error_codes::DOCKER, e))?;
        Ok(run)
    }

    async fn check_start_first(&self, old: &Value, id: &str, name: &str) -> Result<(), String> {
        let why_not = start_first_obstacle(old);
        if let Some(why) = why_not {
            return Err(format!(
                "strategy start-first is not possible for {name}: {why}; use stop-first"
            ));
        }
        let users = self
            .docker
            .network_namespace_users(id, name)
            .await
            .map_err(|e| e.to_string())?;
        if !users.is_empty() {
            return Err(format!(
                "strategy start-first is not possible for {name}: containers {} share its network namespace; use stop-first",
                users.join(", ")
            ));
        }
        Ok(())
    }

    /// The update proper, from a validated journal to an outcome.
    async fn drive(&self, run: &mut Run) -> Outcome {
        // Pull.
        if let Err(e) = self.pull(run).await {
            return Outcome::Unchanged(e);
        }
        if let Err(e) = self.apply_compose(run).await {
            self.restore_compose(run).await;
            return Outcome::Unchanged(e);
        }
        match run.j.args.strategy {
            UpdateStrategy::StopFirst => self.stop_first(run).await,
            UpdateStrategy::StartFirst => self.start_first(run).await,
        }
    }

    async fn pull(&self, run: &mut Run) -> Result<(), StepError> {
        self.phase(run, UpdatePhase::Pulling).await?;
        let t = Instant::now();
        // An untagged reference would make the engine pull every tag of the repository.
        let image = policy::with_default_tag(&run.j.args.image);
        let registry = policy::ImageRef::parse(&image).registry;
        let creds = policy::credentials(&self.config, &registry)?;
        // Progress goes to the relay while the pull runs (at most every PROGRESS_EVERY).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pull = async move {
            let mut last_sent: Option<Instant> = None;
            self.docker
                .pull(&image, creds, |p| {
                    if last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                        last_sent = Some(Instant::now());
                        let _ = tx.send(p.clone());
                    }
                })
                .await
        };
        let image = run.j.args.image.clone();
        let forward = async {
            while let Some(p) = rx.recv().await {
                let mut attrs = BTreeMap::new();
                attrs.insert("layers_done".into(), p.layers_done.to_string());
                attrs.insert("layers_total".into(), p.layers_total.to_string());
                let message = format!(
                    "pulling {image}: {}/{} layers",
                    p.layers_done, p.layers_total
                );
                self.event(run, message, attrs).await;
            }
        };
        let pulled = tokio::select! {
            (pulled, ()) = async { tokio::join!(pull, forward) } => pulled,
            _ = self.stopping.cancelled() => {
                return Err("the agent is stopping; the pull was abandoned".into());
            }
        };
        pulled.map_err(|e| e.to_string())?;
        let img = self
            .docker
            .image_inspect_json(&image)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("pulled {image} but the engine does not have it"))?;
        run.j.report.new_image_id = img.get("Id").and_then(Value::as_str).map(str::to_string);
        run.j.report.new_image_digest = digest_for(&img, &image);
        run.timing("pull", t);
        self.phase(run, UpdatePhase::Pulled).await?;
        Ok(())
    }

    async fn stop_first(&self, run: &mut Run) -> Outcome {
        if let Err(e) = self.stop_old(run, true).await {
            return self.rollback(run, e).await;
        }
        if let Err(e) = self.create_and_start(run, false).await {
            return self.rollback(run, e).await;
        }
        self.gate_then_commit(run).await
    }

    async fn start_first(&self, run: &mut Run) -> Outcome {
        if let Err(e) = self.create_and_start(run, true).await {
            return self.rollback(run, e).await;
        }
        if let Err(e) = self.gate_new(run).await {
            return self.rollback(run, e).await;
        }
        if let Err(e) = self.stop_old(run, true).await {
            return self.rollback(run, e).await;
        }
        let new_id = run.j.new_id.clone().unwrap_or_default();
        if let Err(e) = self.docker.rename(&new_id, &run.j.name).await {
            return self
                .rollback(run, format!("cannot give the new container its name: {e}"))
                .await;
        }
        match self.commit(run).await {
            Ok(()) => Outcome::Updated,
            Err(e) => Outcome::CommitFailed(e),
        }
    }

    /// Renames the old container to its backup name, clears its restart policy, stops it.
    async fn stop_old(&self, run: &mut Run, rename: bool) -> Result<(), StepError> {
        // Said before acting: a report may claim a stop that a crash prevented, never the
        // reverse.
        run.j.report.old_stopped = true;
        self.phase(run, UpdatePhase::StoppingOld).await?;
        let t = Instant::now();
        let old = run.j.old_id.clone();
        if rename {
            self.docker
                .rename(&old, &run.j.backup_name)
                .await
                .map_err(|e| format!("cannot rename the old container: {e}"))?;
        }
        self.docker
            .set_restart_policy(&old, &serde_json::json!({"Name": "no"}))
            .await
            .map_err(|e| format!("cannot clear the old container's restart policy: {e}"))?;
        self.docker
            .stop_own_timeout(&old, run.j.old_stop_timeout)
            .await
            .map_err(|e| format!("cannot stop the old container: {e}"))?;
        run.timing("stop_old", t);
        self.phase(run, UpdatePhase::OldStopped).await?;
        Ok(())
    }

    /// Creates the new container (under the original name, or the temporary one for
    /// start-first), connects its further networks, starts it.
    async fn create_and_start(&self, run: &mut Run, temporary: bool) -> Result<(), StepError> {
        self.phase(run, UpdatePhase::Creating).await?;
        let t = Instant::now();
        let old_image = match run.j.report.old_image_id.clone() {
            Some(id) => self.docker.image_inspect_json(&id).await.ok().flatten(),
            None => None,
        };
        let plan = recreate::plan(&run.j.old_inspect, old_image.as_ref(), &run.j.args.image);
        let mut body = plan.body;
        if let Some(Value::Object(cfg)) = Some(&mut body) {
            let labels = cfg
                .entry("Labels")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(l) = labels {
                l.insert(UPDATE_LABEL.into(), Value::String(run.j.command_id.clone()));
                for (k, v) in self.compose_labels(run) {
                    l.insert(k, Value::String(v));
                }
            }
        }
        let name = if temporary {
            run.j.temp_name.clone()
        } else {
            run.j.name.clone()
        };
        let id = self
            .docker
            .create_json(&name, &body)
            .await
            .map_err(|e| e.to_string())?;
        run.j.new_id = Some(id.clone());
        run.j.report.new_container_id = Some(id.clone());
        // Journal the new id at once: a crash from here on must find and remove it.
        self.save(run).await?;
        for (network, endpoint) in &plan.extra_networks {
            self.docker
                .connect_json(network, &id, endpoint)
                .await
                .map_err(|e| e.to_string())?;
        }
        run.timing("create", t);
        self.phase(run, UpdatePhase::Starting).await?;
        let t = Instant::now();
        self.docker
            .start_id(&id)
            .await
            .map_err(|e| format!("cannot start the new container: {e}"))?;
        run.timing("start", t);
        Ok(())
    }

    /// The new container's health gate; the error is what failed.
    async fn gate_new(&self, run: &mut Run) -> Result<(), StepError> {
        self.phase_or_fail(run, UpdatePhase::HealthGate).await;
        let evidence = self
            .gate(run, run.j.new_id.clone().unwrap_or_default())
            .await;
        let outcome = if evidence.passed {
            Ok(())
        } else {
            Err(evidence.detail.clone())
        };
        run.j.report.health_evidence = Some(evidence);
        outcome
    }

    async fn gate_then_commit(&self, run: &mut Run) -> Outcome {
        if let Err(e) = self.gate_new(run).await {
            return self.rollback(run, e).await;
        }
        match self.commit(run).await {
            Ok(()) => Outcome::Updated,
            Err(e) => Outcome::CommitFailed(e),
        }
    }

    /// After a restart during the health gate: gate the new container again if it is there.
    async fn resume_gate(&self, run: &mut Run) -> Outcome {
        let new_id = run.j.new_id.clone().unwrap_or_default();
        let present =
            !new_id.is_empty() && matches!(self.docker.inspect_id(&new_id).await, Ok(Some(_)));
        if !present {
            return self
                .rollback(
                    run,
                    "the agent stopped during the health gate and the new container is gone".into(),
                )
                .await;
        }
        self.gate_then_commit(run).await
    }

    async fn gate(&self, run: &mut Run, id: String) -> HealthEvidence {
        let args = &run.j.args;
        let evidence = self
            .gate_or_stop(
                &id,
                &args.health,
                Duration::from_secs(args.health_timeout_secs() as u64),
                Duration::from_secs(args.stable_secs() as u64),
            )
            .await;
        run.j.report.timings.push(PhaseTiming {
            phase: "health".into(),
            ms: evidence.check_ms,
        });
        run.j.report.timings.push(PhaseTiming {
            phase: "stable".into(),
            ms: evidence.stable_ms,
        });
        evidence
    }

    /// The health gate, cut short (failed) when the agent is asked to stop.
    async fn gate_or_stop(
        &self,
        id: &str,
        spec: &HealthSpec,
        timeout: Duration,
        stable: Duration,
    ) -> HealthEvidence {
        tokio::select! {
            ev = health::gate(&self.docker, id, spec, timeout, stable) => ev,
            _ = self.stopping.cancelled() => HealthEvidence {
                method: spec.to_string(),
                passed: false,
                checks: 0,
                check_ms: 0,
                stable_ms: 0,
                detail: "the agent is stopping; the check was cut short".into(),
                last_output: None,
            },
        }
    }

    /// Removes the old container (keeping its image) once the new one is proven.
    async fn commit(&self, run: &mut Run) -> Result<(), StepError> {
        self.phase(run, UpdatePhase::Committing).await?;
        let t = Instant::now();
        let old = run.j.old_id.clone();
        if let Some(new_id) = run.j.new_id.clone() {
            // start-first after a crash: the new container may still carry its temporary name.
            if let Ok(Some(c)) = self.docker.inspect_id(&new_id).await {
                let current = c.name.unwrap_or_default();
                if current.trim_start_matches('/') != run.j.name {
                    if let Ok(Some(_)) = self.docker.inspect_id(&old).await {
                        self.docker
                            .rename(&old, &run.j.backup_name)
                            .await
                            .map_err(|e| format!("cannot rename the old container: {e}"))?;
                    }
                    self.docker
                        .rename(&new_id, &run.j.name)
                        .await
                        .map_err(|e| format!("cannot give the new container its name: {e}"))?;
                }
            }
        }
        // It is stopped already; `force` only covers a container a daemon restart revived.
        self.docker
            .remove_id(&old, true)
            .await
            .map_err(|e| format!("the new container runs, but removing the old one failed: {e}"))?;
        run.timing("commit", t);
        Ok(())
    }

    /// Puts the old container back: new one's logs captured and removed, old one renamed back,
    /// restart policy restored, started, gated.
    async fn rollback(&self, run: &mut Run, reason: String) -> Outcome {
        warn!(
            command_id = run.j.command_id,
            container = run.j.name,
            reason,
            "update failed; rolling back"
        );
        let t = Instant::now();
        if run.j.report.reason.is_none() {
            run.j.report.reason = Some(reason.clone());
        }
        self.phase_or_fail(run, UpdatePhase::RollingBack).await;
        let mut problems = Vec::new();
        // Never leave neither: if the old container is gone, the new one stays.
        let old_exists = matches!(self.docker.inspect_id(&run.j.old_id).await, Ok(Some(_)));
        if !old_exists {
            return Outcome::RollbackFailed(format!(
                "{reason}; the old container no longer exists, so the new one was left in place"
            ));
        }
        // Every container this update created (journaled or not yet: found by its label).
        let mut created: Vec<String> = run.j.new_id.clone().into_iter().collect();
        match self
            .docker
            .containers_with_label(UPDATE_LABEL, &run.j.command_id)
            .await
        {
            Ok(ids) => created.extend(ids),
            Err(e) => problems.push(format!("cannot list the containers this update made: {e}")),
        }
        created.sort();
        created.dedup();
        created.retain(|id| *id != run.j.old_id);
        for id in created {
            if run.j.report.failed_logs.is_empty() {
                run.j.report.failed_logs = self.logs(&id).await;
                // Keep the evidence even if the agent dies before the report is filed.
                if let Err(e) = self.save(run).await {
                    error!(error = e, "cannot journal the failed container's logs");
                }
            }
            if let Err(e) = self.docker.remove_id(&id, true).await {
                problems.push(format!("cannot remove the new container: {e}"));
            }
        }
        let old = run.j.old_id.clone();
        let restored = async {
            let c = self
                .docker
                .inspect_id(&old)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the old container no longer exists".to_string())?;
            if c.name.unwrap_or_default().trim_start_matches('/') != run.j.name {
                self.docker
                    .rename(&old, &run.j.name)
                    .await
                    .map_err(|e| format!("cannot give the old container its name back: {e}"))?;
            }
            self.docker
                .set_restart_policy(&old, &run.j.old_restart_policy)
                .await
                .map_err(|e| format!("cannot restore the old container's restart policy: {e}"))?;
            self.docker
                .start_id(&old)
                .await
                .map_err(|e| format!("cannot start the old container: {e}"))?;
            Ok::<(), String>(())
        }
        .await;
        run.timing("rollback", t);
        let reason = if problems.is_empty() {
            reason
        } else {
            format!("{reason}; {}", problems.join("; "))
        };
        if let Err(e) = restored {
            return Outcome::RollbackFailed(format!("{reason}; rollback: {e}"));
        }
        let t = Instant::now();
        // The old container is held to the same check, except that `docker` becomes `auto`:
        // the old image may predate the HEALTHCHECK the new one brought.
        let spec = match &run.j.args.health {
            HealthSpec::Docker => HealthSpec::Auto,
            other => other.clone(),
        };
        let evidence = self
            .gate_or_stop(
                &old,
                &spec,
                Duration::from_secs(run.j.args.health_timeout_secs() as u64),
                Duration::from_secs(run.j.args.stable_secs() as u64),
            )
            .await;
        run.timing("rollback_health", t);
        if self.stopping.is_cancelled() && !evidence.passed {
            // Restored (name, restart policy, running) but not re-checked: good enough to stop.
            run.j.report.rollback_health_evidence = Some(evidence);
            return Outcome::RolledBack(reason);
        }
        let passed = evidence.passed;
        let detail = evidence.detail.clone();
        run.j.report.rollback_health_evidence = Some(evidence);
        if passed {
            Outcome::RolledBack(reason)
        } else {
            if run.j.report.failed_logs.is_empty() {
                run.j.report.failed_logs = self.logs(&old).await;
            }
            Outcome::RollbackFailed(format!(
                "{reason}; the old container failed its health check too: {detail}"
            ))
        }
    }

    /// Files the result of a finished update and forgets it.
    async fn finish(
        &self,
        mut run: Run,
        outcome: Outcome,
        started_at: DateTime<Utc>,
    ) -> UpdateReport {
        let (out, reason) = match outcome {
            Outcome::Updated => (UpdateOutcome::Updated, None),
            Outcome::Unchanged(r) => (UpdateOutcome::FailedUnchanged, Some(r)),
            Outcome::RolledBack(r) => (UpdateOutcome::RolledBack, Some(r)),
            Outcome::RollbackFailed(r) => (UpdateOutcome::RollbackFailed, Some(r)),
            Outcome::CommitFailed(r) => (UpdateOutcome::Updated, Some(r)),
        };
        if !matches!(out, UpdateOutcome::Updated) {
            self.restore_compose(&mut run).await;
        }
        run.j.report.outcome = out;
        run.j.report.reason = reason;
        run.j.report.phase = UpdatePhase::Done;
        if run.recovering {
            // From the update's start, across the agent's restart.
            let since = (Utc::now() - run.j.started_at).num_milliseconds();
            run.j.report.total_ms = since.max(0) as u64;
        }
        let mut attrs = BTreeMap::new();
        attrs.insert("outcome".into(), out.as_str().to_string());
        self.event(
            &run,
            format!(
                "update of {} to {} ended: {out}",
                run.j.name, run.j.args.image
            ),
            attrs,
        )
        .await;
        match out {
            UpdateOutcome::Updated => info!(
                command_id = run.j.command_id,
                container = run.j.name,
                image = run.j.args.image,
                "container updated"
            ),
            _ => warn!(
                command_id = run.j.command_id,
                container = run.j.name,
                outcome = out.as_str(),
                reason = run.j.report.reason.as_deref().unwrap_or(""),
                "container update failed"
            ),
        }
        let record = serde_json::to_string(&run.j).unwrap_or_default();
        let report = run.j.report.clone();
        let command_id = run.j.command_id.clone();
        if run.j.group.is_some() {
            // One run of a compose.update: the group files the one result.
            if let Err(e) = self.state.finish_update_record(&command_id, record).await {
                error!(
                    command_id,
                    error = format!("{e:#}"),
                    "cannot finish update record"
                );
            }
            return report;
        }
        self.file_result(&command_id, report.clone(), None, started_at, Some(record))
            .await;
        report
    }

    async fn file_result(
        &self,
        command_id: &str,
        mut report: UpdateReport,
        refusal: Option<ErrorInfo>,
        started_at: DateTime<Utc>,
        record: Option<String>,
    ) {
        // Keep the report inside one frame: the logs give way first.
        let max_frame = self.frame_limit.load(std::sync::atomic::Ordering::Relaxed);
        let (lines, _) = keep_newest_lines(std::mem::take(&mut report.failed_logs), max_frame / 4);
        report.failed_logs = lines;
        let error = match (&refusal, report.outcome.error_code()) {
            (Some(r), _) => Some(r.clone()),
            (None, None) => None,
            (None, Some(code)) => Some(ErrorInfo {
                code: code.into(),
                message: report
                    .reason
                    .clone()
                    .unwrap_or_else(|| report.outcome.to_string()),
            }),
        };
        let status = if error.is_none() {
            ResultStatus::Succeeded
        } else {
            ResultStatus::Failed
        };
        let result = CommandResult {
            command_id: command_id.to_string(),
            status,
            output: serde_json::to_value(&report).ok(),
            error,
            started_at,
            finished_at: Utc::now(),
        };
        if let Err(e) = self
            .state
            .finish_update(result, record.unwrap_or_default())
            .await
        {
            error!(
                command_id,
                error = format!("{e:#}"),
                "cannot store update result"
            );
        }
    }

    /// Journals the phase, tells the relay, and honours the test pause hook.
    async fn phase(&self, run: &mut Run, phase: UpdatePhase) -> Result<(), StepError> {
        run.j.report.phase = phase;
        self.save(run).await?;
        self.event(
            run,
            format!("update of {}: {phase}", run.j.name),
            BTreeMap::new(),
        )
        .await;
        if self.pause_at == Some(phase) && !run.recovering {
            let marker = self.state_dir.join(format!("update-paused-{phase}"));
            warn!(phase = %phase, marker = %marker.display(), "test hook: update paused");
            let _ = std::fs::write(&marker, run.j.command_id.as_bytes());
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// Like `phase`, for steps that go on even when the journal cannot be written (a rollback
    /// must still be attempted).
    async fn phase_or_fail(&self, run: &mut Run, phase: UpdatePhase) {
        if let Err(e) = self.phase(run, phase).await {
            error!(error = e, "cannot journal update phase; going on");
        }
    }

    async fn save(&self, run: &Run) -> Result<(), StepError> {
        let record = serde_json::to_string(&run.j).map_err(|e| e.to_string())?;
        self.state
            .save_update(&run.j.command_id, run.j.report.phase.as_str(), record)
            .await
            .map_err(|e| format!("cannot write the update journal: {e:#}"))
    }

    async fn event(&self, run: &Run, message: String, mut attributes: BTreeMap<String, String>) {
        attributes.insert("command_id".into(), run.j.command_id.clone());
        // A compose.update's container: the relay records it under the group.
        if let Some(group) = &run.j.group {
            attributes.insert("group".into(), group.clone());
        }
        attributes.insert("phase".into(), run.j.report.phase.as_str().to_string());
        attributes.insert("image".into(), run.j.args.image.clone());
        let event = AgentEvent {
            kind: EventKind::ContainerUpdate,
            at: Utc::now(),
            container_id: Some(run.j.old_id.clone()),
            container_name: Some(run.j.name.clone()),
            message,
            attributes,
        };
        if let Err(e) = self
            .state
            .append_outbox(vec![OutboxItem::Event(event)])
            .await
        {
            warn!(
                error = format!("{e:#}"),
                "cannot queue update progress event"
            );
        }
    }

    async fn logs(&self, id: &str) -> Vec<String> {
        self.docker
            .logs_tail(id, FAILED_LOG_LINES)
            .await
            .into_iter()
            .map(|l| {
                if l.chars().count() > MAX_LOG_LINE_CHARS {
                    l.chars().take(MAX_LOG_LINE_CHARS).collect::<String>() + "…"
                } else {
                    l
                }
            })
            .collect()
    }
}

/// The result of an update the agent stopped during before it changed anything (before its
/// journal record existed): `failed_unchanged`, with its report.
pub fn unstarted_result(
    command_id: &str,
    args: &ContainerUpdateArgs,
    now: DateTime<Utc>,
) -> CommandResult {
    let mut report = empty_report(args);
    report.recovered = true;
    let message = "the agent stopped before the update changed anything; nothing was changed";
    report.reason = Some(message.into());
    CommandResult {
        command_id: command_id.to_string(),
        status: ResultStatus::Failed,
        output: serde_json::to_value(&report).ok(),
        error: Some(ErrorInfo {
            code: error_codes::UPDATE_FAILED_UNCHANGED.into(),
            message: message.into(),
        }),
        started_at: now,
        finished_at: now,
    }
}

/// One update in progress.
struct Run {
    j: Journal,
    /// Converging after an agent restart (the pause hook does not apply).
    recovering: bool,
}

impl Run {
    fn timing(&mut self, phase: &str, since: Instant) {
        self.j.report.timings.push(PhaseTiming {
            phase: phase.into(),
            ms: ms(since.elapsed()),
        });
    }
}

enum Outcome {
    Updated,
    Unchanged(String),
    RolledBack(String),
    RollbackFailed(String),
    /// The new container is proven and runs; removing the old one failed (reported, the old
    /// container stays stopped under its backup name).
    CommitFailed(String),
}

fn refuse(code: &str, message: String) -> ErrorInfo {
    ErrorInfo {
        code: code.into(),
        message,
    }
}

fn empty_report(args: &ContainerUpdateArgs) -> UpdateReport {
    UpdateReport {
        outcome: UpdateOutcome::FailedUnchanged,
        container: args.container.clone(),
        image: args.image.clone(),
        strategy: args.strategy,
        health: args.health.clone(),
        old_container_id: None,
        old_image: None,
        old_image_id: None,
        old_image_digest: None,
        new_container_id: None,
        new_image_id: None,
        new_image_digest: None,
        phase: UpdatePhase::Validated,
        timings: Vec::new(),
        health_evidence: None,
        rollback_health_evidence: None,
        reason: None,
        failed_logs: Vec::new(),
        recovered: false,
        old_stopped: false,
        total_ms: 0,
        compose: None,
    }
}

/// Why start-first cannot be used for this container, if it cannot.
fn start_first_obstacle(old: &Value) -> Option<String> {
    let hc = old.get("HostConfig");
    let mode = hc
        .and_then(|h| h.get("NetworkMode"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if mode == "host" || mode.starts_with("container:") {
        return Some(format!(
            "it uses network mode {mode}, so old and new would share ports and addresses"
        ));
    }
    if hc
        .and_then(|h| h.get("PublishAllPorts"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Some("it publishes all its ports".into());
    }
    if let Some(Value::Object(bindings)) = hc.and_then(|h| h.get("PortBindings")) {
        if bindings
            .values()
            .any(|b| b.as_array().is_some_and(|a| !a.is_empty()))
        {
            return Some("it publishes host ports".into());
        }
    }
    if old
        .pointer("/Config/MacAddress")
        .and_then(Value::as_str)
        .is_some_and(|m| !m.is_empty())
    {
        return Some("it has a fixed MAC address".into());
    }
    if let Some(Value::Object(networks)) = old.pointer("/NetworkSettings/Networks") {
        for (name, ep) in networks {
            let ipam = ep.get("IPAMConfig");
            let fixed = ipam.is_some_and(|i| {
                ["IPv4Address", "IPv6Address"].iter().any(|k| {
                    i.get(k)
                        .and_then(Value::as_str)
                        .is_some_and(|a| !a.is_empty())
                })
            });
            if fixed {
                return Some(format!("it has a static address on network {name}"));
            }
        }
    }
    None
}

/// `repo@sha256:...` of an image as pulled for `reference`, if the engine recorded one.
fn digest_for(image: &Value, reference: &str) -> Option<String> {
    let digests: Vec<&str> = image
        .get("RepoDigests")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let wanted = policy::ImageRef::parse(reference);
    digests
        .iter()
        .find(|d| policy::ImageRef::parse(d) == wanted)
        .or(digests.first())
        .map(|d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn start_first_obstacles() {
        assert_eq!(start_first_obstacle(&json!({})), None);
        assert_eq!(
            start_first_obstacle(&json!({"HostConfig": {"PortBindings": {"80/tcp": []}}})),
            None
        );
        assert!(start_first_obstacle(
            &json!({"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}})
        )
        .unwrap()
        .contains("host ports"));
        assert!(start_first_obstacle(&json!({"NetworkSettings": {"Networks": {"n": {"IPAMConfig": {"IPv4Address": "10.0.0.5"}}}}}))
            .unwrap()
            .contains("static address on network n"));
        assert!(
            start_first_obstacle(&json!({"Config": {"MacAddress": "02:00:00:00:00:01"}}))
                .unwrap()
                .contains("MAC")
        );
    }

    #[test]
    fn updating_names_map_to_their_update() {
        let u = Updating::default();
        u.insert("web", "cmd_1");
        assert_eq!(u.command_for("web").as_deref(), Some("cmd_1"));
        assert_eq!(
            u.command_for("web.flotilla-old-12345678").as_deref(),
            Some("cmd_1")
        );
        assert_eq!(
            u.command_for("web.flotilla-new-12345678").as_deref(),
            Some("cmd_1")
        );
        assert_eq!(u.command_for("db"), None);
        u.remove("web");
        assert_eq!(u.command_for("web"), None);
    }

    #[test]
    fn digests_match_the_reference() {
        let img = json!({"RepoDigests": ["other/x@sha256:aa", "127.0.0.1:5000/app@sha256:bb"]});
        assert_eq!(
            digest_for(&img, "127.0.0.1:5000/app:v2").as_deref(),
            Some("127.0.0.1:5000/app@sha256:bb")
        );
        assert_eq!(digest_for(&json!({}), "x"), None);
    }

    #[test]
    fn health_spec_default_is_auto() {
        assert_eq!(HealthSpec::default(), HealthSpec::Auto);
    }
}
