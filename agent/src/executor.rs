//! Runs accepted commands against Docker and files their results.
//!
//! Commands arrive from the session one at a time and are admitted (verified and journaled)
//! strictly in order, so two copies of one command can never both be accepted. Accepted commands
//! then run concurrently as tasks, except that at most one mutating command (start, stop,
//! restart) runs per container: a second one WAITS for the first, for at most
//! `MAX_BUSY_WAIT` and never past its own expiry, and then fails with `container_busy`.
//! Each result is written to the journal and appended to the outbox in one transaction.

// issue 17 part 6: auto-heal's restarts
mod autoheal;
// issue 17 part 1: compose.update
mod compose;

use crate::backup::Backups;
use crate::docker::{DockerClient, DockerError, ResolvedContainer};
use crate::frame::{keep_newest_lines, FrameLimit};
use crate::state::State;
use crate::update::{base_name, Updater};
use crate::upgrade::{Resumed, UpgradeOutcome, Upgrades};
use crate::verify::{admit, Admission, Rejection, Verifier};
use anyhow::Result;
use chrono::{DateTime, Utc};
use flotilla_shared::backup::{BackupRunOutput, BackupStatus, RunTrigger};
use flotilla_shared::command::{
    error_codes, AgentUpgradeArgs, Command, CommandEnvelope, CommandResult, ContainerActionOutput,
    ContainerListOutput, ContainerLogsOutput, ContainerUpdateArgs, ErrorInfo, PingOutput,
    ResultStatus, SignedCommand, DEFAULT_LOG_TAIL, DEFAULT_STOP_TIMEOUT_SECS,
};
use flotilla_shared::protocol::{AgentFrame, WelcomeBody};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Longest a mutating command waits for another one on the same container.
pub const MAX_BUSY_WAIT: Duration = Duration::from_secs(300);
/// On shutdown, running commands get this long to finish; the rest are reported as
/// interrupted at the next start (updates converge from their journal instead). Updates cut
/// their pull or health gate short on shutdown and roll back, which takes a few seconds.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often expired journal entries are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
pub use flotilla_shared::command::error_codes::{INTERRUPTED, RESULT_TOO_LARGE};
/// Room left in a frame for the result's envelope around the output.
const FRAME_OVERHEAD_BYTES: usize = 4096;

/// A `command` frame as the session hands it over.
#[derive(Clone, Debug)]
pub enum IncomingCommand {
    Signed(SignedCommand),
    /// A `command` frame that did not parse as a signed command at all.
    Malformed {
        command_id: Option<String>,
        reason: String,
    },
}

/// Everything the executor needs; built by `run`.
pub struct Executor {
    pub verifier: Verifier,
    pub state: State,
    pub docker: DockerClient,
    /// The latest verified welcome: selector audiences are checked against its labels.
    pub welcome: watch::Receiver<Option<WelcomeBody>>,
    /// Frames for the session to send (`received`).
    pub control_tx: mpsc::Sender<AgentFrame>,
    /// The largest frame the session may send now (results are sized by it).
    pub frame_limit: FrameLimit,
    pub hostname: String,
    /// Asks the heartbeat task for a fresh heartbeat (after a container changed).
    pub heartbeat_poke: Arc<Notify>,
    /// Runs `container.update` and converges updates a previous process left unfinished.
    pub updater: Updater,
    /// Runs `backup.*`.
    pub backups: Backups,
    /// Runs `agent.upgrade`.
    pub upgrades: Upgrades,
    // --- issue 17 part 6 ---
    /// Runs `image.prune`.
    pub images: crate::images::Images,
    /// The heartbeats, whose container health feeds auto-heal.
    pub heartbeats: watch::Receiver<Option<Arc<flotilla_shared::heartbeat::Heartbeat>>>,
    pub autoheal: crate::config::AutohealConfig,
}

/// What running commands share.
struct Shared {
    state: State,
    docker: DockerClient,
    locks: ContainerLocks,
    frame_limit: FrameLimit,
    hostname: String,
    heartbeat_poke: Arc<Notify>,
    updater: Updater,
    backups: Backups,
    upgrades: Upgrades,
    images: crate::images::Images,
    /// Cancelled when the agent stops (an upgrade waiting for its restart ends on it).
    stopping: CancellationToken,
}

// === impl Executor ===

impl Executor {
    /// Admits and runs commands until shutdown or until the session side closes.
    pub async fn run(
        self,
        mut commands: mpsc::Receiver<IncomingCommand>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let shared = Arc::new(Shared {
            state: self.state.clone(),
            docker: self.docker.clone(),
            locks: ContainerLocks::default(),
            frame_limit: self.frame_limit.clone(),
            hostname: self.hostname.clone(),
            heartbeat_poke: self.heartbeat_poke.clone(),
            updater: self.updater.clone(),
            backups: self.backups.clone(),
            upgrades: self.upgrades.clone(),
            images: self.images.clone(),
            stopping: shutdown.clone(),
        });
        let mut healer = crate::autoheal::Autoheal::new(self.autoheal.clone());
        let mut heartbeats = self.heartbeats.clone();
        let mut heartbeats_open = true;
        let mut tasks = JoinSet::new();
        self.recover_updates(&shared, &mut tasks).await;
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        error!(error = %e, "command task failed");
                    }
                }
                msg = commands.recv() => match msg {
                    Some(cmd) => self.handle(cmd, &shared, &mut tasks).await,
                    None => break,
                },
                changed = heartbeats.changed(), if heartbeats_open => {
                    if changed.is_err() {
                        heartbeats_open = false;
                        continue;
                    }
                    let hb = heartbeats.borrow_and_update().clone();
                    if let Some(hb) = hb {
                        autoheal::step(&shared, &mut healer, &hb, &mut tasks).await;
                    }
                }
                _ = prune.tick() => {
                    match self.state.prune_journal(Utc::now()).await {
                        Ok(0) => {}
                        Ok(n) => debug!(removed = n, "pruned expired command journal entries"),
                        Err(e) => warn!(error = format!("{e:#}"), "cannot prune command journal"),
                    }
                }
            }
        }
        if !tasks.is_empty() {
            info!(
                running = tasks.len(),
                "waiting for running commands to finish"
            );
            let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                warn!(
                    running = tasks.len(),
                    "stopping with commands still running; they will be reported as interrupted"
                );
                tasks.abort_all();
            }
        }
        Ok(())
    }

    async fn handle(&self, cmd: IncomingCommand, shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
        let now = Utc::now();
        let signed = match cmd {
            IncomingCommand::Signed(s) => s,
            IncomingCommand::Malformed { command_id, reason } => {
                self.reject(
                    Rejection {
                        command_id,
                        code: error_codes::MALFORMED,
                        reason,
                        authentic: false,
                    },
                    now,
                )
                .await;
                return;
            }
        };
        let labels = self
            .welcome
            .borrow()
            .as_ref()
            .map(|w| w.labels.clone())
            .unwrap_or_default();
        match admit(&self.verifier, &self.state, &signed, &labels, now).await {
            Err(e) => {
                // Without a journal entry the command must not run (it could run twice); the
                // relay re-sends it on the next connection.
                error!(
                    error = format!("{e:#}"),
                    "cannot journal command; not running it"
                );
            }
            Ok(Admission::Rejected(r)) => self.reject(r, now).await,
            Ok(Admission::Duplicate {
                command_id,
                stored: Some(result),
            }) => {
                // The relay re-sends a command until it has the result; if the result is
                // still queued it is on its way, and another copy would only pile up.
                match self.state.requeue_result(*result).await {
                    Ok(true) => info!(
                        command_id,
                        "command already ran; re-sending its stored result"
                    ),
                    Ok(false) => debug!(
                        command_id,
                        "command already ran; its result is still queued for the relay"
                    ),
                    Err(e) => error!(
                        command_id,
                        error = format!("{e:#}"),
                        "cannot re-queue result"
                    ),
                }
            }
            Ok(Admission::Duplicate {
                command_id,
                stored: None,
            }) => {
                debug!(command_id, "command is already running");
                self.send_received(command_id);
            }
            Ok(Admission::Accepted(env)) => {
                info!(
                    command_id = env.id,
                    kind = %env.command.kind(),
                    container = env.command.container().unwrap_or(""),
                    "running command"
                );
                self.send_received(env.id.clone());
                let shared = shared.clone();
                tasks.spawn(async move { run_command(&shared, env, &signed).await });
            }
        }
    }

    /// Converges every update a previous process left unfinished, each holding its container's
    /// lock (taken before any new command is admitted).
    async fn recover_updates(&self, shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
        let records = match self.state.unfinished_updates().await {
            Ok(r) => r,
            Err(e) => {
                error!(error = format!("{e:#}"), "cannot read the update journal");
                return;
            }
        };
        // One task per container name, converging its records one after another; one task
        // per compose.update, converging its containers together (`Updater::recover_group`).
        let mut by_name: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for record in records {
            let v = serde_json::from_str::<serde_json::Value>(&record).ok();
            let field = |k: &str| {
                v.as_ref()
                    .and_then(|v| v.get(k).and_then(|n| n.as_str()).map(str::to_string))
            };
            let name = field("name").unwrap_or_default();
            match field("group") {
                Some(group) => groups.entry(group).or_default().push(name),
                None => by_name.entry(name).or_default().push(record),
            }
        }
        for (group, names) in groups {
            let guards: Vec<_> = names.iter().map(|n| shared.locks.try_lock(n)).collect();
            let shared = shared.clone();
            tasks.spawn(async move {
                let _guards = guards;
                shared.updater.recover_group(&group).await;
                shared.heartbeat_poke.notify_one();
            });
        }
        for (name, records) in by_name {
            let guard = shared.locks.try_lock(&name);
            let shared = shared.clone();
            tasks.spawn(async move {
                let _guard = guard;
                for record in records {
                    shared.updater.recover(&record).await;
                }
                shared.heartbeat_poke.notify_one();
            });
        }
    }

    fn send_received(&self, command_id: String) {
        // `received` is advisory (the result is what counts), so a full queue may drop it.
        if self
            .control_tx
            .try_send(AgentFrame::Received { command_id })
            .is_err()
        {
            debug!("control queue full; dropping a received frame");
        }
    }

    async fn reject(&self, r: Rejection, now: DateTime<Utc>) {
        warn!(
            command_id = r.command_id.as_deref().unwrap_or("?"),
            code = r.code,
            reason = r.reason,
            "rejected command"
        );
        if let Err(e) = self.state.append_outbox(r.outbox_items(now)).await {
            error!(error = format!("{e:#}"), "cannot record command rejection");
        }
    }
}

/// Fails every command a previous process left running: it may or may not have taken effect,
/// and running it again could do it twice, so the relay is told it was interrupted. An update
/// without an update journal record never got past reading (its record is written before it
/// changes anything), so it is reported as `failed_unchanged` with its report. An
/// `agent.upgrade` is expected to span a restart: when this process runs the version it asked
/// for, it stays running and is reported after the first welcome; when the updater reverted
/// or refused it, that is reported (see `Upgrades::resume`). Returns how many were failed.
pub async fn fail_interrupted(state: &State, upgrades: Option<&Upgrades>) -> Result<usize> {
    let running = state.journal_running_commands().await?;
    let mut failed = 0;
    for (id, command) in &running {
        let now = Utc::now();
        let command = command
            .as_deref()
            .and_then(|c| serde_json::from_str::<Command>(c).ok());
        if let (Some(Command::AgentUpgrade(args)), Some(upgrades)) = (&command, upgrades) {
            match upgrades.resume(id, args) {
                Resumed::Pending => continue,
                Resumed::Finished(result) => {
                    state.finish_command(*result).await?;
                    failed += 1;
                    continue;
                }
                Resumed::Interrupted => {}
            }
        }
        warn!(
            command_id = id,
            "command was interrupted by an agent restart"
        );
        failed += 1;
        let update = command.and_then(|c| match c {
            Command::ContainerUpdate(args) => Some(args),
            _ => None,
        });
        match update {
            Some(args) => {
                let result = crate::update::unstarted_result(id, &args, now);
                state.finish_update(result, String::new()).await?;
            }
            None => {
                state
                    .finish_command(CommandResult {
                        command_id: id.clone(),
                        status: ResultStatus::Failed,
                        output: None,
                        error: Some(ErrorInfo {
                            code: INTERRUPTED.into(),
                            message: "the agent stopped while the command was running; it was \
                                      not retried"
                                .into(),
                        }),
                        started_at: now,
                        finished_at: now,
                    })
                    .await?;
            }
        }
    }
    Ok(failed)
}

/// `agent.upgrade`: reported here only when it fails in this process; after the updater
/// applied it, the next process reports it.
async fn run_upgrade(
    shared: &Shared,
    env: &CommandEnvelope,
    args: &AgentUpgradeArgs,
    signed: &SignedCommand,
) {
    let started_at = Utc::now();
    let error = match env.command.validate() {
        Err(message) => ErrorInfo {
            code: error_codes::INVALID_ARGS.into(),
            message: message.into(),
        },
        Ok(()) => match shared
            .upgrades
            .upgrade(&env.id, args, Some(signed), &shared.stopping)
            .await
        {
            UpgradeOutcome::Failed(e) => e,
            UpgradeOutcome::Applied | UpgradeOutcome::Stopped => return,
        },
    };
    info!(
        command_id = env.id,
        code = error.code,
        error = error.message,
        "command failed"
    );
    let result = CommandResult {
        command_id: env.id.clone(),
        status: ResultStatus::Failed,
        output: None,
        error: Some(error),
        started_at,
        finished_at: Utc::now(),
    };
    if let Err(e) = shared.state.finish_command(result).await {
        error!(
            command_id = env.id,
            error = format!("{e:#}"),
            "cannot store command result"
        );
    }
}

/// `container.update`: refused at once when another mutating command holds the container.
async fn run_update(shared: &Shared, command_id: &str, args: &ContainerUpdateArgs) {
    let updater = &shared.updater;
    if let Err(message) = args.validate() {
        let e = ErrorInfo {
            code: error_codes::INVALID_ARGS.into(),
            message: message.into(),
        };
        return updater.refuse(command_id, args, e).await;
    }
    let c = match shared.docker.resolve(&args.container).await {
        Ok(c) => c,
        Err(e) => return updater.refuse(command_id, args, docker_err(e)).await,
    };
    let Some(_guard) = shared.locks.try_lock(&c.name) else {
        let e = ErrorInfo {
            code: error_codes::BUSY.into(),
            message: format!(
                "container {} is busy with another command (an update or a start/stop/restart); \
                 nothing was changed",
                c.name
            ),
        };
        return updater.refuse(command_id, args, e).await;
    };
    updater.run(command_id, args.clone()).await;
}

async fn run_command(shared: &Shared, env: CommandEnvelope, signed: &SignedCommand) {
    if let Command::ContainerUpdate(args) = &env.command {
        run_update(shared, &env.id, args).await;
        shared.heartbeat_poke.notify_one();
        return;
    }
    if let Command::AgentUpgrade(args) = &env.command {
        run_upgrade(shared, &env, args, signed).await;
        return;
    }
    // --- compose (issue 17, part 1) ---
    if let Command::ComposeUpdate(args) = &env.command {
        compose::run_compose_update(shared, &env.id, args).await;
        shared.heartbeat_poke.notify_one();
        return;
    }
    let started_at = Utc::now();
    let clock = std::time::Instant::now();
    let outcome = match env.command.validate() {
        Err(message) => Err(Failure::from(ErrorInfo {
            code: error_codes::INVALID_ARGS.into(),
            message: message.into(),
        })),
        Ok(()) => execute(shared, &env).await,
    };
    let max_frame_bytes = shared.frame_limit.load(Ordering::Relaxed);
    let fits = |output: &serde_json::Value| -> Result<(), ErrorInfo> {
        let size = serde_json::to_string(output).map(|s| s.len()).unwrap_or(0);
        if size + FRAME_OVERHEAD_BYTES > max_frame_bytes {
            Err(ErrorInfo {
                code: RESULT_TOO_LARGE.into(),
                message: format!(
                    "output of {size} bytes does not fit in a {max_frame_bytes} byte frame"
                ),
            })
        } else {
            Ok(())
        }
    };
    let (status, output, error) = match outcome {
        Ok(output) => match fits(&output) {
            Ok(()) => (ResultStatus::Succeeded, Some(output), None),
            Err(e) => (ResultStatus::Failed, None, Some(e)),
        },
        // A failure may carry output (every database's outcome of a failed backup run).
        Err(Failure { error, output }) => {
            let output = output.filter(|o| fits(o).is_ok());
            (ResultStatus::Failed, output, Some(error))
        }
    };
    match &error {
        None => info!(
            command_id = env.id,
            elapsed_ms = clock.elapsed().as_millis() as u64,
            "command succeeded"
        ),
        Some(e) => info!(
            command_id = env.id,
            code = e.code,
            error = e.message,
            "command failed"
        ),
    }
    let result = CommandResult {
        command_id: env.id.clone(),
        status,
        output,
        error,
        started_at,
        finished_at: Utc::now(),
    };
    if let Err(e) = shared.state.finish_command(result).await {
        error!(
            command_id = env.id,
            error = format!("{e:#}"),
            "cannot store command result"
        );
    }
    if env.command.kind().is_mutating() {
        // Let the relay see the container's new state without waiting a whole interval.
        shared.heartbeat_poke.notify_one();
    }
}

fn docker_err(e: DockerError) -> ErrorInfo {
    ErrorInfo {
        code: e.code().into(),
        message: e.to_string(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ErrorInfo> {
    serde_json::to_value(v).map_err(|e| ErrorInfo {
        code: error_codes::DOCKER.into(),
        message: format!("cannot encode output: {e}"),
    })
}

/// A failed command: its error, and output when the kind reports one even on failure.
struct Failure {
    error: ErrorInfo,
    output: Option<serde_json::Value>,
}

impl From<ErrorInfo> for Failure {
    fn from(error: ErrorInfo) -> Self {
        Failure {
            error,
            output: None,
        }
    }
}

async fn execute(shared: &Shared, env: &CommandEnvelope) -> Result<serde_json::Value, Failure> {
    let docker = &shared.docker;
    match &env.command {
        Command::AgentUpgrade(_) => Err(ErrorInfo {
            code: error_codes::INVALID_ARGS.into(),
            message: "agent.upgrade is run by the upgrade handler, not here".into(),
        }
        .into()),
        Command::BackupList(a) if a.offsite => Ok(to_json(&shared.backups.list_offsite(a).await?)?),
        Command::BackupList(a) => Ok(to_json(&shared.backups.list(a).await?)?),
        Command::BackupRun(a) => {
            let reports = shared
                .backups
                .run(a.job.as_deref(), RunTrigger::Command)
                .await?;
            let failed: usize = reports.iter().map(|r| r.failed()).sum();
            let remote_failed = reports.iter().any(|r| {
                r.remote_sync
                    .as_ref()
                    .is_some_and(|s| s.status == BackupStatus::Failed)
            });
            let output = to_json(&BackupRunOutput { reports })?;
            if failed > 0 || remote_failed {
                let message = if failed > 0 {
                    format!("{failed} database backup(s) failed; the output lists every database")
                } else {
                    "the dumps succeeded but copying them off-site failed".to_string()
                };
                return Err(Failure {
                    error: ErrorInfo {
                        code: error_codes::BACKUP_FAILED.into(),
                        message,
                    },
                    output: Some(output),
                });
            }
            Ok(output)
        }
        Command::BackupVerify(a) => {
            let verified = shared.backups.verify(&a.id).await?;
            let ok = verified.ok;
            let output = to_json(&verified)?;
            if !ok {
                return Err(Failure {
                    error: ErrorInfo {
                        code: error_codes::VERIFY_FAILED.into(),
                        message: format!("backup {} failed verification", a.id),
                    },
                    output: Some(output),
                });
            }
            Ok(output)
        }
        Command::BackupRestore(a) => {
            let (manifest, target) = shared.backups.restore_target(a).await?;
            // A restore writes into the container's database: serialised with updates,
            // starts and stops of that container.
            let _guard = shared.locks.lock(&target, env.expires_at).await?;
            Ok(to_json(
                &shared.backups.restore(a, manifest, target).await?,
            )?)
        }
        // --- issue 17 parts 4 and 6 ---
        Command::BackupForget(a) => Ok(to_json(
            &shared
                .backups
                .forget(&a.job, crate::backup::ForgetReason::Operator)
                .await?,
        )?),
        Command::ImagePrune(a) => Ok(to_json(&shared.images.prune(a.dry_run).await?)?),
        Command::Ping(_) => Ok(to_json(&PingOutput {
            agent_version: flotilla_shared::release::version().to_string(),
            hostname: shared.hostname.clone(),
        })?),
        Command::ContainerList(a) => Ok(to_json(&ContainerListOutput {
            containers: docker
                .list_labelled(a.all, a.label.as_deref())
                .await
                .map_err(docker_err)?,
        })?),
        Command::ContainerInspect(r) => {
            let c = docker.resolve(&r.container).await.map_err(docker_err)?;
            Ok(docker.inspect(&c).await.map_err(docker_err)?)
        }
        Command::ContainerStart(r) => {
            let c = docker.resolve(&r.container).await.map_err(docker_err)?;
            let _guard = shared.locks.lock(&c, env.expires_at).await?;
            let out = docker.start(&c).await.map_err(docker_err)?;
            Ok(to_json(&ContainerActionOutput {
                container: out.container,
                changed: out.changed,
            })?)
        }
        Command::ContainerStop(a) | Command::ContainerRestart(a) => {
            let c = docker.resolve(&a.container).await.map_err(docker_err)?;
            let timeout =
                Duration::from_secs(a.timeout_secs.unwrap_or(DEFAULT_STOP_TIMEOUT_SECS) as u64);
            let _guard = shared.locks.lock(&c, env.expires_at).await?;
            let out = if matches!(env.command, Command::ContainerStop(_)) {
                docker.stop(&c, timeout).await
            } else {
                docker.restart(&c, timeout).await
            }
            .map_err(docker_err)?;
            Ok(to_json(&ContainerActionOutput {
                container: out.container,
                changed: out.changed,
            })?)
        }
        Command::ContainerUpdate(_) | Command::ComposeUpdate(_) => Err(ErrorInfo {
            code: error_codes::INVALID_ARGS.into(),
            message: "updates are run by the updater, not here".into(),
        }
        .into()),
        Command::ContainerLogs(a) => {
            let c = docker.resolve(&a.container).await.map_err(docker_err)?;
            let lines = docker
                .logs(
                    &c,
                    a.tail.unwrap_or(DEFAULT_LOG_TAIL),
                    a.since.as_deref(),
                    a.timestamps,
                )
                .await
                .map_err(docker_err)?;
            let budget = (shared.frame_limit.load(Ordering::Relaxed) / 2)
                .saturating_sub(FRAME_OVERHEAD_BYTES);
            let (lines, truncated) = keep_newest_lines(lines, budget);
            Ok(to_json(&ContainerLogsOutput {
                container: c.name,
                lines,
                truncated,
            })?)
        }
    }
}

// === impl ContainerLocks ===

/// One async mutex per container NAME, for mutating commands (an update gives the container a
/// new id but keeps its name). The backup and temporary names of an update count as the
/// container's own name, so nothing can start the old container during its update.
#[derive(Default)]
struct ContainerLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ContainerLocks {
    /// Waits for the container's lock, at most until `MAX_BUSY_WAIT` passed or the command
    /// expires, whichever comes first.
    async fn lock(
        &self,
        c: &ResolvedContainer,
        expires_at: DateTime<Utc>,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, ErrorInfo> {
        let mutex = self.mutex(&c.name);
        let until_expiry = (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let wait = MAX_BUSY_WAIT.min(until_expiry).max(Duration::from_secs(1));
        match tokio::time::timeout(wait, mutex.lock_owned()).await {
            Ok(guard) => Ok(guard),
            Err(_) => Err(ErrorInfo {
                code: error_codes::BUSY.into(),
                message: format!(
                    "container {} is busy with another command (waited {} s)",
                    c.name,
                    wait.as_secs()
                ),
            }),
        }
    }

    /// The container's lock if nobody holds it now.
    fn try_lock(&self, name: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.mutex(name).try_lock_owned().ok()
    }

    /// The mutex of the container called `name` (or of the container whose update gave it
    /// that backup/temporary name).
    fn mutex(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Forget locks nobody holds or waits for, so the map stays small.
        map.retain(|_, m| Arc::strong_count(m) > 1);
        map.entry(base_name(name).to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn interrupted_updates_are_reported_unchanged_with_a_report() {
        use flotilla_shared::protocol::OutboxItem;
        let state = State::open(&crate::state::tests::temp_dir()).await.unwrap();
        let now = Utc::now();
        let exp = now + chrono::Duration::minutes(5);
        let update = Command::from_parts(
            "container.update",
            serde_json::json!({"container": "web", "image": "reg:5000/app:v2"}),
        )
        .unwrap();
        let json = |c: &Command| Some(serde_json::to_string(c).unwrap());
        state
            .journal_begin_with("cmd_upd", now, exp, json(&update))
            .await
            .unwrap();
        let ping = Command::from_parts("ping", serde_json::Value::Null).unwrap();
        state
            .journal_begin_with("cmd_ping", now, exp, json(&ping))
            .await
            .unwrap();
        assert_eq!(fail_interrupted(&state, None).await.unwrap(), 2);
        let results: Vec<CommandResult> = state
            .outbox_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(_, i)| match i {
                OutboxItem::Result(r) => Some(r),
                _ => None,
            })
            .collect();
        let upd = results.iter().find(|r| r.command_id == "cmd_upd").unwrap();
        assert_eq!(
            upd.error.as_ref().unwrap().code,
            error_codes::UPDATE_FAILED_UNCHANGED
        );
        let report: flotilla_shared::update::UpdateReport =
            serde_json::from_value(upd.output.clone().unwrap()).unwrap();
        assert_eq!(
            report.outcome,
            flotilla_shared::update::UpdateOutcome::FailedUnchanged
        );
        assert_eq!(report.container, "web");
        assert!(report.recovered && !report.old_stopped);
        let ping = results.iter().find(|r| r.command_id == "cmd_ping").unwrap();
        assert_eq!(ping.error.as_ref().unwrap().code, INTERRUPTED);
        assert!(state.journal_running().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn interrupted_upgrades_wait_for_the_welcome_or_report_the_updaters_verdict() {
        use crate::upgrade::{UpgradeOptions, UpgradePaths, UpgradeResult, UpgradeStatus};
        use flotilla_shared::protocol::OutboxItem;
        use flotilla_shared::release::{this_arch, ReleaseManifest};
        let dir = crate::state::tests::temp_dir();
        let state = State::open(&dir).await.unwrap();
        let relay = flotilla_shared::signing::SigningKey::generate();
        let upgrades = Upgrades::new(
            UpgradeOptions {
                state_dir: dir.clone(),
                relay_url: "http://127.0.0.1:9".into(),
                ca_file: None,
                relay_key: relay.public_key(),
                settings: Default::default(),
            },
            state.clone(),
        )
        .unwrap();
        let now = Utc::now();
        for (id, to) in [
            ("cmd_new", flotilla_shared::release::version()),
            ("cmd_reverted", "9.9.9"),
            ("cmd_lost", "9.9.8"),
        ] {
            let manifest = ReleaseManifest {
                name: "flotilla-agent".into(),
                version: to.into(),
                arch: this_arch().into(),
                size: 10,
                sha256: "a".repeat(64),
                created_at: now,
            }
            .sign(&relay);
            let command = Command::AgentUpgrade(AgentUpgradeArgs {
                manifest,
                rollback: false,
            });
            state
                .journal_begin_with(
                    id,
                    now,
                    now + chrono::Duration::minutes(5),
                    Some(serde_json::to_string(&command).unwrap()),
                )
                .await
                .unwrap();
        }
        let paths = UpgradePaths::new(&dir);
        std::fs::create_dir_all(&paths.dir).unwrap();
        let verdict = UpgradeResult {
            command_id: "cmd_reverted".into(),
            status: UpgradeStatus::Reverted,
            from_version: flotilla_shared::release::version().into(),
            to_version: "9.9.9".into(),
            reason: Some("9.9.9 did not reach the relay within 120 s".into()),
            at: now,
        };
        std::fs::write(paths.result(), serde_json::to_vec(&verdict).unwrap()).unwrap();

        // The upgrade to the running version waits for the welcome; the others are reported.
        assert_eq!(fail_interrupted(&state, Some(&upgrades)).await.unwrap(), 2);
        assert_eq!(state.journal_running().await.unwrap(), vec!["cmd_new"]);
        let results: Vec<CommandResult> = state
            .outbox_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(_, i)| match i {
                OutboxItem::Result(r) => Some(r),
                _ => None,
            })
            .collect();
        let reverted = results
            .iter()
            .find(|r| r.command_id == "cmd_reverted")
            .unwrap();
        let e = reverted.error.as_ref().unwrap();
        assert_eq!(e.code, error_codes::UPGRADE_REVERTED);
        assert!(e.message.contains("within 120 s"), "{}", e.message);
        let lost = results.iter().find(|r| r.command_id == "cmd_lost").unwrap();
        assert_eq!(lost.error.as_ref().unwrap().code, INTERRUPTED);

        // After the first welcome: confirmed and reported (no updater answers; it is not
        // waited for longer than the acknowledgement time).
        let quick = Upgrades::new(
            UpgradeOptions {
                state_dir: dir.clone(),
                relay_url: "http://127.0.0.1:9".into(),
                ca_file: None,
                relay_key: relay.public_key(),
                settings: crate::upgrade::UpgradeSettings {
                    confirm_ack: Duration::from_millis(300),
                    ..Default::default()
                },
            },
            state.clone(),
        )
        .unwrap();
        assert_eq!(
            fail_interrupted(&state, Some(&quick)).await.unwrap(),
            0,
            "still pending"
        );
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(quick.clone().run(rx, stop.clone()));
        flotilla_testkit::hold(
            Duration::from_millis(100),
            "nothing is confirmed before the first Welcome",
        )
        .await;
        assert!(state.journal_running().await.unwrap() == vec!["cmd_new"]);
        tx.send_replace(Some(WelcomeBody {
            agent_id: "ag_1".into(),
            labels: Default::default(),
            issued_at: Utc::now(),
        }));
        flotilla_testkit::Poller::new(Duration::from_secs(5))
            .every(Duration::from_millis(50))
            .poll(|| async {
                state
                    .journal_running()
                    .await
                    .unwrap()
                    .is_empty()
                    .then_some(())
            })
            .await;
        assert!(state.journal_running().await.unwrap().is_empty());
        assert_eq!(
            paths.read_confirmed().as_deref(),
            Some(flotilla_shared::release::version())
        );
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn mutating_commands_on_one_container_wait_then_give_up() {
        let locks = ContainerLocks::default();
        let c = ResolvedContainer {
            id: "abc".into(),
            name: "web".into(),
        };
        let other = ResolvedContainer {
            id: "def".into(),
            name: "db".into(),
        };
        let soon = Utc::now() + chrono::Duration::seconds(1);
        let held = locks.lock(&c, soon).await.unwrap();
        // Another container is not affected.
        locks.lock(&other, soon).await.unwrap();
        // The same container waits, then fails with container_busy once the command expires.
        let e = locks.lock(&c, soon).await.unwrap_err();
        assert_eq!(e.code, "container_busy");
        assert!(e.message.contains("web"), "{}", e.message);
        drop(held);
        locks.lock(&c, soon).await.unwrap();
    }
}
